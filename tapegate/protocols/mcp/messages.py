"""JSON-RPC 2.0 as MCP carries it: what a body holds, and the gateway's own error answers."""

from __future__ import annotations

import base64
import binascii
import re
from typing import Any

import orjson

PARSE_ERROR = -32700
INVALID_REQUEST = -32600
HEADER_MISMATCH = -32020  # 2026-07-28: Mcp-Method / Mcp-Name disagree with the body
BLOCKED = -32001  # the gateway's: the call is not allowed by the target's policy
# The methods whose name the 2026-07-28 `Mcp-Name` header repeats, and where the body has it.
NAME_BEARING = {"tools/call": "name", "prompts/get": "name", "resources/read": "uri"}
_B64 = re.compile(r"=\?base64\?(?P<payload>.*)\?=")

Message = dict[str, Any]


class McpError(Exception):
    """A body that is not JSON-RPC: answered with this code and message."""

    def __init__(self, code: int, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.code, self.message, self.status = code, message, status


def parse(body: bytes) -> list[Message]:
    """A POST body: one message, or (2025-03-26) a batch of them."""
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise McpError(PARSE_ERROR, f"the body is not JSON ({exc})") from None
    items = value if isinstance(value, list) else [value]
    if not items or not all(isinstance(m, dict) and m.get("jsonrpc") == "2.0" for m in items):
        raise McpError(INVALID_REQUEST, "the body is not a JSON-RPC 2.0 message")
    return items


def kind(msg: Message) -> str:
    if "method" in msg:
        return "request" if "id" in msg else "notification"
    return "response"


def key(msg_id: Any) -> str:
    """A JSON-RPC id as a dict key: 1 and "1" are different ids."""
    return orjson.dumps(msg_id).decode()


def header_name(value: bytes | None) -> str | None:
    """An `Mcp-Name` value, decoded from its `=?base64?…?=` form when it has it."""
    if value is None:
        return None
    text = value.decode("latin-1")
    m = _B64.fullmatch(text)
    if m is None:
        return text
    try:
        return base64.b64decode(m["payload"], validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None


def error(msg_id: Any, code: int, message: str) -> Message:
    return {"jsonrpc": "2.0", "id": msg_id, "error": {"code": code, "message": message}}


def dumps(value: Any) -> bytes:
    return orjson.dumps(value)


def capped(value: Any, cap: int) -> tuple[str, bool]:
    """A value as compact JSON text, cut at `cap` characters; and whether it was cut."""
    text = orjson.dumps(value).decode() if not isinstance(value, str) else value
    return (text[:cap], True) if len(text) > cap else (text, False)

"""An MCP target: a Streamable HTTP server, the tools agents may call, the rules on arguments.

It is an HTTP target (the same upstream URL and injected credential) whose exchanges are read as
JSON-RPC: the endpoint is the upstream URL itself, and agents reach it at `/mcp/<name>`.
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tapegate.config.checks import ConfigError, as_mapping, as_str, check_only
from tapegate.protocols.http import target as http_target
from tapegate.protocols.http.target import HttpTarget

KEYS = frozenset({"inject_header", "upstream_ca_file", "tools", "guardrails", "max_body_bytes",
                  "session_idle_s", "command", "env"})  # fmt: skip
MAX_BODY_BYTES = 1024 * 1024  # a JSON-RPC request is read whole before it is forwarded


@dataclass(frozen=True)
class ArgRule:
    """Refuse a call to a tool matching `tool` whose arguments (as JSON text) match `regex`."""

    tool: str
    regex: re.Pattern[str]


@dataclass(frozen=True, kw_only=True)
class McpTarget(HttpTarget):
    tools_allow: tuple[str, ...] = ("*",)  # glob patterns (fnmatch, case-sensitive)
    tools_deny: tuple[str, ...] = ()
    deny_args: tuple[ArgRule, ...] = ()
    max_body_bytes: int = MAX_BODY_BYTES
    session_idle_s: float = 300.0  # an MCP session's tape, with no connection carrying it

    def tool_denied(self, tool: str) -> str | None:
        """Why the tool may not be used here, or None."""
        for pattern in self.tools_deny:
            if fnmatch.fnmatchcase(tool, pattern):
                return f"tools.deny {pattern!r}"
        if not any(fnmatch.fnmatchcase(tool, p) for p in self.tools_allow):
            return "not in tools.allow"
        return None


def build(m: dict[str, Any], key: str, base_dir: Path, common: dict[str, Any]) -> McpTarget:
    if "command" in m or "env" in m:
        # Said plainly rather than accepted and ignored: the stdio transport comes next.
        raise ConfigError(f"{key}.command", "stdio MCP servers are not supported yet: give "
                          "upstream: https://host/mcp (a Streamable HTTP server)")  # fmt: skip
    http = http_target.build(m, key, base_dir, common)
    tools = as_mapping(m.get("tools", {}), f"{key}.tools")
    check_only(tools, f"{key}.tools", {"allow", "deny"})
    rules = as_mapping(m.get("guardrails", {}), f"{key}.guardrails")
    check_only(rules, f"{key}.guardrails", {"deny_args"})
    size = m.get("max_body_bytes", MAX_BODY_BYTES)
    if not isinstance(size, int) or isinstance(size, bool) or not 1024 <= size <= 64 << 20:
        raise ConfigError(f"{key}.max_body_bytes", "an integer from 1024 to 67108864")
    idle = m.get("session_idle_s", 300)
    if not isinstance(idle, (int, float)) or isinstance(idle, bool) or not 0.1 <= idle <= 86_400:
        raise ConfigError(f"{key}.session_idle_s", "seconds, from 0.1 to 86400")
    arg_rules = _list(rules.get("deny_args", []), f"{key}.guardrails.deny_args")
    fields = {f: getattr(http, f) for f in http.__dataclass_fields__}
    return McpTarget(
        **fields,
        tools_allow=_globs(tools.get("allow", ["*"]), f"{key}.tools.allow"),
        tools_deny=_globs(tools.get("deny", []), f"{key}.tools.deny"),
        deny_args=tuple(
            _arg_rule(r, f"{key}.guardrails.deny_args[{i}]") for i, r in enumerate(arg_rules)
        ),
        max_body_bytes=size,
        session_idle_s=float(idle),
    )


def _list(raw: Any, key: str) -> list[Any]:
    if not isinstance(raw, list):
        raise ConfigError(key, "must be a list")
    return raw


def _globs(raw: Any, key: str) -> tuple[str, ...]:
    items = _list(raw, key)
    if not all(isinstance(p, str) and p for p in items):
        raise ConfigError(key, 'a list of tool name patterns, e.g. ["search_*", "get_ticket"]')
    return tuple(items)


def _arg_rule(raw: Any, key: str) -> ArgRule:
    m = as_mapping(raw, key)
    check_only(m, key, {"tool", "regex"})
    if "regex" not in m:
        raise ConfigError(f"{key}.regex", "is required")
    pattern = as_str(m["regex"], f"{key}.regex")
    try:
        regex = re.compile(pattern)
    except re.error as exc:
        raise ConfigError(f"{key}.regex", f"not a regular expression: {exc}") from None
    return ArgRule(as_str(m.get("tool", "*"), f"{key}.tool"), regex)

"""Exchanges beyond a call and its answer, through the gateway with the official SDK, for a
remote server and a stdio one alike:

- a tool that asks the user before it acts: in the handshake era the server sends
  `elicitation/create` mid-call and the agent answers it; in 2026-07-28 the call's result is
  `input_required` and the agent retries it with the answer;
- a `subscriptions/listen` stream (2026-07-28) that hears of a change another call causes;

and what the tests that speak raw HTTP share."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any

import httpx2
import mcp_types as types
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError

# A handshake-era initialize, as a raw POST body.
INITIALIZE = (
    b'{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-11-25",'
    b'"capabilities":{},"clientInfo":{"name":"raw","version":"1"}}}'
)


def raw_headers(token: str) -> dict[str, str]:
    """What an SDK client sends with each POST of the handshake era."""
    return {"Authorization": f"Bearer {token}", "Content-Type": "application/json",
            "Accept": "application/json, text/event-stream",
            "MCP-Protocol-Version": "2025-11-25"}  # fmt: skip


async def json_rpc_error(call: Awaitable[Any]) -> MCPError:
    """The JSON-RPC error a call is answered with (it must be one)."""
    try:
        await call
    except MCPError as exc:
        return exc
    raise AssertionError("the call was not refused")


def erase_with_confirmation(url: str, token: str, mode: str) -> tuple[str, list[str]]:
    """The tool's answer, and what the agent was asked."""
    asked: list[str] = []

    async def confirm(context: Any, params: types.ElicitRequestParams) -> types.ElicitResult:
        asked.append(params.message)
        return types.ElicitResult(action="accept", content={"ok": True})

    async def main() -> str:
        async with httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"},
                                      timeout=30) as http:  # fmt: skip
            transport = streamable_http_client(url, http_client=http)
            async with Client(transport, mode=mode, cache=None,
                              elicitation_callback=confirm) as client:  # fmt: skip
                result = await client.call_tool("erase", {"name": "draft"})
                return str(result.content[0].text)  # type: ignore[union-attr]

    return asyncio.run(main()), asked


def check_recorded(events: list[dict[str, Any]], mode: str) -> None:
    """The question, the agent's answer and the call's outcome are on the tape."""
    mine = [e for e in events if e["type"] in ("mcp_request", "mcp_response")]
    calls = [e for e in mine if e["attrs"].get("tool") == "erase"]
    if mode == "legacy":
        (asks,) = [e for e in mine if e["type"] == "mcp_request"
                   and e["attrs"].get("method") == "elicitation/create"]  # fmt: skip
        assert asks["dir"] == "s2c" and "Really erase draft?" in str(asks)
        (answer,) = [e for e in mine if e["dir"] == "c2s"
                     and e["type"] == "mcp_response"]  # fmt: skip
        assert answer["attrs"]["method"] == "elicitation/create"
        assert answer["attrs"]["action"] == "accept"
        outcomes = [e["attrs"]["outcome"] for e in calls if e["type"] == "mcp_response"]
        assert outcomes == ["ok"]
    else:
        outcomes = [e["attrs"]["outcome"] for e in calls if e["type"] == "mcp_response"]
        assert outcomes == ["input_required", "ok"]  # one round trip for the answer
        first = next(e for e in calls if e["attrs"].get("outcome") == "input_required")
        assert "Really erase draft?" in first["attrs"]["input_requests"]
        retry = [e for e in calls if e["type"] == "mcp_request"][1]
        assert '"accept"' in retry["attrs"]["input_responses"]


def listen_for_a_change(url: str, token: str) -> str:
    """Listen for tool-list changes, make a call that announces one: the event heard."""

    async def main() -> str:
        async with httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"},
                                      timeout=30) as http:  # fmt: skip
            transport = streamable_http_client(url, http_client=http)
            client = Client(transport, mode="auto", cache=None)
            async with client, client.listen(tools_list_changed=True) as subscription:
                await client.call_tool("announce", {})
                async for event in subscription:
                    return type(event).__name__
        raise AssertionError("the stream ended without an event")

    return asyncio.run(asyncio.wait_for(main(), 60))


def check_listened(events: list[dict[str, Any]]) -> None:
    (listen,) = [e for e in events if e["type"] == "mcp_request"
                 and e["attrs"]["method"] == "subscriptions/listen"]  # fmt: skip
    heard = [e["attrs"]["method"] for e in events if e["type"] == "mcp_notification"
             and str(listen["attrs"]["id"]) in e["attrs"].get("params", "")]  # fmt: skip
    assert heard[:2] == ["notifications/subscriptions/acknowledged",
                         "notifications/tools/list_changed"]  # fmt: skip


def replay(gw: Any, session_id: str, capsys: Any, tmp: Any, *options: str) -> str:
    """`tapegate replay` of a recorded session (the gateway stopped, its archive scanned)."""
    from tapegate.archive.embedded import LocalArchive
    from tapegate.cli import main

    gw.stop()
    LocalArchive(gw.config).scan()
    cfg = tmp / "cli.yaml"
    cfg.write_text(f"data_dir: {gw.config.data_dir}\n")
    capsys.readouterr()
    assert main(["replay", session_id, *options, "--config", str(cfg)]) == 0
    return str(capsys.readouterr().out)

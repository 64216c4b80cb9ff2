"""The official TypeScript SDK's client (npm @modelcontextprotocol/sdk, 2025-11-25 with a session)
through the gateway to the Python SDK's server: listing, an allowed call, a denied call."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.gateway_harness import RunningGateway
from tests.mcp.conftest import McpUpstream

pytestmark = pytest.mark.slow
SCRIPT = Path(__file__).with_name("ts_client.mjs")


def test_the_typescript_sdk_client(mgw: RunningGateway, mcp_upstream: McpUpstream) -> None:
    before = len(mcp_upstream.calls())
    done = subprocess.run(["node", str(SCRIPT), f"{mgw.base}/mcp/tickets", mgw.token()],  # type: ignore[attr-defined]
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert done.returncode == 0, done.stderr
    steps = [json.loads(line) for line in done.stdout.splitlines()]
    assert steps[0]["step"] == "connected" and steps[0]["session"]
    tools = next(s for s in steps if s["step"] == "tools")["names"]
    assert "get_ticket" in tools and "delete_ticket" not in tools
    calls = {s["tool"]: s for s in steps if s["step"] == "call"}
    assert calls["get_ticket"]["isError"] is False and "printer" in calls["get_ticket"]["text"]
    assert (
        calls["delete_ticket"]["code"] == -32001
        and "tools.deny" in calls["delete_ticket"]["message"]
    )
    assert [c["called"] for c in mcp_upstream.calls()[before:]] == ["get_ticket"]
    tapes = {sid: evs for sid, evs in mgw.events().items()
             if any(e["type"] == "mcp_request" for e in evs)}  # fmt: skip
    assert len(tapes) == 1  # one MCP session, one tape
    (events,) = tapes.values()
    info = next(e["attrs"] for e in events if e["type"] == "mcp_request")
    assert info["method"] == "initialize" and "ts-agent" in info["params"]
    assert all(v.intact for v in mgw.verdicts().values())

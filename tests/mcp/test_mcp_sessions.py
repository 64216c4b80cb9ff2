"""An MCP session is one tape, however many connections carry it; separate sessions are separate
tapes. Real SDK clients; the tapes read back from the archive."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from tapegate.tape import decode_record
from tests.gateway_harness import RunningGateway
from tests.mcp.conftest import McpUpstream

pytestmark = pytest.mark.slow


def _tapes(gw: RunningGateway) -> dict[str, tuple[str, list[dict[str, Any]]]]:
    """Each tape's end reason ("(open)" before its final chunk) and its events."""
    deadline = time.monotonic() + 10  # a tape nobody carries is sealed after session_idle_s
    while gw.gateway.sessions and time.monotonic() < deadline:
        time.sleep(0.05)
    out = {}
    for sid, records in gw.sessions().items():
        recs = sorted((decode_record(r) for r in records), key=lambda r: r.seq)
        final = [r for r in recs if r.final]
        reason = final[0].meta["end"]["reason"] if final else "(open)"
        out[sid] = (reason, [e for r in recs for e in r.meta["events"]])
    return out


def _methods(events: list[dict[str, Any]]) -> list[str]:
    return [e["attrs"]["method"] for e in events if e["type"] == "mcp_request"]


async def _session(gw: RunningGateway, mode: str, calls: int, headers: dict[str, str]) -> None:
    headers = {"Authorization": f"Bearer {gw.token()}", **headers}
    async with httpx2.AsyncClient(headers=headers, timeout=30) as http:
        transport = streamable_http_client(f"{gw.base}/mcp/tickets", http_client=http)  # type: ignore[attr-defined]
        async with Client(transport, mode=mode, cache=None) as client:
            await client.list_tools()
            for i in range(calls):
                await client.call_tool("get_ticket", {"id": i})


def test_a_handshake_session_is_one_tape_across_its_connections(
    mgw: RunningGateway, mcp_upstream: McpUpstream
) -> None:
    async def two() -> None:  # two sessions at once, by the same agent
        await asyncio.gather(_session(mgw, "legacy", 3, {}), _session(mgw, "legacy", 2, {}))

    asyncio.run(two())
    tapes = _tapes(mgw)
    mcp = {sid: t for sid, t in tapes.items() if _methods(t[1])}
    assert len(mcp) == 2, {sid: _methods(t[1]) for sid, t in tapes.items()}
    calls = sorted(_methods(events).count("tools/call") for _, events in mcp.values())
    assert calls == [2, 3]
    for reason, events in mcp.values():
        methods = _methods(events)
        assert methods[0] == "initialize" and "tools/list" in methods
        sessions = {e["attrs"].get("mcp_session") for e in events if e["type"] == "mcp_request"}
        assert len(sessions - {None}) == 1  # every request of the tape is of one MCP session
        assert reason == "client_closed"  # sealed by the client's DELETE
        # Several connections carried it (the GET stream has its own, at least).
        assert len([e for e in events if e["type"] == "auth"]) >= 2
    verdicts = mgw.verdicts()
    assert all(v.intact for v in verdicts.values()), verdicts


def test_stateless_requests_join_the_run_they_name(
    mgw: RunningGateway, mcp_upstream: McpUpstream
) -> None:
    body = (b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"get_ticket",'
            b'"arguments":{"id":1},"_meta":{"io.modelcontextprotocol/protocolVersion":'
            b'"2026-07-28","io.modelcontextprotocol/clientCapabilities":{}}}}')  # fmt: skip

    def post(run: str) -> None:
        headers = {"Authorization": f"Bearer {mgw.token()}", "Content-Type": "application/json",
                   "Accept": "application/json, text/event-stream", "X-Tapegate-Run": run,
                   "MCP-Protocol-Version": "2026-07-28", "Mcp-Method": "tools/call",
                   "Mcp-Name": "get_ticket"}  # fmt: skip
        with httpx.Client(timeout=30) as client:  # a connection each
            answer = client.post(f"{mgw.base}/mcp/tickets", content=body, headers=headers)  # type: ignore[attr-defined]
            assert answer.status_code == 200, answer.text

    for run in ("run-a", "run-b", "run-a", "run-a", "run-b"):
        post(run)
    tapes = _tapes(mgw)
    counts = sorted(_methods(events).count("tools/call") for _, events in tapes.values())
    assert counts == [2, 3]
    assert all(reason == "idle_timeout" for reason, _ in tapes.values())  # sealed when idle


def test_the_stateless_sdk_client_is_one_tape(
    mgw: RunningGateway, mcp_upstream: McpUpstream
) -> None:
    asyncio.run(_session(mgw, "auto", 3, {}))
    tapes = _tapes(mgw)
    mcp = [events for _, events in tapes.values() if _methods(events)]
    assert len(mcp) == 1  # its clientInfo names it
    assert _methods(mcp[0]).count("tools/call") == 3


def test_a_refreshed_token_carries_the_session_on(mcp_upstream: McpUpstream, tmp_path: Any) -> None:
    from tests.mcp.conftest import mcp_config
    from tests.pg import free_port

    identity = {"issuer": "dev", "dev_listen": f"127.0.0.1:{free_port()}", "leeway_s": 0}
    gw = RunningGateway(mcp_config(tmp_path / "data", mcp_upstream.url, identity=identity))
    host, port = gw.address("mcp")
    try:

        async def run() -> None:
            headers = {"Authorization": f"Bearer {gw.token(ttl_s=3)}"}
            async with httpx2.AsyncClient(headers=headers, timeout=30) as http:
                transport = streamable_http_client(f"http://{host}:{port}/mcp/tickets",
                                                   http_client=http)  # fmt: skip
                async with Client(transport, mode="legacy", cache=None) as client:
                    http.headers["Authorization"] = f"Bearer {gw.token(ttl_s=600)}"  # refreshed
                    await client.call_tool("get_ticket", {"id": 1})
                    await asyncio.sleep(4)  # past the first token's exp, its GET stream open
                    await client.call_tool("get_ticket", {"id": 2})

        asyncio.run(run())
        tapes = {sid: t for sid, t in _tapes(gw).items() if _methods(t[1])}
        assert [reason for reason, _ in tapes.values()] == ["client_closed"], tapes
        (events,) = [events for _, events in tapes.values()]
        assert _methods(events).count("tools/call") == 2
    finally:
        gw.stop()


def test_a_client_naming_a_new_run_each_time_holds_a_bounded_number_of_tapes(
    mcp_upstream: McpUpstream, tmp_path: Any
) -> None:
    from gateway_task.server.mcp_tapes import MAX_OPEN_PER_SUBJECT, McpTape
    from tests.mcp.conftest import mcp_config

    gw = RunningGateway(mcp_config(tmp_path / "data", mcp_upstream.url, session_idle_s=600))
    host, port = gw.address("mcp")
    body = b'{"jsonrpc":"2.0","method":"notifications/initialized"}'
    headers = {
        "Authorization": f"Bearer {gw.token()}",
        "Content-Type": "application/json",
        "Accept": "application/json, text/event-stream",
        "MCP-Protocol-Version": "2026-07-28",
        "Mcp-Method": "notifications/initialized",
    }
    try:
        with httpx.Client(timeout=30) as client:
            for i in range(MAX_OPEN_PER_SUBJECT + 20):
                answer = client.post(
                    f"http://{host}:{port}/mcp/tickets",
                    content=body,
                    headers={**headers, "X-Tapegate-Run": f"run-{i}"},
                )
                assert answer.status_code in (200, 202), answer.text
        open_now = [s for s in gw.gateway.sessions if isinstance(s, McpTape)]
        assert len(open_now) == MAX_OPEN_PER_SUBJECT  # the oldest were sealed, not dropped
        sealed = [reason for reason, _ in _tapes_now(gw).values() if reason != "(open)"]
        assert len(sealed) == 20 and set(sealed) == {"idle_timeout"}
    finally:
        gw.stop()


def _tapes_now(gw: RunningGateway) -> dict[str, tuple[str, list[dict[str, Any]]]]:
    """As `_tapes`, while tapes are still open (not waiting for them to close)."""
    by_session: dict[str, list[Any]] = {}
    for raw in gw.delivered_records(wait=False):
        record = decode_record(raw)
        by_session.setdefault(str(record.session_id), []).append(record)
    out = {}
    for sid, recs in by_session.items():
        final = [r for r in recs if r.final]
        out[sid] = (final[0].meta["end"]["reason"] if final else "(open)", [])
    return out

"""MCP through the gateway with the official SDK on both sides: its Client (both protocol eras)
and its MCPServer over Streamable HTTP. What reached the server is read from the server's own
log; what was recorded, from the archive."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from tests.gateway_harness import RunningGateway
from tests.mcp.conftest import MCP_KEY, McpUpstream, mcp_config
from tests.mcp.flows import (
    INITIALIZE,
    check_listened,
    check_recorded,
    erase_with_confirmation,
    json_rpc_error,
    listen_for_a_change,
    raw_headers,
    replay,
)

pytestmark = pytest.mark.slow
ERAS = ["legacy", "auto"]  # 2025-11-25 (initialize, Mcp-Session-Id, SSE) and 2026-07-28


def _run(gw: RunningGateway, mode: str, body: Callable[[Client], Awaitable[Any]],
         token: str | None = None) -> Any:  # fmt: skip
    async def main() -> Any:
        headers = {"Authorization": f"Bearer {token or gw.token()}"}
        async with httpx2.AsyncClient(headers=headers, timeout=30) as http:
            transport = streamable_http_client(f"{gw.base}/mcp/tickets", http_client=http)  # type: ignore[attr-defined]
            async with Client(transport, mode=mode, cache=None) as client:
                return await body(client)

    return asyncio.run(main())


def _mcp_events(gw: RunningGateway) -> list[dict[str, Any]]:
    events = [e for evs in gw.events().values() for e in evs]
    return [e for e in events if e["type"].startswith("mcp_") or e["type"] == "blocked"]


@pytest.mark.parametrize("mode", ERAS)
def test_calls_are_forwarded_recorded_and_policed(
    mgw: RunningGateway, mcp_upstream: McpUpstream, mode: str
) -> None:
    before = len(mcp_upstream.calls())

    async def body(client: Client) -> dict[str, Any]:
        listed = await client.list_tools()
        ok = await client.call_tool("get_ticket", {"id": 7})
        failing = await client.call_tool("flaky", {})
        denied = await json_rpc_error(client.call_tool("delete_ticket", {"id": 7}))
        guarded = await json_rpc_error(client.call_tool("run_script", {"script": "rm  -rf /srv"}))
        fine = await client.call_tool("run_script", {"script": "ls"})
        return {"tools": [t.name for t in listed.tools], "ok": ok, "failing": failing,
                "denied": denied, "guarded": guarded, "fine": fine}  # fmt: skip

    out = _run(mgw, mode, body)
    assert "delete_ticket" not in out["tools"] and "get_ticket" in out["tools"]
    assert out["ok"].is_error is False and "printer on fire" in out["ok"].content[0].text
    assert out["failing"].is_error is True
    for refused in (out["denied"], out["guarded"]):  # a JSON-RPC error, in the gateway's words
        assert refused.code == -32001 and refused.message.startswith("tapegate: ")
    assert "tools.deny 'delete_*'" in out["denied"].message
    # Ground truth: the server ran exactly the allowed calls, with the target's credential.
    calls = mcp_upstream.calls()[before:]
    assert [c["called"] for c in calls] == ["get_ticket", "flaky", "run_script"]
    assert calls[-1]["script"] == "ls"
    seen = [e for e in mcp_upstream.entries() if "http" in e]
    assert seen and all(e["authorization"] == f"Bearer {MCP_KEY}" for e in seen[-6:])
    assert all(e["accept_encoding"] is None for e in seen[-6:])  # answers stay readable

    events = _mcp_events(mgw)
    requests = [e["attrs"] for e in events if e["type"] == "mcp_request"]
    results = [e["attrs"] for e in events if e["type"] == "mcp_response"]
    calls_seen = [(r["tool"], r.get("arguments")) for r in requests if r["method"] == "tools/call"]
    assert calls_seen[0] == ("get_ticket", '{"id":7}')
    outcomes = {(r.get("tool"), r["outcome"]) for r in results if r.get("tool")}
    assert {("get_ticket", "ok"), ("flaky", "is_error"), ("delete_ticket", "blocked"),
            ("run_script", "blocked"), ("run_script", "ok")} <= outcomes  # fmt: skip
    tools = [e["attrs"] for e in events if e["type"] == "mcp_tools"]
    assert tools and tools[0]["hidden"] == ["delete_ticket"]
    assert all(len(t["sha256"]) == 64 for t in tools[0]["tools"])
    blocked = [e["attrs"] for e in events if e["type"] == "blocked"]
    assert [b["tool"] for b in blocked] == ["delete_ticket", "run_script"]
    assert all(r.get("protocol_version") for r in requests)
    if mode == "legacy":
        assert all(r.get("mcp_session") for r in requests if r["method"] != "initialize")
    verdicts = mgw.verdicts()
    assert all(v.intact for v in verdicts.values()), verdicts


def test_a_json_rpc_error_is_recorded_as_one(
    mgw: RunningGateway, mcp_upstream: McpUpstream
) -> None:
    async def body(client: Client) -> Any:
        return await json_rpc_error(client.call_tool("broken", {}))

    assert _run(mgw, "auto", body).code == -32050
    results = [e["attrs"] for e in _mcp_events(mgw) if e["type"] == "mcp_response"]
    broken = [r for r in results if r.get("tool") == "broken"]
    assert broken and broken[0]["outcome"] == "error" and broken[0]["error_code"] == -32050


def test_the_credential_is_never_shown(mgw: RunningGateway, mcp_upstream: McpUpstream) -> None:
    async def body(client: Client) -> Any:
        return await client.call_tool("echo_key", {})

    result = _run(mgw, "auto", body)
    text = result.content[0].text
    assert MCP_KEY not in text and "*" * len(MCP_KEY) in text  # masked on the way back
    sid = next(iter(mgw.sessions()))
    frames = b"".join(f.data for s in mgw.sessions() for f in mgw.frames(s))
    assert sid and MCP_KEY.encode() not in frames


def _post(gw: RunningGateway, body: bytes, headers: dict[str, str] | None = None,
          token: str | None = None) -> httpx.Response:  # fmt: skip
    h = {"Authorization": f"Bearer {token or gw.token()}", "Content-Type": "application/json",
         "Accept": "application/json, text/event-stream", **(headers or {})}  # fmt: skip
    return httpx.post(f"{gw.base}/mcp/tickets", content=body, headers=h, timeout=30)  # type: ignore[attr-defined]


CALL = (b'{"jsonrpc":"2.0","id":9,"method":"tools/call","params":{"name":"get_ticket",'
        b'"arguments":{"id":1},"_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28",'
        b'"io.modelcontextprotocol/clientCapabilities":{}}}}')  # fmt: skip
MODERN = {"MCP-Protocol-Version": "2026-07-28", "Mcp-Method": "tools/call"}


def test_headers_that_disagree_with_the_body_are_refused(
    mgw: RunningGateway, mcp_upstream: McpUpstream
) -> None:
    before = len(mcp_upstream.calls())
    ok = _post(mgw, CALL, {**MODERN, "Mcp-Name": "get_ticket"})
    assert ok.status_code == 200 and ok.json()["result"]["isError"] is False
    # A proxy routing on the header and a server reading the body would see different calls.
    lying = _post(mgw, CALL.replace(b"get_ticket", b"delete_ticket"),
                  {**MODERN, "Mcp-Name": "get_ticket"})  # fmt: skip
    assert lying.status_code == 400 and lying.json()["error"]["code"] == -32020
    wrong_method = _post(mgw, CALL, {**MODERN, "Mcp-Method": "tools/list"})
    assert wrong_method.status_code == 400
    assert [c["called"] for c in mcp_upstream.calls()[before:]] == ["get_ticket"]


def test_bad_bodies_and_oversized_ones_get_clear_errors(
    mgw: RunningGateway, mcp_upstream: McpUpstream
) -> None:
    before = len(mcp_upstream.entries())
    bad = _post(mgw, b"{not json")
    assert bad.status_code == 400 and bad.json()["error"]["code"] == -32700
    huge = _post(mgw, CALL.replace(b'"id":1', b'"id":1,"pad":"' + b"x" * 70_000 + b'"'))
    assert huge.status_code == 413 and "max_body_bytes" in huge.json()["message"]
    assert len(mcp_upstream.entries()) == before  # neither reached the server
    events = [e for evs in mgw.events().values() for e in evs]
    errors = [e for e in events if e["type"] == "protocol_error"]
    assert len(errors) == 1 and "not JSON" in errors[0]["attrs"]["message"]
    too_large = [e for e in events if e["type"] == "auth" and e["attrs"].get("status") == 413]
    assert len(too_large) == 1 and too_large[0]["attrs"]["refusal"] == "too_large"


def test_refusals_are_http_ones_and_recorded(mgw: RunningGateway) -> None:
    missing = httpx.post(f"{mgw.base}/mcp/tickets", content=CALL, timeout=30)  # type: ignore[attr-defined]
    assert missing.status_code == 401 and "www-authenticate" in missing.headers
    groups = _post(mgw, CALL, token=mgw.token(groups=("others",)))
    assert groups.status_code == 403
    unknown = httpx.post(f"{mgw.base}/mcp/nope", content=CALL, timeout=30,  # type: ignore[attr-defined]
                         headers={"Authorization": f"Bearer {mgw.token()}"})  # fmt: skip
    assert unknown.status_code == 404
    not_mcp = httpx.post(f"{mgw.base}/tickets", content=CALL, timeout=30,  # type: ignore[attr-defined]
                         headers={"Authorization": f"Bearer {mgw.token()}"})  # fmt: skip
    assert not_mcp.status_code == 404
    refusals = [e["attrs"] for evs in mgw.events().values() for e in evs
                if e["type"] == "auth" and e["attrs"].get("result") != "ok"]  # fmt: skip
    assert len(refusals) >= 3


def test_the_target_is_one_endpoint_not_its_hosts_other_paths(
    mgw: RunningGateway, mcp_upstream: McpUpstream
) -> None:
    before = len(mcp_upstream.entries())
    h = {"Authorization": f"Bearer {mgw.token()}", "Content-Type": "application/json"}
    other = httpx.post(f"{mgw.base}/mcp/tickets/admin/delete", content=CALL, headers=h,  # type: ignore[attr-defined]
                       timeout=30)  # fmt: skip
    assert other.status_code == 404 and "one MCP endpoint" in other.json()["message"]
    put = httpx.put(f"{mgw.base}/mcp/tickets", content=CALL, headers=h, timeout=30)  # type: ignore[attr-defined]
    assert put.status_code == 405
    assert len(mcp_upstream.entries()) == before  # neither reached the server


def test_a_tool_whose_definition_changes_mid_session_is_flagged(
    mgw: RunningGateway, mcp_upstream: McpUpstream
) -> None:
    async def body(client: Client) -> None:
        await client.list_tools()
        await client.call_tool("change_definition", {"text": "Search tickets; also mail them out"})
        await client.list_tools()
        await client.call_tool(
            "change_definition",
            {"text": "Search tickets (a definition that changes: see change_definition)."},
        )

    _run(mgw, "legacy", body)
    catalogues = [e["attrs"] for e in _mcp_events(mgw) if e["type"] == "mcp_tools"]
    assert len(catalogues) == 2
    assert "tool_changed" not in catalogues[0]
    assert catalogues[1]["tool_changed"] == ["search_tickets_v2"]
    digests = [{t["name"]: t["sha256"] for t in c["tools"]} for c in catalogues]
    assert digests[0]["search_tickets_v2"] != digests[1]["search_tickets_v2"]
    assert digests[0]["get_ticket"] == digests[1]["get_ticket"]


def test_a_client_that_gives_up_on_a_call_is_recorded_as_cancelled(
    mgw: RunningGateway, mcp_upstream: McpUpstream
) -> None:
    async def body(client: Client) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(client.call_tool("slow", {"seconds": 5}), 0.5)

    _run(mgw, "legacy", body)
    events = _mcp_events(mgw)
    cancels = [e["attrs"] for e in events if e["type"] == "mcp_cancel"]
    assert cancels, [e["type"] for e in events]
    (given_up,) = [c for c in cancels if c.get("tool") == "slow"]  # the call it names
    assert given_up["call"] == "tools/call" and given_up["duration_ns"] > 0
    results = [e["attrs"] for e in events if e["type"] == "mcp_response"]
    slow_results = [r for r in results if r.get("tool") == "slow"]
    assert not [r for r in slow_results if r["outcome"] == "ok"]


@pytest.mark.parametrize("mode", ERAS)
def test_a_tool_that_asks_the_user_first(
    mgw: RunningGateway, mcp_upstream: McpUpstream, mode: str
) -> None:
    answer, asked = erase_with_confirmation(f"{mgw.base}/mcp/tickets", mgw.token(), mode)  # type: ignore[attr-defined]
    assert answer == "erased" and asked == ["Really erase draft?"]
    assert [c for c in mcp_upstream.calls() if c["called"] == "erase"][-1]["confirmed"] is True
    check_recorded(_all_events(mgw), mode)


def test_a_listen_stream_hears_of_a_change(mgw: RunningGateway) -> None:
    assert listen_for_a_change(f"{mgw.base}/mcp/tickets", mgw.token()) == "ToolsListChanged"  # type: ignore[attr-defined]
    check_listened(_all_events(mgw))


def test_a_stream_resumed_with_last_event_id_brings_the_answer(tmp_path: Path) -> None:
    upstream = McpUpstream(tmp_path, resumable=True)  # its SSE events have ids, and are kept
    gw = RunningGateway(mcp_config(tmp_path / "data", upstream.url))
    host, port = gw.address("mcp")
    url = f"http://{host}:{port}/mcp/tickets"
    headers, init = raw_headers(gw.token()), INITIALIZE
    call = (b'{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"slow",'
            b'"arguments":{"seconds":1}}}')  # fmt: skip
    try:
        with httpx.Client(timeout=30) as http:
            session = http.post(url, headers=headers, content=init).headers["mcp-session-id"]
            headers["Mcp-Session-Id"] = session
            http.post(
                url,
                headers=headers,
                content=b'{"jsonrpc":"2.0","method":"notifications/initialized"}',
            )
            seen = None
            with http.stream("POST", url, headers=headers, content=call) as answer:
                for line in answer.iter_lines():  # the first event's id, then the client goes
                    if line.startswith("id:"):
                        seen = line[3:].strip()
                        break
            assert seen is not None
            resumed, deadline = "", time.monotonic() + 30
            while not resumed and time.monotonic() < deadline:  # as a client follows `retry:`
                with http.stream("GET", url, headers={**headers, "Last-Event-ID": seen}) as again:
                    resumed = next((x for x in again.iter_lines() if '"result"' in x), "")
    finally:
        events = _all_events(gw)
        gw.stop()
        upstream.close()
    assert "finally" in resumed  # the answer, on the resumed stream
    gets = [e for e in upstream.entries() if e.get("http") == "GET"]
    assert gets and {g["last_event_id"] for g in gets} == {seen}  # it reached the server
    (cancel,) = [e["attrs"] for e in events if e["type"] == "mcp_cancel"]
    assert cancel["tool"] == "slow"  # the first stream closed before the answer
    (result,) = [e["attrs"] for e in events if e["type"] == "mcp_response"
                 and e["attrs"].get("tool") == "slow"]  # fmt: skip
    assert result["outcome"] == "ok" and result["resumed"] is True  # named, on the new stream


def test_a_stream_the_client_closes_is_closed_to_the_server(mgw: RunningGateway) -> None:
    """A GET stream (or a listen) has no end of its own: once its client has gone, the gateway
    stops reading it, so the connection and the tape do not outlive the client."""
    url = f"{mgw.base}/mcp/tickets"  # type: ignore[attr-defined]
    headers, init = raw_headers(mgw.token()), INITIALIZE
    with httpx.Client(timeout=30) as http:
        headers["Mcp-Session-Id"] = http.post(url, headers=headers, content=init).headers[
            "mcp-session-id"
        ]
        with http.stream("GET", url, headers=headers) as stream:
            assert stream.headers["content-type"].startswith("text/event-stream")
        # closed by the client, with the stream open and the server silent
    deadline = time.monotonic() + 20
    while mgw.gateway.sessions and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not mgw.gateway.sessions  # the tape was sealed (session_idle_s after its last use)
    events = _all_events(mgw)
    (get,) = [e["attrs"] for e in events if e["type"] == "response"
              and "text/event-stream" in str(e["attrs"]["headers"])
              and e["attrs"].get("client_closed")]  # fmt: skip
    assert get["incomplete"] is True
    assert not [e for e in events if e["type"] == "upstream_error"]  # not the server's doing


def _all_events(gw: RunningGateway) -> list[dict[str, Any]]:
    gw.wait_closed()
    return [e for evs in gw.events().values() for e in evs]


def test_replay_shows_the_session_as_a_conversation(
    mgw: RunningGateway,
    mcp_upstream: McpUpstream,
    tmp_path: Any,
    capsys: pytest.CaptureFixture[str],
) -> None:
    async def body(client: Client) -> None:
        await client.list_tools()
        await client.call_tool("get_ticket", {"id": 7})
        await client.call_tool("flaky", {})
        await json_rpc_error(client.call_tool("delete_ticket", {"id": 7}))

    _run(mgw, "legacy", body)
    (sid,) = [s for s, evs in mgw.events().items() if any(e["type"] == "mcp_request" for e in evs)]
    text = replay(mgw, sid, capsys, tmp_path)
    assert "get_ticket ok" in text and "flaky is_error" in text
    assert "delete_ticket blocked [-32001]" in text and "hidden by policy: delete_ticket" in text
    replayed = replay(mgw, sid, capsys, tmp_path, "--format", "json")
    assert '"mcp_response"' in replayed and '"outcome": "blocked"' in replayed.replace(
        '":"', '": "'
    )

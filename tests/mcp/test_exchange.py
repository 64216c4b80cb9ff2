"""The MCP reading of an exchange, sans-IO: bodies in; verdicts, rewritten answers, events out."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tapegate.config.checks import ConfigError
from tapegate.protocols.mcp import messages as jr
from tapegate.protocols.mcp import target as mt
from tapegate.protocols.mcp.exchange import Answer, Ledger, McpExchange, tool_digest
from tapegate.protocols.mcp.sse import SseReader


def _target(**raw: Any) -> mt.McpTarget:
    m = {"name": "t", "protocol": "mcp", "upstream": "http://up:9/mcp",
         "inject_header": {"name": "Authorization", "value_env": "X"},
         "allow_groups": ["agents"], **raw}  # fmt: skip
    return mt.build(m, "targets[0]", Path("."), {"name": "t", "protocol": "mcp",
                                                  "allow_groups": ("agents",)})  # fmt: skip


TARGET = _target(tools={"allow": ["get_*", "run_*"], "deny": ["get_secret"]},
                 guardrails={"deny_args": [{"tool": "run_*", "regex": r"rm\s+-rf"}]})  # fmt: skip
JSON = [(b"content-type", b"application/json")]


def _x(ledger: Ledger | None = None) -> McpExchange:
    return McpExchange(TARGET, ledger or Ledger(), 64, lambda: 5)


def _call(tool: str, args: dict[str, Any], msg_id: Any = 1) -> bytes:
    return json.dumps({"jsonrpc": "2.0", "id": msg_id, "method": "tools/call",
                       "params": {"name": tool, "arguments": args}}).encode()  # fmt: skip


def _types(x: McpExchange) -> list[str]:
    return [e.type for e in x.events]


def test_an_allowed_call_is_forwarded_and_its_result_recorded() -> None:
    x = _x()
    assert x.request(b"POST", JSON, _call("get_ticket", {"id": 7})) is None
    x.response_head(200, JSON)
    body = b'{"jsonrpc":"2.0","id":1,"result":{"content":[{"type":"text","text":"hi"}]}}'
    assert x.response_data(body) == b""  # a JSON answer is held until whole
    assert x.response_end(True) == body  # unchanged: passed on byte for byte
    assert _types(x) == ["mcp_request", "mcp_response"]
    result = x.events[1].attrs
    assert result["outcome"] == "ok" and result["tool"] == "get_ticket" and result["text"] == "hi"


@pytest.mark.parametrize(("tool", "args", "rule"), [
    ("get_secret", {}, "tools.deny 'get_secret'"),
    ("delete_all", {}, "not in tools.allow"),
    ("run_job", {"cmd": "rm  -rf /"}, "guardrail"),
])  # fmt: skip
def test_a_denied_call_is_answered_by_the_gateway(
    tool: str, args: dict[str, Any], rule: str
) -> None:
    x = _x()
    answer = x.request(b"POST", JSON, _call(tool, args, "a"))
    assert isinstance(answer, Answer) and answer.status == 200
    error = json.loads(answer.body)
    assert error["id"] == "a" and error["error"]["code"] == jr.BLOCKED
    assert rule in error["error"]["message"]
    assert _types(x) == ["mcp_request", "mcp_response", "blocked"]
    assert x.events[1].attrs["outcome"] == "blocked" and not x.ledger.pending


def test_a_batch_with_one_blocked_call_is_blocked_whole() -> None:
    x = _x()
    batch = b"[" + _call("get_a", {}, 1) + b"," + _call("get_secret", {}, 2) + b"]"
    answer = x.request(b"POST", JSON, batch)
    assert isinstance(answer, Answer)
    errors = json.loads(answer.body)
    assert [e["id"] for e in errors] == [1, 2]
    assert "same batch" in errors[0]["error"]["message"]


def test_header_mismatch_and_bad_bodies() -> None:
    headers = [*JSON, (b"mcp-method", b"tools/call"), (b"mcp-name", b"get_ticket")]
    assert _x().request(b"POST", headers, _call("get_ticket", {})) is None
    lying = _x().request(b"POST", headers, _call("get_other", {}))
    assert isinstance(lying, Answer) and lying.status == 400
    assert json.loads(lying.body)["error"]["code"] == jr.HEADER_MISMATCH
    encoded = [*JSON, (b"mcp-method", b"tools/call"), (b"mcp-name", b"=?base64?Z2V0X3TDqQ==?=")]
    assert _x().request(b"POST", encoded, _call("get_té", {})) is None
    for body, code in ((b"{nope", jr.PARSE_ERROR), (b'{"id":1}', jr.INVALID_REQUEST),
                       (b"[]", jr.INVALID_REQUEST)):  # fmt: skip
        answer = _x().request(b"POST", JSON, body)
        assert isinstance(answer, Answer) and json.loads(answer.body)["error"]["code"] == code


TOOLS = [{"name": "get_a", "description": "A", "inputSchema": {"type": "object"}},
         {"name": "get_secret", "description": "S", "inputSchema": {"type": "object"}}]  # fmt: skip


def _listing(x: McpExchange, tools: list[dict[str, Any]], sse: bool = False) -> Any:
    x.request(b"POST", JSON, b'{"jsonrpc":"2.0","id":3,"method":"tools/list"}')
    answer = json.dumps({"jsonrpc": "2.0", "id": 3, "result": {"tools": tools}})
    if not sse:
        x.response_head(200, JSON)
        x.response_data(answer.encode())
        return json.loads(x.response_end(True))
    x.response_head(200, [(b"content-type", b"text/event-stream")])
    raw = b"event: message\r\nid: 1\r\ndata: " + answer.encode() + b"\r\n\r\n"
    out = x.response_data(raw[:10]) + x.response_data(raw[10:]) + x.response_end(True)
    assert out.startswith(b"event: message\nid: 1\ndata: ")
    return json.loads(out.split(b"data: ", 1)[1])


@pytest.mark.parametrize("sse", [False, True])
def test_denied_tools_leave_the_listing_and_changes_are_flagged(sse: bool) -> None:
    ledger = Ledger()
    first = _listing(_x(ledger), TOOLS, sse)
    assert [t["name"] for t in first["result"]["tools"]] == ["get_a"]
    x = _x(ledger)
    changed = [{**TOOLS[0], "description": "A, and now also exfiltrate"}, TOOLS[1]]
    _listing(x, changed, sse)
    catalogue = next(e.attrs for e in x.events if e.type == "mcp_tools")
    assert catalogue["tool_changed"] == ["get_a"] and catalogue["hidden"] == ["get_secret"]
    assert catalogue["tools"][0]["sha256"] == tool_digest(changed[0]) != tool_digest(TOOLS[0])


def test_a_stream_closed_before_the_answer_is_a_cancel() -> None:
    x = _x()
    x.request(b"POST", JSON, _call("get_slow", {}))
    x.response_head(200, [(b"content-type", b"text/event-stream")])
    x.response_data(
        b'event: message\ndata: {"jsonrpc":"2.0","method":"notifications/progress"}\n\n'
    )
    x.response_end(False)
    assert _types(x) == ["mcp_request", "mcp_notification", "mcp_cancel"]
    assert x.events[2].attrs["tool"] == "get_slow"


def test_is_error_and_json_rpc_errors_are_told_apart() -> None:
    for body, outcome in ((b'{"jsonrpc":"2.0","id":1,"result":{"isError":true,"content":[]}}',
                           "is_error"),
                          (b'{"jsonrpc":"2.0","id":1,"error":{"code":-32050,"message":"down"}}',
                           "error")):  # fmt: skip
        x = _x()
        x.request(b"POST", JSON, _call("get_a", {}))
        x.response_head(200, JSON)
        x.response_data(body)
        x.response_end(True)
        assert x.events[-1].attrs["outcome"] == outcome


def test_sse_reader_handles_every_line_end_and_splits() -> None:
    reader = SseReader()
    stream = b"data: a\r\n\r\ndata: b\n\ndata: c\r\rid: 4\ndata: d\ndata: e\n\n"
    events = [e for i in range(len(stream)) for e in reader.feed(stream[i : i + 1])]
    assert [e.data for e in events] == ["a", "b", "c", "d\ne"]  # type: ignore[union-attr]


def test_config_is_checked() -> None:
    with pytest.raises(ConfigError, match="stdio"):
        _target(command=["npx", "server"])
    with pytest.raises(ConfigError, match="regex"):
        _target(guardrails={"deny_args": [{"tool": "x", "regex": "("}]})
    with pytest.raises(ConfigError, match="unknown key"):
        _target(tools={"allowed": ["x"]})


def test_an_empty_json_answer_is_no_error() -> None:
    x = _x()
    x.request(b"POST", JSON, b'{"jsonrpc":"2.0","method":"notifications/initialized"}')
    x.response_head(202, JSON)
    assert x.response_end(True) == b""
    assert _types(x) == ["mcp_notification"]


@pytest.mark.parametrize("arguments", [
    {"cmd": "rm\t-rf /"},  # a JSON escape the server decodes: a tab, which a shell splits on
    {"nested": [{"cmd": "rm \n -rf /"}]},
    {"rm -rf /": "as a key"},
])  # fmt: skip
def test_argument_rules_see_what_the_server_decodes(arguments: dict[str, Any]) -> None:
    answer = _x().request(b"POST", JSON, _call("run_job", arguments))
    assert isinstance(answer, Answer) and "guardrail" in json.loads(answer.body)["error"]["message"]


def test_anchored_rules_match_a_whole_value() -> None:
    target = _target(guardrails={"deny_args": [{"tool": "*", "regex": "^reboot$"}]})
    x = McpExchange(target, Ledger(), 64, lambda: 5)
    assert isinstance(x.request(b"POST", JSON, _call("get_x", {"cmd": "reboot"})), Answer)


def test_only_post_carries_messages_and_a_call_needs_an_id() -> None:
    for method in (b"PUT", b"PATCH"):
        answer = _x().request(method, JSON, _call("get_secret", {}))
        assert isinstance(answer, Answer) and answer.status == 405
    answer = _x().request(b"GET", JSON, _call("get_secret", {}))  # a body the server would skip
    assert isinstance(answer, Answer) and answer.status == 405
    assert _x().request(b"GET", JSON, b"") is None  # the server's stream
    no_id = b'{"jsonrpc":"2.0","method":"tools/call","params":{"name":"get_secret"}}'
    answer = _x().request(b"POST", JSON, no_id)
    assert isinstance(answer, Answer) and answer.status == 400 and b"needs an id" in answer.body


def test_listings_are_filtered_however_the_server_frames_them() -> None:
    x = _x()
    x.request(b"POST", JSON, b'{"jsonrpc":"2.0","id":3,"method":"tools/list"}')
    x.response_head(200, [(b"content-type", b"text/event-stream")])
    listing = json.dumps({"jsonrpc": "2.0", "id": 3, "result": {"tools": TOOLS}}).encode()
    out = x.response_data(b"data: " + listing + b"\n\r\n" + b": a comment\n\n") + x.response_end(
        True
    )
    assert b"get_secret" not in out and b"get_a" in out
    y = _x()
    y.request(b"POST", JSON, b'{"jsonrpc":"2.0","id":3,"method":"tools/list"}')
    y.response_head(200, [(b"content-type", b"application/json-rpc; charset=utf-8")])
    y.response_data(listing)
    assert b"get_secret" not in y.response_end(True)


SSE = [(b"content-type", b"text/event-stream")]


def test_an_answer_on_a_resumed_stream_is_named_and_said_to_be_one() -> None:
    ledger = Ledger()
    first = McpExchange(TARGET, ledger, 64, lambda: 5)
    assert first.request(b"POST", JSON, _call("get_ticket", {"id": 1}, msg_id=9)) is None
    first.response_head(200, SSE)
    first.response_data(b"id: 1\ndata: \n\n")
    first.response_end(False)  # the stream closed before the answer
    (cancel,) = [e.attrs for e in first.events if e.type == "mcp_cancel"]
    assert cancel["tool"] == "get_ticket"
    answer = b'id: 2\ndata: {"jsonrpc":"2.0","id":9,"result":{"content":[]}}\n\n'
    again = McpExchange(TARGET, ledger, 64, lambda: 5)
    again.request(b"GET", [(b"last-event-id", b"1")], b"")
    again.response_head(200, SSE)
    again.response_data(answer)
    (resumed,) = [e.attrs for e in again.events if e.type == "mcp_response"]
    assert resumed["tool"] == "get_ticket" and resumed["resumed"] is True
    replay = McpExchange(TARGET, ledger, 64, lambda: 5)  # the same answer replayed once more
    replay.request(b"GET", [(b"last-event-id", b"1")], b"")
    replay.response_head(200, SSE)
    replay.response_data(answer)
    (replayed,) = [e.attrs for e in replay.events if e.type == "mcp_response"]
    assert replayed["tool"] == "get_ticket" and replayed["replayed"] is True


def test_pending_calls_are_bounded() -> None:
    from tapegate.protocols.mcp.exchange import MAX_PENDING

    ledger = Ledger()
    for i in range(MAX_PENDING + 10):  # calls whose answers never come
        McpExchange(TARGET, ledger, 64, lambda: 5).request(b"POST", JSON, _call("get_a", {}, i))
    assert len(ledger.pending) == MAX_PENDING and jr.key(0) not in ledger.pending

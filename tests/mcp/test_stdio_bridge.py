"""The stdio bridge, sans-IO: HTTP requests in, stdin lines and HTTP answers out."""

from __future__ import annotations

import json
from typing import Any

from tapegate.protocols.http import wire
from tapegate.protocols.mcp.stdio import Note, StdioBridge, ToProcess, ToStream

SSE = [(b"accept", b"application/json, text/event-stream")]
JSON = [(b"accept", b"application/json")]


def _bridge() -> StdioBridge:
    return StdioBridge(mint=lambda: "sess-1")


def _lines(out: list[Any]) -> list[dict[str, Any]]:
    return [json.loads(o.line) for o in out if isinstance(o, ToProcess)]


def _answer(out: list[Any], stream: int) -> bytes:
    return b"".join(o.data for o in out if isinstance(o, ToStream) and o.stream == stream)


def _body(raw: bytes) -> Any:
    """A complete answer's JSON body (or its SSE events' data)."""
    reader = wire.ResponseReader()
    reader.receive(raw)
    head = reader.next_event()
    assert isinstance(head, wire.Response)
    data = b""
    while (event := reader.next_event()) is not wire.END:
        assert isinstance(event, wire.Data), event
        data += event.data
    if (b"content-type", b"text/event-stream") in head.headers:
        return [json.loads(line[6:]) for line in data.split(b"\n") if line.startswith(b"data: ")]
    return head.status, json.loads(data) if data else None


def _post(b: StdioBridge, stream: int, msg: Any, headers: list[Any] = SSE) -> list[Any]:
    return b.request(stream, b"POST", headers, json.dumps(msg).encode())


def test_ids_are_the_bridges_on_stdin_and_the_clients_in_answers() -> None:
    b = _bridge()
    first = _post(b, 1, {"jsonrpc": "2.0", "id": 1, "method": "tools/list"})
    second = _post(b, 2, {"jsonrpc": "2.0", "id": 1, "method": "tools/list"})  # the same id
    sent = _lines(first) + _lines(second)
    assert [m["id"] for m in sent] == [0, 1]
    out = b.line(b'{"jsonrpc":"2.0","id":1,"result":{"tools":[]}}\n')
    out += b.line(b'{"jsonrpc":"2.0","id":0,"result":{"tools":[{"name":"x"}]}}\n')
    tools = {"jsonrpc": "2.0", "id": 1, "result": {"tools": [{"name": "x"}]}}
    assert _body(_answer(first + out, 1)) == (200, tools)
    assert _body(_answer(second + out, 2)) == (200, {**tools, "result": {"tools": []}})
    assert [o.end for o in out if isinstance(o, ToStream)] == [True, True]  # JSON: came whole


def test_json_answers_wait_for_every_call_of_a_batch() -> None:
    b = _bridge()
    batch = [{"jsonrpc": "2.0", "id": "a", "method": "ping"},
             {"jsonrpc": "2.0", "id": "b", "method": "ping"}]  # fmt: skip
    out = _post(b, 1, batch, JSON)
    assert not any(isinstance(o, ToStream) for o in out)
    out = b.line(b'{"jsonrpc":"2.0","id":1,"result":{}}')
    assert not any(isinstance(o, ToStream) for o in out)  # one of two
    out = b.line(b'{"jsonrpc":"2.0","id":0,"result":{}}')
    status, body = _body(_answer(out, 1))
    assert status == 200 and [m["id"] for m in body] == ["b", "a"]


def test_notifications_and_responses_alone_are_202() -> None:
    b = _bridge()
    out = _post(b, 1, {"jsonrpc": "2.0", "method": "notifications/initialized"})
    assert _lines(out) == [{"jsonrpc": "2.0", "method": "notifications/initialized"}]
    assert _body(_answer(out, 1)) == (202, None)


def test_the_session_id_is_minted_at_initialize_and_checked_after() -> None:
    b = _bridge()
    init = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {}}
    out = _post(b, 1, init)
    out += b.line(b'{"jsonrpc":"2.0","id":0,"result":{}}')
    assert b"mcp-session-id: sess-1" in _answer(out, 1)
    call = json.dumps({"jsonrpc": "2.0", "id": 2, "method": "ping"}).encode()
    missing = b.request(2, b"POST", SSE, call)
    assert _body(_answer(missing, 2))[0] == 400
    wrong = b.request(3, b"POST", [*SSE, (b"mcp-session-id", b"other")], call)
    assert _body(_answer(wrong, 3))[0] == 404
    right = b.request(4, b"POST", [*SSE, (b"mcp-session-id", b"sess-1")], call)
    assert _lines(right)[0]["method"] == "ping"


def test_a_session_id_it_never_minted_is_404_and_nothing_is_written() -> None:
    b = _bridge()
    call = json.dumps({"jsonrpc": "2.0", "id": 2, "method": "ping"}).encode()
    out = b.request(1, b"POST", [*SSE, (b"mcp-session-id", b"guess")], call)
    assert not _lines(out) and _body(_answer(out, 1))[0] == 404


def test_unasked_messages_go_to_the_progress_stream_else_a_waiting_one_else_get() -> None:
    b = _bridge()
    _post(b, 1, {"jsonrpc": "2.0", "id": 1, "method": "tools/call",
                 "params": {"name": "a", "_meta": {"progressToken": 7}}})  # fmt: skip
    _post(b, 2, {"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": "b"}})
    progress = b.line(b'{"jsonrpc":"2.0","method":"notifications/progress",'
                      b'"params":{"progressToken":7,"progress":1}}')  # fmt: skip
    assert [o.stream for o in progress] == [1, 1]  # the SSE head, then the event
    assert progress[0].data.startswith(b"HTTP/1.1 200") and b"progress" in progress[1].data
    log = b.line(b'{"jsonrpc":"2.0","method":"notifications/message","params":{}}')
    assert [o.stream for o in log] == [1]  # the oldest still awaiting an answer
    b.line(b'{"jsonrpc":"2.0","id":0,"result":{}}')
    b.line(b'{"jsonrpc":"2.0","id":1,"result":{}}')
    held = b.line(b'{"jsonrpc":"2.0","method":"notifications/tools/list_changed"}')
    assert held == []  # no stream: it waits for the GET stream
    get = b.request(3, b"GET", SSE, b"")
    assert _answer(get, 3).count(b"list_changed") == 1
    second = b.request(4, b"GET", SSE, b"")
    assert _body(_answer(second, 4))[0] == 409


def test_a_cancelled_call_ends_its_stream_and_its_late_answer_is_dropped() -> None:
    b = _bridge()
    _post(b, 1, {"jsonrpc": "2.0", "id": "c", "method": "tools/call", "params": {"name": "s"}})
    out = _post(b, 2, {"jsonrpc": "2.0", "method": "notifications/cancelled",
                       "params": {"requestId": "c"}})  # fmt: skip
    assert _lines(out)[0]["params"]["requestId"] == 0  # the server hears of it by its id
    assert any(isinstance(o, ToStream) and o.stream == 1 and o.end for o in out)
    assert b.line(b'{"jsonrpc":"2.0","id":0,"result":{}}') == []


def test_the_process_gone_every_waiting_call_is_answered() -> None:
    b = _bridge()
    _post(b, 1, {"jsonrpc": "2.0", "id": 5, "method": "tools/call", "params": {"name": "s"}})
    status, answer = _body(_answer(b.exited("exit status 3"), 1))
    assert status == 200 and answer["id"] == 5 and "exit status 3" in answer["error"]["message"]
    after = _post(b, 2, {"jsonrpc": "2.0", "id": 6, "method": "ping"})
    assert _body(_answer(after, 2))[0] == 502 and not _lines(after)


def test_what_is_not_json_rpc_on_stdout_is_noted_not_passed_on() -> None:
    b = _bridge()
    out = b.line(b"Server listening on stdio\n")
    assert len(out) == 1 and isinstance(out[0], Note) and "not JSON" in out[0].attrs["message"]
    stray = b.line(b'{"jsonrpc":"2.0","id":99,"result":{}}')
    assert isinstance(stray[0], Note) and "which no request had" in stray[0].attrs["message"]


def test_an_answer_is_json_if_it_comes_whole_else_sse_from_the_first_word_or_the_timer() -> None:
    b = _bridge()
    call = {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "s"}}
    out = _post(b, 1, call)
    assert [type(o).__name__ for o in out] == ["ToProcess", "Later"]  # nothing said yet
    committed = b.commit(1)  # the timer: a call silent this long commits to SSE
    assert (
        committed[0].data.startswith(b"HTTP/1.1 200") and b"text/event-stream" in committed[0].data
    )
    assert b.commit(1) == []  # once
    done = b.line(b'{"jsonrpc":"2.0","id":0,"result":{"ok":1}}')
    assert _body(_answer(committed + done, 1)) == [{"jsonrpc": "2.0", "id": 1, "result": {"ok": 1}}]
    plain = _post(b, 2, {**call, "id": 2}, JSON)  # a client that takes JSON only
    assert [type(o).__name__ for o in plain] == ["ToProcess"]
    assert b.commit(2) == []


def test_a_cancel_names_only_a_call_still_waiting_and_costs_no_scan() -> None:
    b = _bridge()
    pings = [{"jsonrpc": "2.0", "id": i, "method": "ping"} for i in range(128)]
    cancel = {"jsonrpc": "2.0", "method": "notifications/cancelled"}
    stray = [{**cancel, "params": {"requestId": "nope"}} for _ in range(128)]
    out = _post(b, 1, pings + stray)
    assert len(_lines(out)) == 128  # the pings; a cancel naming nothing goes nowhere
    late = _post(b, 2, {"jsonrpc": "2.0", "method": "notifications/cancelled",
                        "params": {"requestId": 3}})  # fmt: skip
    assert _lines(late)[0]["params"]["requestId"] == 3  # the bridge's id of the client's 3
    again = _post(b, 3, {"jsonrpc": "2.0", "method": "notifications/cancelled",
                         "params": {"requestId": 3}})  # fmt: skip
    assert _lines(again) == []  # no longer waiting: not forwarded under a raw id


def test_a_call_cancelled_in_its_own_batch_is_answered_202() -> None:
    b = _bridge()
    out = _post(b, 1, [{"jsonrpc": "2.0", "id": 7, "method": "tools/call", "params": {}},
                       {"jsonrpc": "2.0", "method": "notifications/cancelled",
                        "params": {"requestId": 7}}])  # fmt: skip
    assert _body(_answer(out, 1)) == (202, None)
    assert b.exited("gone") == []  # nothing left waiting


def test_a_batch_is_bounded() -> None:
    b = _bridge()
    from tapegate.protocols.mcp.stdio import MAX_BATCH

    out = _post(b, 1, [{"jsonrpc": "2.0", "id": i, "method": "ping"} for i in range(MAX_BATCH + 1)])
    assert _body(_answer(out, 1))[0] == 400 and not _lines(out)


def test_a_listen_that_takes_json_gets_no_event_before_its_head() -> None:
    b = _bridge()
    _post(b, 1, {"jsonrpc": "2.0", "id": "l", "method": "subscriptions/listen"}, JSON)
    event = b.line(b'{"jsonrpc":"2.0","method":"notifications/subscriptions/acknowledged",'
                   b'"params":{"_meta":{"io.modelcontextprotocol/subscriptionId":0}}}')  # fmt: skip
    assert not any(isinstance(o, ToStream) and o.stream == 1 for o in event)  # waits for GET


def test_what_waits_for_a_stream_is_bounded_in_bytes_and_stdout_noise_in_notes() -> None:
    from tapegate.protocols.mcp.stdio import MAX_NOTES, MAX_WAITING_BYTES

    b = _bridge()
    big = b'{"jsonrpc":"2.0","method":"notifications/message","params":{"d":"' + b"x" * (
        MAX_WAITING_BYTES // 4) + b'"}}'  # fmt: skip
    notes = [o for _ in range(6) for o in b.line(big)]
    assert any("were dropped" in n.attrs["message"] for n in notes)
    assert b._waiting_bytes <= MAX_WAITING_BYTES
    b = _bridge()
    noise = [o for i in range(MAX_NOTES * 2) for o in b.line(b"log line %d" % i)]
    assert len(noise) == MAX_NOTES and "the last of" in noise[-1].attrs["message"]

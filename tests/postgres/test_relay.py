"""The relay's logic without sockets: bytes in, bytes to forward and events out (h11-style)."""

from __future__ import annotations

import contextlib

from hypothesis import given, settings
from hypothesis import strategies as st

from tapegate.protocols.postgres import messages as m
from tapegate.protocols.postgres.relay import PgRelay


def _deny_drop(sql: str, kinds: list[str]) -> str | None:
    return "kind DROP" if any(k.startswith("DROP") for k in kinds) else None


def _q(sql: str) -> bytes:
    return m.message(b"Q", sql.encode() + b"\0")


ROW = m.message(b"T", b"\x00\x01a\x00" + bytes(18))
DATA = m.message(b"D", b"\x00\x01\x00\x00\x00\x011")
DONE = m.message(b"C", b"SELECT 1\x00")
READY = m.ready_for_query(b"I")


def test_allowed_query_is_forwarded_unchanged() -> None:
    relay = PgRelay(_deny_drop)
    forward, events = relay.from_client(_q("SELECT 1"), 1)
    assert forward == _q("SELECT 1")
    assert [e.type for e in events] == ["query"]


def test_denied_query_becomes_a_sync_and_its_error_precedes_that_ready() -> None:
    relay = PgRelay(_deny_drop)
    relay.from_client(_q("SELECT 1"), 1)  # still unanswered: the denial must wait its turn
    forward, events = relay.from_client(_q("DROP TABLE t"), 2)
    assert forward == m.SYNC
    assert events[0].type == "blocked" and events[0].attrs["rule"] == "kind DROP"
    answer = ROW + DATA + DONE + READY  # for SELECT 1
    answer += m.ready_for_query(b"I")  # for the Sync
    out, _ = relay.from_server(answer, 3)
    sent = b"".join(out)
    assert sent.startswith(ROW + DATA + DONE + READY)
    rest = sent[len(ROW + DATA + DONE + READY) :]
    assert rest[:1] == b"E" and b"42501" in rest and rest.endswith(m.ready_for_query(b"I"))


def test_denied_parse_discards_until_sync() -> None:
    relay = PgRelay(_deny_drop)
    batch = (
        m.message(b"P", b"\x00DROP TABLE t\x00\x00\x00")
        + m.message(b"B", b"\x00\x00\x00\x00\x00\x00\x00\x00")
        + m.message(b"E", b"\x00\x00\x00\x00\x00")
        + m.SYNC
    )
    forward, events = relay.from_client(batch, 1)
    assert forward == m.SYNC
    assert [e.type for e in events] == ["blocked"]
    out, _ = relay.from_server(m.ready_for_query(b"T"), 2)
    sent = b"".join(out)
    assert sent[:1] == b"E" and sent.endswith(m.ready_for_query(b"T"))


def test_server_bytes_split_anywhere_give_the_same_events() -> None:
    stream = ROW + DATA * 5 + DONE + READY
    whole = PgRelay(_deny_drop)
    whole.from_client(_q("SELECT a FROM t"), 0)
    _, expected = whole.from_server(stream, 1)
    for cut in range(1, len(stream)):
        relay = PgRelay(_deny_drop)
        relay.from_client(_q("SELECT a FROM t"), 0)
        out1, ev1 = relay.from_server(stream[:cut], 1)
        out2, ev2 = relay.from_server(stream[cut:], 1)
        assert b"".join(out1 + out2) == stream
        assert [(e.type, e.attrs) for e in ev1 + ev2] == [(e.type, e.attrs) for e in expected]
    (result,) = [e for e in expected if e.type == "result"]
    assert result.attrs["rows"] == 5 and result.attrs["columns"] == ["a"]


def test_large_parameters_are_capped_in_events() -> None:
    relay = PgRelay(_deny_drop)
    big = b"z" * 5000
    body = b"\x00\x00" + b"\x00\x00" + b"\x00\x01" + len(big).to_bytes(4, "big") + big + b"\x00\x00"
    _, events = relay.from_client(m.message(b"B", body), 1)
    (param,) = events[0].attrs["params"]
    assert param == {"text": "z" * 1024, "length": 5000}


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_client_garbage_raises_only_protocol_errors(data: bytes) -> None:
    relay = PgRelay(_deny_drop)
    with contextlib.suppress(m.ProtocolError):
        relay.from_client(data, 1)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=120), max_size=5))
def test_server_garbage_raises_only_protocol_errors(chunks: list[bytes]) -> None:
    relay = PgRelay(_deny_drop)
    relay.from_client(_q("SELECT 1"), 0)
    forwarded = b""
    try:
        for chunk in chunks:
            out, _ = relay.from_server(chunk, 1)
            forwarded += b"".join(out)
    except m.ProtocolError:
        return
    # Whatever was not held back as an incomplete header went through unchanged.
    assert b"".join(chunks).startswith(forwarded)


def test_denied_parse_answered_on_flush_when_nothing_is_outstanding() -> None:
    """Parse + Describe + Flush (no Sync yet): PostgreSQL would send the error at the Flush."""
    relay = PgRelay(_deny_drop)
    batch = (
        m.message(b"P", b"s1\x00DROP TABLE t\x00\x00\x00")
        + m.message(b"D", b"Ss1\x00")
        + m.message(b"H")
    )
    forward, _ = relay.from_client(batch, 1)
    assert forward == b""
    reply = relay.take_reply()
    assert reply[:1] == b"E" and b"42501" in reply
    forward, _ = relay.from_client(m.SYNC, 2)
    assert forward == m.SYNC
    out, _ = relay.from_server(m.ready_for_query(b"I"), 3)
    assert b"".join(out) == m.ready_for_query(b"I"), "the error is not sent twice"


def test_flush_waits_when_earlier_messages_are_unanswered() -> None:
    relay = PgRelay(_deny_drop)
    ok = m.message(b"P", b"\x00SELECT 1\x00\x00\x00") + m.message(b"B", b"\x00\x00" + bytes(6))
    relay.from_client(ok, 1)
    relay.from_client(m.message(b"P", b"\x00DROP TABLE t\x00\x00\x00") + m.message(b"H"), 2)
    assert relay.take_reply() == b"", "the upstream still owes answers: the error waits"
    relay.from_client(m.SYNC, 3)
    out, _ = relay.from_server(m.message(b"1") + m.message(b"2") + m.ready_for_query(b"I"), 4)
    sent = b"".join(out)
    assert sent.startswith(m.message(b"1") + m.message(b"2"))
    assert b"42501" in sent and sent.endswith(m.ready_for_query(b"I"))

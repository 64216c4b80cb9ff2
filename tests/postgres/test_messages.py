"""Wire messages: encode and decode side by side, and framing that never buffers without bound."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tapegate.protocols.postgres import messages as m


def test_startup_round_trip() -> None:
    msg = m.StartupMessage({"user": "agent", "database": "appdb", "application_name": "psql"})
    raw = msg.encode()
    length, body = m.read_startup(raw)
    assert length == len(raw)
    assert m.decode_startup(body) == msg


def test_special_startup_packets() -> None:
    assert isinstance(m.decode_startup(m.SSLRequest().encode()[4:]), m.SSLRequest)
    cancel = m.CancelRequest(1234, -99)
    assert m.decode_startup(cancel.encode()[4:]) == cancel
    with pytest.raises(m.ProtocolError, match=r"unsupported frontend protocol 2\.0"):
        m.decode_startup(b"\x00\x02\x00\x00")


def test_error_response_fields() -> None:
    raw = m.error_response("42501", "nope", severity="ERROR", hint="ask")
    reader = m.MessageReader()
    reader.feed(raw)
    ((tag, body, whole),) = list(reader.messages())
    assert tag == ord("E") and whole == raw
    assert m.decode_fields(body) == {
        "S": "ERROR",
        "V": "ERROR",
        "C": "42501",
        "M": "nope",
        "H": "ask",
    }


def test_reader_holds_partial_messages_and_rejects_huge_lengths() -> None:
    reader = m.MessageReader(max_bytes=1024)
    q = m.message(b"Q", b"SELECT 1\x00")
    reader.feed(q[:3])
    assert list(reader.messages()) == []
    reader.feed(q[3:] + q)
    assert [w for _, _, w in reader.messages()] == [q, q]
    reader.feed(b"Q\x00\x01\x00\x00")
    with pytest.raises(m.ProtocolError, match=r"outside 4\.\.1024"):
        list(reader.messages())


def test_bind_decoding() -> None:
    body = (
        b"portal\x00stmt\x00" + b"\x00\x02\x00\x00\x00\x01" + b"\x00\x02"
        + b"\x00\x00\x00\x02hi" + b"\xff\xff\xff\xff" + b"\x00\x00"
    )  # fmt: skip
    bind = m.decode_bind(body)
    assert bind == m.Bind("portal", "stmt", (b"hi", None), (0, 1))


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_decoders_raise_only_protocol_errors(body: bytes) -> None:
    for decode in (m.decode_startup, m.decode_parse, m.decode_bind, m.decode_execute,
                   m.decode_query, m.query_text, m.decode_password,
                   m.decode_function_call):  # fmt: skip
        with contextlib.suppress(m.ProtocolError):
            decode(body)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_server_message_decoders_raise_only_protocol_errors(body: bytes) -> None:
    """What the upstream sends is decoded for events and by `tapegate replay`: a malformed
    message is a ProtocolError there too, never a struct.error."""
    for decode in (m.decode_row_description, m.decode_data_row, m.decode_command_complete,
                   m.decode_notification, m.decode_parameter_status, m.decode_backend_key_data,
                   m.decode_auth, m.decode_fields):  # fmt: skip
        with contextlib.suppress(m.ProtocolError):
            decode(body)


def test_truncated_server_messages_are_protocol_errors() -> None:
    for decode, body in ((m.decode_row_description, b""),
                         (m.decode_notification, b"\x00\x01"),
                         (m.decode_function_call, b"\x00\x00\x03\x67\x00\x05")):  # fmt: skip
        with pytest.raises(m.ProtocolError):
            decode(body)


def test_replay_reads_a_malformed_server_message_without_a_traceback() -> None:
    from tapegate.audit.postgres import ResultReader

    reader = ResultReader()
    assert reader.feed(m.message(b"T", b"")) == []
    assert reader.broken and "stopped parsing" in reader.broken

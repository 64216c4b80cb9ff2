"""HTTP/1.1 framing without sockets: what the readers accept, what they refuse, what is written."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tapegate.protocols.http import wire
from tapegate.protocols.http.wire import (
    CLOSED,
    END,
    NEED_DATA,
    Body,
    Data,
    HttpError,
    Request,
    RequestReader,
    Response,
    ResponseReader,
)


def _events(reader: wire._Reader, *reads: bytes) -> list[object]:
    out: list[object] = []
    for data in reads:
        reader.receive(data)
        while (event := reader.next_event()) is not NEED_DATA:
            out.append(event)
            if event is CLOSED:
                break
    return out


def _body(events: list[object]) -> bytes:
    return b"".join(e.data for e in events if isinstance(e, Data))


H = b"Host: api\r\n"

# RFC 9112 §6.1, §5.2, §2.2, §7.1: each of these could frame a second request inside the first
# for a lenient upstream. None may be forwarded.
SMUGGLING = {
    "CL and TE": b"POST /a HTTP/1.1\r\n" + H + b"Content-Length: 4\r\n"
    b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "TE and CL": b"POST /a HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n"
    b"Content-Length: 4\r\n\r\n0\r\n\r\n",
    "duplicate CL": b"POST /a HTTP/1.1\r\n" + H + b"Content-Length: 4\r\n"
    b"Content-Length: 40\r\n\r\n",
    "CL list": b"POST /a HTTP/1.1\r\n" + H + b"Content-Length: 4, 4\r\n\r\nabcd",
    "obs-fold": b"GET /a HTTP/1.1\r\n" + H + b"X-A: 1\r\n 2\r\n\r\n",
    "obs-fold TE": b"POST /a HTTP/1.1\r\n" + H + b"Transfer-Encoding:\r\n chunked\r\n\r\n0\r\n\r\n",
    "bare LF": b"GET /a HTTP/1.1\n" + H + b"\n",
    "bare LF in headers": b"GET /a HTTP/1.1\r\nHost: api\nX: y\r\n\r\n",
    "chunk size overflow": b"POST /a HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n"
    b"10000000000000001\r\nab\r\n0\r\n\r\n",
    "TE not chunked": b"POST /a HTTP/1.1\r\n" + H + b"Transfer-Encoding: gzip\r\n\r\nabc",
    "TE chunked twice": b"POST /a HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n"
    b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "space before colon": b"POST /a HTTP/1.1\r\n" + H + b"Content-Length : 3\r\n\r\nabc",
    "LF after chunk size": b"POST /a HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n"
    b"3\nabc\n0\n\n",
    "NUL in a value": b"GET /a HTTP/1.1\r\n" + H + b"X: a\x00b\r\n\r\n",
    "CR in a value": b"GET /a HTTP/1.1\r\n" + H + b"X: a\rb\r\n\r\n",
    "two Hosts": b"GET /a HTTP/1.1\r\n" + H + H + b"\r\n",
    "no Host": b"GET /a HTTP/1.1\r\n\r\n",
    # llhttp leaves an upgrade's body unread: forwarded with its length, the next request's
    # bytes would be read upstream as that body (found by review, with a Node upstream).
    "Upgrade with a body": b"GET /a HTTP/1.1\r\n" + H + b"Connection: Upgrade\r\nUpgrade: foo\r\n"
    b"Content-Length: 10\r\n\r\n0123456789",
    "CONNECT with a body": b"CONNECT /api/v1/x HTTP/1.1\r\n" + H + b"Content-Length: 3\r\n\r\nabc",
}


@pytest.mark.parametrize("name", SMUGGLING)
def test_what_could_frame_a_second_request_is_refused(name: str) -> None:
    reader = RequestReader()
    with pytest.raises(HttpError) as refused:
        _events(reader, SMUGGLING[name])
    assert refused.value.status == 400
    with pytest.raises(HttpError):  # and stays refused: nothing after it is read
        _events(reader, b"GET /b HTTP/1.1\r\n" + H + b"\r\n")


@pytest.mark.parametrize("version", [b"HTTP/2.0", b"HTTP/0.9"])
def test_other_versions_get_505(version: bytes) -> None:
    with pytest.raises(HttpError) as refused:
        _events(RequestReader(), b"GET /a " + version + b"\r\n" + H + b"\r\n")
    assert refused.value.status == 505


def test_a_request_split_anywhere_reads_the_same() -> None:
    raw = (b"POST /api/x?q=1 HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n"
           b"Expect: 100-continue\r\n\r\n3;ext=1\r\nabc\r\n2\r\nde\r\n0\r\n"
           b"X-Trailer: t\r\n\r\n")  # fmt: skip
    whole = _events(RequestReader(), raw)
    head = whole[0]
    assert isinstance(head, Request)
    assert (head.method, head.target, head.version) == (b"POST", b"/api/x?q=1", b"1.1")
    assert head.body == Body(chunked=True) and head.expects_continue and head.keep_alive
    assert ("transfer-encoding", "chunked") in [(n.decode(), v.decode()) for n, v in head.headers]
    assert _body(whole) == b"abcde" and whole[-1] is END
    assert (b"x-trailer", b"t") not in head.headers  # trailers are not forwarded
    for cut in range(1, len(raw)):
        split = _events(RequestReader(), raw[:cut], raw[cut:])
        assert isinstance(split[0], Request) and split[0].headers == head.headers
        assert _body(split) == b"abcde" and split[-1] is END


def test_pipelined_requests_queue_in_order_and_a_bad_one_comes_after_the_good() -> None:
    reader = RequestReader()
    raw = b"GET /a HTTP/1.1\r\n" + H + b"\r\nGET /b HTTP/1.1\r\n" + H + b"\r\nGET /c HTTP/1.1\n\n"
    reader.receive(raw)
    first = reader.next_event()
    assert isinstance(first, Request) and first.target == b"/a"
    assert reader.next_event() is END
    second = reader.next_event()
    assert isinstance(second, Request) and second.target == b"/b"
    assert reader.next_event() is END
    with pytest.raises(HttpError):
        reader.next_event()


def test_close_between_requests_and_in_the_middle_of_one() -> None:
    assert _events(RequestReader(), b"GET /a HTTP/1.1\r\n" + H + b"\r\n", b"")[-1] is CLOSED
    reader = RequestReader()
    with pytest.raises(HttpError):
        _events(reader, b"POST /a HTTP/1.1\r\n" + H + b"Content-Length: 9\r\n\r\nabc", b"")
    assert RequestReader().mid_message is False


def test_heads_are_bounded_however_they_arrive() -> None:
    big = b"GET /a HTTP/1.1\r\n" + H + b"X: " + b"v" * 70_000 + b"\r\n\r\n"
    with pytest.raises(HttpError) as whole:
        _events(RequestReader(), big)
    assert whole.value.status == 431
    reader = RequestReader()
    with pytest.raises(HttpError) as trickled:
        _events(reader, *[big[i : i + 1000] for i in range(0, 69_000, 1000)])
    assert trickled.value.status == 431
    # A large body after a small head is not a large head.
    body = b"b" * 300_000
    head = b"POST /a HTTP/1.1\r\n" + H + b"Content-Length: %d\r\n\r\n" % len(body)
    events = _events(RequestReader(), head + body[:100], body[100:])
    assert _body(events) == body


CHUNKED = b"POST /a HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n"


@pytest.mark.parametrize(
    ("reader", "opening"),
    [
        (RequestReader, CHUNKED + b"0\r\nX-Trailer: "),  # one trailer, gathered whole by httptools
        (RequestReader, CHUNKED + b"0\r\n"),  # many small trailers
        (RequestReader, CHUNKED + b"5;ext="),  # a chunk extension
        (ResponseReader, b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nX: "),
    ],
    ids=["one trailer", "many trailers", "chunk extension", "a response's trailer"],
)
def test_chunk_lines_and_trailers_are_bounded(reader: type, opening: bytes) -> None:
    # Without the bound, the reader took all 8 MiB and held them (96 MiB were measured).
    filler = b"T: v\r\n" * 700 if opening.endswith(b"0\r\n") else b"v" * 4096
    parser = reader()
    fed = 0
    with pytest.raises(HttpError) as refused:
        for _ in range(2048):
            parser.receive(filler if fed else opening + filler)
            fed += len(filler)
            while parser.next_event() is not NEED_DATA:
                pass
    assert "chunk lines or trailers exceed 65536 bytes" in str(refused.value)
    assert fed <= 65_536 + 2 * len(filler)


def test_a_large_head_is_not_counted_as_framing() -> None:
    # Found by review: the read that ended a 62 KB head counted towards the trailer's bound.
    head = (
        b"POST /a HTTP/1.1\r\n"
        + H
        + b"X: "
        + b"h" * 62_000
        + b"\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    events = _events(RequestReader(), head, b"0\r\nX-T: " + b"t" * 5_000 + b"\r\n", b"\r\n")
    assert events[-1] is END


def test_many_small_chunks_are_not_framing() -> None:
    # One byte of data per chunk: six of framing each, far past the bound in total.
    chunks = b"1\r\nx\r\n" * 40_000
    events = _events(
        RequestReader(),
        CHUNKED,
        *[chunks[i : i + 600] for i in range(0, len(chunks), 600)],
        b"0\r\n\r\n",
    )
    assert _body(events) == b"abc" + b"x" * 40_000 and events[-1] is END


def test_an_upgrade_keeps_its_bytes_and_a_refused_one_reads_on() -> None:
    reader = RequestReader()
    raw = (b"GET /ws HTTP/1.1\r\n" + H + b"Upgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
           b"GET /next HTTP/1.1\r\n" + H + b"\r\n")  # fmt: skip
    events = _events(reader, raw)
    assert isinstance(events[0], Request) and events[-1] is END
    assert reader.upgraded and reader.trailing.startswith(b"GET /next")
    reader.resume()
    more = _events(reader, b"")
    assert isinstance(more[0], Request) and more[0].target == b"/next"


def test_responses_length_chunked_until_close() -> None:
    r = ResponseReader()
    events = _events(r, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi")
    head = events[0]
    assert isinstance(head, Response) and head.status == 200 and head.reason == b"OK"
    assert head.body == Body(length=2) and head.keep_alive and r.reusable
    r = ResponseReader()
    events = _events(r, b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                     b"2\r\nhi\r\n0\r\n\r\n")  # fmt: skip
    assert _body(events) == b"hi" and events[-1] is END and r.reusable
    r = ResponseReader()
    events = _events(r, b"HTTP/1.1 200 OK\r\n\r\nabc", b"def", b"")
    assert events[0].body == Body(until_close=True) and _body(events) == b"abcdef"  # type: ignore[union-attr]
    assert events[-1] is END and not r.reusable


def test_informational_answers_come_before_the_final_one() -> None:
    events = _events(ResponseReader(), b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early\r\n"
                     b"Link: x\r\n\r\nHTTP/1.1 201 Created\r\n"
                     b"Content-Length: 0\r\n\r\n")  # fmt: skip
    assert [e.status for e in events if isinstance(e, Response)] == [100, 103, 201]
    assert events[-1] is END and events.count(END) == 1


def test_a_head_answer_ends_with_its_head() -> None:
    r = ResponseReader(head_request=True)
    events = _events(r, b"HTTP/1.1 200 OK\r\nContent-", b"Length: 1234\r\n\r\n")
    assert isinstance(events[0], Response) and events[0].body.empty and events[-1] is END
    assert r.reusable


@pytest.mark.parametrize(
    "raw",
    [
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nhi",
        b"HTTP/1.1 200 OK\nContent-Length: 0\n\n",
        b"HTTP/1.1 200 OK\r\nX: a\r\n b\r\nContent-Length: 0\r\n\r\n",
    ],
)
def test_an_upstream_that_breaks_framing_is_an_error(raw: bytes) -> None:
    with pytest.raises(HttpError):
        _events(ResponseReader(), raw)


def test_bytes_after_the_answer_make_the_connection_unusable() -> None:
    r = ResponseReader()
    events = _events(r, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhiHTTP/1.1 200 OK\r\n\r\n")
    assert _body(events) == b"hi" and events[-1] is END
    assert r.done and not r.reusable
    r = ResponseReader(head_request=True)
    _events(r, b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc")
    assert not r.reusable


def test_a_switch_keeps_what_follows_it() -> None:
    r = ResponseReader()
    events = _events(r, b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                     b"Connection: Upgrade\r\n\r\n\x81\x02hi")  # fmt: skip
    assert isinstance(events[0], Response) and events[0].status == 101 and END not in events
    assert r.upgraded and r.trailing == b"\x81\x02hi"


def test_the_gateway_writes_its_own_framing() -> None:
    headers = [(b"host", b"up"), (b"content-length", b"999"), (b"transfer-encoding", b"chunked")]
    head = wire.request_head(b"POST", b"/x", headers, Body(length=3))
    assert head == b"POST /x HTTP/1.1\r\nhost: up\r\ncontent-length: 3\r\n\r\n"
    head = wire.response_head(200, b"OK", headers, Body(chunked=True))
    assert head == b"HTTP/1.1 200 OK\r\nhost: up\r\ntransfer-encoding: chunked\r\n\r\n"
    assert wire.chunk(b"abc") == b"3\r\nabc\r\n" and wire.chunk(b"") == b""
    written = head + wire.chunk(b"abc") + wire.LAST_CHUNK
    events = _events(ResponseReader(), written)
    assert _body(events) == b"abc" and events[-1] is END
    assert not wire.safe_value(b"k\r\nX-Evil: 1") and wire.safe_value(b"Bearer k-123")


def test_a_reader_is_reused_only_after_a_clean_answer() -> None:
    first = ResponseReader()
    _events(first, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi")
    second = first.again()
    assert second is first
    events = _events(second, b"HTTP/1.1 201 Created\r\nContent-Length: 1\r\n\r\nx")
    assert events[0].status == 201 and _body(events) == b"x" and second.reusable  # type: ignore[union-attr]
    head = second.again(head_request=True)
    _events(head, b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n")
    assert head.reusable and head.again() is not head  # llhttp still waits for that body
    closing = ResponseReader()
    _events(closing, b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n")
    assert closing.again() is not closing


@pytest.mark.parametrize(
    ("coding", "chunked"),
    [(b"chunked", True), (b" ,chunked", True), (b"gzip, chunked", True), (b"chunked,", False),
     (b"chunked\t", False), (b"chunked;q=1", False), (b"xchunked", False)],
)  # fmt: skip
def test_a_responses_framing_is_read_as_llhttp_reads_it(coding: bytes, chunked: bool) -> None:
    """What the gateway writes to the client follows its reading of Transfer-Encoding; llhttp
    delimits the body. The two agree, or the answer is refused: never mis-framed."""
    raw = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: " + coding + b"\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
    events = _events(ResponseReader(), raw, b"")
    head = events[0]
    assert isinstance(head, Response) and head.body.chunked is chunked
    assert _body(events) == (b"hello" if chunked else b"5\r\nhello\r\n0\r\n\r\n")
    assert END in events


@pytest.mark.parametrize(
    "raw",
    [b"HTTP/1.1 200 O\x00K\r\nContent-Length: 0\r\n\r\n",
     b"HTTP/1.1 200 O\x01K\r\nContent-Length: 0\r\n\r\n",
     b"HTTP/1.1 000 OK\r\nContent-Length: 0\r\n\r\n",
     b"HTTP/1.1 199 X\r\nContent-Length: 3\r\n\r\nabcHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
     b"HTTP/1.1 150 X\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"],
)  # fmt: skip
def test_what_the_gateway_would_pass_on_wrongly_is_refused(raw: bytes) -> None:
    with pytest.raises(HttpError):  # the gateway answers the client 502 for any of them
        _events(ResponseReader(), raw)


_PIECES = [b"GET ", b"POST ", b"HEAD ", b"/a", b" HTTP/1.1", b" HTTP/1.0", b"HTTP/1.1 200 OK",
           b"HTTP/1.1 101 S", b"HTTP/1.1 100 C", b"\r\n", b"\n", b"Host: x", b"Content-Length: 3",
           b"Content-Length: 99999999999999999999", b"Transfer-Encoding: chunked",
           b"Upgrade: websocket", b"Connection: Upgrade", b"Connection: close", b"3\r\nabc\r\n",
           b"0\r\n\r\n", b"ffffffffffffffffff\r\n", b": ", b" ", b"\t", b"\x00", b"abc",
           b"\r\n\r\n"]  # fmt: skip


@settings(max_examples=400)
@given(st.lists(st.sampled_from(_PIECES), max_size=20), st.integers(0, 400), st.booleans())
def test_only_httperror_escapes_the_readers(pieces: list[bytes], cut: int, head: bool) -> None:
    data = b"".join(pieces)
    for reader in (RequestReader(), ResponseReader(head_request=head)):
        try:
            _events(reader, data[:cut], data[cut:], b"")
            if isinstance(reader, ResponseReader):
                reader.again()
        except HttpError:
            pass

"""HTTP/1.1 messages off the wire and onto it, strictly (RFC 9112), without I/O.

Bytes in, events out (as h11): `RequestReader` and `ResponseReader` run llhttp (httptools, the
parser under uvicorn and Node.js) in its strict mode and add what RFC 9112 asks of a server that
llhttp leaves to its caller (one Host, HTTP/1.0 or 1.1 only, bounded heads). What they reject
never reaches the other side: a request with both Content-Length and Transfer-Encoding, a
duplicate Content-Length, an obs-fold, a bare LF, a chunk size that overflows, a Transfer-Encoding
that does not end in chunked. `HttpError` is the one exception that escapes.

The writing half frames every message the gateway sends itself: the framing headers a peer sent
are never forwarded (`FRAMING` strips them), so what the other side reads as one message is the
message the gateway parsed, recorded and checked.
"""

from __future__ import annotations

import re
from collections import deque
from dataclasses import dataclass

import httptools

Headers = list[tuple[bytes, bytes]]

MAX_HEAD_BYTES = 64 * 1024  # request or status line and headers

# The headers that frame a message. The gateway writes its own; a peer's are not forwarded.
FRAMING = frozenset({b"content-length", b"transfer-encoding"})


class HttpError(Exception):
    """The peer broke HTTP/1.1. `status` is what a client is answered (400, 431, 505)."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


@dataclass(slots=True)
class Request:
    method: bytes
    target: bytes
    version: bytes  # b"1.1" or b"1.0"
    headers: Headers  # names lowercased, in order
    body: Body
    keep_alive: bool
    expects_continue: bool


@dataclass(slots=True)
class Response:
    status: int
    reason: bytes
    version: bytes
    headers: Headers
    body: Body
    keep_alive: bool


@dataclass(frozen=True, slots=True)
class Body:
    """How a message's body is delimited on the wire it came from."""

    length: int | None = None  # Content-Length
    chunked: bool = False
    until_close: bool = False  # a response read until the upstream closes

    @property
    def empty(self) -> bool:
        return self.length in (None, 0) and not self.chunked and not self.until_close


NO_BODY = Body()  # nothing follows the head, and no framing header says so


@dataclass(slots=True)
class Data:
    data: bytes


class _Marker:
    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


NEED_DATA = _Marker("NEED_DATA")  # feed more bytes with receive()
END = _Marker("END")  # the message's last byte has been read
CLOSED = _Marker("CLOSED")  # the peer closed between messages

Event = Request | Response | Data | _Marker


class _Stop(Exception):
    """Raised from a callback to stop llhttp; the reason is already queued."""


class _Reader:
    """What both directions share: llhttp's callbacks turned into a queue of events."""

    def __init__(self, parser_type: type, max_head: int) -> None:
        self._parser = parser_type(self)
        self._events: deque[Event | HttpError] = deque()
        self._max_head = max_head
        self._in_message = False
        self._in_head = False
        self._head_bytes = 0  # of a head still arriving, beyond the read it began in
        self._chunked = self._chunk_seen = False
        self._size = 0  # of the head's header lines, as parsed
        # Bytes of a chunked body read since its last data: chunk lines, extensions, trailers.
        # httptools gathers a trailer's value whole before the callback, so this is its bound.
        self._framing = 0
        self._data_in_read = False
        self._began = False  # a message began in the read being parsed
        self._url = b""
        self._reason = b""
        self._headers: Headers = []
        self._failed = False
        self.trailing = b""  # bytes after an upgrade (a 101's WebSocket, say)
        self.upgraded = False

    # -- the caller's side ----------------------------------------------------------------------

    def next_event(self) -> Event:
        if not self._events:
            return NEED_DATA
        event = self._events.popleft()
        if isinstance(event, HttpError):
            self._events.appendleft(event)  # raised again if asked again: the stream is broken
            raise event
        return event

    @property
    def pending(self) -> bool:
        """Whether events are queued (bytes read and not yet taken)."""
        return bool(self._events)

    @property
    def mid_message(self) -> bool:
        """Whether some bytes of a message have been read but not its end."""
        return self._in_message

    def receive(self, data: bytes) -> None:
        """The next bytes from the peer; b"" when it closed."""
        if self._failed or self.upgraded:
            self.trailing += data
            return
        if not data:
            self._eof()
            return
        self._feed(data)

    def _feed(self, data: bytes) -> None:
        self._began = self._data_in_read = False
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            self.upgraded = True
            self.trailing = data[exc.args[0] :]
        except httptools.HttpParserCallbackError:
            self._failed = True  # _fail() queued the reason
        except httptools.HttpParserError as exc:
            self._fail(HttpError(f"malformed HTTP: {exc}"), raise_=False)
        else:
            # A head cut by a read: its size so far is bounded by what the reads after the one
            # it began in brought (a whole head in one read is measured when complete).
            if self._in_head and not self._began:
                self._head_bytes += len(data)
                if self._head_bytes > self._max_head:
                    self._fail(HttpError(f"the head exceeds {self._max_head} bytes", 431), False)
            # Likewise a chunked body's framing: a read that brought no data adds to it (one that
            # did may hold at most one read's worth more, as for the head).
            elif self._in_message and self._chunked and not self._in_head:
                self._framing = 0 if self._data_in_read else self._framing + len(data)
                if self._framing > self._max_head:
                    self._fail(
                        HttpError(f"chunk lines or trailers exceed {self._max_head} bytes"), False
                    )

    def _eof(self) -> None:
        if self._in_message:
            self._fail(HttpError("the peer closed in the middle of a message"), raise_=False)
        else:
            self._events.append(CLOSED)

    def _fail(self, error: HttpError, raise_: bool = True) -> None:
        self._failed = True
        self._events.append(error)
        if raise_:
            raise _Stop

    # -- llhttp's callbacks ---------------------------------------------------------------------

    def on_message_begin(self) -> None:
        self._in_message = self._in_head = self._began = True
        self._chunked = self._chunk_seen = False
        self._head_bytes = self._size = self._framing = 0
        self._url, self._reason, self._headers = b"", b"", []

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_status(self, reason: bytes) -> None:
        self._reason += reason

    def on_header(self, name: bytes, value: bytes) -> None:
        if self._in_head:
            self._headers.append((name.lower(), value))
            self._size += len(name) + len(value) + 4
        # Trailers (after a chunked body) are not forwarded: they would frame nothing here.

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._data_in_read = True  # the head's read is the head's, not the body's framing
        if (
            self._size + len(self._url) + len(self._reason) > self._max_head
        ):  # one read can bring a whole oversized head
            self._fail(HttpError(f"the head exceeds {self._max_head} bytes", 431))
        version = self._parser.get_http_version().encode()
        if version not in (b"1.1", b"1.0"):
            self._fail(HttpError(f"HTTP/{version.decode()} is not supported", 505))
        head = self._head(version, self._headers)
        self._chunked = head.body.chunked
        self._events.append(head)

    # The gateway frames what it forwards from its own reading of the headers: llhttp must
    # have read the body the same way, or the message is refused rather than mis-framed.
    def on_chunk_header(self) -> None:
        if not self._chunked:
            self._fail(HttpError("a chunked body where the headers frame it otherwise"))
        self._chunk_seen = True

    def on_body(self, body: bytes) -> None:
        if self._chunked and not self._chunk_seen:
            self._fail(HttpError("an unchunked body where the headers say chunked"))
        self._data_in_read = True
        self._events.append(Data(body))

    def on_message_complete(self) -> None:
        self._in_message = False
        self._events.append(END)

    def _head(self, version: bytes, headers: Headers) -> Request | Response:
        raise NotImplementedError


class RequestReader(_Reader):
    """A client's requests, one after another (pipelined ones queue behind the first)."""

    def __init__(self, max_head: int = MAX_HEAD_BYTES) -> None:
        super().__init__(httptools.HttpRequestParser, max_head)

    def resume(self) -> None:
        """Go on reading HTTP after an upgrade the server refused."""
        trailing, self.trailing, self.upgraded = self.trailing, b"", False
        if trailing:
            self._feed(trailing)

    def _head(self, version: bytes, headers: Headers) -> Request:
        hosts = [v for n, v in headers if n == b"host"]
        if len(hosts) > 1 or (version == b"1.1" and not hosts):
            self._fail(HttpError("a request must have exactly one Host header (RFC 9112 §3.2)"))
        connection = _tokens(headers, b"connection")
        expect = _get(headers, b"expect")
        method = self._parser.get_method()
        body = _request_body(headers)
        upgrade = b"upgrade" in connection and _get(headers, b"upgrade") is not None
        if (upgrade or method == b"CONNECT") and not body.empty:
            # llhttp leaves such a body unread (it belongs to the new protocol): forwarded with
            # its length, it would be read upstream from what comes next on the connection.
            self._fail(HttpError("an Upgrade or CONNECT request cannot have a body"))
        return Request(
            method=method,
            target=self._url,
            version=version,
            headers=headers,
            body=body,
            keep_alive=version == b"1.1" and b"close" not in connection,
            expects_continue=version == b"1.1"
            and expect is not None
            and expect.lower() == b"100-continue",
        )


class ResponseReader(_Reader):
    """The answer to one request (after any 1xx): a new reader for each request, which tells it
    whether the request was a HEAD (whose answer announces a body it does not carry)."""

    def __init__(self, head_request: bool = False, max_head: int = MAX_HEAD_BYTES) -> None:
        super().__init__(httptools.HttpResponseParser, max_head)
        self._head_request = head_request
        self._until_close = False
        self._keep_alive = False
        self._buffer = b""  # a HEAD's answer, until its head is complete
        self.done = False
        self.extra = False  # bytes after the answer: the connection cannot be trusted again

    def again(self, head_request: bool = False) -> ResponseReader:
        """A reader for the next answer on the same connection: this one, when its answer
        ended cleanly (llhttp then waits for the next message), else a new one."""
        if not self.reusable or self._head_request or self._events:
            return ResponseReader(head_request, self._max_head)
        self._head_request = head_request
        self._until_close = self._keep_alive = self.done = self.extra = False
        return self

    @property
    def reusable(self) -> bool:
        """Whether the upstream connection can carry the next request."""
        return self.done and self._keep_alive and not (self.extra or self.upgraded or self._failed)

    def receive(self, data: bytes) -> None:
        if self.done and data:
            self.extra = True
            return
        if self._until_close and not data and self._in_message:
            self._in_message = False
            self.done = True
            self._events.append(END)
            return
        if self._head_request and data and not self._failed:
            self._receive_head_only(data)
            return
        super().receive(data)

    def _receive_head_only(self, data: bytes) -> None:
        # llhttp cannot be told that a response answers HEAD: it is fed each head alone, and
        # the message ends there. Strict CRLF parsing means the first CRLFCRLF ends the head.
        self._buffer += data
        while not self.done and not self._failed:
            end = self._buffer.find(b"\r\n\r\n")
            if end < 0:
                if len(self._buffer) > self._max_head:
                    self._fail(HttpError(f"the head exceeds {self._max_head} bytes", 431), False)
                return
            head, self._buffer = self._buffer[: end + 4], self._buffer[end + 4 :]
            self._feed(head)
        if self._buffer:
            self.extra = True

    def on_headers_complete(self) -> None:
        super().on_headers_complete()
        status = self._parser.get_status_code()
        if self._head_request and status >= 200:
            self._in_message = False
            self.done = True
            self._events.append(END)

    def on_message_begin(self) -> None:
        if self.done:
            self.extra = True
            raise _Stop
        super().on_message_begin()

    def on_body(self, body: bytes) -> None:
        if self._parser.get_status_code() < 200:
            self._fail(HttpError("a body on an informational (1xx) answer", 502))
        super().on_body(body)

    def on_message_complete(self) -> None:
        if self.done:
            return  # a HEAD's answer: ended with its head
        if self._parser.get_status_code() < 200:
            self._in_message = False  # a 1xx has no body, and no END: the answer follows
            return
        super().on_message_complete()
        self.done = True

    def _head(self, version: bytes, headers: Headers) -> Response:
        status = self._parser.get_status_code()
        if status < 100:
            self._fail(HttpError(f"status {status} is not an HTTP status", 502))
        if _CONTROL.search(self._reason):  # RFC 9112 §4: HTAB, SP, VCHAR, obs-text
            self._fail(HttpError("a control character in the reason phrase", 502))
        body = _response_body(headers, status, self._head_request)
        self._until_close = body.until_close
        connection = _tokens(headers, b"connection")
        self._keep_alive = version == b"1.1" and b"close" not in connection and not body.until_close
        return Response(status, self._reason, version, headers, body, self._keep_alive)


def _request_body(headers: Headers) -> Body:
    # llhttp has refused every other combination (RFC 9112 §6.1, §6.3).
    if _get(headers, b"transfer-encoding") is not None:
        return Body(chunked=True)
    length = _get(headers, b"content-length")
    return Body(length=int(length)) if length is not None else NO_BODY


def _response_body(headers: Headers, status: int, head_request: bool) -> Body:
    length = _get(headers, b"content-length")
    if head_request or status < 200 or status in (204, 304):
        return NO_BODY
    codings = [v for n, v in headers if n == b"transfer-encoding"]
    if codings:
        # As llhttp decides it: the last coding of the last header, spaces trimmed (not tabs).
        last = codings[-1].rsplit(b",", 1)[-1].strip(b" ").lower()
        return Body(chunked=True) if last == b"chunked" else Body(until_close=True)
    if length is not None:
        return Body(length=int(length))
    return Body(until_close=True)


_CONTROL = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")


def _get(headers: Headers, name: bytes) -> bytes | None:
    for n, v in headers:
        if n == name:
            return v
    return None


def _tokens(headers: Headers, name: bytes) -> list[bytes]:
    out: list[bytes] = []
    for n, v in headers:
        if n == name:
            out.extend(t.strip().lower() for t in v.split(b",") if t.strip())
    return out


# -- writing ------------------------------------------------------------------------------------


def request_head(method: bytes, target: bytes, headers: Headers, body: Body) -> bytes:
    """A request head the gateway frames itself: `headers` without framing headers."""
    return b"".join((method, b" ", target, b" HTTP/1.1\r\n", _lines(headers, body), b"\r\n"))


def response_head(
    status: int, reason: bytes, headers: Headers, body: Body, *, announced: bytes | None = None
) -> bytes:
    """A response head. `announced`: the Content-Length a HEAD's or 304's answer states."""
    lines = _lines(headers, body)
    if announced is not None:
        lines += b"content-length: " + announced + b"\r\n"
    return b"".join((b"HTTP/1.1 %d " % status, reason, b"\r\n", lines, b"\r\n"))


def _lines(headers: Headers, body: Body) -> bytes:
    parts = [b"%s: %s\r\n" % (n, v) for n, v in headers if n not in FRAMING]
    if body.chunked:
        parts.append(b"transfer-encoding: chunked\r\n")
    elif body.length is not None:
        parts.append(b"content-length: %d\r\n" % body.length)
    return b"".join(parts)


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data) if data else b""


LAST_CHUNK = b"0\r\n\r\n"


def safe_value(value: bytes) -> bool:
    """Whether a header value the gateway adds itself (a credential) cannot break the head."""
    return not any(c in value for c in b"\r\n\x00")

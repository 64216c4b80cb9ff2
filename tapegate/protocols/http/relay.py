"""One HTTP client connection, sans-IO: requests admitted one by one, forwarded, answered.

The driver (`gateway_task/server/driver.py`, with `exchanges=True`) feeds this handler what
either side sends and carries out its commands; its owner (`gateway_task/server/http.py`)
answers its questions (`tapegate/proxy/questions.py`): admit this request, open the target's
connection, open or close a tape session, record a refusal.

A request goes through these states:

    HEAD ──Ask(Admit)──> ADMITTING ──[Ask(Close/OpenSession)]──[Ask(Connect)]──> BODY
    BODY ──END──> RESPONSE ──END──> HEAD (the next, maybe pipelined, request)
    RESPONSE ──101──> WEBSOCKET (WebSocketRelay from here on)

Only one request is in hand at a time: while its answer is awaited, what the client sends
next is kept unread (and the client's reading paused) until the answer has ended.

The tape is what the target was sent, not the client's wire: the client's head holds its OIDC
token. A request's head is recorded as forwarded, with the injected credential redacted, and
every byte to the client as written. The target's answer is masked where it echoes the
credential. A tape session is one connection's requests to one target by one subject; a
request for another target (or by another subject) closes it and opens the next.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum, auto

from tapegate.protocols.http import answers, paths, wire
from tapegate.protocols.http import exchange as x
from tapegate.protocols.http.target import HttpTarget
from tapegate.protocols.http.websocket import WebSocketRelay
from tapegate.protocols.http.wire import END, NEED_DATA
from tapegate.protocols.mcp.exchange import Ledger, McpExchange
from tapegate.protocols.mcp.relay import McpPath
from tapegate.protocols.mcp.target import McpTarget
from tapegate.proxy.admission import Admitted, Login, Refusal, auth_attrs
from tapegate.proxy.questions import (
    Admit,
    CloseSession,
    Connect,
    ConnectFailed,
    NameSession,
    OpenSession,
    RecordRefusal,
)
from tapegate.proxy.relay import (
    Ask,
    Command,
    Disconnect,
    End,
    Pause,
    Record,
    Resume,
    Side,
    Timer,
    ToClient,
    ToServer,
    Wake,
)
from tapegate.tape import Direction, Event
from tapegate.vocab import EndReason, EventType

C2S, S2C = Direction.CLIENT_TO_SERVER, Direction.SERVER_TO_CLIENT

HEAD_TIMEOUT_S = 30.0  # a request's head, once its first byte arrived; each read of its body
IDLE_TIMEOUT_S = 300.0  # between requests on a kept-alive connection
RESPONSE_TIMEOUT_S = 60.0  # from the request's end to the response's head
CLOSE_GRACE_S = 5.0  # a WebSocket's target gone, the client may finish its closing handshake
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


class State(Enum):
    HEAD = auto()  # reading (or waiting for) a request's head
    ADMITTING = auto()  # asked the owner: admission, the session, the target's connection
    BODY = auto()  # forwarding the request's body
    RESPONSE = auto()  # the target's answer: awaited, then streamed to the client
    WEBSOCKET = auto()
    DONE = auto()


@dataclass(frozen=True, slots=True)
class Injection:
    header: tuple[bytes, bytes]  # (lowercase name, value) as sent upstream
    echo: tuple[bytes, ...]  # what an upstream echoing it would show: the value without prefix
    host: bytes  # the upstream's Host header


@dataclass(slots=True)
class _Exchange:
    """The request in hand and what is known of its answer."""

    request: wire.Request
    started_ns: int
    rest: str = ""  # the path after the target segment
    admitted: Admitted | None = None
    inject: Injection | None = None
    path: str = ""  # as forwarded
    websocket: bool = False
    masker: x.Masker | None = None
    body: x.Body | None = None
    response: wire.Response | None = None
    maskable: bool = True
    chunked_out: bool = False  # the client's answer is chunked by the gateway
    keep_alive: bool = True
    reason: bytes = b""
    headers: x.Headers | None = None
    mcp: McpExchange | None = None  # an MCP target's: the request is read whole, then judged
    held: bytearray | None = None  # ... its body so far
    upstream_headers: x.Headers | None = None  # ... and its head, framed once the body is in
    mcp_body: bytes = b""


class HttpRelay(McpPath):
    """An `ExchangeHandler` for one client connection (see the module's docstring); an MCP
    target's exchanges take the path in `tapegate/protocols/mcp/relay.py`."""

    def __init__(
        self,
        *,
        tls: bool,
        client_addr: str,
        body_cap: int,
        clock: Callable[[], float],  # the driver's (monotonic) clock, for `Timer`
        now_ns: Callable[[], int],  # wall time, for events
        preauth_until: float,  # on `clock`: the connection's deadline to be admitted
        protocol: str = "http",  # "mcp": the MCP listener, whose paths are /mcp/<target>
    ) -> None:
        self.tls, self.client_addr, self.body_cap = tls, client_addr, body_cap
        self.protocol = protocol
        self._ledger = Ledger()  # the open tape session's MCP state
        self._clock, self._now_ns = clock, now_ns
        self._preauth_until: float | None = preauth_until
        self.state = State.HEAD
        self.requests = wire.RequestReader()
        self._unfed = bytearray()  # client bytes that arrived while a request was in hand
        self._client_eof = False  # ... and its EOF
        self._paused = False
        self._server_paused = False
        # (target, subject, boundary) of the open tape; the boundary is MCP's (`Ledger`)
        self.session: tuple[str, str, str | None] | None = None
        self.upstream: str | None = None  # the target the open connection goes to
        self.responses: wire.ResponseReader | None = None
        self.answering = False  # a request is in hand and its answer has not begun
        self.answered = False  # ... and its answer has begun: no error can follow
        self._x: _Exchange | None = None
        self._ws: WebSocketRelay | None = None
        self._deadline: float | None = None
        self._armed: float | None = None  # the earliest Timer the driver was given
        self._idle_since = clock()
        self._head_deadline: float | None = None
        self._injected: tuple[tuple[str, str], Injection] | None = None
        self._to_server: list[bytes] = []
        self._shown_head: bytes | None = None  # the first part as recorded: credential redacted
        self._to_client: list[bytes] = []

    # -- what the driver asks of every handler -----------------------------------------------------

    # A WebSocket's tape is its wire (set at the switch); HTTP's is what was sent.
    records_arrivals = False

    @property
    def idle(self) -> bool:
        """Between requests: nothing is in hand."""
        return self.state is State.HEAD and not self.requests.mid_message

    def heavy(self, data: bytes) -> bool:
        return False  # parsing is bounded work per byte

    def client_data(self, data: bytes, ts: int) -> list[Command]:
        if self._ws is not None:
            return self._ws.client_data(data, ts)
        out: list[Command] = []
        if self.state in (State.HEAD, State.BODY):
            self._feed(data)
            self._advance(out)
        elif self.state is not State.DONE:
            self._unfed += data
            if not self._paused:
                self._paused = True
                out.append(Pause(Side.CLIENT))
        return out

    def server_data(self, data: bytes, ts: int) -> list[Command]:
        if self._ws is not None:
            return self._ws.server_data(data, ts)
        out: list[Command] = []
        if self.state is State.RESPONSE and self.responses is not None:
            self.responses.receive(data)
            self._respond(out)
        elif self.state is State.BODY and self.responses is not None:
            # An answer before the request has ended (an early 413, say): read once it has.
            self.responses.receive(data)
            if not self._server_paused:
                self._server_paused = True
                out.append(Pause(Side.SERVER))
        elif self.upstream is not None:
            # Bytes that answer nothing the gateway sent: reading them as the next answer
            # would give one request another's response. That connection is not used again.
            self._drop_upstream(out)
        return out

    def closed(self, side: Side) -> list[Command]:
        if self._ws is not None:
            out = self._ws.closed(side)
            if side is Side.SERVER and not any(isinstance(c, End) for c in out):
                self._set_deadline(self._clock() + CLOSE_GRACE_S, out)
            return out
        out = []
        if side is Side.CLIENT:
            if self.state in (State.HEAD, State.BODY):
                self.requests.receive(b"")
                self._advance(out)
            else:
                self._client_eof = True  # the answer still goes out, then the connection closes
                if self._endless():
                    self._client_gone(out)
            return out
        if self.state is State.BODY and self.responses is not None:
            self.responses.receive(b"")  # read once the request has ended
            return out
        if self.state is State.RESPONSE and self.responses is not None:
            self.responses.receive(b"")
            self._respond(out)
        if self.upstream is not None:
            self._drop_upstream(out)
        return out

    def farewell(self, reason: EndReason, why: str) -> bytes | None:
        if self._ws is not None:
            return self._ws.farewell(reason, why)
        self.state = State.DONE
        if not self.answering or self.answered:
            return None  # between requests the close says it; mid-answer nothing else can
        self.answered = True
        return answers.error_response(*answers.ending(reason))

    def answer(self, question: object, answer: object) -> list[Command]:
        out: list[Command] = []
        if self.state is State.DONE:
            return out
        if isinstance(question, Admit):
            self._admitted(answer, out)  # type: ignore[arg-type]
        elif isinstance(question, OpenSession):
            self._session_opened(question, answer, out)
        elif isinstance(question, Connect):
            if isinstance(answer, ConnectFailed):
                self._upstream_failed(answer.status, answer.message, out)
            else:
                self.upstream, self.responses = question.target.name, None
                self._forward(out)
        return out

    def wake(self) -> list[Command]:
        out: list[Command] = []
        now = self._clock()
        if self._armed is not None and now >= self._armed:  # the driver's timer has fired
            self._armed = None
        if self._ws is not None:
            if self._deadline is not None and now >= self._deadline:
                return [End(EndReason.UPSTREAM_CLOSED)]
            self._set_deadline(self._deadline, out)
            return out
        due = self._deadline is not None and now >= self._deadline
        if due and self.state is State.HEAD:
            if self.requests.mid_message:
                self._error(408, "the request head did not arrive in time", out)
                out.append(End(EndReason.CLIENT_CLOSED))
            else:
                out.append(End(EndReason.CLIENT_CLOSED))  # idle, or never admitted in time
            return out
        if due and self.state is State.BODY:
            self._error(408, "the request body stopped arriving", out)
            out.append(End(EndReason.CLIENT_CLOSED))
            return out
        if due and self.state is State.RESPONSE and self._x and self._x.response is None:
            name = self._x.admitted.target.name if self._x.admitted else "?"
            self._upstream_failed(
                504, f"target {name!r} did not answer in {RESPONSE_TIMEOUT_S:g} s", out
            )
            return out
        if self.state in (State.HEAD, State.BODY):
            self._feed(b"")
            self._advance(out)
        self._set_deadline(self._deadline, out)  # arm again if the fired timer was the one
        return out

    # -- reading requests --------------------------------------------------------------------------

    def _feed(self, data: bytes) -> None:
        """Give the reader what arrived, after what was kept unread while a request was in hand."""
        if self._unfed:
            data = bytes(self._unfed) + data
            self._unfed.clear()
        if data:
            self.requests.receive(data)
        if self._client_eof and not self.requests.upgraded:
            self._client_eof = False
            self.requests.receive(b"")

    def _advance(self, out: list[Command]) -> None:
        """Go on with the request in hand (or the next) as far as the bytes read allow."""
        try:
            if self.state is State.HEAD:
                self._next_request(out)
            elif self.state is State.BODY:
                self._body(out)
        except wire.HttpError as exc:
            self._malformed(exc, out)

    def _next_request(self, out: list[Command]) -> None:
        event = self.requests.next_event()
        if event is NEED_DATA:
            now = self._clock()
            if self.requests.mid_message and self._head_deadline is None:
                self._head_deadline = now + HEAD_TIMEOUT_S  # absolute: trickling won't extend it
            limit = self._head_deadline or self._idle_since + IDLE_TIMEOUT_S
            if self._preauth_until is not None:
                limit = min(limit, self._preauth_until)
            self._set_deadline(limit, out)
            return
        if not isinstance(event, wire.Request):  # CLOSED
            out.append(End(EndReason.CLIENT_CLOSED))
            self.state = State.DONE
            return
        self._head_deadline = None
        self.answering, self.answered = True, False
        self.state = State.ADMITTING
        self._set_deadline(None, out)
        self._x = _Exchange(event, self._now_ns())
        try:
            route = paths.route(self._unprefixed(event.target))
        except paths.PathEscape as exc:
            message = (f"{exc}: the path is checked after resolving dot segments, encoded "
                       "dots, backslashes and encoded slashes")  # fmt: skip
            self._refuse(answers.Refused(400, message, kind="path_escape"), None, out)
            return
        if route is not None:
            self._x.rest = route.path
        token = x.bearer_token(event.headers)
        login = Login(self.protocol, tls=self.tls, target=route.target if route else None,
                      token=token)  # fmt: skip
        out.append(Ask(Admit(login)))

    def _admitted(self, outcome: Admitted | Refusal, out: list[Command]) -> None:
        assert self._x is not None
        if isinstance(outcome, Refusal):
            self._refuse(answers.Refused.of(outcome), outcome, out)
            return
        self._preauth_until = None
        self._x.admitted = outcome
        if isinstance(outcome.target, McpTarget):
            self._mcp_read(out)  # its tape session is known once its body is
            return
        key = (outcome.target.name, outcome.identity.subject, None)
        if self.session == key:
            self._forward_or_connect(out)
            return
        if self.session is not None:
            out.append(Ask(CloseSession(EndReason.TARGET_CHANGED)))
            self.session = None
        if self.upstream is not None:
            self._drop_upstream(out)
        out.append(Ask(OpenSession(outcome, self._now_ns())))

    def _session_opened(self, question: OpenSession, answer: object, out: list[Command]) -> None:
        admitted = question.admitted
        self.session = (admitted.target.name, admitted.identity.subject, question.boundary)
        self._ledger = answer if isinstance(answer, Ledger) else Ledger()
        attrs = auth_attrs(admitted, "oidc", tls=self.tls)
        out.append(Record([Event(self._now_ns(), EventType.AUTH, None, attrs)]))
        if self._x is not None and self._x.mcp is not None:
            self._mcp_judge(out)
        else:
            self._forward_or_connect(out)

    def _forward_or_connect(self, out: list[Command]) -> None:
        assert self._x is not None and self._x.admitted is not None
        target = self._x.admitted.target
        assert isinstance(target, HttpTarget)
        self._x.inject = inject = self._injection(target, self._x.admitted.credential)
        if not wire.safe_value(inject.header[1]):
            self._upstream_failed(502, f"target {target.name!r}: its credential holds a line "
                                  "break or NUL, which would break the request", out)  # fmt: skip
            return
        reusable = self.responses is None or self.responses.reusable
        if self.upstream == target.name and reusable:
            self._forward(out)
            return
        if self.upstream is not None:
            self._drop_upstream(out)
        out.append(Ask(Connect(target)))

    def _forward(self, out: list[Command]) -> None:
        """The head goes out with what of the body has arrived, in one write (a GET's head
        and end, a small body); only the head carries the credential. The body is framed as
        the client framed it, but by the gateway: a length, or chunks it writes."""
        ex = self._x
        assert ex is not None and ex.admitted is not None and ex.inject is not None
        if ex.mcp is not None:
            self._mcp_send(out)
            return
        target = ex.admitted.target
        assert isinstance(target, HttpTarget)
        request, inject = ex.request, ex.inject
        ex.websocket = x.wants_websocket(request.headers)
        headers = x.upstream_request_headers(request.headers, inject.host, inject.header,
                                             self.client_addr)  # fmt: skip
        ex.path = target.upstream_base_path + x.strip_access_token(ex.rest)
        head = wire.request_head(request.method, ex.path.encode(), headers, request.body)
        self._to_server = [head]
        self._shown_head = head.replace(inject.header[1], x.REDACTED.encode())
        head_request = request.method == b"HEAD"
        self.responses = (self.responses.again(head_request) if self.responses is not None
                          else wire.ResponseReader(head_request))  # fmt: skip
        self._read_body(inject, out)

    def _read_body(self, inject: Injection, out: list[Command]) -> None:
        """The request's body is read from here on (forwarded as it comes, or held: MCP)."""
        ex = self._x
        assert ex is not None
        request = ex.request
        ex.masker = x.Masker(*inject.echo)
        ex.body = x.Body(self.body_cap)
        self.state = State.BODY
        self._feed(b"")  # what arrived while it was admitted
        if self._paused:
            self._paused = False
            out.append(Resume(Side.CLIENT))
        if request.expects_continue and not request.body.empty and not self.requests.pending:
            self._flush_server(out)  # the head, unless it is held with the body
            self._send(CONTINUE, out)
            self._flush_client(out)
        self._advance(out)

    def _body(self, out: list[Command]) -> None:
        ex = self._x
        assert ex is not None and ex.body is not None
        chunked = ex.request.body.chunked
        while True:
            event = self.requests.next_event()
            if event is NEED_DATA:
                self._flush_server(out)
                self._set_deadline(self._clock() + HEAD_TIMEOUT_S, out)
                return
            if isinstance(event, wire.Data) and ex.held is not None:
                ex.body.add(event.data)
                ex.held += event.data
                limit = ex.admitted.target.max_body_bytes  # type: ignore[union-attr]
                if len(ex.held) > limit:
                    self._too_large(limit, out)
                    return
            elif isinstance(event, wire.Data):
                ex.body.add(event.data)
                self._to_server.append(wire.chunk(event.data) if chunked else event.data)
            elif event is END:
                if ex.held is not None:
                    self._mcp_session(out)
                    return
                if chunked:
                    self._to_server.append(wire.LAST_CHUNK)
                self._flush_server(out)
                break
            else:
                raise wire.HttpError("the client closed in the middle of a request")
        out.append(Record([self._request_event(ex)]))
        self._await_answer(out)

    def _request_event(self, ex: _Exchange) -> Event:
        request = ex.request
        assert ex.inject is not None and ex.body is not None
        return Event(ex.started_ns, EventType.REQUEST, C2S, {
            "method": request.method.decode("latin-1"),
            "url": x.strip_access_token(request.target.decode("latin-1")),
            "upstream_path": ex.path,
            "http_version": x.http_version(request.version),
            "headers": x.recorded_headers(request.headers, ex.inject.header[0]),
            **ex.body.attrs(x.content_type(request.headers)),
        })  # fmt: skip

    def _await_answer(self, out: list[Command]) -> None:
        """The request has gone out whole: its answer is awaited."""
        ex = self._x
        assert ex is not None
        ex.body = x.Body(self.body_cap)  # the response's, from here on
        self.state = State.RESPONSE
        if self._server_paused:
            self._server_paused = False
            out.append(Resume(Side.SERVER))
        self._set_deadline(self._clock() + RESPONSE_TIMEOUT_S, out)
        assert self.responses is not None
        if self.responses.pending:  # answered before the request ended (an early 4xx, say)
            self._respond(out)

    # -- the target's answer -----------------------------------------------------------------------

    def _respond(self, out: list[Command]) -> None:
        ex, responses = self._x, self.responses
        assert ex is not None and responses is not None
        if ex.response is None and not self._head(out):
            return
        self._response_body(out)

    def _head(self, out: list[Command]) -> bool:
        """The answer's head, if it has come; False while it is awaited or when it failed."""
        ex, responses = self._x, self.responses
        assert ex is not None and responses is not None and ex.masker is not None
        name = ex.admitted.target.name if ex.admitted else "?"
        while True:
            try:
                event = responses.next_event()
            except wire.HttpError as exc:
                self._upstream_failed(502, f"target {name!r} broke the exchange ({exc})", out)
                return False
            if event is NEED_DATA:
                return False
            if not isinstance(event, wire.Response):
                self._upstream_failed(502, f"target {name!r} closed before answering", out)
                return False
            if event.status < 200 and event.status != 101:
                self._set_deadline(self._clock() + RESPONSE_TIMEOUT_S, out)
                continue  # 1xx: the answer proper is still to come
            break
        self._set_deadline(None, out)  # a body has no deadline: it may stream for long
        if event.status == 101:
            if not ex.websocket:
                self._upstream_failed(502, "the target switched protocols unasked", out)
            else:
                self._websocket(event, out)
            return False
        # An upstream that echoes the credential shows it to no one: masked (same length) in
        # the headers and, when the body is sent as is, in the body, before the client or the
        # recording sees them. A compressed body cannot be checked: the event says so. The
        # client's framing is the gateway's: the upstream's length when it gave one, else
        # chunks (or, to an HTTP/1.0 client, the close).
        request = ex.request
        ex.response = event
        ex.headers = [(n, ex.masker.header(v)) for n, v in event.headers]
        ex.maskable = x.identity_encoded(ex.headers)
        framing = event.body
        if ex.mcp is not None:
            named = ex.mcp.response_head(event.status, ex.headers)
            if named is not None and self.session is not None and self.session[2] != named:
                out.append(Ask(NameSession(named)))  # an initialize's answer names the session
                self.session = (self.session[0], self.session[1], named)
            if not framing.empty and request.method != b"HEAD" and event.status != 304:
                framing = wire.Body(chunked=True)  # read and maybe rewritten: re-framed
        if framing.chunked or framing.until_close:
            framing = wire.Body(chunked=request.version == b"1.1",
                                until_close=request.version != b"1.1")  # fmt: skip
        ex.chunked_out = framing.chunked
        ex.keep_alive = request.keep_alive and not framing.until_close
        shown = x.client_response_headers(ex.headers)
        if not ex.keep_alive:
            shown.append((b"connection", b"close"))
        announced = None  # what a HEAD's or a 304's answer says the body would be
        if request.method == b"HEAD" or event.status == 304:
            announced = x.header(ex.headers, b"content-length")
        self.answered = True
        ex.reason = ex.masker.header(event.reason)
        self._to_client.append(wire.response_head(event.status, ex.reason, shown, framing,
                                                  announced=announced))  # fmt: skip
        if self._client_eof and self._endless():
            self._client_gone(out)
            return False
        return True

    def _response_body(self, out: list[Command]) -> None:
        ex, responses = self._x, self.responses
        assert ex is not None and responses is not None and ex.masker is not None
        assert ex.body is not None
        frame = wire.chunk if ex.chunked_out else bytes
        while True:
            try:
                part = responses.next_event()
            except wire.HttpError:
                part = None
            if part is NEED_DATA:
                self._flush_client(out)
                return
            if isinstance(part, wire.Data):
                data = ex.masker.feed(part.data) if ex.maskable else part.data
                if ex.mcp is not None:  # masked again: a rewrite writes escapes out plainly
                    data = ex.masker.header(ex.mcp.response_data(data))
                    self._mcp_events(out)
                if data:
                    ex.body.add(data)
                    self._to_client.append(frame(data))
                continue
            tail = ex.masker.flush()
            complete = part is END
            if ex.mcp is not None:
                tail = ex.masker.header(ex.mcp.response_data(tail) + ex.mcp.response_end(complete))
                self._mcp_events(out)
            if tail:
                ex.body.add(tail)
                self._to_client.append(frame(tail))
            if complete and ex.chunked_out:
                self._to_client.append(wire.LAST_CHUNK)
            self._flush_client(out)
            self._answer_ended(complete, out)
            return

    def _endless(self) -> bool:
        """Whether the answer in hand is an event stream: it may never end by itself (MCP's GET
        stream, a `subscriptions/listen`), so it goes on only while the client is there."""
        ex = self._x
        if ex is None or ex.headers is None:
            return False
        ctype = x.content_type(ex.headers).split(";")[0].strip().lower()
        return ctype == "text/event-stream"

    def _client_gone(self, out: list[Command]) -> None:
        """The client closed while an event stream came: the rest would go to no one, and the
        target would go on sending it to the gateway for as long as the stream lasts."""
        ex = self._x
        assert ex is not None
        self._flush_client(out)
        if ex.mcp is not None:
            ex.mcp.response_end(False)  # the calls it left unanswered
            self._mcp_events(out)
        self._answer_ended(False, out, by_client=True)

    def _answer_ended(self, complete: bool, out: list[Command], by_client: bool = False) -> None:
        ex, responses = self._x, self.responses
        assert ex is not None and ex.response is not None and ex.body is not None
        assert ex.headers is not None and responses is not None
        if not complete and not by_client:  # the upstream dropped mid-body: the client sees it
            name = ex.admitted.target.name if ex.admitted else "?"
            out.append(Record([Event(self._now_ns(), EventType.UPSTREAM_ERROR, S2C, {
                "reason": f"target {name!r} closed mid-response"})]))  # fmt: skip
        attrs: dict[str, object] = {
            "status": ex.response.status,
            "reason": ex.reason.decode("latin-1"),
            "http_version": x.http_version(ex.response.version),
            "headers": x.recorded_headers(ex.headers),
            "duration_ns": self._now_ns() - ex.started_ns,
            **ex.body.attrs(x.content_type(ex.headers)),
        }
        if not complete:
            attrs["incomplete"] = True
        if by_client:
            attrs["client_closed"] = True
        if ex.masker is not None and ex.masker.masked:
            attrs["credential_masked"] = ex.masker.masked
        if not ex.maskable and ex.body.length:
            attrs["unmasked"] = "content-encoded body: not checked for the credential"
        out.append(Record([Event(self._now_ns(), EventType.RESPONSE, S2C, attrs)]))
        if (ex.mcp is not None and complete and ex.request.method == b"DELETE"
                and ex.response.status < 300 and self.session is not None):  # fmt: skip
            out.append(Ask(CloseSession(EndReason.CLIENT_CLOSED, final=True)))  # the session's end
            self.session = None
        if not complete or not responses.reusable:
            self._drop_upstream(out)
        if not complete:
            self._done(EndReason.CLIENT_CLOSED if by_client else EndReason.UPSTREAM_CLOSED, out)
            return
        self._next_turn(ex.keep_alive, out)

    def _next_turn(self, keep_alive: bool, out: list[Command]) -> None:
        """The answer has ended: the connection closes, or the next request is read."""
        if not keep_alive:
            self._done(EndReason.CLIENT_CLOSED, out)
            return
        # The next request: what the client sent meanwhile is read on the client's lane.
        self.state, self._x = State.HEAD, None
        self.answering = self.answered = False
        self._idle_since = self._clock()
        if self.requests.upgraded:  # the target did not switch: HTTP goes on
            self.requests.resume()
        if self._paused:
            self._paused = False
            out.append(Resume(Side.CLIENT))
        if self._unfed or self._client_eof or self.requests.pending or self.requests.mid_message:
            out.append(Wake())
        else:  # nothing of the next request yet: wait for it (a Wake costs a loop turn)
            self._set_deadline(self._idle_since + IDLE_TIMEOUT_S, out)

    def _websocket(self, switch: wire.Response, out: list[Command]) -> None:
        """101: the connection is a WebSocket from here on; the bytes either reader had read
        past the switch come first."""
        ex, responses = self._x, self.responses
        assert ex is not None and ex.masker is not None and responses is not None
        self.answered = True
        headers = [(n, ex.masker.header(v)) for n, v in switch.headers]  # an echo shows no one
        reason = ex.masker.header(switch.reason)
        self._send(wire.response_head(101, reason, x.client_response_headers(
            headers, websocket=True), wire.NO_BODY), out)  # fmt: skip
        self._flush_client(out)
        out.append(Record([Event(self._now_ns(), EventType.RESPONSE, S2C, {
            "status": 101, "reason": reason.decode("latin-1"), "http_version": "HTTP/1.1",
            "headers": x.recorded_headers(headers),
            "duration_ns": self._now_ns() - ex.started_ns,
            "body_length": 0, "content_type": ""})]))  # fmt: skip
        self.state = State.WEBSOCKET
        self._ws = WebSocketRelay(self.body_cap, self._now_ns, ex.masker)
        self.records_arrivals = True
        early = self.requests.trailing + bytes(self._unfed)
        self._unfed.clear()
        if early:  # read before the switch, so not yet recorded: recorded as forwarded
            out.extend(c if not isinstance(c, ToServer) else ToServer(c.data, shown=c.data)
                       for c in self._ws.client_data(early, self._now_ns()))  # fmt: skip
        if responses.trailing:
            out.extend(self._ws.server_data(responses.trailing, self._now_ns()))
        if self._paused:
            self._paused = False
            out.append(Resume(Side.CLIENT))
        if self._client_eof:
            out.extend(self._ws.closed(Side.CLIENT))

    def _done(self, reason: EndReason, out: list[Command]) -> None:
        """The connection ends (after what is in `out`)."""
        self.state = State.DONE
        out.append(End(reason))

    # -- the gateway's own answers -----------------------------------------------------------------

    def _refuse(
        self, refused: answers.Refused, refusal: Refusal | None, out: list[Command]
    ) -> None:
        ex = self._x
        assert ex is not None
        request = ex.request
        try:
            route = paths.route(self._unprefixed(request.target))
        except paths.PathEscape:
            route = None
        out.append(Ask(RecordRefusal(
            refusal.identity if refusal else None,
            route.target if route else "(none)",
            {"method": "oidc", "refusal": refused.kind, "status": refused.status,
             "reason": refused.message, "tls": self.tls},
            started_ns=ex.started_ns,
            first=Event(ex.started_ns, EventType.REQUEST, C2S, {
                "method": request.method.decode("latin-1"),
                "url": x.strip_access_token(request.target.decode("latin-1")),
                "http_version": x.http_version(request.version),
                "headers": x.recorded_headers(request.headers)}),
        )))  # fmt: skip
        self._error(refused.status, refused.message, out, refused.headers, record=False)
        self._done(EndReason.CLIENT_CLOSED, out)

    def _malformed(self, exc: wire.HttpError, out: list[Command]) -> None:
        """A request that broke HTTP: in its session, or (before any) as a refusal, whose
        flood is folded like any other. Its bytes are not kept: they may hold a token."""
        message = f"malformed HTTP request: {exc}"
        if self.session is not None:
            out.append(Record([Event(self._now_ns(), EventType.PROTOCOL_ERROR, C2S,
                                     {"message": message})]))  # fmt: skip
        else:
            out.append(Ask(RecordRefusal(None, "(none)", {
                "method": "oidc", "refusal": "malformed", "status": exc.status,
                "reason": message, "tls": self.tls})))  # fmt: skip
        self._error(exc.status, message, out)
        self._done(EndReason.PROTOCOL_ERROR, out)

    def _upstream_failed(self, status: int, message: str, out: list[Command]) -> None:
        out.append(
            Record([Event(self._now_ns(), EventType.UPSTREAM_ERROR, None, {"reason": message})])
        )
        self._drop_upstream(out)
        self._error(status, message, out)
        self.state = State.DONE
        # The connection closes after this answer: the session ends because of the target.
        out.append(End(EndReason.UPSTREAM_UNAVAILABLE))

    def _error(
        self,
        status: int,
        message: str,
        out: list[Command],
        headers: answers.Headers | None = None,
        *,
        record: bool = True,
    ) -> None:
        if self.answered:
            return
        self.answered = True
        self._to_client.clear()
        data = answers.error_response(status, message, headers)
        out.append(ToClient(data, record=record and self.session is not None))

    # -- bytes out ---------------------------------------------------------------------------------

    def _send(self, data: bytes, out: list[Command]) -> None:
        self._to_client.append(data)

    def _flush_client(self, out: list[Command]) -> None:
        """What is ready for the client goes in one write (a small answer is one write; a
        stream, server-sent events say, goes on as it arrives)."""
        if self._to_client:
            out.append(ToClient(b"".join(self._to_client)))
            self._to_client.clear()

    def _flush_server(self, out: list[Command]) -> None:
        if not self._to_server:
            return
        data = b"".join(self._to_server)
        shown = data
        if self._shown_head is not None:
            shown = self._shown_head + data[len(self._to_server[0]) :]
            self._shown_head = None
        self._to_server.clear()
        out.append(ToServer(data, shown))

    def _drop_upstream(self, out: list[Command]) -> None:
        self.upstream, self.responses = None, None
        out.append(Disconnect())

    def _set_deadline(self, at: float | None, out: list[Command]) -> None:
        """The deadline of what is awaited now. The driver is told only of one earlier than the
        timer it has (a kept-alive request moves it four times: that would cost a timer each);
        when that one fires, `wake` checks the deadline of the moment and arms again."""
        self._deadline = at
        if at is not None and (self._armed is None or at < self._armed):
            self._armed = at
            out.append(Timer(at))

    def _injection(self, target: HttpTarget, credential: object) -> Injection:
        """What the target's credential looks like on the wire, worked out once per connection
        (the credential changes only when the owner's cache refetches it)."""
        if isinstance(target, McpTarget) and target.stdio:  # its credentials are its env
            env = credential if isinstance(credential, dict) else {}
            secrets = tuple(env[v.name].encode() for v in target.env if v.secret and v.name in env)
            return Injection((b"", b""), secrets, b"stdio")
        assert isinstance(credential, str)
        cached = self._injected
        if cached is not None and cached[0] == (target.name, credential):
            return cached[1]
        prefix = target.inject_header.prefix
        value = credential.encode("latin-1")
        echo = value[len(prefix) :] if prefix and credential.startswith(prefix) else value
        inject = Injection((target.inject_header.name.lower().encode(), value), (echo,),
                           _host_header(target))  # fmt: skip
        self._injected = ((target.name, credential), inject)
        return inject


def _host_header(target: HttpTarget) -> bytes:
    default = 443 if target.upstream_https else 80
    port = target.upstream.port
    host = target.upstream.host
    if ":" in host:
        host = f"[{host}]"
    return (host if port == default else f"{host}:{port}").encode()

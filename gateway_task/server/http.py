"""One HTTP client connection: requests routed by their first path segment, recorded both ways.

Bearer token → policy → the target's credential instead of the token → upstream (kept alive per
client connection) → response streamed back as it arrives. `protocols/http/wire` reads both sides
strictly and frames what the gateway writes; what is forwarded and recorded is decided in
`protocols/http/exchange`. A tape session is one client connection's
requests to one target by one subject; a request for another target (or by another subject)
closes it and starts the next.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import ssl
import time
from dataclasses import dataclass, field, replace
from http import HTTPStatus
from typing import TYPE_CHECKING

from gateway_task.recording import Recorder, RecordingUnavailable
from gateway_task.server.admission import run_admission
from gateway_task.server.deadline import Deadline
from gateway_task.server.driver import Handover, Pipe, unread
from gateway_task.tls import upstream_https_context
from tapegate.protocols.http import exchange as x
from tapegate.protocols.http import paths, wire
from tapegate.protocols.http.target import HttpTarget
from tapegate.protocols.http.websocket import WebSocketRelay
from tapegate.protocols.http.wire import END, NEED_DATA
from tapegate.proxy.admission import Admitted, Login, Refusal, RefusalKind, Words, admit, auth_attrs
from tapegate.tape import Direction, Event, Identity
from tapegate.vocab import EndReason

if TYPE_CHECKING:
    from gateway_task.server.admission import Slot
    from gateway_task.server.gateway import Gateway

log = logging.getLogger("tapegate.gateway")

C2S, S2C = Direction.CLIENT_TO_SERVER, Direction.SERVER_TO_CLIENT
READ_SIZE = 256 * 1024
HEAD_TIMEOUT_S = 30.0  # a request's head, once its first byte arrived
IDLE_TIMEOUT_S = 300.0  # between requests on a kept-alive connection
CONNECT_TIMEOUT_S = 10.0
# A kept-alive connection's admission (same token, same target) is reused this long, never past
# the token's exp nor while the archive fails; credentials are cached longer (secrets.py).
ADMISSION_REUSE_S = 30.0
RESPONSE_TIMEOUT_S = 60.0  # from the request's end to the response's head


HTTP_WORDS = Words(
    "the first path segment",
    "use https:// (the token you just sent in clear text may have been seen on the way: "
    "fetch a new one)",
    "as Authorization: Bearer <token>",
)
# What an HTTP client gets for each of admission's refusals.
STATUSES = {
    RefusalKind.TLS_REQUIRED: 403, RefusalKind.UNKNOWN_TARGET: 404, RefusalKind.NO_TOKEN: 401,
    RefusalKind.BAD_TOKEN: 401, RefusalKind.GROUPS: 403, RefusalKind.ARCHIVE_FAILING: 503,
    RefusalKind.NO_CREDENTIAL: 502,
}  # fmt: skip


class _Refused(Exception):
    def __init__(
        self, status: int, message: str, headers: x.Headers | None = None, kind: str = "protocol"
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.headers, self.kind = status, message, headers or [], kind

    @classmethod
    def of(cls, refusal: Refusal) -> _Refused:
        message, headers = refusal.message, []
        if refusal.kind == RefusalKind.UNKNOWN_TARGET and refusal.hint:
            message = f"{message} ({refusal.hint})"
        if refusal.kind == RefusalKind.NO_TOKEN:
            headers = [(b"www-authenticate", b'Bearer realm="tapegate"')]
        elif refusal.kind == RefusalKind.BAD_TOKEN:
            why = refusal.message.removeprefix("authentication failed: ").replace('"', "'")
            challenge = f'Bearer realm="tapegate", error="invalid_token", error_description="{why}"'
            headers = [(b"www-authenticate", challenge.encode())]
        return cls(STATUSES[refusal.kind], message, headers, refusal.kind)


class _Closed(Exception):
    """The client went away (or broke HTTP) mid-exchange: nothing more can be sent to it."""


@dataclass(eq=False)
class HttpSession:
    recorder: Recorder
    target: HttpTarget
    subject: str
    tasks: list[asyncio.Task[object]] = field(default_factory=list)
    end_reason: str | None = None
    idle: bool = True
    pipe: Pipe | None = None  # after a WebSocket upgrade

    def end(self, reason: EndReason) -> None:
        if reason == EndReason.TOKEN_EXPIRED and self.idle:
            return  # between requests: the next request is checked, and gets its 401
        self.end_reason = self.end_reason or reason
        if self.pipe is not None:  # the relay says why in a close frame, where it can
            self.pipe.end(reason)
            return
        for task in self.tasks:
            task.cancel()


@dataclass(eq=False)
class _Upstream:
    target: str
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    responses: wire.ResponseReader | None = None  # the answer to the last request sent

    @property
    def idle(self) -> bool:
        """Whether it can carry the next request: its last answer was whole and kept it open."""
        ready = self.responses is None or self.responses.reusable
        # Bytes that arrived since the answer ended answer nothing the gateway sent: reading
        # them as the next answer would give one request another's response.
        return ready and not self.reader.at_eof() and not unread(self.reader)


@dataclass(frozen=True, slots=True)
class _Injection:
    header: tuple[bytes, bytes]  # (lowercase name, value) as sent upstream
    echo: bytes  # what an upstream echoing it would show: the value without its prefix
    host: bytes  # the upstream's Host header


@dataclass(eq=False)
class _Outbox:
    """Bytes for one side, sent (and recorded) in one write when the relay would wait."""

    parts: list[bytes]  # the first is never empty (a head)
    shown_head: bytes | None = None  # the first part as recorded: the credential redacted

    def append(self, part: bytes | None) -> None:
        if part:
            self.parts.append(part)

    def take(self) -> tuple[bytes, bytes]:
        """(bytes to send, bytes to record), and empty the box."""
        data = b"".join(self.parts)
        shown = data
        if self.shown_head is not None and self.parts:
            shown = self.shown_head + data[len(self.parts[0]) :]
            self.shown_head = None
        self.parts.clear()
        return data, shown


class HttpConnection:
    def __init__(
        self,
        gw: Gateway,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        tls: bool,
        slot: Slot,
    ) -> None:
        self.gw = gw
        self.slot = slot  # pre-auth until a request is admitted
        self.reader, self.writer, self.tls = reader, writer, tls
        peer = writer.get_extra_info("peername") or ("?", 0)
        self.client_addr = f"{peer[0]}:{peer[1]}"
        self.requests = wire.RequestReader()
        self.answered = False  # the current request's answer has begun: no error can follow
        self.answering = False  # a request is in hand and its answer has not begun
        self.deadline = Deadline()
        self.session: HttpSession | None = None
        self.upstream: _Upstream | None = None
        self._verified: tuple[str, Identity] | None = None
        self._admitted: tuple[str, str, Admitted, float] | None = None  # token, target, until
        self._injected: tuple[tuple[str, str], _Injection] | None = None
        self._identity_for_refusal: Identity | None = None  # a verified token, refused by policy

    async def run(self) -> None:
        reason = "client_closed"
        try:
            while True:
                self.answered = self.answering = False
                event = await self._request_head()
                if not isinstance(event, wire.Request):
                    break  # CLOSED
                self.answering = True
                if not await self._exchange(event) or not event.keep_alive:
                    break
                if self.requests.upgraded:  # the target did not switch: HTTP goes on
                    self.requests.resume()
        except wire.HttpError as exc:
            reason = "protocol_error"
            self._malformed(exc)
            if not self.answered:
                await self._send_error(exc.status, f"malformed HTTP request: {exc}", record=True)
        except TimeoutError:
            if not self.answered and self.requests.mid_message:
                await self._send_error(408, "the request head did not arrive in time", record=True)
        except (_Closed, ConnectionError, ssl.SSLError):
            pass
        except RecordingUnavailable as exc:
            reason = "recording_failed"
            log.error("http %s: recording unavailable: %s", self.client_addr, exc)
            if not self.answered:
                await self._send_error(503, _UNRECORDABLE, record=False)
        except asyncio.CancelledError:
            # end(): the gateway stops this session (shutdown, a failing archive). A request
            # waiting for its response gets the reason as a 503; between requests, the close.
            ended = self.session.end_reason if self.session is not None else None
            if ended is None:
                raise
            if self.answering and not self.answered:
                status, message = {
                    EndReason.RECORDING_FAILED: (503, _UNRECORDABLE),
                    EndReason.TOKEN_EXPIRED: (401, "your OIDC token has expired: send a fresh one"),
                }.get(ended, (503, "tapegate is shutting down: retry on another gateway"))  # type: ignore[call-overload]
                # What the client reads is recorded, unless the recording is what failed.
                recorded = ended != EndReason.RECORDING_FAILED
                await self._send_error(status, message, record=recorded)
        finally:
            self.deadline.close()
            self._close_upstream()
            self._end_session(reason)
            self.slot.release()

    # -- one request ----------------------------------------------------------------------------

    async def _exchange(self, request: wire.Request) -> bool:
        """Handle one request; False when the connection must close afterwards."""
        started = time.time_ns()
        try:
            admitted, rest = await self._admit(request)
            self.slot.admitted()
        except _Refused as refusal:
            self._record_refusal(request, refusal, started)
            await self._send_error(refusal.status, refusal.message, refusal.headers, record=False)
            return False
        session = self._session_for(admitted)
        session.idle = False
        try:
            return await self._forward(session, request, rest, started, admitted.credential)
        finally:
            session.idle = True

    async def _admit(self, request: wire.Request) -> tuple[Admitted, str]:
        """The admitted caller and the path after the target segment, or _Refused."""
        try:
            route = paths.route(request.target)
        except paths.PathEscape as exc:
            raise _Refused(400, f"{exc}: the path is checked after resolving dot segments, "
                           "encoded dots, backslashes and encoded slashes",
                           kind="path_escape") from None  # fmt: skip
        token = x.bearer_token(request.headers)
        reused = self._admitted
        if (reused is not None and route is not None and reused[:2] == (token, route.target)
                and time.time() < reused[3] and self.gw.sink.failure is None):  # fmt: skip
            return reused[2], route.path
        login = Login("http", tls=self.tls, target=route.target if route else None, token=token)
        try:
            steps = admit(self.gw.config, login, HTTP_WORDS)
            outcome = await run_admission(self.gw, steps, verify=self._verify)
        finally:
            del login
        if isinstance(outcome, Refusal):
            self._admitted = None
            self._identity_for_refusal = outcome.identity
            raise _Refused.of(outcome)
        assert route is not None and token is not None
        until = time.time() + ADMISSION_REUSE_S
        if outcome.identity.expires_at is not None:
            until = min(until, outcome.identity.expires_at)
        self._admitted = (token, route.target, outcome, until)
        return outcome, route.path

    async def _verify(self, token: str) -> Identity:
        # A kept-alive client sends the same token with every request: verify it once.
        if self._verified is not None and self._verified[0] == token:
            identity = self._verified[1]
            if identity.expires_at is None or identity.expires_at > time.time():
                return identity
        identity = await self.gw.verifier.verify(token)
        self._verified = (token, identity)
        return identity

    async def _forward(
        self, session: HttpSession, request: wire.Request, rest: str, started: int,
        credential: str,
    ) -> bool:  # fmt: skip
        recorder = session.recorder
        target = session.target
        inject = self._injection(target, credential)
        secret = inject.header[1]
        try:
            if not wire.safe_value(secret):
                raise _Refused(502, f"target {target.name!r}: its credential holds a line break "
                               "or NUL, which would break the request")  # fmt: skip
            up = await self._upstream(target)
        except _Refused as refusal:
            await self._upstream_failed(session, refusal.status, refusal.message)
            return False
        websocket = x.wants_websocket(request.headers)
        headers = x.upstream_request_headers(
            request.headers, inject.host, inject.header, self.client_addr
        )
        path = target.upstream_base_path + x.strip_access_token(rest)
        # What is ready goes upstream in one write, made before waiting for more from the client
        # (a GET's head and end, a small body); only the head carries the credential. The body
        # is framed as the client framed it, but by the gateway: a length, or chunks it writes.
        head = wire.request_head(request.method, path.encode(), headers, request.body)
        out = _Outbox([head], shown_head=head.replace(secret, x.REDACTED.encode()))
        head_request = request.method == b"HEAD"
        up.responses = (up.responses.again(head_request) if up.responses is not None
                        else wire.ResponseReader(head_request))  # fmt: skip
        if request.expects_continue and not request.body.empty and not self.requests.pending:
            await self._to_upstream(recorder, up, out)
            await self._to_client(recorder, _Outbox([b"HTTP/1.1 100 Continue\r\n\r\n"]))
        chunked = request.body.chunked
        body = x.Body(self.gw.config.recording.body_cap)
        while True:
            event = self.requests.next_event()
            if event is NEED_DATA:
                await self._to_upstream(recorder, up, out)
                event = await self._client_event(HEAD_TIMEOUT_S)
            if isinstance(event, wire.Data):
                body.add(event.data)
                out.append(wire.chunk(event.data) if chunked else event.data)
            elif event is END:
                if chunked:
                    out.append(wire.LAST_CHUNK)
                await self._to_upstream(recorder, up, out)
                break
            else:
                raise _Closed
        url = x.strip_access_token(request.target.decode("latin-1"))
        recorder.event(Event(started, "request", C2S, {
            "method": request.method.decode("latin-1"),
            "url": url,
            "upstream_path": path,
            "http_version": x.http_version(request.version),
            "headers": x.recorded_headers(request.headers, inject.header[0]),
            **body.attrs(x.content_type(request.headers)),
        }))  # fmt: skip
        masker = x.Masker(inject.echo)
        return await self._respond(session, up, request, started, websocket, masker)

    def _injection(self, target: HttpTarget, credential: str) -> _Injection:
        """What the target's credential looks like on the wire, worked out once per connection
        (the credential changes only when the cache in secrets.py refetches it)."""
        cached = self._injected
        if cached is not None and cached[0] == (target.name, credential):
            return cached[1]
        prefix = target.inject_header.prefix
        value = credential.encode("latin-1")
        echo = value[len(prefix) :] if prefix and credential.startswith(prefix) else value
        inject = _Injection((target.inject_header.name.lower().encode(), value), echo,
                            _host_header(target))  # fmt: skip
        self._injected = ((target.name, credential), inject)
        return inject

    async def _respond(
        self,
        session: HttpSession,
        up: _Upstream,
        request: wire.Request,
        started: int,
        websocket: bool,
        masker: x.Masker,
    ) -> bool:
        recorder = session.recorder
        try:
            event = await self._upstream_event(up, RESPONSE_TIMEOUT_S)
            while isinstance(event, wire.Response) and event.status < 200 and event.status != 101:
                event = await self._upstream_event(up, RESPONSE_TIMEOUT_S)
        except TimeoutError:
            await self._upstream_failed(
                session, 504, f"target {session.target.name!r} did not answer in "
                f"{RESPONSE_TIMEOUT_S:g} s")  # fmt: skip
            return False
        except (wire.HttpError, ConnectionError, OSError, _Closed) as exc:
            await self._upstream_failed(
                session, 502, f"target {session.target.name!r} broke the exchange "
                f"({_why(exc)})")  # fmt: skip
            return False
        if isinstance(event, wire.Response) and event.status == 101:  # a WebSocket from here on
            if not websocket:
                await self._upstream_failed(session, 502, "the target switched protocols unasked")
                return False
            return await self._websocket(session, up, event, started, masker)
        if not isinstance(event, wire.Response):
            await self._upstream_failed(session, 502, "the target closed before answering")
            return False
        # As upstream: what is ready goes in one write, made before waiting for more (a small
        # response is one write; a stream, server-sent events say, goes on as it arrives).
        # An upstream that echoes the credential shows it to no one: masked (same length) in
        # the headers and, when the body is sent as is, in the body, before the client or the
        # recording sees them. A compressed body cannot be checked: the event says so.
        # The client's framing is the gateway's: the upstream's length when it gave one, else
        # chunks (or, to an HTTP/1.0 client, the close).
        headers = [(n, masker.header(v)) for n, v in event.headers]
        maskable = x.identity_encoded(headers)
        framing = event.body
        if framing.chunked or framing.until_close:
            framing = wire.Body(chunked=request.version == b"1.1",
                                until_close=request.version != b"1.1")  # fmt: skip
        keep_alive = request.keep_alive and not framing.until_close
        shown = x.client_response_headers(headers)
        if not keep_alive:
            shown.append((b"connection", b"close"))
        announced = None  # what a HEAD's or a 304's answer says the body would be
        if request.method == b"HEAD" or event.status == 304:
            announced = x.header(headers, b"content-length")
        self.answered = True
        reason = masker.header(event.reason)
        out = _Outbox([wire.response_head(event.status, reason, shown, framing,
                                          announced=announced)])  # fmt: skip
        frame = wire.chunk if framing.chunked else bytes
        body = x.Body(self.gw.config.recording.body_cap)
        complete = True
        while True:
            part = await self._response_part(recorder, up, out)
            if isinstance(part, wire.Data):
                data = masker.feed(part.data) if maskable else part.data
                if data:
                    body.add(data)
                    out.append(frame(data))
            elif part is END:
                tail = masker.flush()
                if tail:
                    body.add(tail)
                    out.append(frame(tail))
                if framing.chunked:
                    out.append(wire.LAST_CHUNK)
                await self._to_client(recorder, out)
                break
            else:  # the upstream dropped mid-body: the client can only see the connection close
                tail = masker.flush()
                if tail:
                    body.add(tail)
                    out.append(frame(tail))
                await self._to_client(recorder, out)
                complete = False
                recorder.event(Event(time.time_ns(), "upstream_error", S2C, {
                    "reason": f"target {session.target.name!r} closed mid-response"}))  # fmt: skip
                session.end_reason = session.end_reason or EndReason.UPSTREAM_CLOSED
                break
        attrs = {
            "status": event.status,
            "reason": reason.decode("latin-1"),
            "http_version": x.http_version(event.version),
            "headers": x.recorded_headers(headers),
            "duration_ns": time.time_ns() - started,
            **body.attrs(x.content_type(headers)),
        }
        if not complete:
            attrs["incomplete"] = True
        if masker.masked:
            attrs["credential_masked"] = masker.masked
        if not maskable and body.length:
            attrs["unmasked"] = "content-encoded body: not checked for the credential"
        recorder.event(Event(time.time_ns(), "response", S2C, attrs))
        if not complete or not up.idle:
            self._close_upstream()
        return complete and keep_alive

    async def _response_part(self, recorder: Recorder, up: _Upstream, out: _Outbox) -> object:
        """The upstream's next body event, sending `out` on before waiting for one; None when
        the upstream broke the response."""
        assert up.responses is not None
        try:
            part = up.responses.next_event()
        except wire.HttpError:
            return None
        if part is not NEED_DATA:
            return part
        await self._to_client(recorder, out)
        try:
            return await self._upstream_event(up, None)
        except (wire.HttpError, ConnectionError, OSError, _Closed):
            return None

    async def _websocket(
        self, session: HttpSession, up: _Upstream, switch: wire.Response, started: int,
        masker: x.Masker,
    ) -> bool:  # fmt: skip
        recorder = session.recorder
        self.answered = True
        headers = [(n, masker.header(v)) for n, v in switch.headers]  # an echo shows no one
        reason = masker.header(switch.reason)
        out = wire.response_head(101, reason, x.client_response_headers(
            headers, websocket=True), wire.NO_BODY)  # fmt: skip
        await self._to_client(recorder, _Outbox([out]))
        recorder.event(Event(time.time_ns(), "response", S2C, {
            "status": 101, "reason": reason.decode("latin-1"), "http_version": "HTTP/1.1",
            "headers": x.recorded_headers(headers), "duration_ns": time.time_ns() - started,
            "body_length": 0, "content_type": ""}))  # fmt: skip
        # The bytes either parser had already read past the switch come first.
        assert up.responses is not None
        client, upstream = Handover.of(self.reader, self.writer), Handover.of(up.reader, up.writer)
        pipe = Pipe(
            WebSocketRelay(self.gw.config.recording.body_cap, time.time_ns, masker),
            recorder,
            replace(client, data=self.requests.trailing + client.data),
            replace(upstream, data=up.responses.trailing + upstream.data),
            client_tls=self.tls,
            failure=lambda: self.gw.sink.failure,
        )
        session.pipe = pipe
        pipe.start()
        try:
            reason = await asyncio.shield(pipe.done)  # cancelled: the pipe still ends itself
        except asyncio.CancelledError:
            pipe.end(EndReason(session.end_reason or EndReason.GATEWAY_SHUTDOWN))
            raise
        if reason == EndReason.RECORDING_FAILED:
            raise RecordingUnavailable(self.gw.sink.failure or "the archive is failing")
        session.end_reason = session.end_reason or reason
        self._close_upstream()
        return False

    # -- sessions and recording -----------------------------------------------------------------

    def _session_for(self, admitted: Admitted) -> HttpSession:
        target, identity = admitted.target, admitted.identity
        current = self.session
        if current is not None and (current.target.name, current.subject) == (
            target.name,
            identity.subject,
        ):
            return current
        self._end_session("target_changed")
        self._close_upstream()
        if self.gw.sink.failure is not None:
            raise RecordingUnavailable(self.gw.sink.failure)
        now = time.time_ns()
        recorder = self.gw.open_recorder(identity, target.name, "http", self.client_addr, now)
        recorder.event(Event(now, "auth", None, auth_attrs(admitted, "oidc", tls=self.tls)))
        session = HttpSession(recorder, target, identity.subject)
        task = asyncio.current_task()
        if task is not None:
            session.tasks.append(task)
        self.session = session
        self.gw.sessions.add(session)
        self.gw.metrics.inc("sessions_started")
        return session

    def _end_session(self, reason: str) -> None:
        session, self.session = self.session, None
        if session is None:
            return
        self.gw.sessions.discard(session)
        session.recorder.close(session.end_reason or reason)

    def _record_refusal(self, request: wire.Request, refusal: _Refused, started: int) -> None:
        try:
            route = paths.route(request.target)
        except paths.PathEscape:
            route = None
        identity, self._identity_for_refusal = self._identity_for_refusal, None
        self.gw.record_refusal(
            identity,
            route.target if route else "(none)",
            "http",
            self.client_addr,
            {"method": "oidc", "refusal": refusal.kind, "status": refusal.status,
             "reason": refusal.message, "tls": self.tls},
            started_ns=started,
            first=Event(started, "request", C2S, {
                "method": request.method.decode("latin-1"),
                "url": x.strip_access_token(request.target.decode("latin-1")),
                "http_version": x.http_version(request.version),
                "headers": x.recorded_headers(request.headers)}),
        )  # fmt: skip

    def _malformed(self, exc: wire.HttpError) -> None:
        """A request that broke HTTP: in its session, or (before any) as a refusal, whose
        flood is folded like any other. Its bytes are not kept: they may hold a token."""
        message = f"malformed HTTP request: {exc}"
        if self.session is not None:
            with contextlib.suppress(RecordingUnavailable):
                self.session.recorder.event(
                    Event(time.time_ns(), "protocol_error", C2S, {"message": message})
                )
            return
        self.gw.record_refusal(None, "(none)", "http", self.client_addr, {
            "method": "oidc", "refusal": "malformed", "status": exc.status, "reason": message,
            "tls": self.tls})  # fmt: skip

    async def _upstream_failed(self, session: HttpSession, status: int, message: str) -> None:
        session.recorder.event(Event(time.time_ns(), "upstream_error", None, {"reason": message}))
        # The connection closes after this answer: the session ends because of the target.
        session.end_reason = session.end_reason or EndReason.UPSTREAM_UNAVAILABLE
        self._close_upstream()
        if not self.answered:
            await self._send_error(status, message, record=True)

    async def _send_error(
        self, status: int, message: str, headers: x.Headers | None = None, *, record: bool
    ) -> None:
        if self.answered:
            return
        self.answered = True
        body = json.dumps({"error": _TITLES.get(status, "error"), "message": message}).encode()
        head = [(b"content-type", b"application/json"), (b"connection", b"close"),
                *(headers or [])]  # fmt: skip
        reason = HTTPStatus(status).phrase.encode()
        data = wire.response_head(status, reason, head, wire.Body(length=len(body))) + body
        if record and self.session is not None:
            with contextlib.suppress(RecordingUnavailable):
                self.session.recorder.frame(S2C, data, time.time_ns())
        with contextlib.suppress(ConnectionError, RuntimeError, OSError):
            self.writer.write(data)
            await self.writer.drain()

    # -- bytes ----------------------------------------------------------------------------------

    async def _to_upstream(self, recorder: Recorder, up: _Upstream, out: _Outbox) -> None:
        data, shown = out.take()
        if not data:
            return
        recorder.frame(C2S, shown, time.time_ns())
        if recorder.must_wait:  # acked: the sink holds the chunk before the target sees it
            await recorder.forwarding()
        up.writer.write(data)
        if up.writer.transport.get_write_buffer_size():  # else drain() has nothing to wait on
            await up.writer.drain()

    async def _to_client(self, recorder: Recorder, out: _Outbox) -> None:
        data, _ = out.take()
        if not data:
            return
        recorder.frame(S2C, data, time.time_ns())
        if recorder.must_pace:  # a long download waits for the sink's memory like anything else
            await recorder.pace()
        try:
            self.writer.write(data)
            if self.writer.transport.get_write_buffer_size():
                await self.writer.drain()
        except (ConnectionError, RuntimeError, OSError):
            raise _Closed from None

    async def _request_head(self) -> object:
        """The next request's head. Its first byte may take IDLE_TIMEOUT_S; from then on the
        whole head has HEAD_TIMEOUT_S, and until a request is admitted, everything has the
        slot's pre-auth deadline. Deadlines are absolute: trickled bytes do not extend them."""
        clock = self.deadline.now
        head_deadline = clock() + HEAD_TIMEOUT_S if self.requests.mid_message else None
        while True:
            event = self.requests.next_event()
            if event is not NEED_DATA:
                return event
            now = clock()
            limit = head_deadline if head_deadline is not None else now + IDLE_TIMEOUT_S
            if self.slot.preauth:
                limit = min(limit, now + self.slot.remaining_s)
            try:
                data = await self.deadline.read(self.reader, READ_SIZE, limit)
            except TimeoutError:  # an OSError too, but not the end of the stream
                raise
            except (ConnectionError, OSError):
                data = b""
            self.requests.receive(data)
            if head_deadline is None:
                head_deadline = clock() + HEAD_TIMEOUT_S

    async def _client_event(self, timeout: float) -> object:
        """The next event of a request body: each read may take `timeout` (an idle timeout)."""
        while True:
            event = self.requests.next_event()
            if event is not NEED_DATA:
                return event
            at = self.deadline.now() + timeout
            try:
                data = await self.deadline.read(self.reader, READ_SIZE, at)
            except TimeoutError:  # an OSError too, but not the end of the stream
                raise
            except (ConnectionError, OSError):
                data = b""
            self.requests.receive(data)

    async def _upstream_event(self, up: _Upstream, timeout: float | None) -> object:
        responses = up.responses
        assert responses is not None
        while True:
            event = responses.next_event()
            if event is not NEED_DATA:
                return event
            # A body has no deadline: it may stream as long as the upstream sends it.
            at = None if timeout is None else self.deadline.now() + timeout
            data = await self.deadline.read(up.reader, READ_SIZE, at)
            responses.receive(data)

    async def _upstream(self, target: HttpTarget) -> _Upstream:
        if self.upstream is not None and self.upstream.target == target.name:
            if self.upstream.idle:
                return self.upstream
            self._close_upstream()
        ctx = upstream_https_context(target.upstream_ca_file) if target.upstream_https else None
        host, port = target.upstream.host, target.upstream.port
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(host, port, ssl=ctx, server_hostname=host if ctx else None,
                                        limit=2**20),
                CONNECT_TIMEOUT_S,
            )  # fmt: skip
        except TimeoutError:
            raise _Refused(504, f"target {target.name!r} did not accept a connection") from None
        except (OSError, ssl.SSLError) as exc:
            raise _Refused(502, f"target {target.name!r} is unreachable from the gateway "
                           f"({_why(exc)})") from None  # fmt: skip
        self.upstream = _Upstream(target.name, reader, writer)
        return self.upstream

    def _close_upstream(self) -> None:
        up, self.upstream = self.upstream, None
        if up is not None:
            up.writer.close()


_UNRECORDABLE = "tapegate cannot record this session, so it is closed: nothing runs unrecorded"
_TITLES = {400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "unknown_target",
           431: "headers_too_large", 502: "bad_gateway", 503: "unavailable",
           504: "gateway_timeout"}  # fmt: skip


def _host_header(target: HttpTarget) -> bytes:
    default = 443 if target.upstream_https else 80
    port = target.upstream.port
    host = target.upstream.host
    if ":" in host:
        host = f"[{host}]"
    return (host if port == default else f"{host}:{port}").encode()


def _why(exc: BaseException) -> str:
    return getattr(exc, "strerror", None) or str(exc) or type(exc).__name__

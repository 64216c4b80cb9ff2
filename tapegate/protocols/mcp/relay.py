"""The MCP path through the HTTP relay: a request read whole, its tape session chosen by its
boundary, judged, then forwarded (or answered in the gateway's name) in one write.

`McpPath` is a part of `HttpRelay` (tapegate/protocols/http/relay.py), kept here because it is
MCP's: the relay's states, framing and answers are the relay's, and what is read as MCP is
`McpExchange`'s (tapegate/protocols/mcp/exchange.py). Its methods run on the relay's state.
"""

from __future__ import annotations

from http import HTTPStatus
from typing import TYPE_CHECKING

from tapegate.protocols.http import answers, wire
from tapegate.protocols.http import exchange as x
from tapegate.protocols.mcp.exchange import Answer, McpExchange
from tapegate.protocols.mcp.target import McpTarget
from tapegate.proxy.questions import CloseSession, OpenSession, RecordRefusal
from tapegate.proxy.relay import Ask, Command, Record, ToClient
from tapegate.tape import Direction, Event
from tapegate.vocab import EndReason, EventType

if TYPE_CHECKING:
    from tapegate.protocols.http.relay import HttpRelay

C2S, S2C = Direction.CLIENT_TO_SERVER, Direction.SERVER_TO_CLIENT


class McpPath:
    """The MCP methods of `HttpRelay`."""

    def _mcp_read(self: HttpRelay, out: list[Command]) -> None:
        """An admitted MCP request: its body is read whole before anything else is decided
        (its tape session, the verdict, the target's connection)."""
        ex = self._x
        assert ex is not None and ex.admitted is not None
        target = ex.admitted.target
        assert isinstance(target, McpTarget)
        request = ex.request
        ex.inject = inject = self._injection(target, ex.admitted.credential)
        if not wire.safe_value(inject.header[1]):
            self._upstream_failed(502, f"target {target.name!r}: its credential holds a line "
                                  "break or NUL, which would break the request", out)  # fmt: skip
            return
        headers = x.upstream_request_headers(request.headers, inject.host, inject.header,
                                             self.client_addr)  # fmt: skip
        # Its answers are read (and may be rewritten): asked for uncompressed.
        ex.upstream_headers = [(n, v) for n, v in headers if n != b"accept-encoding"]
        rest = x.strip_access_token(ex.rest)  # one endpoint: the upstream URL itself
        rest = rest[1:] if rest.startswith("/") and rest[1:2] in ("", "?") else rest
        if rest and not rest.startswith("?"):  # not a way to the rest of the upstream's host
            self._refuse(
                answers.Refused(
                    404,
                    f"target {target.name!r} is one MCP endpoint: /mcp/{target.name}",
                    kind="unknown_path",
                ),
                None,
                out,
            )
            return
        ex.path = target.upstream_base_path + rest
        ex.mcp = McpExchange(target, None, self.body_cap, self._now_ns)
        ex.held = bytearray()
        self._read_body(inject, out)

    def _mcp_session(self: HttpRelay, out: list[Command]) -> None:
        """The whole request is in: the tape session it belongs to, then its verdict."""
        ex = self._x
        assert ex is not None and ex.mcp is not None and ex.held is not None
        assert ex.admitted is not None
        ex.mcp_body, ex.held = bytes(ex.held), None
        ex.mcp.read(ex.request.method, ex.request.headers, ex.mcp_body)
        boundary = ex.mcp.boundary()
        target, subject = ex.admitted.target.name, ex.admitted.identity.subject
        if (
            self.session is not None
            and self.session[:2] == (target, subject)
            and (boundary is None or self.session[2] == boundary)
        ):  # the open tape (a request that names no session stays in the connection's)
            self._mcp_judge(out)
            return
        if self.session is not None:
            out.append(Ask(CloseSession(EndReason.TARGET_CHANGED)))
            self.session = None
        stdio = isinstance(ex.admitted.target, McpTarget) and ex.admitted.target.stdio
        if self.upstream is not None and (self.upstream != target or stdio):
            self._drop_upstream(out)  # a stdio server's connection is its tape's
        out.append(Ask(OpenSession(ex.admitted, self._now_ns(), boundary=boundary)))

    def _mcp_judge(self: HttpRelay, out: list[Command]) -> None:
        ex = self._x
        assert ex is not None and ex.mcp is not None
        ex.mcp.ledger = self._ledger
        out.append(Record([self._request_event(ex)]))
        verdict = ex.mcp.judge()
        self._mcp_events(out)
        if isinstance(verdict, Answer):
            self._mcp_answer(verdict, out)
        else:
            self._forward_or_connect(out)

    def _mcp_send(self: HttpRelay, out: list[Command]) -> None:
        """Head and body in one write, framed with the body's length."""
        ex = self._x
        assert ex is not None and ex.inject is not None and ex.upstream_headers is not None
        body, method = ex.mcp_body, ex.request.method
        framing = wire.Body(length=len(body)) if body or method == b"POST" else wire.NO_BODY
        head = wire.request_head(method, ex.path.encode(), ex.upstream_headers, framing)
        self._to_server = [head, body]
        if ex.inject.header[1]:
            self._shown_head = head.replace(ex.inject.header[1], x.REDACTED.encode())
        self._flush_server(out)
        head_request = method == b"HEAD"
        self.responses = (self.responses.again(head_request) if self.responses is not None
                          else wire.ResponseReader(head_request))  # fmt: skip
        self._await_answer(out)

    def _mcp_answer(self: HttpRelay, answer: Answer, out: list[Command]) -> None:
        """The gateway's own JSON-RPC answer (a blocked call, a bad body): recorded, sent, and
        the connection goes on; the target saw nothing of the request."""
        ex = self._x
        assert ex is not None
        headers = [(b"content-type", b"application/json")]
        keep_alive = ex.request.keep_alive and not self._client_eof
        if not keep_alive:
            headers.append((b"connection", b"close"))
        reason = HTTPStatus(answer.status).phrase.encode()
        head = wire.response_head(
            answer.status, reason, headers, wire.Body(length=len(answer.body))
        )
        self.answered = True
        body = x.Body(self.body_cap)
        body.add(answer.body)
        out.append(Record([Event(self._now_ns(), EventType.RESPONSE, S2C, {
            "status": answer.status, "reason": reason.decode(), "http_version": "HTTP/1.1",
            "headers": x.recorded_headers(headers), "gateway": True,
            "duration_ns": self._now_ns() - ex.started_ns,
            **body.attrs("application/json")})]))  # fmt: skip
        out.append(ToClient(head + answer.body))
        self._next_turn(keep_alive, out)

    def _too_large(self: HttpRelay, limit: int, out: list[Command]) -> None:
        message = (f"the request body is over this target's max_body_bytes ({limit}): an MCP "
                   "request is read whole before it is forwarded")  # fmt: skip
        if self.session is not None:
            out.append(Record([Event(self._now_ns(), EventType.PROTOCOL_ERROR, C2S,
                                     {"message": message})]))  # fmt: skip
        else:  # its tape session is chosen once the body is in: recorded as refused instead
            assert self._x is not None
            out.append(Ask(RecordRefusal(
                self._x.admitted.identity if self._x.admitted else None,
                self._x.admitted.target.name if self._x.admitted else "(none)",
                {"method": "oidc", "refusal": "too_large", "status": 413, "reason": message,
                 "tls": self.tls}, started_ns=self._x.started_ns)))  # fmt: skip
        self._error(413, message, out)
        self._done(EndReason.PROTOCOL_ERROR, out)

    def _mcp_events(self: HttpRelay, out: list[Command]) -> None:
        ex = self._x
        if ex is not None and ex.mcp is not None and ex.mcp.events:
            out.append(Record(ex.mcp.events))
            ex.mcp.events = []

    def _unprefixed(self: HttpRelay, target: bytes) -> bytes:
        """The MCP listener's paths are /mcp/<target>: what routing reads is /<target>."""
        if self.protocol != "mcp":
            return target
        return target[4:] if target.startswith(b"/mcp/") else b"*"

"""One HTTP client connection on the driver: the owner of `tapegate/protocols/http/relay.py`.

The handler decides everything HTTP (what is forwarded, recorded, refused, answered); the
driver (`driver.Pipe`) moves the bytes, records them and holds them back in `acked`; this
module answers the handler's questions with the gateway's parts: admission (with the
verifier, the archive's health and the credentials), the target's connection, the tape
sessions a connection opens and closes, and refusals.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from gateway_task.recording import Recorder, RecordingUnavailable
from gateway_task.server.admission import run_admission
from gateway_task.server.driver import Handover, Pipe
from gateway_task.server.mcp_tapes import McpTape
from gateway_task.tls import upstream_https_context
from tapegate.protocols.http.answers import HTTP_WORDS
from tapegate.protocols.http.relay import HttpRelay
from tapegate.protocols.http.target import HttpTarget
from tapegate.protocols.mcp.exchange import Ledger
from tapegate.protocols.mcp.target import McpTarget
from tapegate.proxy.admission import Admitted, Refusal, admit
from tapegate.proxy.questions import (
    Admit,
    CloseSession,
    Connect,
    ConnectFailed,
    NameSession,
    OpenSession,
    RecordRefusal,
)
from tapegate.tape import Identity
from tapegate.vocab import EndReason

if TYPE_CHECKING:
    from gateway_task.server.admission import Slot
    from gateway_task.server.gateway import Gateway
    from gateway_task.server.mcp_tapes import McpTapes

log = logging.getLogger("tapegate.gateway")

CONNECT_TIMEOUT_S = 10.0
# A kept-alive connection's admission (same token, same target) is reused this long, never past
# the token's exp nor while the archive fails; credentials are cached longer (secrets.py).
ADMISSION_REUSE_S = 30.0


@dataclass(eq=False)
class HttpSession:
    """One tape session of a connection, as the gateway sees it (`LiveSession`)."""

    recorder: Recorder
    connection: HttpConnection
    end_reason: str | None = None

    @property
    def idle(self) -> bool:
        return self.connection.relay.idle

    def end(self, reason: EndReason) -> None:
        if reason == EndReason.TOKEN_EXPIRED and self.idle:
            return  # between requests: the next request is checked, and gets its 401
        self.end_reason = self.end_reason or reason
        self.connection.pipe.end(reason)


class HttpConnection:
    def __init__(
        self,
        gw: Gateway,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        tls: bool,
        slot: Slot,
        protocol: str = "http",  # or "mcp": the same relay, reading MCP targets' exchanges
        tapes: McpTapes | None = None,  # MCP's: its tape sessions outlive connections
    ) -> None:
        self.gw = gw
        self.protocol = protocol
        self.tapes = tapes
        self.slot = slot  # pre-auth until a request is admitted
        self.tls = tls
        peer = writer.get_extra_info("peername") or ("?", 0)
        self.client_addr = f"{peer[0]}:{peer[1]}"
        loop = asyncio.get_running_loop()
        self.relay = HttpRelay(
            tls=tls,
            client_addr=self.client_addr,
            body_cap=gw.config.recording.body_cap,
            clock=loop.time,
            now_ns=time.time_ns,
            preauth_until=loop.time() + slot.remaining_s,
            protocol=protocol,
        )
        self._streams = reader, writer
        self.session: HttpSession | McpTape | None = None
        self._verified: tuple[str, Identity] | None = None
        self._admitted: tuple[str, str, Admitted, float] | None = None  # token, target, until

    async def run(self) -> None:
        reason: str = EndReason.CLIENT_CLOSED
        # Made here, not at accept: what the listener's stream read meanwhile is handed over.
        self.pipe = Pipe(
            self.relay,
            None,
            Handover.of(*self._streams),
            None,
            client_tls=self.tls,
            failure=lambda: self.gw.sink.failure,
            asker=self._answer,
            exchanges=True,
        )
        try:
            self.pipe.start()
            reason = await asyncio.shield(self.pipe.done)  # cancelled: the pipe still ends
        except asyncio.CancelledError:
            self.pipe.end(EndReason.GATEWAY_SHUTDOWN)
            raise
        finally:
            if self.pipe.done.done() and not self.pipe.done.cancelled():
                reason = self.pipe.done.result()
            self._close_session(reason)
            self.slot.release()

    # -- the handler's questions ----------------------------------------------------------------

    def _answer(self, question: object) -> object:
        if isinstance(question, Admit):
            return self._admit(question)
        if isinstance(question, OpenSession):
            return self._open_session(question)
        if isinstance(question, CloseSession):
            return self._close_session(question.reason, question.final)
        if isinstance(question, NameSession):
            if self.tapes is not None and isinstance(self.session, McpTape):
                self.tapes.name(self.session, question.boundary)
            return None
        if isinstance(question, Connect):
            assert isinstance(question.target, HttpTarget)
            return self._connect(question.target)
        if isinstance(question, RecordRefusal):
            self.gw.record_refusal(question.identity, question.target, self.protocol,
                                   self.client_addr, question.attrs,
                                   started_ns=question.started_ns,
                                   first=question.first)  # fmt: skip
            return None
        raise TypeError(f"the HTTP handler asked for {question!r}")

    def _admit(self, question: Admit) -> Admitted | Awaitable[Admitted | Refusal]:
        login = question.login
        reused = self._admitted
        if (reused is not None and reused[:2] == (login.token, login.target)
                and time.time() < reused[3] and self.gw.sink.failure is None):  # fmt: skip
            return reused[2]  # a kept-alive request: no task, no lookup
        return self._admission(question)

    async def _admission(self, question: Admit) -> Admitted | Refusal:
        login = question.login
        outcome = await run_admission(
            self.gw, admit(self.gw.config, login, HTTP_WORDS), verify=self._verify
        )
        if isinstance(outcome, Refusal):
            self._admitted = None
            return outcome
        self.slot.admitted()
        until = time.time() + ADMISSION_REUSE_S
        if outcome.identity.expires_at is not None:
            until = min(until, outcome.identity.expires_at)
        assert login.token is not None and login.target is not None
        self._admitted = (login.token, login.target, outcome, until)
        return outcome

    async def _verify(self, token: str) -> Identity:
        # A kept-alive client sends the same token with every request: verify it once.
        if self._verified is not None and self._verified[0] == token:
            identity = self._verified[1]
            if identity.expires_at is None or identity.expires_at > time.time():
                return identity
        identity = await self.gw.verifier.verify(token)
        self._verified = (token, identity)
        return identity

    def _open_session(self, question: OpenSession) -> Ledger | None:
        if self.gw.sink.failure is not None:
            raise RecordingUnavailable(self.gw.sink.failure)
        admitted = question.admitted
        if self.tapes is not None:  # MCP: the session's tape, which other connections may carry
            tape = self.tapes.join(self, admitted, question.started_ns, question.boundary)
            self.session = tape
            self.pipe.recorder = tape.recorder
            return tape.ledger
        recorder = self.gw.open_recorder(admitted.identity, admitted.target.name, self.protocol,
                                         self.client_addr, question.started_ns)  # fmt: skip
        self.session = HttpSession(recorder, self)
        self.pipe.recorder = recorder
        self.gw.sessions.add(self.session)
        self.gw.metrics.inc("sessions_started")
        return None

    def _close_session(self, reason: str, final: bool = False) -> None:
        session, self.session = self.session, None
        self.pipe.recorder = None
        if session is None:
            return
        if isinstance(session, McpTape):
            session.tapes.leave(session, self, reason, final)
            return
        self.gw.sessions.discard(session)
        session.recorder.close(session.end_reason or reason)

    async def _connect_stdio(self, target: McpTarget) -> ConnectFailed | None:
        """A `command:` target: a connection to its server's bridge, the server this tape's."""
        tape, admitted = self.session, self._admitted
        assert isinstance(tape, McpTape) and self.tapes is not None and admitted is not None
        env = admitted[2].credential if admitted[1] == target.name else None
        if not isinstance(env, dict):
            return ConnectFailed(502, f"target {target.name!r}: no environment for its server")
        server = self.tapes.server(tape, target, env)
        if isinstance(server, str):
            return ConnectFailed(503, f"target {target.name!r}: {server}")
        await server.connect(self.pipe.attach_server)
        return None

    async def _connect(self, target: HttpTarget) -> ConnectFailed | None:
        if isinstance(target, McpTarget) and target.stdio:
            return await self._connect_stdio(target)
        ctx = upstream_https_context(target.upstream_ca_file) if target.upstream_https else None
        host, port = target.upstream.host, target.upstream.port
        loop = asyncio.get_running_loop()
        try:
            await asyncio.wait_for(
                loop.create_connection(self.pipe.attach_server, host, port, ssl=ctx,
                                       server_hostname=host if ctx else None),
                CONNECT_TIMEOUT_S,
            )  # fmt: skip
        except TimeoutError:
            return ConnectFailed(504, f"target {target.name!r} did not accept a connection")
        except (OSError, ssl.SSLError) as exc:
            return ConnectFailed(502, f"target {target.name!r} is unreachable from the gateway "
                                 f"({_why(exc)})")  # fmt: skip
        return None


def _why(exc: BaseException) -> str:
    return getattr(exc, "strerror", None) or str(exc) or type(exc).__name__

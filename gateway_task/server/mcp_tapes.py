"""MCP's tape sessions: one per MCP session, across the connections that carry it.

An HTTP tape session is one connection's requests. An MCP session outlives connections: its GET
stream and its POSTs may each have one, and clients open a connection per request when they do
not read an answer's stream to its end. The relay names each request's boundary (its
`Mcp-Session-Id`; in the stateless era the run or client it names, see
`McpExchange.boundary`), and the connection's owner asks this table for the open tape of that
subject on that target with that boundary, or a new one. A tape nobody carries any more is
sealed after the target's `session_idle_s`; an answered DELETE seals it at once; a failing
archive, an expired token or a shutdown end it for every connection that carries it.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from gateway_task.recording import Recorder
from gateway_task.server.mcp_stdio import StdioServer
from tapegate.protocols.mcp.exchange import Ledger
from tapegate.protocols.mcp.target import McpTarget
from tapegate.proxy.admission import Admitted
from tapegate.tape import Event
from tapegate.vocab import EndReason

if TYPE_CHECKING:
    from gateway_task.server.gateway import Gateway
    from gateway_task.server.http import HttpConnection

Key = tuple[str, str, str]  # target, subject, boundary
# Open tapes one subject may have on one target: each boundary a client names opens one, so a
# client naming a new run per request must not hold recorders open without bound.
MAX_OPEN_PER_SUBJECT = 64
# How a connection may end while its MCP session goes on (on another connection, or the next);
# any other end (a failing archive, an expired token, a shutdown, ...) is the tape's too.
LEAVES_OPEN = frozenset({EndReason.CLIENT_CLOSED, EndReason.CONNECTION_LOST,
                         EndReason.TARGET_CHANGED, EndReason.UPSTREAM_CLOSED,
                         EndReason.UPSTREAM_UNAVAILABLE, EndReason.PROTOCOL_ERROR})  # fmt: skip


@dataclass(eq=False)
class McpTape:
    """One MCP session's tape, as the gateway sees it (`LiveSession`)."""

    recorder: Recorder
    target: str
    subject: str
    key: Key | None  # None: named by nothing yet, so the connection's own
    tapes: McpTapes
    idle_s: float
    ledger: Ledger = field(default_factory=Ledger)
    connections: set[HttpConnection] = field(default_factory=set)
    end_reason: str | None = None
    sealed: bool = False
    # The latest `exp` among the tokens of the connections that joined (a client refreshes its
    # token within one MCP session): `identity.on_token_expiry` ends the tape past it.
    expires_at: int | None = None
    stdio: StdioServer | None = None  # a `command:` target's server, run for this tape
    _timer: asyncio.TimerHandle | None = None

    @property
    def idle(self) -> bool:
        return all(c.relay.idle for c in self.connections)

    def end(self, reason: EndReason) -> None:
        if reason == EndReason.TOKEN_EXPIRED and self.idle:
            return  # between requests: the next request is checked, and gets its 401
        self.end_reason = self.end_reason or reason
        if not self.connections:
            self.tapes.seal(self)
        for connection in list(self.connections):
            connection.pipe.end(reason)


class McpTapes:
    """The MCP listener's open tapes, by subject, target and boundary."""

    def __init__(self, gw: Gateway) -> None:
        self.gw = gw
        self.open: dict[Key, McpTape] = {}
        self.live: set[McpTape] = set()  # every unsealed tape, named or not

    def server(self, tape: McpTape, target: McpTarget, env: dict[str, str]) -> StdioServer | str:
        """The tape's stdio server (started with its first message); why not, if it cannot."""
        if tape.stdio is not None:
            if tape.stdio.bridge.gone is not None:
                return f"its MCP server process is gone ({tape.stdio.bridge.gone})"
            return tape.stdio

        def record(events: list[Event]) -> None:
            if not tape.sealed:
                tape.recorder.events(events)

        def may_start() -> str | None:  # counted when a process starts, not before
            running = sum(1 for t in self.live if t.target == target.name
                          and t.stdio is not None and t.stdio.running)  # fmt: skip
            if running < target.max_processes:
                return None
            return (f"target {target.name!r} runs max_processes ({target.max_processes}) MCP "
                    "servers already: try again when a session ends")  # fmt: skip

        tape.stdio = StdioServer(self.gw, target, env, record, lambda why: self.gone(tape, why),
                                 may_start)  # fmt: skip
        return tape.stdio

    def gone(self, tape: McpTape, reason: EndReason) -> None:
        """Its server ended on its own: no request joins the tape any more, and the
        connections carrying it end once each has given its answer."""
        tape.end_reason = tape.end_reason or reason
        if tape.key is not None and self.open.get(tape.key) is tape:
            del self.open[tape.key]
        self._sweep(tape)

    def _sweep(self, tape: McpTape) -> None:
        if tape.sealed:
            return
        if not tape.connections:
            self.seal(tape)
            return
        for connection in list(tape.connections):
            if connection.relay.idle:
                connection.pipe.end(EndReason(tape.end_reason or EndReason.UPSTREAM_CLOSED))
        asyncio.get_running_loop().call_later(0.5, self._sweep, tape)

    def join(
        self, connection: HttpConnection, admitted: Admitted, started_ns: int, boundary: str | None
    ) -> McpTape:
        target = admitted.target
        key = (target.name, admitted.identity.subject, boundary) if boundary else None
        tape = self.open.get(key) if key is not None else None
        if tape is None or tape.end_reason is not None or tape.sealed:
            recorder = self.gw.open_recorder(admitted.identity, target.name, "mcp",
                                             connection.client_addr, started_ns)  # fmt: skip
            idle_s = target.session_idle_s if isinstance(target, McpTarget) else 300.0
            tape = McpTape(recorder, target.name, admitted.identity.subject, key, self, idle_s)
            if key is not None:
                self.open[key] = tape
            self.live.add(tape)
            self.gw.sessions.add(tape)
            self.gw.metrics.inc("sessions_started")
        if tape._timer is not None:
            tape._timer.cancel()
            tape._timer = None
        tape.connections.add(connection)
        exp = admitted.identity.expires_at
        if exp is not None and (tape.expires_at is None or exp > tape.expires_at):
            tape.expires_at = exp
        if key is not None:
            self._bound(key[0], key[1])
        return tape

    def _bound(self, target: str, subject: str) -> None:
        """Over the bound, the tapes nobody carries are sealed, the oldest first."""
        mine = [t for k, t in self.open.items() if k[:2] == (target, subject)]
        idle = [t for t in mine if not t.connections]
        for tape in idle[: max(0, len(mine) - MAX_OPEN_PER_SUBJECT)]:  # in the order opened
            self.seal(tape, EndReason.IDLE_TIMEOUT)

    def name(self, tape: McpTape, boundary: str) -> None:
        """The tape's MCP session has its id now: connections naming it find it."""
        if tape.key is not None and self.open.get(tape.key) is tape:
            del self.open[tape.key]
        tape.key = (tape.target, tape.subject, boundary)
        self.open.setdefault(tape.key, tape)

    def leave(self, tape: McpTape, connection: HttpConnection, reason: str, final: bool) -> None:
        tape.connections.discard(connection)
        if final:
            tape.end_reason = tape.end_reason or reason
            for other in list(tape.connections):  # the session is over for its streams too
                other.pipe.end(EndReason.CLIENT_CLOSED)
        if tape.connections:
            return
        if tape.key is None or tape.end_reason is not None or reason not in LEAVES_OPEN:
            self.seal(tape, reason)
        else:  # the MCP session may go on on another connection
            loop = asyncio.get_running_loop()
            tape._timer = loop.call_later(tape.idle_s, self.seal, tape, EndReason.IDLE_TIMEOUT)

    def seal(self, tape: McpTape, reason: str | None = None) -> None:
        if tape.sealed:
            return
        if tape.stdio is not None:
            tape.stdio.stop()  # its last event goes on the tape
        tape.sealed = True
        self.live.discard(tape)
        if tape._timer is not None:
            tape._timer.cancel()
        if tape.key is not None and self.open.get(tape.key) is tape:
            del self.open[tape.key]
        self.gw.sessions.discard(tape)
        tape.recorder.close(tape.end_reason or reason or EndReason.CLIENT_CLOSED)

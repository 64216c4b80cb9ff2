"""The one I/O driver of a session's relay phase: two transports, a handler, commands in order.

The model is mitmproxy's ConnectionHandler with uvicorn's wire layer: each side of the session
is an `asyncio.Protocol` (no streams, no task per direction, no read loop), a protocol's relay
handler (`tapegate/proxy/relay.py`) turns what arrives into commands, and `Pipe` carries them
out. It knows no protocol. What it owns for all of them:

- Recording: client bytes are framed on arrival, bytes to the client before they are written.
- Record-before-forward: bytes for the target wait for `Recorder.forwarding()` whenever it has
  something to wait for (acked: the sink's ack; buffered: the sink's memory cap). Meanwhile the
  client's reading is paused and later arrivals queue behind, so order is kept.
- Flow control both ways: a side whose write buffer is full pauses reading on the other side;
  a thread doing heavy work for the handler pauses both.
- Fail-closed: a recording failure ends the session, and the handler says why in its protocol.
- TLS to the client in records of at most 8 KiB (libpq's async API can stall on larger ones:
  the rest of a record sits inside OpenSSL, where polling the socket cannot see it).

Each lane (client→server, server→client) runs its commands synchronously in the callback that
received the bytes; only a wait (a commit, the sink's memory, a thread, an owner's answer that
is not ready) turns into a task, and the lane's later bytes wait for it.

A pipe with `exchanges=True` runs a whole connection (HTTP): there may be no recorder yet (no
session before the first request is admitted), no target connection yet (`Ask` the owner to
open one, which it does with `attach_server`), and the target's connection may end without the
session ending (`Disconnect`, or the handler's `closed(Side.SERVER)`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import cast

from gateway_task.recording import Recorder, RecordingUnavailable
from tapegate.proxy.relay import (
    Ask,
    CloseWrite,
    Command,
    Disconnect,
    End,
    ExchangeHandler,
    Pause,
    Record,
    RelayHandler,
    Resume,
    Side,
    Timer,
    ToClient,
    ToServer,
    Wake,
)
from tapegate.tape import Direction
from tapegate.vocab import EndReason

log = logging.getLogger("tapegate.gateway")

C2S, S2C = Direction.CLIENT_TO_SERVER, Direction.SERVER_TO_CLIENT
TLS_RECORD_MAX = 8192
CLOSE_GRACE_S = 5.0  # a side gone, the other may finish its closing handshake


@dataclass(frozen=True, slots=True)
class Handover:
    """A transport as a stream reader leaves it: what it had read and not yet given out."""

    transport: asyncio.Transport
    data: bytes
    eof: bool
    previous: asyncio.BaseProtocol | None = None  # told of the close: writer.wait_closed()

    @classmethod
    def of(cls, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> Handover:
        buffered = unread(reader)
        data = bytes(buffered)
        buffered.clear()
        transport = writer.transport
        return cls(transport, data, reader.at_eof(), transport.get_protocol())  # type: ignore[arg-type]


def unread(reader: asyncio.StreamReader) -> bytearray:
    """The bytes a stream reader holds that no one has read yet (StreamReader has no public
    way to see or take them without awaiting)."""
    return reader._buffer  # type: ignore[attr-defined,no-any-return]


class _End(Exception):
    """Raised inside a lane when the session is over: stop carrying out commands."""


class _Marker:
    def __repr__(self) -> str:
        return "WAKE"


WAKE = _Marker()  # in a lane's backlog: call the handler's `wake` in turn
Asker = Callable[[object], object]  # a question → its answer, or an awaitable of it


class _Wire(asyncio.Protocol):
    """One side's transport, seen from the pipe."""

    def __init__(self, pipe: Pipe, side: Side, handover: Handover | None, tls: bool) -> None:
        """`handover` None: a connection the pipe opens (`Pipe.attach_server`)."""
        self.pipe, self.side = pipe, side
        self.transport: asyncio.Transport = handover.transport if handover else None  # type: ignore[assignment]
        self.previous = handover.previous if handover else None
        self.tls = tls
        self.record_max = TLS_RECORD_MAX if tls else 0
        self._holds: set[str] = set()
        self.closed = False

    # -- writing ------------------------------------------------------------------------------

    def write(self, data: bytes) -> None:
        if self.closed or self.transport.is_closing():
            return
        if self.record_max and len(data) > self.record_max:
            view, step = memoryview(data), self.record_max
            # One write per record: the TLS layer seals each write into records of its size.
            self.transport.writelines([view[i : i + step] for i in range(0, len(data), step)])
        else:
            self.transport.write(data)

    def write_eof(self) -> None:
        if not self.closed and not self.transport.is_closing() and self.transport.can_write_eof():
            self.transport.write_eof()

    # -- reading ------------------------------------------------------------------------------

    def hold(self, why: str) -> None:
        if not self._holds and not self.closed:
            self.transport.pause_reading()
        self._holds.add(why)

    def release(self, why: str) -> None:
        if why in self._holds:
            self._holds.discard(why)
            if not self._holds and not self.closed and not self.transport.is_closing():
                self.transport.resume_reading()

    # -- asyncio.Protocol ---------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if self.transport is None:  # one the pipe opened; a handed-over one is made already
            self.transport = cast(asyncio.Transport, transport)
            self.pipe._attached(self)

    def data_received(self, data: bytes) -> None:
        if not self.closed:
            self.pipe.arrived(self.side, data)

    def eof_received(self) -> bool:
        if not self.closed:
            self.pipe.arrived(self.side, None)
        # Keep our half open, the handler decides (a half-close may go on); asyncio's TLS
        # transport has no half-close and says so when asked.
        return not self.tls

    def connection_lost(self, exc: Exception | None) -> None:
        detached = self.closed
        self.closed = True
        if self.previous is not None:  # whoever awaits the stream writer's wait_closed()
            self.previous.connection_lost(exc)
        if not detached or self.pipe.wire(self.side) is self:
            self.pipe.lost(self.side, exc)

    def pause_writing(self) -> None:
        other = self.pipe.wire(_other(self.side))
        if other is not None:
            other.hold("peer_full")

    def resume_writing(self) -> None:
        other = self.pipe.wire(_other(self.side))
        if other is not None:
            other.release("peer_full")


class _Lane:
    """One direction: the bytes that arrived from `source` and wait their turn."""

    def __init__(self, source: Side) -> None:
        self.source = source
        self.backlog: deque[bytes | _Marker | None] = deque()  # None: the source's EOF
        self.busy = False  # a wait (commit, memory, thread) is under way
        self.eof = False  # the source's EOF has arrived (it may still wait in the backlog)


class Pipe:
    """The relay phase of one session. `await pipe.done` gives its end reason."""

    def __init__(
        self,
        handler: RelayHandler,
        recorder: Recorder | None,
        client: Handover,
        server: Handover | None,
        *,
        client_tls: bool,
        failure: Callable[[], str | None],
        asker: Asker | None = None,
        exchanges: bool = False,
    ) -> None:
        self.handler = handler
        self.recorder = recorder  # None: no session yet (an exchange handler's owner sets it)
        self._failure = failure  # the sink's reason for failing, for the client's message
        self._asker = asker
        self._exchanges = exchanges
        self._loop = asyncio.get_running_loop()
        self.done: asyncio.Future[EndReason] = self._loop.create_future()
        self._wires: dict[Side, _Wire] = {Side.CLIENT: _Wire(self, Side.CLIENT, client, client_tls)}
        self._handovers = {Side.CLIENT: client}
        if server is not None:
            self._wires[Side.SERVER] = _Wire(self, Side.SERVER, server, False)
            self._handovers[Side.SERVER] = server
        self._lanes = {Side.CLIENT: _Lane(Side.CLIENT), Side.SERVER: _Lane(Side.SERVER)}
        self._thread_busy = False  # the handler is in use on a thread: feed it nothing
        self._tasks: set[asyncio.Future[list[Command]]] = set()
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None  # when the handler wants `wake` (loop.time())

    def start(self) -> None:
        """Take the transports over from the streams that did the login."""
        for wire in self._wires.values():
            wire.transport.set_protocol(wire)
        for side in (Side.SERVER, Side.CLIENT):
            handover = self._handovers.pop(side, None)
            if handover is None:
                continue
            if handover.data:
                self.arrived(side, handover.data)
            if handover.eof:
                self.arrived(side, None)
        for wire in self._wires.values():
            if not wire._holds and not self.done.done():
                wire.transport.resume_reading()  # the stream reader may have paused it

    def wire(self, side: Side) -> _Wire | None:
        return self._wires.get(side)

    def attach_server(self) -> asyncio.Protocol:
        """A protocol for `loop.create_connection`: once connected, it is the target's side."""
        return _Wire(self, Side.SERVER, None, False)

    def _attached(self, wire: _Wire) -> None:
        if self.done.done():
            wire.closed = True
            wire.transport.close()
            return
        self._detach()
        self._wires[Side.SERVER] = wire
        self._lanes[Side.SERVER] = _Lane(Side.SERVER)

    def _detach(self) -> None:
        """Disconnect: the target's connection goes, the session stays."""
        wire = self._wires.pop(Side.SERVER, None)
        if wire is None:
            return
        wire.closed = True
        wire.transport.close()
        self._lanes[Side.SERVER] = _Lane(Side.SERVER)
        self._wires[Side.CLIENT].release("peer_full")  # it can no longer be full

    # -- ending ---------------------------------------------------------------------------------

    def end(self, reason: EndReason) -> None:
        """End from outside (shutdown, the ticker): the handler says why, if it can now."""
        if self.done.done():
            return
        why = self._failure() or "the archive is failing"
        farewell = self.handler.farewell(reason, why)
        if farewell:
            try:
                recorded = reason != EndReason.RECORDING_FAILED and self.recorder is not None
                self._to_client(farewell, record=recorded)
            except RecordingUnavailable:  # the archive failed meanwhile: say it all the same
                self._wires[Side.CLIENT].write(farewell)
        self._finish(reason)

    def _finish(self, reason: EndReason) -> None:
        if self.done.done():
            return
        self.done.set_result(reason)
        if self._timer is not None:
            self._timer.cancel()
        for task in list(self._tasks):
            task.cancel()
        for wire in self._wires.values():
            wire.closed = True
            wire.transport.close()  # after what is buffered: a farewell still goes out

    def _fail(self, exc: RecordingUnavailable) -> None:
        log.error("session %s: recording unavailable: %s", self._session_id, exc)
        farewell = self.handler.farewell(EndReason.RECORDING_FAILED, str(exc))
        if farewell:
            self._to_client(farewell, record=False)  # what failed is the recording itself
        self._finish(EndReason.RECORDING_FAILED)

    def _crash(self, exc: BaseException) -> None:
        log.error("session %s relay error: %r", self._session_id, exc, exc_info=exc)
        self._finish(EndReason.ERROR)

    @property
    def _session_id(self) -> str:
        return self.recorder.session_id if self.recorder is not None else "(none yet)"

    # -- arrivals -------------------------------------------------------------------------------

    def arrived(self, side: Side, data: bytes | None) -> None:
        if self.done.done():
            return
        lane = self._lanes[side]
        if data is None:
            if lane.eof:
                return
            lane.eof = True
        if lane.busy or lane.backlog or self._thread_busy:
            lane.backlog.append(data)
            self._hold(side, "backlog")
            return
        self._guarded(self._take, lane, data)

    def lost(self, side: Side, exc: Exception | None) -> None:
        if self.done.done():
            return
        target_only = self._exchanges and side is Side.SERVER  # the handler says what it ends
        if exc is not None and not target_only:
            self._finish(EndReason.CONNECTION_LOST)
            return
        lane = self._lanes[side]
        if not lane.eof:
            self.arrived(side, None)
        if not self.done.done() and not target_only:
            # Gone both ways while the other side may still finish (a half-close): not for long.
            reason = EndReason.CLIENT_CLOSED if side is Side.CLIENT else EndReason.UPSTREAM_CLOSED
            asyncio.get_running_loop().call_later(CLOSE_GRACE_S, self._finish, reason)

    def _guarded(self, fn: Callable[..., None], *args: object) -> None:
        try:
            fn(*args)
        except _End:
            pass
        except RecordingUnavailable as exc:
            self._fail(exc)
        except Exception as exc:  # a bug: this session ends, the loop goes on
            self._crash(exc)

    def _take(self, lane: _Lane, data: bytes | _Marker | None) -> None:
        """Handle one arrival; leaves the lane busy when a command has to wait."""
        if data is None:
            self._run(lane, self.handler.closed(lane.source))
            return
        if data is WAKE:
            self._run(lane, cast(ExchangeHandler, self.handler).wake())
            return
        assert isinstance(data, bytes)
        ts = time.time_ns()
        if lane.source is Side.CLIENT:
            if self.handler.records_arrivals and self.recorder is not None:
                self.recorder.frame(C2S, data, ts)
            if self.handler.heavy(data):
                self._wait(lane, self._on_thread(lane, data, ts))
                return
            self._run(lane, self.handler.client_data(data, ts))
        else:
            self._run(lane, self.handler.server_data(data, ts))

    def _run(self, lane: _Lane, commands: list[Command]) -> None:
        for i, command in enumerate(commands):
            if isinstance(command, ToServer):
                recorder = self.recorder
                if recorder is None:
                    raise RuntimeError("bytes for the target before a session records them")
                if command.shown is not None:
                    recorder.frame(C2S, command.shown, time.time_ns())
                elif not self.handler.records_arrivals:
                    recorder.frame(C2S, command.data, time.time_ns())
                if recorder.must_wait:
                    self._wait(lane, self._forward_later(command.data, commands[i + 1 :]))
                    return
                self._server().write(command.data)
            elif isinstance(command, ToClient):
                self._to_client(command.data, command.record)
                if self.recorder is not None and self.recorder.must_pace:
                    self._wait(lane, self._paced(commands[i + 1 :]))
                    return
            elif isinstance(command, Record):
                if self.recorder is None:
                    raise RuntimeError("events before a session records them")
                self.recorder.events(command.events)
            elif isinstance(command, Ask):
                if self._ask(lane, command.question, commands[i + 1 :]):
                    return
            elif isinstance(command, Timer):
                self._arm(command.at)
            elif isinstance(command, Wake):
                self._loop.call_soon(self.arrived_wake)
            elif isinstance(command, Pause):
                if wire := self._wires.get(command.side):
                    wire.hold("handler")
            elif isinstance(command, Resume):
                if wire := self._wires.get(command.side):
                    wire.release("handler")
            elif isinstance(command, Disconnect):
                self._detach()
            elif isinstance(command, CloseWrite):
                if wire := self._wires.get(command.side):
                    wire.write_eof()
            elif isinstance(command, End):
                self._finish(command.reason)
                raise _End

    def _hold(self, side: Side, why: str) -> None:
        if wire := self._wires.get(side):
            wire.hold(why)

    def _release(self, side: Side, why: str) -> None:
        if wire := self._wires.get(side):
            wire.release(why)

    def _server(self) -> _Wire:
        wire = self._wires.get(Side.SERVER)
        if wire is None:
            raise RuntimeError("bytes for the target with no connection to it")
        return wire

    def _to_client(self, data: bytes, record: bool = True) -> None:
        if record and self.recorder is not None:
            self.recorder.frame(S2C, data, time.time_ns())
        self._wires[Side.CLIENT].write(data)

    # -- an exchange handler's questions and timer ----------------------------------------------

    def _ask(self, lane: _Lane, question: object, rest: list[Command]) -> bool:
        """Ask the owner; True when the answer has to be awaited (the lane waits for it)."""
        if self._asker is None:
            raise RuntimeError(f"{question!r} asked of a pipe that has no one to answer it")
        answer = self._asker(question)
        if hasattr(answer, "__await__"):
            self._wait(lane, self._answered(question, answer, rest))
            return True
        self._run(lane, cast(ExchangeHandler, self.handler).answer(question, answer) + rest)
        return True  # the rest ran inside

    async def _answered(
        self, question: object, answer: Awaitable[object], rest: list[Command]
    ) -> list[Command]:
        value = await answer
        return cast(ExchangeHandler, self.handler).answer(question, value) + rest

    def _arm(self, at: float | None) -> None:
        """One timer per pipe, moved lazily: a later deadline waits for the armed one to fire
        (re-arming per request would cost a timer each)."""
        self._timer_at = at
        if at is None:
            return
        if self._timer is not None and not self._timer.cancelled():
            if self._timer.when() <= at:
                return
            self._timer.cancel()
        self._timer = self._loop.call_at(at, self._rang)

    def _rang(self) -> None:
        self._timer = None
        at = self._timer_at
        if at is None or self.done.done():
            return
        if self._loop.time() < at:
            self._timer = self._loop.call_at(at, self._rang)
            return
        self._timer_at = None
        self.arrived_wake()

    def arrived_wake(self) -> None:
        """The handler's `wake`, in turn with what the client sent."""
        if self.done.done():
            return
        lane = self._lanes[Side.CLIENT]
        if lane.busy or lane.backlog or self._thread_busy:
            lane.backlog.append(WAKE)
            return
        self._guarded(self._take, lane, WAKE)

    # -- waits ----------------------------------------------------------------------------------

    def _wait(self, lane: _Lane, work: Coroutine[None, None, list[Command]]) -> None:
        """Carry on in a task: `work` waits, then gives the commands that come next."""
        lane.busy = True
        self._hold(lane.source, "wait")
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(lambda done: self._waited(lane, done))

    def _waited(self, lane: _Lane, task: asyncio.Future[list[Command]]) -> None:
        self._tasks.discard(task)  # type: ignore[arg-type]
        if task.cancelled() or self.done.done():
            return
        exc = task.exception()
        if isinstance(exc, RecordingUnavailable):
            self._fail(exc)
        elif exc is not None:
            self._crash(exc)
        else:
            lane.busy = False
            self._guarded(self._drain, lane, task.result())

    def _drain(self, lane: _Lane, rest: list[Command]) -> None:
        self._run(lane, rest)
        # What arrived meanwhile, in order, until the lane has to wait again.
        while not lane.busy and not self._thread_busy and lane.backlog:
            self._take(lane, lane.backlog.popleft())
        if not lane.busy:
            self._release(lane.source, "backlog")
            self._release(lane.source, "wait")
        other = self._lanes[_other(lane.source)]
        if not self._thread_busy and not other.busy and other.backlog:
            self._wait(other, _nothing())  # it waited for the thread: its turn now

    async def _forward_later(self, data: bytes, rest: list[Command]) -> list[Command]:
        assert self.recorder is not None
        await self.recorder.forwarding()  # acked: the sink holds the chunk with these bytes
        self._server().write(data)
        return rest

    async def _paced(self, rest: list[Command]) -> list[Command]:
        assert self.recorder is not None
        await self.recorder.pace()  # the sink holds more than its memory cap: let it drain
        return rest

    async def _on_thread(self, lane: _Lane, data: bytes, ts: int) -> list[Command]:
        self._thread_busy = True
        other = self._wires.get(_other(lane.source))
        if other is not None:
            other.hold("thread")
        try:
            return await asyncio.to_thread(self.handler.client_data, data, ts)
        finally:
            self._thread_busy = False
            if other is not None:
                other.release("thread")


async def _nothing() -> list[Command]:
    return []


def _other(side: Side) -> Side:
    return Side.SERVER if side is Side.CLIENT else Side.CLIENT

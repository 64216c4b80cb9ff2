"""Both directions of one session → frames and events → sealed chunks → the sink.

Record first, forward second: the server calls `frame` before it writes bytes on, and `frame`
raises RecordingUnavailable while the sink is failing, so no byte is forwarded unrecorded. The
tape writer is driven through the sealer (gateway_task/sealer.py): what only adds to a chunk
reaches it at once, what seals one goes to the sealer's thread, always in the order recorded.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterable
from concurrent.futures import Future

from gateway_task.metrics import GatewayMetrics
from gateway_task.sealer import Sealer
from gateway_task.sinks import Sink, SinkError
from tapegate.tape import Direction, Event, TapeWriter


class RecordingUnavailable(Exception):
    """The session cannot be recorded; it must stop forwarding."""


class Recorder:
    def __init__(
        self,
        writer: TapeWriter,
        sink: Sink,
        sealer: Sealer,
        metrics: GatewayMetrics | None = None,
    ) -> None:
        self.writer = writer
        self.sink = sink
        self.sealer = sealer
        self.metrics = metrics
        self.closed = False
        self._error: str | None = None  # set when the sink refused this session's records

    @property
    def session_id(self) -> str:
        return str(self.writer.session_id)

    def frame(self, direction: Direction, data: bytes, ts: int) -> None:
        self._check()
        if type(data) is not bytes:  # a view of a buffer the caller may reuse
            data = bytes(data)
        self.sealer.run(
            lambda: self._shipped(self.writer.add_frame(ts, direction, data)),
            len(data),
            seals=self.writer.seals_with(len(data)),
        )

    def events(self, events: Iterable[Event]) -> None:
        for event in events:
            self.event(event)

    def event(self, event: Event) -> None:
        # Not refused while the sink fails: an event forwards nothing, and the sink keeps what
        # it is given for its retry (a refusal is recorded that way).
        self.sealer.run(
            lambda: self._shipped(self.writer.add_event(event)), seals=self.writer.seals_with(0)
        )

    async def commit(self, timeout_s: float = 30.0) -> None:
        """`durability: acked`: seal what is pending and wait until the sink holds it."""
        self._check()
        handed: Future[Future[None] | None] = Future()

        def flush() -> None:
            records = self.writer.flush(time.time_ns())
            try:
                handed.set_result(self._ship(records, urgent=True) if records else None)
            except RecordingUnavailable as exc:
                handed.set_exception(exc)

        self.sealer.run(flush, seals=True)
        self.sealer.hand_over()
        ack = await asyncio.wrap_future(handed)
        if ack is None:
            return
        waiting = asyncio.wrap_future(ack)
        deadline = time.monotonic() + timeout_s
        while not waiting.done():
            await asyncio.wait({waiting}, timeout=0.05)
            if waiting.done():
                break
            if self.sink.failure is not None or time.monotonic() > deadline:
                waiting.cancel()
                raise RecordingUnavailable(
                    self.sink.failure or f"the archive did not accept a chunk in {timeout_s} s"
                )

    def tick(self, now_ns: int) -> None:
        """Seal by age; raises RecordingUnavailable once the sink has refused this session's
        records (an idle session outlives a short outage, as before the sealer)."""
        if not self.closed:
            if self._error is not None:
                raise RecordingUnavailable(self._error)
            if self.writer.due(now_ns):
                self.sealer.run(lambda: self._shipped(self.writer.tick(now_ns)), seals=True)

    def close(self, reason: str) -> None:
        """Seal the final chunk. Best effort when the sink is failing: it is kept in its batch."""
        if self.closed:
            return
        self.closed = True
        now = time.time_ns()
        # A failing sink still keeps the record for its retry; the session is already closed.
        self.sealer.run(lambda: self._shipped([self.writer.close(now, reason)]), seals=True)

    def _check(self) -> None:
        failure = self.sink.failure or self._error
        if failure is not None:
            raise RecordingUnavailable(failure)

    def _shipped(self, records: list[bytes]) -> None:
        # Kept in the sink's batch all the same; `_error` tells the session on its next frame.
        with contextlib.suppress(RecordingUnavailable):
            self._ship(records)

    def _ship(self, records: list[bytes], urgent: bool = False) -> Future[None] | None:
        """On the sealing thread: hand sealed records to the sink."""
        if not records:
            return None
        if self.metrics is not None:
            self.metrics.inc("chunks_sealed", len(records))
            self.metrics.inc("bytes_sealed", sum(len(r) for r in records))
        try:
            return self.sink.put(records, urgent=urgent)
        except SinkError as exc:
            self._error = str(exc)
            raise RecordingUnavailable(str(exc)) from None

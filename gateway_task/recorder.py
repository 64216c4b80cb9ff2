"""Both directions of one session → frames and events → sealed chunks → the sink.

Record first, forward second: the server calls `frame` before it writes bytes on, and `frame`
raises RecordingUnavailable while the sink is failing, so no byte is forwarded unrecorded.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterable

from gateway_task.metrics import GatewayMetrics
from gateway_task.sinks import Sink, SinkError
from tapegate.tape import Direction, Event, TapeWriter


class RecordingUnavailable(Exception):
    """The session cannot be recorded; it must stop forwarding."""


class Recorder:
    def __init__(
        self, writer: TapeWriter, sink: Sink, metrics: GatewayMetrics | None = None
    ) -> None:
        self.writer = writer
        self.sink = sink
        self.metrics = metrics
        self.closed = False

    @property
    def session_id(self) -> str:
        return str(self.writer.session_id)

    def frame(self, direction: Direction, data: bytes, ts: int) -> None:
        if self.sink.failure is not None:
            raise RecordingUnavailable(self.sink.failure)
        self._ship(self.writer.add_frame(ts, direction, data))

    def events(self, events: Iterable[Event]) -> None:
        for event in events:
            self._ship(self.writer.add_event(event))

    def event(self, event: Event) -> None:
        self._ship(self.writer.add_event(event))

    async def commit(self, timeout_s: float = 30.0) -> None:
        """`durability: acked`: seal what is pending and wait until the sink holds it."""
        records = self.writer.flush(time.time_ns())
        if not records:
            return
        try:
            ack = self.sink.put(records, urgent=True)
        except SinkError as exc:
            raise RecordingUnavailable(str(exc)) from None
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
        if not self.closed:
            self._ship(self.writer.tick(now_ns))

    def close(self, reason: str) -> None:
        """Seal the final chunk. Best effort when the sink is failing: it is kept in its batch."""
        if self.closed:
            return
        self.closed = True
        record = self.writer.close(time.time_ns(), reason)
        if self.metrics is not None:
            self.metrics.inc("chunks_sealed")
            self.metrics.inc("bytes_sealed", len(record))
        # A failing sink still keeps the record for its retry; the session is already closed.
        with contextlib.suppress(SinkError):
            self.sink.put([record])

    def _ship(self, records: list[bytes]) -> None:
        if records:
            if self.metrics is not None:
                self.metrics.inc("chunks_sealed", len(records))
                self.metrics.inc("bytes_sealed", sum(len(r) for r in records))
            try:
                self.sink.put(records)
            except SinkError as exc:
                raise RecordingUnavailable(str(exc)) from None

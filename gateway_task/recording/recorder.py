"""Both directions of one session → frames and events → sealed chunks → the sink.

Record first, forward second. Every protocol calls `frame` for bytes it is about to write on,
then `await forwarding()` before it writes bytes bound for the target: that is the one
record-before-forward point.

- `durability: buffered`: the bytes are in the session's chunk in memory; `forwarding` only
  waits while the sink holds more than its memory cap (backpressure).
- `durability: acked`: `forwarding` seals what is pending and waits until the sink holds every
  chunk this session shipped since its last commit, including chunks that filled by size on
  their own (COPY data, SSH channel data: bytes that make no event). It waits on the ack and
  on the sink's failure signal together, with a deadline; a commit that gives up cancels its
  acks, which the sink then never completes.

`frame` raises RecordingUnavailable while the sink is failing, so no byte is forwarded
unrecorded.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterable
from concurrent.futures import Future

from gateway_task.metrics import GatewayMetrics
from gateway_task.recording.sink import Sink, SinkError
from tapegate.log.leaf import LeafWriter
from tapegate.tape import Direction, Event, Stream, TapeWriter

COMMIT_TIMEOUT_S = 30.0


class RecordingUnavailable(Exception):
    """The session cannot be recorded; it must stop forwarding."""


class Recorder:
    def __init__(
        self,
        writer: TapeWriter,
        sink: Sink,
        metrics: GatewayMetrics | None = None,
        *,
        acked: bool = False,
        commit_timeout_s: float = COMMIT_TIMEOUT_S,
        leaves: LeafWriter | None = None,
    ) -> None:
        self.writer = writer
        self.leaves = leaves  # the gateway's session log leaves (None: a tape without them)
        self.sink = sink
        self.metrics = metrics
        self.acked = acked
        self.commit_timeout_s = commit_timeout_s
        self.closed = False
        self._unacked: list[Future[None]] = []  # acked: shipped, not yet known to be held
        self.last_frame_ns = time.time_ns()  # for limits.idle_timeout_s

    def open(self) -> None:
        """Ship the session_open leaf: before anything of the session is forwarded, and in
        `acked` held by the sink before the first commit returns. If the sink is failing the
        leaf is still kept for its retry, so the session is closed at once (recording_failed):
        the log never names a session that has no tape."""
        if self.leaves is None:
            return
        leaf = self.leaves.session_open(self.writer.session_id, self.writer.header,
                                        time.time_ns())  # fmt: skip
        if self.metrics is not None:
            self.metrics.inc("log_leaves")
        try:
            ack = self.sink.put([leaf], ack=self.acked)
        except SinkError as exc:
            self.close("recording_failed")
            raise RecordingUnavailable(str(exc)) from None
        if ack is not None:
            self._unacked.append(ack)

    @property
    def session_id(self) -> str:
        return str(self.writer.session_id)

    def frame(
        self, direction: Direction, data: bytes, ts: int, stream: Stream = Stream.DATA
    ) -> None:
        if self.sink.failure is not None:
            raise RecordingUnavailable(self.sink.failure)
        self.last_frame_ns = ts
        self._ship(self.writer.add_frame(ts, direction, data, stream))

    def events(self, events: Iterable[Event]) -> None:
        for event in events:
            self._ship(self.writer.add_event(event))

    def event(self, event: Event) -> None:
        self._ship(self.writer.add_event(event))

    @property
    def must_wait(self) -> bool:
        """Whether `forwarding()` has anything to wait for (or to raise) right now: when not,
        a driver writes at once, without a task."""
        return self.acked or self.sink.over_memory or self.sink.failure is not None

    @property
    def must_pace(self) -> bool:
        """Whether `pace()` would wait now."""
        return self.sink.over_memory

    async def forwarding(self) -> None:
        """Call after recording bytes bound for the target and before writing them."""
        if self.sink.failure is not None:  # never forward while nothing can be recorded
            raise RecordingUnavailable(self.sink.failure)
        if self.acked:
            await self.commit()
        elif self.sink.over_memory:
            await self.pace()

    async def pace(self) -> None:
        """Wait while the sink holds more than its memory cap (any direction)."""
        if self.sink.over_memory:
            await self.sink.room()
            if self.sink.failure is not None:
                raise RecordingUnavailable(self.sink.failure)

    async def commit(self, timeout_s: float | None = None) -> None:
        """Seal what is pending and wait until the sink holds all this session has shipped."""
        records = self.writer.flush(time.time_ns())
        if records:
            self._ship(records, urgent=True)
        elif self._unacked:
            self.sink.hand_off_now()
        pending, self._unacked = [f for f in self._unacked if not f.done()], []
        if not pending:
            return
        acks = [asyncio.wrap_future(f) for f in pending]
        held = acks[0] if len(acks) == 1 else asyncio.gather(*acks)
        failed = self.sink.failed()
        limit = self.commit_timeout_s if timeout_s is None else timeout_s
        done, _ = await asyncio.wait({held, failed}, timeout=limit,
                                     return_when=asyncio.FIRST_COMPLETED)  # fmt: skip
        if held in done and held.exception() is None:
            return
        held.cancel()  # and with it each ack: the sink completes none of them later
        for ack in acks:
            ack.cancel()
        if failed.done():
            raise RecordingUnavailable(failed.result())
        raise RecordingUnavailable(f"the archive did not accept a chunk in {limit:g} s")

    def tick(self, now_ns: int) -> None:
        if not self.closed:
            self._ship(self.writer.tick(now_ns))

    def close(self, reason: str) -> None:
        """Seal the final chunk. Best effort when the sink is failing: it is kept in its batch."""
        if self.closed:
            return
        self.closed = True
        now = time.time_ns()
        record = self.writer.close(now, reason)
        batch = [record]
        if self.leaves is not None:
            w = self.writer
            batch.append(self.leaves.session_close(w.session_id, record, w.seq, w.totals,
                                                   reason, now))  # fmt: skip
        if self.metrics is not None:
            self.metrics.inc("chunks_sealed")
            self.metrics.inc("bytes_sealed", len(record))
            self.metrics.inc("log_leaves", len(batch) - 1)
        # A failing sink still keeps the records for its retry; the session is already closed.
        with contextlib.suppress(SinkError):
            self.sink.put(batch)
        self._unacked = []

    def _ship(self, records: list[bytes], urgent: bool = False) -> None:
        if records:
            if self.metrics is not None:
                self.metrics.inc("chunks_sealed", len(records))
                self.metrics.inc("bytes_sealed", sum(len(r) for r in records))
            try:
                ack = self.sink.put(records, urgent=urgent, ack=self.acked or urgent)
            except SinkError as exc:
                raise RecordingUnavailable(str(exc)) from None
            if ack is not None:
                if len(self._unacked) >= 64:  # an acked session sealing by age between commits
                    self._unacked = [f for f in self._unacked if not f.done()]
                self._unacked.append(ack)

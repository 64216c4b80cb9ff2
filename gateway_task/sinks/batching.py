"""What both sinks share: records accepted on the event loop, delivered in batches by one thread.

`put` only appends (and hands a batch over when it is full, old, or urgent); a subclass's
`_deliver_forever` runs on the background thread, takes batches from the head of the queue in
order, and calls `_delivered` once a batch is held durably. Failures are the subclass's to
report through `_failure`; sessions stop forwarding while it is set (see Sink).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass, field

from gateway_task.sinks import SinkError


@dataclass
class Batch:
    records: list[bytes]
    size: int
    acks: list[Future[None]] = field(default_factory=list)
    handed: float = field(default_factory=time.monotonic)


class BatchingSink:
    thread_name = "tapegate-sink"

    def __init__(
        self,
        *,
        flush_ms: int,
        max_records: int,
        max_bytes: int,
        max_pending_bytes: int | None = None,
    ) -> None:
        self.flush_ns = flush_ms * 1_000_000
        self.max_records = max_records
        self.max_bytes = max_bytes
        self.max_pending_bytes = max_pending_bytes
        self._batch: list[bytes] = []
        self._batch_bytes = 0
        self._oldest_ns: int | None = None
        self._acks: list[Future[None]] = []
        self._queue: deque[Batch] = deque()
        self._pending_bytes = 0  # handed to the thread, not yet delivered
        self._cond = threading.Condition()
        self._failure: str | None = None
        self._closing = False
        self._thread: threading.Thread | None = None
        self.stats: dict[str, float] = {
            "records_sent": 0, "bytes_sent": 0, "calls": 0, "failed_entries": 0, "retries": 0,
            "ack_seconds_sum": 0.0, "ack_count": 0, "ack_seconds_max": 0.0,
        }  # fmt: skip

    @property
    def failure(self) -> str | None:
        return self._failure

    def put(self, records: list[bytes], urgent: bool = False) -> Future[None] | None:
        """Keep the records (even while failing: they are retried, never dropped), then say
        whether the sink is healthy: a SinkError tells the session to stop forwarding.

        With `urgent` the batch goes now, and the returned future is set once the sink holds
        the records durably: what `durability: acked` waits for."""
        ack: Future[None] | None = None
        for record in records:
            full = len(self._batch) >= self.max_records
            if self._batch and (full or self._batch_bytes + len(record) > self.max_bytes):
                self._hand_off()
            if self._oldest_ns is None:
                self._oldest_ns = time.monotonic_ns()
            self._batch.append(record)
            self._batch_bytes += len(record)
        if records and urgent:
            ack = Future()
            self._acks.append(ack)
            self._hand_off()
        if self._failure is not None:
            raise SinkError(self._failure)
        return ack

    def tick(self, now_ns: int | None = None) -> None:
        """Hand over the batch once its oldest record is `flush_ms` old."""
        now = time.monotonic_ns() if now_ns is None else now_ns
        if self._batch and now - (self._oldest_ns or now) >= self.flush_ns:
            self._hand_off()

    def flush(self, timeout: float = 30.0) -> bool:
        """Deliver everything accepted so far; False if failing or not done within timeout."""
        self._hand_off()
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._queue and self._failure is None:
                if not self._cond.wait(timeout=max(0.0, deadline - time.monotonic())):
                    break
            return not self._queue

    def close(self) -> int:
        """Flush and stop the thread. Returns the bytes that could not be delivered."""
        self.flush()
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
        with self._cond:
            self._closing = False
            return self._pending_bytes

    # -- for subclasses --

    def _start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._deliver_forever, name=self.thread_name, daemon=True
            )
            self._thread.start()

    def _deliver_forever(self) -> None:
        raise NotImplementedError

    def _delivered(self, batch: Batch) -> None:
        """The batch at the head of the queue is held durably: drop it, count it, ack it."""
        with self._cond:
            self._queue.popleft()
            self._pending_bytes -= batch.size
            self._cond.notify_all()
        seconds = time.monotonic() - batch.handed
        self.stats["ack_seconds_sum"] += seconds
        self.stats["ack_count"] += 1
        self.stats["ack_seconds_max"] = max(self.stats["ack_seconds_max"], seconds)
        for ack in batch.acks:
            ack.set_result(None)

    def _hand_off(self) -> None:
        if not self._batch and not self._acks:
            return
        batch = Batch(self._batch, self._batch_bytes, self._acks)
        self._batch, self._batch_bytes, self._oldest_ns, self._acks = [], 0, None, []
        with self._cond:
            self._start()
            self._queue.append(batch)
            self._pending_bytes += batch.size
            self._cond.notify_all()
            # Backpressure: the relay waits here while delivery is behind (not while failing:
            # then the failure stops the sessions instead, and their records are kept).
            limit = self.max_pending_bytes
            while limit is not None and self._pending_bytes > limit and self._failure is None:
                self._cond.wait(timeout=1.0)

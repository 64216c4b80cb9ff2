"""The local folder sink: delivery objects written the way Firehose writes them to S3.

Records from all sessions are batched and written as one object per flush (by size or age):
records concatenated with no delimiter, under `YYYY/MM/DD/HH/`, written to a temporary name,
fsynced and renamed, so a reader never sees half an object.

Writing happens on one background thread, in order, so a slow disk does not stall the relay.
A failed write keeps its batch, marks the sink failing (sessions then stop forwarding) and is
retried with backoff until it succeeds: nothing accepted is dropped. When more than
`max_pending_bytes` wait to be written, `put` blocks until the writer catches up, which slows
the sessions down rather than letting memory grow.
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from collections import deque
from concurrent.futures import Future
from pathlib import Path

from gateway_task.sinks import SinkError, record_ack

RETRY_BACKOFF_S = (0.05, 0.1, 0.2, 0.5, 1.0, 2.0)


class LocalFolderSink:
    def __init__(
        self,
        root: Path,
        flush_bytes: int = 4 << 20,
        flush_ms: int = 500,
        max_pending_bytes: int = 64 << 20,
    ) -> None:
        self.root = Path(root)
        self.flush_bytes = flush_bytes
        self.flush_ns = flush_ms * 1_000_000
        self.max_pending_bytes = max_pending_bytes
        self._batch: list[bytes] = []
        self._batch_bytes = 0
        self._oldest_ns: int | None = None
        self._queue: deque[tuple[list[bytes], int, list[Future[None]], float]] = deque()
        self._acks: list[Future[None]] = []
        self._pending_bytes = 0  # handed to the writer thread, not yet written
        self._cond = threading.Condition()
        self._failure: str | None = None
        self._closing = False
        self._thread: threading.Thread | None = None
        self.stats = {"records_sent": 0, "bytes_sent": 0, "calls": 0, "failed_entries": 0,
                      "retries": 0, "ack_seconds_sum": 0.0, "ack_count": 0,
                      "ack_seconds_max": 0.0}  # fmt: skip

    @property
    def failure(self) -> str | None:
        return self._failure

    def put(self, records: list[bytes], urgent: bool = False) -> Future[None] | None:
        """Keep the records (even while failing: they are retried, never dropped), then say
        whether the sink is healthy. A SinkError tells the session to stop forwarding.

        With `urgent` the batch is written now, and the returned future is set once the
        records are on disk: what `durability: acked` waits for."""
        ack: Future[None] | None = None
        if records:
            if self._oldest_ns is None:
                self._oldest_ns = time.monotonic_ns()
            self._batch += records
            self._batch_bytes += sum(len(r) for r in records)
            if urgent:
                ack = Future()
                self._acks.append(ack)
            if urgent or self._batch_bytes >= self.flush_bytes:
                self._hand_off()
        if self._failure is not None:
            raise SinkError(self._failure)
        return ack

    def tick(self, now_ns: int | None = None) -> None:
        now = time.monotonic_ns() if now_ns is None else now_ns
        if self._batch and now - (self._oldest_ns or now) >= self.flush_ns:
            self._hand_off()

    def flush(self, timeout: float = 30.0) -> bool:
        """Write everything accepted so far. False if the archive is failing or too slow."""
        self._hand_off()
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._queue and self._failure is None:
                if not self._cond.wait(timeout=max(0.0, deadline - time.monotonic())):
                    break
            return not self._queue

    def close(self) -> int:
        """Flush and stop the writer. Returns the bytes that could not be written (0 normally)."""
        self.flush()
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        with self._cond:
            self._closing = False
            return self._pending_bytes

    # -- internals --

    def _hand_off(self) -> None:
        if not self._batch:
            return
        batch, size, acks = self._batch, self._batch_bytes, self._acks
        self._batch, self._batch_bytes, self._oldest_ns, self._acks = [], 0, None, []
        with self._cond:
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._write_forever, name="tapegate-local-sink", daemon=True
                )
                self._thread.start()
            self._queue.append((batch, size, acks, time.monotonic()))
            self._pending_bytes += size
            self._cond.notify_all()
            # Backpressure: the relay waits here while the disk is behind (not while failing:
            # then sessions are stopped by the failure instead, and their records kept).
            while self._pending_bytes > self.max_pending_bytes and self._failure is None:
                self._cond.wait(timeout=1.0)

    def _write_forever(self) -> None:
        attempt = 0
        while True:
            with self._cond:
                while not self._queue and not self._closing:
                    self._cond.wait()
                if not self._queue:
                    return
                batch, size, acks, handed = self._queue[0]
            self.stats["calls"] += 1
            error = self._write(batch)
            if error is None:
                record_ack(self.stats, time.monotonic() - handed)
                self.stats["records_sent"] += len(batch)
                self.stats["bytes_sent"] += size
                with self._cond:
                    self._queue.popleft()
                    self._pending_bytes -= size
                    self._failure = None
                    attempt = 0
                    self._cond.notify_all()
                for ack in acks:
                    ack.set_result(None)
                continue
            self.stats["failed_entries"] += len(batch)
            self.stats["retries"] += 1
            with self._cond:
                self._failure = error
                self._cond.notify_all()
                if self._closing:
                    return  # give up on close; the records stay in memory only
                delay = RETRY_BACKOFF_S[min(attempt, len(RETRY_BACKOFF_S) - 1)]
                attempt += 1
                self._cond.wait(timeout=delay)

    def _write(self, batch: list[bytes]) -> str | None:
        now = time.time()
        folder = self.root / time.strftime("%Y/%m/%d/%H", time.gmtime(now))
        name = f"tapegate-{int(now * 1000)}-{uuid.uuid4().hex[:12]}.bin"
        tmp = folder / f".{name}.tmp"
        try:
            folder.mkdir(parents=True, exist_ok=True)
            with open(tmp, "wb") as fh:
                fh.writelines(batch)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, folder / name)
        except OSError as exc:
            return f"cannot write to the archive folder {self.root}: {exc.strerror}"
        return None

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
import time
import uuid
from pathlib import Path

from gateway_task.sinks.batching import Batch, BatchingSink

RETRY_BACKOFF_S = (0.05, 0.1, 0.2, 0.5, 1.0, 2.0)


class LocalFolderSink(BatchingSink):
    thread_name = "tapegate-local-sink"

    def __init__(
        self,
        root: Path,
        flush_bytes: int = 4 << 20,
        flush_ms: int = 500,
        max_pending_bytes: int = 64 << 20,
    ) -> None:
        super().__init__(
            flush_ms=flush_ms,
            max_records=1 << 30,
            max_bytes=flush_bytes,
            max_pending_bytes=max_pending_bytes,
        )
        self.root = Path(root)

    def _deliver_forever(self) -> None:
        attempt = 0
        while True:
            with self._cond:
                while not self._queue and not self._closing:
                    self._cond.wait()
                if not self._queue:
                    return
                batch = self._queue[0]
            self.stats["calls"] += 1
            error = self._write(batch)
            if error is None:
                self._failure = None
                attempt = 0
                self.stats["records_sent"] += len(batch.records)
                self.stats["bytes_sent"] += batch.size
                self._delivered(batch)
                continue
            self.stats["failed_entries"] += len(batch.records)
            self.stats["retries"] += 1
            with self._cond:
                self._failure = error
                self._cond.notify_all()
                if self._closing:
                    return  # give up on close; the records stay in memory only
                delay = RETRY_BACKOFF_S[min(attempt, len(RETRY_BACKOFF_S) - 1)]
                attempt += 1
                self._cond.wait(timeout=delay)

    def _write(self, batch: Batch) -> str | None:
        now = time.time()
        folder = self.root / time.strftime("%Y/%m/%d/%H", time.gmtime(now))
        name = f"tapegate-{int(now * 1000)}-{uuid.uuid4().hex[:12]}.bin"
        tmp = folder / f".{name}.tmp"
        try:
            folder.mkdir(parents=True, exist_ok=True)
            with open(tmp, "wb") as fh:
                fh.writelines(batch.records)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, folder / name)
        except OSError as exc:
            return f"cannot write to the archive folder {self.root}: {exc.strerror}"
        return None

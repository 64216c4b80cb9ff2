"""The local folder sink: delivery objects written the way Firehose writes them to S3.

Records from all sessions are batched and written as one object per flush (by size or age):
records concatenated with no delimiter, under `YYYY/MM/DD/HH/`, written to a temporary name,
fsynced and renamed, so a reader never sees half an object.

One supervised worker thread writes, in order, so a slow disk does not stall the event loop. A
failed write keeps its batch, marks the sink failing (sessions then stop forwarding) and is
retried with backoff until it succeeds: nothing accepted is dropped. When more than
`max_memory_bytes` wait to be written, sessions wait on the loop for room (backpressure). There
is no separate spool: the folder is already the disk.
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path

from gateway_task.recording.batching import DEFAULT_MAX_MEMORY_BYTES, Batch, BatchingSink
from gateway_task.recording.durable import write_durably

RETRY_BACKOFF_S = (0.05, 0.1, 0.2, 0.5, 1.0, 2.0)


class LocalFolderSink(BatchingSink):
    worker_names = ("tapegate-local-sink",)

    def __init__(
        self,
        root: Path,
        flush_bytes: int = 4 << 20,
        flush_ms: int = 500,
        max_memory_bytes: int = DEFAULT_MAX_MEMORY_BYTES,
    ) -> None:
        super().__init__(
            flush_ms=flush_ms,
            max_records=1 << 30,
            max_bytes=flush_bytes,
            max_memory_bytes=max_memory_bytes,
        )
        self.root = Path(root)

    def _deliver(self, batch: Batch) -> None:
        attempt = 0
        while True:
            self.stats["calls"] += 1
            error = self._write(batch)
            if error is None:
                self.stats["records_sent"] += len(batch.records)
                self.stats["bytes_sent"] += batch.size
                self._held(batch)
                self._set_failure(None)
                return
            self.stats["failed_entries"] += len(batch.records)
            self.stats["retries"] += 1
            self._set_failure(error)
            with self._cond:
                if self._closing:
                    return  # give up on close; close() reports the bytes not written
                delay = RETRY_BACKOFF_S[min(attempt, len(RETRY_BACKOFF_S) - 1)]
                attempt += 1
                self._cond.wait(timeout=delay)

    def _write(self, batch: Batch) -> str | None:
        now = time.time()
        folder = self.root / time.strftime("%Y/%m/%d/%H", time.gmtime(now))
        name = f"tapegate-{int(now * 1000)}-{uuid.uuid4().hex[:12]}.bin"
        try:
            write_durably(folder / name, batch.records, self.root)
        except OSError as exc:
            return f"cannot write to the archive folder {self.root}: {exc.strerror}"
        return None

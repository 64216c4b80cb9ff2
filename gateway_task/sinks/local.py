"""The local folder sink: delivery objects written the way Firehose writes them to S3.

Records from all sessions are batched and written as one object per flush (by size or age):
records concatenated with no delimiter, under `YYYY/MM/DD/HH/`, written to a temporary name,
fsynced and renamed, so a reader never sees half an object. A failed write keeps the batch in
memory, marks the sink failing (sessions then stop forwarding) and is retried on the next tick.
"""

from __future__ import annotations

import os
import time
import uuid
from pathlib import Path

from gateway_task.sinks import SinkError


class LocalFolderSink:
    def __init__(self, root: Path, flush_bytes: int = 1 << 20, flush_ms: int = 500) -> None:
        self.root = Path(root)
        self.flush_bytes = flush_bytes
        self.flush_ns = flush_ms * 1_000_000
        self._batch: list[bytes] = []
        self._batch_bytes = 0
        self._oldest_ns: int | None = None
        self._failure: str | None = None
        self.objects_written = 0

    @property
    def failure(self) -> str | None:
        return self._failure

    def put(self, records: list[bytes]) -> None:
        """Keep the records (even while failing: they are retried, never dropped), then say
        whether the sink is healthy. A SinkError tells the session to stop forwarding."""
        if records:
            if self._oldest_ns is None:
                self._oldest_ns = time.monotonic_ns()
            self._batch += records
            self._batch_bytes += sum(len(r) for r in records)
            if self._batch_bytes >= self.flush_bytes and self._failure is None:
                self._flush()
        if self._failure is not None:
            raise SinkError(self._failure)

    def tick(self, now_ns: int | None = None) -> None:
        now = time.monotonic_ns() if now_ns is None else now_ns
        if self._batch and (
            self._failure is not None or now - (self._oldest_ns or now) >= self.flush_ns
        ):
            self._flush()

    def close(self) -> None:
        if self._batch:
            self._flush()

    def _flush(self) -> None:
        now = time.time()
        folder = self.root / time.strftime("%Y/%m/%d/%H", time.gmtime(now))
        name = f"tapegate-{int(now * 1000)}-{uuid.uuid4().hex[:12]}.bin"
        tmp = folder / f".{name}.tmp"
        try:
            folder.mkdir(parents=True, exist_ok=True)
            with open(tmp, "wb") as fh:
                fh.write(b"".join(self._batch))
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, folder / name)
        except OSError as exc:
            self._failure = f"cannot write to the archive folder {self.root}: {exc.strerror}"
            return
        self._failure = None
        self._batch, self._batch_bytes, self._oldest_ns = [], 0, None
        self.objects_written += 1

"""The Firehose sink: sealed chunks from all sessions → PutRecordBatch, with a disk spool.

- Batches hold at most 500 records and 4 MiB (PutRecordBatch's limits) and are sent when full or
  when the oldest record is `flush_ms` old.
- PutRecordBatch can succeed with FailedPutCount > 0: only the failed entries are sent again,
  with exponential backoff and full jitter.
- When Firehose stays unavailable (throttling, outages, no network), the batch is spilled to a
  bounded spool on disk (fsynced files of concatenated records), drained oldest first once a
  send succeeds again — and at start, so nothing spooled before a restart is lost.
- When the spool is full the sink reports a failure: sessions stop forwarding and new ones are
  refused (fail closed). Records already accepted stay in memory and keep being retried.

All network and disk I/O happens on one sender thread; `put` only appends to a list.
"""

from __future__ import annotations

import logging
import os
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gateway_task.sinks.batching import BatchingSink
from tapegate.tape import split_records

log = logging.getLogger("tapegate.sink.firehose")

MAX_BATCH_RECORDS = 500
MAX_BATCH_BYTES = 4 * 1024 * 1024
RETRYABLE_CODES = {"ServiceUnavailableException", "InternalFailure", "ThrottlingException"}


class FirehoseSink(BatchingSink):
    thread_name = "tapegate-firehose"

    def __init__(
        self,
        stream: str,
        client: Any,
        spool_dir: Path,
        *,
        flush_ms: int = 500,
        spool_max_bytes: int = 1 << 30,
        attempts: int = 5,
        base_delay_s: float = 0.1,
        max_delay_s: float = 5.0,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        super().__init__(flush_ms=flush_ms, max_records=MAX_BATCH_RECORDS,
                         max_bytes=MAX_BATCH_BYTES)  # fmt: skip
        self.stream = stream
        self.client = client
        self.spool = Path(spool_dir)
        self.spool.mkdir(parents=True, exist_ok=True)
        self.spool_max_bytes = spool_max_bytes
        self.attempts = attempts
        self.base_delay_s = base_delay_s
        self.max_delay_s = max_delay_s
        self._sleep = sleep
        self._spool_seq = max((int(p.stem) for p in self.spool.glob("*.bin")), default=0)
        self.stats.update({"spooled_records": 0, "drained_records": 0})
        with self._cond:
            self._start()  # at once: a spool left by the last run drains without waiting

    @property
    def spool_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.spool.glob("*.bin"))

    def _deliver_forever(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._closing:
                    self._cond.wait(timeout=1.0)
                    if not self._queue and self._spool_files():
                        break  # idle: a good time to drain the spool
                if self._closing and not self._queue:
                    return
                batch = self._queue[0] if self._queue else None
            if batch is None:
                self._drain_spool()
                continue
            unsent = self._send(batch.records)
            if unsent and not self._spill(unsent):
                # Neither Firehose nor the spool holds them: keep them (and their acks) at the
                # head of the queue and try again after a pause.
                with self._cond:
                    batch.records = unsent
                    if self._closing:
                        return
                self._sleep(self.max_delay_s)
                continue
            if not unsent and self._spool_files():
                self._drain_spool()
            self._delivered(batch)

    def _send(self, records: list[bytes]) -> list[bytes]:
        """PutRecordBatch with retries of the failed entries only. Returns what is still unsent."""
        pending = records
        for attempt in range(self.attempts):
            if attempt:
                self.stats["retries"] += 1
                cap = min(self.max_delay_s, self.base_delay_s * 2**attempt)
                self._sleep(random.uniform(0, cap))  # full jitter
            try:
                self.stats["calls"] += 1
                response = self.client.put_record_batch(
                    DeliveryStreamName=self.stream, Records=[{"Data": r} for r in pending]
                )
            except Exception as exc:  # throttling, outage, no network: retry, then spool
                log.warning("PutRecordBatch failed: %s", type(exc).__name__)
                continue
            results = response.get("RequestResponses", [])
            failed = [r for r, res in zip(pending, results, strict=False) if res.get("ErrorCode")]
            if len(results) < len(pending):  # a short answer: treat the rest as failed
                failed += pending[len(results) :]
            sent = [r for r, res in zip(pending, results, strict=False) if not res.get("ErrorCode")]
            self.stats["records_sent"] += len(sent)
            self.stats["bytes_sent"] += sum(len(r) for r in sent)
            self.stats["failed_entries"] += len(failed)
            if not failed:
                self._clear_failure_if_spool_fits()
                return []
            pending = failed
        return pending

    def _spill(self, records: list[bytes]) -> bool:
        """Write records to the spool; False (and the sink failing) when it is full."""
        size = sum(len(r) for r in records)
        if self.spool_bytes + size > self.spool_max_bytes:
            self._failure = (
                f"Firehose stream {self.stream} is unavailable and the spool is full "
                f"({self.spool_max_bytes} bytes)"
            )
            log.error(self._failure)
            return False
        self._spool_seq += 1
        path = self.spool / f"{self._spool_seq:012d}.bin"
        tmp = path.with_suffix(".tmp")
        with open(tmp, "wb") as fh:
            fh.writelines(records)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        self.stats["spooled_records"] += len(records)
        log.warning("spooled %d records to %s", len(records), path)
        return True

    def _spool_files(self) -> list[Path]:
        return sorted(self.spool.glob("*.bin"))

    def _drain_spool(self) -> None:
        for path in self._spool_files():
            records, errors = split_records(path.read_bytes())
            if errors:
                log.error("spool file %s is damaged: %s", path, errors[0].reason)
            for start in range(0, len(records), MAX_BATCH_RECORDS):
                chunk = records[start : start + MAX_BATCH_RECORDS]
                if self._send(chunk):
                    return  # still unavailable: keep the file, try again later
                self.stats["drained_records"] += len(chunk)
            path.unlink()
        self._clear_failure_if_spool_fits()

    def _clear_failure_if_spool_fits(self) -> None:
        if self._failure is not None and self.spool_bytes < self.spool_max_bytes:
            self._failure = None

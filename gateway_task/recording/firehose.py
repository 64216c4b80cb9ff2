"""The Firehose sink: sealed chunks from all sessions → PutRecordBatch, with a disk spool.

- Batches hold at most 500 records and 4 MiB (PutRecordBatch's limits) and are sent when full or
  when the oldest record is `flush_ms` old, by several sender threads in parallel: a batch that
  is being retried does not hold up the others (nor the sessions in `acked` waiting on them).
- PutRecordBatch can succeed with FailedPutCount > 0: only the failed entries are sent again,
  and only for the codes that can succeed later (RETRYABLE_CODES, throttling, 5xx, no
  network), with exponential backoff and full jitter.
- A permanent error (AccessDenied, stream not found, KMS, a bad argument) fails fast: the sink
  turns failing at once with one clear log line (the gateway turns not-ready and refuses
  sessions), records go to the spool, and a probe every `PERMANENT_PROBE_S` finds out when it
  is fixed.
- While Firehose is unavailable (the sink is *degraded*), and whenever more than
  `max_memory_bytes` wait in memory, batches go straight to the spool (fsynced files), so a
  crash during an outage loses at most the batch not yet written there. The spool is drained,
  oldest first, once a send succeeds again, and at the next start.
- When the spool is full the sink fails: sessions stop forwarding and new ones are refused.
  Records already accepted stay in memory and keep being retried; nothing is dropped.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gateway_task.recording.batching import DEFAULT_MAX_MEMORY_BYTES, Batch, BatchingSink
from gateway_task.recording.spool import DiskSpool

log = logging.getLogger("tapegate.sink.firehose")

MAX_BATCH_RECORDS = 500
MAX_BATCH_BYTES = 4 * 1024 * 1024  # PutRecordBatch's limit
# What the sink puts in one call: well under the limit, because botocore holds several copies
# of a call's records while it is in flight (below), and calls cost nothing per se.
BATCH_BYTES = 1024 * 1024
# Per-entry and per-call codes worth sending again; any other code is a permanent error.
RETRYABLE_CODES = frozenset({
    "ServiceUnavailableException", "InternalFailure", "InternalFailureException",
    "ThrottlingException", "LimitExceededException", "RequestTimeout", "RequestTimeoutException",
    "ExpiredTokenException",  # task credentials rotate; the next call picks up new ones
})  # fmt: skip
SENDERS = 4
PERMANENT_PROBE_S = 30.0
# botocore encodes a call's records as base64 in a JSON body, then as bytes: about 2.7x the
# batch while a call is in flight. Calls (the senders' and the drain's together) are capped at
# SENDERS, so what the encoding holds is bounded by this, on top of sink.max_memory_bytes.
IN_FLIGHT_BYTES_MAX = SENDERS * BATCH_BYTES * 3


@dataclass(frozen=True)
class SendError:
    code: str
    message: str
    permanent: bool

    @property
    def throttled(self) -> bool:
        """Firehose is there and busy: back off and retry, but it is no outage."""
        return "Throttl" in self.code or self.code == "LimitExceededException"


def classify(exc: Exception) -> SendError:
    """A failed call: botocore's ClientError carries the service's code; anything else (no
    network, a reset, a timeout) is an outage, worth retrying."""
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        error = response.get("Error", {})
        code = str(error.get("Code", type(exc).__name__))
        status = int(response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
        retryable = code in RETRYABLE_CODES or "Throttl" in code or status >= 500
        return SendError(code, str(error.get("Message", "")), not retryable)
    return SendError(type(exc).__name__, str(exc), False)


class FirehoseSink(BatchingSink):
    worker_names = (
        *(f"tapegate-firehose-{i}" for i in range(SENDERS)),
        "tapegate-firehose-spooler",
        "tapegate-firehose-drain",
    )

    def __init__(
        self,
        stream: str,
        client: Any,
        spool_dir: Path,
        *,
        flush_ms: int = 500,
        spool_max_bytes: int = 1 << 30,
        max_memory_bytes: int = DEFAULT_MAX_MEMORY_BYTES,
        attempts: int = 5,
        base_delay_s: float = 0.1,
        max_delay_s: float = 5.0,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        super().__init__(flush_ms=flush_ms, max_records=MAX_BATCH_RECORDS,
                         max_bytes=BATCH_BYTES, max_memory_bytes=max_memory_bytes)  # fmt: skip
        self.stream = stream
        self.client = client
        self.spool = DiskSpool(spool_dir, spool_max_bytes)
        self.spool_max_bytes = spool_max_bytes
        self.attempts = attempts
        self.base_delay_s = base_delay_s
        self.max_delay_s = max_delay_s
        self._sleep = sleep
        self._spill: deque[Batch] = deque()  # batches bound for the spool
        self._calls = threading.BoundedSemaphore(SENDERS)  # PutRecordBatch calls in flight
        self._degraded: SendError | None = None  # why sends are failing, while they are
        self.stats.update({"spooled_records": 0, "drained_records": 0, "permanent_errors": 0})
        with self._cond:
            self._start()  # at once: a spool left by the last run drains without waiting

    @property
    def spool_bytes(self) -> int:
        return self.spool.bytes

    # -- routing ------------------------------------------------------------------------------

    def _route(self, batch: Batch) -> None:
        if self._degraded is not None or self.over_memory:
            self._spill.append(batch)
        else:
            self._queue.append(batch)

    def _busy(self) -> bool:
        # A spool waits to drain too while Firehose answers: a clean stop leaves none behind.
        # While it does not, the spool is the delivery (drained at the next start).
        spooled = self.spool.bytes > 0 and self._degraded is None and self._sticky is None
        return bool(self._queue or self._inflight or self._spill or spooled)

    def _work_target(self, name: str) -> Callable[[], None]:
        if name.endswith("spooler"):
            return lambda: self._spool_forever(name)
        if name.endswith("drain"):
            return self._drain_forever
        return lambda: self._deliver_queue(name)

    # -- senders ------------------------------------------------------------------------------

    def _deliver(self, batch: Batch) -> None:
        unsent = self._send(batch.records)
        if not unsent:
            self._held(batch)
            return
        batch.records = unsent
        with self._cond:  # to the spooler: kept on disk until Firehose is back
            for name, inflight in list(self._inflight.items()):
                if inflight is batch:
                    del self._inflight[name]
            self._spill.append(batch)
            self._cond.notify_all()

    def _send(self, records: list[bytes]) -> list[bytes]:
        """PutRecordBatch with retries of the retryable failures only. Returns what is unsent."""
        pending = records
        for attempt in range(self.attempts):
            if attempt:
                self.stats["retries"] += 1
                cap = min(self.max_delay_s, self.base_delay_s * 2**attempt)
                self._sleep(random.uniform(0, cap))  # full jitter
            try:
                self.stats["calls"] += 1
                with self._calls:
                    response = self.client.put_record_batch(
                        DeliveryStreamName=self.stream, Records=[{"Data": r} for r in pending]
                    )
            except Exception as exc:
                error = classify(exc)
                if error.permanent:
                    self._degrade(error)
                    return pending
                if not error.throttled:
                    # An outage: this batch goes to the spool too, at once (retrying it here
                    # would hold its acked sessions past their commit deadline).
                    self._degrade(error)
                    return pending
                continue
            results = response.get("RequestResponses", [])
            failed: list[bytes] = []
            codes: set[str] = set()
            for record, result in zip(pending, results, strict=False):
                if result.get("ErrorCode"):
                    failed.append(record)
                    codes.add(str(result["ErrorCode"]))
                else:
                    self.stats["records_sent"] += 1
                    self.stats["bytes_sent"] += len(record)
            if len(results) < len(pending):  # a short answer: treat the rest as failed
                failed += pending[len(results) :]
                codes.add("ShortResponse")
            self.stats["failed_entries"] += len(failed)
            if len(failed) < len(pending):
                self._recovered()  # Firehose answers and takes records
            if not failed:
                return []
            permanent = sorted(c for c in codes if c not in RETRYABLE_CODES | {"ShortResponse"})
            if permanent:
                self._degrade(SendError(permanent[0], "a record was refused", True))
                return failed
            pending = failed
        return pending

    def _degrade(self, error: SendError) -> None:
        first = self._degraded is None
        self._degraded = error
        if error.permanent:
            self.stats["permanent_errors"] += 1
            reason = (f"Firehose stream {self.stream} refuses records: {error.code}: "
                      f"{error.message} (not retried; records are kept in the spool)")  # fmt: skip
            if self._failure != reason:
                log.error("%s", reason)
            self._set_failure(reason)
        elif first:
            log.warning("Firehose stream %s is unavailable (%s); spooling to %s",
                        self.stream, error.code, self.spool.folder)  # fmt: skip

    def _recovered(self) -> None:
        if self._degraded is not None:
            log.warning("Firehose stream %s is available again", self.stream)
        self._degraded = None
        if self.spool.fits():
            self._set_failure(None)

    # -- the spooler: batches to disk ---------------------------------------------------------

    def _spool_forever(self, name: str) -> None:
        while True:
            with self._cond:
                while not self._spill and not self._closing:
                    self._cond.wait(timeout=1.0)
                if not self._spill:
                    return
                batch = self._spill.popleft()
                self._inflight[name] = batch
            if self.spool.write(batch.records):
                self.stats["spooled_records"] += len(batch.records)
                self._held(batch)
                continue
            # Neither Firehose nor the spool holds it: fail closed, keep it, try both again.
            reason = (f"Firehose stream {self.stream} is unavailable and the spool is full "
                      f"({self.spool_max_bytes} bytes)")  # fmt: skip
            if self._failure != reason and (self._degraded is None or not self._degraded.permanent):
                log.error("%s", reason)
                self._set_failure(reason)
            unsent = self._send(batch.records)
            if not unsent:
                self._held(batch)
                continue
            batch.records = unsent
            with self._cond:
                self._inflight.pop(name, None)
                self._spill.appendleft(batch)
                if self._closing:
                    return
                self._cond.wait(timeout=self.max_delay_s)

    # -- the drain: spool to Firehose -----------------------------------------------------------

    def _drain_forever(self) -> None:
        delay = self.base_delay_s
        while True:
            with self._cond:
                if self._closing:
                    return
            files = self.spool.files()  # a directory listing: never under the loop's lock
            if not files:
                with self._cond:
                    self._cond.wait(timeout=1.0)
                continue
            if self._degraded is not None:
                # Probe with backoff: one send of the oldest file's first records.
                cap = PERMANENT_PROBE_S if self._degraded.permanent else self.max_delay_s
                with self._cond:
                    self._cond.wait(timeout=delay)
                    if self._closing:
                        return
                delay = min(cap, delay * 2)
            if self._drain(files):
                delay = self.base_delay_s

    def _drain(self, files: list[Path]) -> bool:
        """Send spool files oldest first; False at the first one that could not all be sent
        (the file is kept and sent whole again later: duplicates are harmless downstream)."""
        for path in files:
            try:
                records = self.spool.read(path)
            except OSError as exc:
                self.spool.set_aside(path, f"cannot read it: {exc.strerror}")
                continue
            if self._degraded is not None and records:
                # A probe: one record tells whether Firehose is back, without encoding a
                # whole file's worth of calls every few seconds of an outage.
                if self._send(records[:1]):
                    return False
                self.stats["drained_records"] += 1
                records = records[1:]
            for part in _parts(records):
                if self._send(part):
                    return False
                self.stats["drained_records"] += len(part)
            self.spool.remove(path)
            with self._cond:
                self._cond.notify_all()  # flush() may be waiting for the spool to drain
                if self._closing:
                    return True
        if self.spool.fits() and self._degraded is None:
            self._set_failure(None)
        return True


def _parts(records: list[bytes]) -> list[list[bytes]]:
    """Records in calls of at most MAX_BATCH_RECORDS records and BATCH_BYTES bytes (a record
    larger than that goes alone: records are at most 900 KiB, under the call's limit)."""
    parts: list[list[bytes]] = []
    part: list[bytes] = []
    size = 0
    for record in records:
        if part and (len(part) >= MAX_BATCH_RECORDS or size + len(record) > BATCH_BYTES):
            parts.append(part)
            part, size = [], 0
        part.append(record)
        size += len(record)
    if part:
        parts.append(part)
    return parts

"""The embedded archive of `tapegate up`: the delivery folder → the pipeline → SQLite + Parquet.

The gateway's folder sink writes delivery objects; `scan` feeds every object not yet processed
to the same pipeline function the Lambda runs, and remembers it in the index. `tapegate
sessions` and `tapegate query` call `scan` first too, so the archive is current even when no
gateway is running.

So several processes scan one data dir at once (the gateway's loop while a `tapegate` command
catches up). Each object is claimed in the index transaction that records its effects: it is
processed by one of them only, and a reader sees all of an object's effects or none.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path

from tapegate.archive.local import DuckDBQuery, IndexBusy, LocalObjectStore, SqliteIndex
from tapegate.config import Config
from tapegate.keys import Keyring, LocalKeyStore
from tapegate.log.note import NoteError
from tapegate.log.sequencer import LogKey, Sequencer
from tapegate.log.verify import LogSources
from tapegate.pipeline import ObjectReport, Pipeline

log = logging.getLogger("tapegate.archive")


class LocalArchive:
    def __init__(self, config: Config) -> None:
        root = Path(config.data_dir) / "archive"
        self.deliveries = LocalObjectStore(config.delivery_dir)
        self.evidence = self.deliveries  # the raw evidence is what the sink delivered
        self.index = SqliteIndex(root / "index.sqlite")
        self.curated_root = root / "curated"
        self.curated = LocalObjectStore(self.curated_root)
        self.query_engine = DuckDBQuery(self.curated_root)
        self._keys = LocalKeyStore(config.data_dir)
        self._pipeline: Pipeline | None = None
        self.default_auditor_key = self._keys.dir / "auditor.key"
        # The session log: tiles and checkpoints in a folder beside the index (docs/LOG.md).
        self.log_store = LocalObjectStore(root / "log")
        self._log = config.log
        self._sequencer: Sequencer | None = None
        self.sequence_refused: str | None = None  # why the sequencer stopped, if it did
        self._stopping = threading.Event()
        self._working = threading.Lock()  # held by a scan or sweep of this process

    def trusted(self) -> Keyring:
        return self._keys.trusted()

    @property
    def pipeline(self) -> Pipeline:
        if self._pipeline is None:
            self._pipeline = Pipeline(self._keys.trusted(), self.index, self.curated)
        return self._pipeline

    def scan(self) -> list[ObjectReport]:
        """Process every delivery object not processed yet, oldest first; after `stop`, none."""
        reports = []
        with self._working:
            for key in self.deliveries.list():
                if self._stopping.is_set():
                    break
                if not key.endswith(".bin") or self.index.processed(key):
                    continue
                try:
                    report = self._process(key)
                except IndexBusy:
                    # Stopping, or another process kept the index busy past the timeout: it is
                    # indexing, and what it indexes shows once committed. The next scan goes on
                    # from here.
                    break
                if report is not None:
                    reports.append(report)
        return reports

    def sequence(self, min_interval_s: float = 0.0) -> bool:
        """Append the leaves the pipeline holds to the log and sign a checkpoint, unless the
        last one is younger than `min_interval_s`; whether a checkpoint was signed."""
        with self._working:
            if self._stopping.is_set():
                return False
            if self._sequencer is None:
                key = LogKey(self._log.origin, self._keys.log_key())
                self._sequencer = Sequencer(self.index, self.log_store, key)
            if not self.index.pending_leaves(1):  # the usual case: no write lock taken for it
                return False
            try:
                with self.index.transaction(abandon=self._stopping):
                    if not self.index.pending_leaves(1):
                        return False
                    now_ms = time.time_ns() // 1_000_000
                    latest = self._sequencer.latest()
                    age_ms = now_ms - latest.checkpoint.time_ms if latest else None
                    # A clock stepped back (age below 0) waits for nothing: run() moves the
                    # checkpoint's time past the last one's.
                    if age_ms is not None and 0 <= age_ms < min_interval_s * 1000:
                        return False
                    return self._sequencer.run(now_ms) is not None
            except IndexBusy:
                return False
            except NoteError as exc:  # the log is not the one it signed: `log verify` says how
                if str(exc) != self.sequence_refused:
                    log.error("the session log's sequencer refuses to go on: %s", exc)
                self.sequence_refused = str(exc)
                return False

    def log_sources(self) -> LogSources:
        return LogSources(log=self.log_store, log_prefix="", evidence=self.evidence,
                          index=self.index, gateway_keys=self.trusted(),
                          log_keys=self._keys.log_keys(self._log.origin),
                          origin=self._log.origin)  # fmt: skip

    def sweep(self) -> list[str]:
        """Mark sessions open past the grace period as truncated (in one index transaction, so
        that it cannot undo what another process indexes meanwhile)."""
        with self._working:
            if self._stopping.is_set():
                return []
            try:
                with self.index.transaction(abandon=self._stopping):
                    return self.pipeline.sweep()
            except IndexBusy:  # stopping, or another process is busy: the next sweep does it
                return []

    def stop(self) -> None:
        """Let a scan in progress finish the object in hand, and index nothing more; returns
        once it has. What is left waits for the next scan: every `tapegate` command scans
        first, and so does the next `tapegate up`."""
        self._stopping.set()
        with self._working:
            pass

    def _process(self, key: str) -> ObjectReport | None:
        path = self.deliveries.root / key
        delivered_ns = int(os.stat(path).st_mtime_ns)
        data = path.read_bytes()  # read before taking the write lock, to hold it less
        with self.index.transaction(abandon=self._stopping):
            if self.index.processed(key):
                return None  # another process took it while this one was reading it
            report = self.pipeline.process_object(key, data, delivered_ns)
            self.index.mark_processed(key, time.time_ns())
        return report

"""The embedded archive of `tapegate up`: the delivery folder → the pipeline → SQLite + Parquet.

The gateway's folder sink writes delivery objects; `scan` feeds every object not yet processed
to the same pipeline function the Lambda runs, and remembers it in the index. `tapegate
sessions` and `tapegate query` call `scan` first too, so the archive is current even when no
gateway is running.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from tapegate.archive.local import DuckDBQuery, LocalObjectStore, SqliteIndex
from tapegate.config import Config
from tapegate.keys import Keyring, LocalKeyStore
from tapegate.pipeline import ObjectReport, Pipeline


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

    def trusted(self) -> Keyring:
        return self._keys.trusted()

    @property
    def pipeline(self) -> Pipeline:
        if self._pipeline is None:
            self._pipeline = Pipeline(self._keys.trusted(), self.index, self.curated)
        return self._pipeline

    def scan(self) -> list[ObjectReport]:
        """Process every delivery object not processed yet, oldest first."""
        reports = []
        for key in self.deliveries.list():
            if not key.endswith(".bin") or self.index.processed(key):
                continue
            path = self.deliveries.root / key
            delivered_ns = int(os.stat(path).st_mtime_ns)
            reports.append(self.pipeline.process_object(key, path.read_bytes(), delivered_ns))
            self.index.mark_processed(key, time.time_ns())
        return reports

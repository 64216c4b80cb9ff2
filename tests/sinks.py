"""Folder sinks with faults a test controls: a writer with a bug, writes held at a gate."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from gateway_task.recording.batching import Batch
from gateway_task.recording.local import LocalFolderSink


class BreakingSink(LocalFolderSink):
    """A folder sink whose worker raises (a bug, not an I/O error) the first `breaks` times."""

    def __init__(self, root: Path, breaks: int, **kw: Any) -> None:
        super().__init__(root, flush_ms=10, **kw)
        self.breaks = breaks

    def _write(self, batch: Batch) -> str | None:
        if self.breaks > 0:
            self.breaks -= 1
            raise RuntimeError("a bug in the writer")
        return super()._write(batch)


class GatedWrites(LocalFolderSink):
    """A folder sink whose writes wait while the gate is closed (closed at first unless
    `open`); `waiting` is set once a write is held there."""

    def __init__(self, root: Path, *, open: bool = False, **kw: Any) -> None:
        super().__init__(root, flush_ms=10, **kw)
        self.gate = threading.Event()
        if open:
            self.gate.set()
        self.waiting = threading.Event()

    def _write(self, batch: Batch) -> str | None:
        if not self.gate.is_set():
            self.waiting.set()
            self.gate.wait(30)
        return super()._write(batch)

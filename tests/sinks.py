"""Folder sinks with faults a test controls: a writer with a bug, writes held at a gate."""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future
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


class GatedAcks(LocalFolderSink):
    """A folder sink whose acknowledgements wait for the test to open the gate: every ack, or
    only those of puts that `holds` picks; `waiting` is set once one is held there."""

    def __init__(self, root: Path, holds: Callable[[list[bytes]], bool] | None = None) -> None:
        super().__init__(root, flush_ms=50)
        self.gate = threading.Event()
        self.waiting = threading.Event()
        self.holds = holds

    def put(
        self, records: list[bytes], urgent: bool = False, ack: bool = False
    ) -> Future[None] | None:
        inner = super().put(records, urgent, ack)
        if inner is None or (self.holds is not None and not self.holds(records)):
            return inner
        outer: Future[None] = Future()

        def release() -> None:
            inner.result()
            self.waiting.set()
            self.gate.wait()
            outer.set_result(None)

        threading.Thread(target=release, daemon=True).start()
        return outer


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

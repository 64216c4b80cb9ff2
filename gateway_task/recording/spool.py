"""A bounded spool on disk: batches of records in fsynced files, drained oldest first.

Files are named by a rising sequence number, written to a temporary name, fsynced and renamed,
so a crash leaves whole files only; the next start finds and drains them.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

from gateway_task.recording.durable import write_durably
from tapegate.tape import split_records

log = logging.getLogger("tapegate.sink.spool")


class DiskSpool:
    def __init__(self, folder: Path, max_bytes: int) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        for stale in self.folder.glob("*.tmp"):  # a write a crash cut short: never renamed
            stale.unlink(missing_ok=True)
        files = self.files()
        self._seq = max((int(p.stem) for p in files), default=0)
        self._bytes = sum(p.stat().st_size for p in files)

    @property
    def bytes(self) -> int:
        return self._bytes

    def fits(self, size: int = 0) -> bool:
        return self._bytes + size <= self.max_bytes

    def write(self, records: list[bytes]) -> bool:
        """Keep records durably; False when they would not fit."""
        size = sum(len(r) for r in records)
        with self._lock:
            if not self.fits(size):
                return False
            self._seq += 1
            path = self.folder / f"{self._seq:012d}.bin"
            self._bytes += size
        try:
            write_durably(path, records, self.folder)
        except OSError as exc:
            log.error("cannot write the spool file %s: %s", path, exc.strerror)
            with self._lock:
                self._bytes -= size
            return False
        return True

    def files(self) -> list[Path]:
        return sorted(self.folder.glob("*.bin"))

    def read(self, path: Path) -> list[bytes]:
        """The file's records. A damaged tail is kept aside in a file of its own (evidence is
        never deleted); the whole records before it are returned."""
        data = path.read_bytes()
        records, errors = split_records(data)
        if errors:
            log.error("spool file %s is damaged: %s", path, errors[0].reason)
            kept = path.with_suffix(".damaged")
            with open(kept, "wb") as fh:
                fh.write(data)
        return records

    def set_aside(self, path: Path, why: str) -> None:
        """A file that cannot be drained: renamed out of the way (not deleted), and logged."""
        log.error("spool file %s is set aside: %s", path, why)
        try:
            size = path.stat().st_size
            path.rename(path.with_suffix(".aside"))
        except OSError:
            return
        with self._lock:
            self._bytes -= size

    def remove(self, path: Path) -> None:
        try:
            size = path.stat().st_size
            path.unlink()
        except OSError as exc:
            log.error("cannot remove the drained spool file %s: %s", path, exc.strerror)
            return
        with self._lock:
            self._bytes -= size

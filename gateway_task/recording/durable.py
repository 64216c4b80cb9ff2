"""A file written so that it survives a power loss once the call returns: its bytes, its name.

fsync on the file makes its bytes durable, not its directory entry: after a crash the rename
(and with it an acknowledged chunk) can be gone. The folder is fsynced too, and so is each
folder the write had to create, up to `root`.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path


def write_durably(path: Path, records: Iterable[bytes], root: Path) -> None:
    """Write `records` to `path` (through a temporary name: readers never see half a file);
    raises OSError."""
    folder = path.parent
    created = _missing(folder, root)
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".{path.name}.tmp"
    try:
        with open(tmp, "wb") as fh:
            fh.writelines(records)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError:
        tmp.unlink(missing_ok=True)
        raise
    for directory in [folder, *(d.parent for d in created)]:
        fsync_dir(directory)


def fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _missing(folder: Path, root: Path) -> list[Path]:
    """The folders from `folder` up to (not including) `root` that do not exist yet."""
    out = []
    while folder != root and folder != folder.parent and not folder.exists():
        out.append(folder)
        folder = folder.parent
    return out

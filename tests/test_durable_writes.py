"""A delivered or spooled file is durable before the sink says so: its bytes, its name, and the
folders made for it (an ack given before the directory entry is synced can vanish on power loss)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from gateway_task.recording import durable
from gateway_task.recording.durable import write_durably


def test_the_file_and_every_folder_made_for_it_are_synced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    synced: list[tuple[str, bool]] = []
    real = os.fsync

    def fsync(fd: int) -> None:
        is_dir = stat.S_ISDIR(os.fstat(fd).st_mode)
        synced.append((os.readlink(f"/proc/self/fd/{fd}"), is_dir))
        real(fd)

    monkeypatch.setattr(durable.os, "fsync", fsync)
    root = tmp_path / "delivery"
    root.mkdir()
    path = root / "2026" / "12" / "02" / "16" / "tapegate-1.bin"
    write_durably(path, [b"one", b"two"], root)
    assert path.read_bytes() == b"onetwo"
    assert not list(path.parent.glob("*.tmp"))
    assert synced[0] == (str(path.parent / ".tapegate-1.bin.tmp"), False)  # the bytes first
    dirs = [p for p, is_dir in synced[1:] if is_dir]
    # The entry's folder, then each new folder's parent up to the root.
    assert dirs == [str(path.parent), *[str(p) for p in list(path.parents)[1:5]]]
    synced.clear()
    write_durably(path.with_name("tapegate-2.bin"), [b"three"], root)
    assert [p for p, is_dir in synced if is_dir] == [str(path.parent)]  # no folder was made


def test_a_failed_write_leaves_no_temporary_file(tmp_path: Path) -> None:
    def records():  # type: ignore[no-untyped-def]
        yield b"part"
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError):
        write_durably(tmp_path / "x.bin", records(), tmp_path)
    assert list(tmp_path.iterdir()) == []

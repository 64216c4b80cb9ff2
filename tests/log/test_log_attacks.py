"""Attacks from the adversarial review of the session log, each now named by `log verify`
(or refused by the sequencer), and bad input that once raised instead of being reported."""

from __future__ import annotations

import shutil
import sqlite3
import time
from pathlib import Path

from tapegate.archive.embedded import LocalArchive
from tapegate.cli import main as cli_main
from tapegate.keys import LocalKeyStore
from tapegate.log.note import Checkpoint
from tapegate.log.verify import LogProblemKind as K
from tapegate.tape.codec import LEAF_MAGIC
from tests.log.fleet import Fleet, a_day


def _db(fleet: Fleet) -> sqlite3.Connection:
    return sqlite3.connect(fleet.config.data_dir / "archive" / "index.sqlite")


def test_an_instance_removed_whole_before_the_archive_saw_it(tmp_path: Path) -> None:
    """Every leaf of one process run gone, counters of the others intact: the next run's start
    heartbeat names it."""
    fleet = Fleet(tmp_path)
    a_day(fleet, sessions=1)
    victim = fleet.restart()
    fleet.heartbeat("start")
    fleet.session()
    fleet.heartbeat("stop")
    fleet.deliver().unlink()  # before any scan
    fleet.restart()
    a_day(fleet, sessions=1)
    problems = fleet.verify().problems
    assert [(p.kind, p.instance) for p in problems] == [(K.MISSING_INSTANCE, victim)]


def test_a_log_started_afresh_without_an_instance_is_caught(tmp_path: Path, capsys) -> None:
    """The review's first attack: log folder removed, the index's leaves made pending again
    minus one instance, that instance's session removed; the sequencer would sign a fresh log.
    It refuses while older checkpoints remain; removed with them, the instance chain and the
    auditor's kept checkpoint both show it."""
    fleet = Fleet(tmp_path)
    a_day(fleet, sessions=1)
    fleet.archive()
    victim_instance = fleet.restart()
    fleet.heartbeat("start")
    victim, _ = fleet.session()
    fleet.heartbeat("stop")
    victim_object = fleet.deliver()
    fleet.archive()
    kept = tmp_path / "kept.checkpoint"  # the auditor's, once the victim was in the log
    kept.write_bytes((fleet.log_dir / "checkpoint").read_bytes())
    fleet.restart()
    a_day(fleet, sessions=1)
    assert fleet.verify().consistent
    with _db(fleet) as db:
        db.execute("DELETE FROM leaves WHERE instance = ?", (victim_instance,))
        db.execute("UPDATE leaves SET log_index = NULL")
        db.execute("DELETE FROM sessions WHERE session_id = ?", (victim,))
        db.execute("DELETE FROM chunks WHERE session_id = ?", (victim,))
    victim_object.unlink()
    (fleet.log_dir / "checkpoint").unlink()
    archive = fleet.archive()
    assert "not starting a new log over an old one" in (archive.sequence_refused or "")
    shutil.rmtree(fleet.log_dir)  # the history too
    kinds = {p.kind for p in fleet.verify().problems}
    assert K.MISSING_INSTANCE in kinds
    capsys.readouterr()
    cfg = ["--config", str(fleet.config_file)]
    assert cli_main(["log", "verify", "--since-checkpoint", str(kept), *cfg]) == 1
    out = capsys.readouterr().out
    assert "missing_instance" in out and ("inconsistent" in out or "shrunk" in out)


def test_a_frozen_sequencer_is_a_stale_log(tmp_path: Path) -> None:
    """Leaves kept from the sequencer (one trigger in the index): the log stops at its last
    checkpoint while the archive moves on."""
    fleet = Fleet(tmp_path)
    a_day(fleet, sessions=1)
    fleet.archive()
    with _db(fleet) as db:
        db.execute("CREATE TRIGGER freeze AFTER INSERT ON leaves BEGIN "
                   "UPDATE leaves SET log_index = -1 WHERE rowid = NEW.rowid; END")  # fmt: skip
    fleet.now = time.time_ns() + 86_400 * 10**9  # a day later
    fleet.restart()
    a_day(fleet, sessions=2)
    problems = fleet.verify().problems
    assert [p.kind for p in problems] == [K.STALE_LOG]
    assert "2 newer session(s)" in problems[0].detail


def test_leaves_waiting_long_for_the_sequencer_are_a_stale_log(tmp_path: Path) -> None:
    fleet = Fleet(tmp_path)
    a_day(fleet, sessions=1)
    fleet.archive()
    fleet.heartbeat("start")
    fleet.deliver()
    archive = _scanned(fleet)  # held as pending, and no sequencer runs
    from tapegate.log.verify import verify_log

    later = time.time_ns() + 3600 * 10**9
    problems = verify_log(archive.log_sources(), now_ns=later).problems
    assert K.STALE_LOG in {p.kind for p in problems}


def test_an_unsigned_nested_leaf_does_not_stop_the_archive(tmp_path: Path) -> None:
    """5,000 nested arrays in an unsigned leaf's body once raised RecursionError out of the
    pipeline, and every later scan died on that object."""
    fleet = Fleet(tmp_path)
    body = b"[" * 5000 + b"]" * 5000
    head = LEAF_MAGIC + (1).to_bytes(2, "big") + bytes(2)
    length = 56 + len(body) + 64
    poison = head + length.to_bytes(4, "big") + bytes(36) + len(body).to_bytes(4, "big")
    fleet.pending.append(poison + body + bytes(64))
    fleet.deliver()
    ids = a_day(fleet, sessions=2)
    reports = fleet.archive().scan()
    assert reports == []  # everything was processed by the first scan
    verdict = fleet.verify()
    assert verdict.consistent and verdict.sessions == len(ids)


def test_a_clock_stepped_back_does_not_stall_the_sequencer(tmp_path: Path) -> None:
    fleet = Fleet(tmp_path)
    a_day(fleet, sessions=1)
    archive = fleet.archive()
    latest = archive._sequencer.latest()  # type: ignore[union-attr]
    ahead = Checkpoint(latest.checkpoint.origin, latest.checkpoint.size, latest.checkpoint.root,
                       latest.checkpoint.time_ms + 6 * 3600 * 1000)  # fmt: skip
    note = ahead.sign(ahead.origin, LocalKeyStore(fleet.config.data_dir).log_key())
    (fleet.log_dir / "checkpoints" / f"{ahead.time_ms:015d}").write_bytes(note)
    (fleet.log_dir / "checkpoint").write_bytes(note)
    fleet.restart()
    a_day(fleet, sessions=1)
    archive = _scanned(fleet)
    assert archive.sequence() is True
    newest = archive._sequencer.latest().checkpoint  # type: ignore[union-attr]
    assert newest.time_ms == ahead.time_ms + 1 and newest.size > ahead.size
    assert fleet.verify().consistent


def _scanned(fleet: Fleet) -> LocalArchive:
    """The archive after a scan, with no sequencer run."""

    archive = LocalArchive(fleet.config)
    archive.scan()
    return archive


def test_a_future_start_time_in_the_index_is_named(tmp_path: Path) -> None:
    fleet = Fleet(tmp_path)
    victim = a_day(fleet, sessions=2)[0]
    fleet.verify()
    with _db(fleet) as db:
        db.execute("UPDATE sessions SET started_ns = ?1, record = json_set(record, "
                   "'$.started_ns', ?1) WHERE session_id = ?2",
                   (4_102_444_800 * 10**9, victim))  # fmt: skip
    assert {(p.kind, p.session_id) for p in fleet.verify().problems} == {(K.BAD_TIME, victim)}


def test_malformed_checkpoints_are_named_not_raised(tmp_path: Path) -> None:
    fleet = Fleet(tmp_path)
    a_day(fleet, sessions=1)
    fleet.verify()
    good = (fleet.log_dir / "checkpoint").read_bytes()
    origin, size, root, rest = good.split(b"\n", 3)
    bad = {
        "root_not_ascii": b"\n".join([origin, size, "é".encode() + root[2:], rest]),
        "size_superscript": b"\n".join([origin, "²".encode(), root, rest]),
        "two_time_lines": good.replace(b"\ntime ", b"\ntime 2026-01-01T00:00:00.000Z\ntime ", 1),
        "loose_time": good.replace(b"\ntime 20", b"\ntime 2026-1-4T1:2:3.4Z\nx", 1),
        "signature_not_ascii": good.replace(
            "\u2014 ".encode(), "\u2014 ".encode() + b"\xc3\xa9", 1
        ),
    }
    for n, note in enumerate(bad.values()):
        (fleet.log_dir / "checkpoints" / f"{n + 1:015d}").write_bytes(note)
    problems = fleet.verify().problems
    assert len(problems) == len(bad)
    assert {p.kind for p in problems} <= {K.MALFORMED_CHECKPOINT, K.FORGED_CHECKPOINT}


def test_a_directory_in_place_of_a_tile_is_truncation(tmp_path: Path) -> None:
    fleet = Fleet(tmp_path)
    a_day(fleet, sessions=1)
    fleet.verify()
    (tile,) = [p for p in (fleet.log_dir / "tile" / "0").rglob("*") if p.is_file()]
    tile.unlink()
    tile.mkdir()
    assert {p.kind for p in fleet.verify().problems} == {K.TRUNCATED}


def test_since_out_of_range_is_a_usage_error(tmp_path: Path, capsys) -> None:
    fleet = Fleet(tmp_path)
    cfg = ["--config", str(fleet.config_file)]
    for since in ("0001-01-01", "9999-12-31T23:59:59-23:59", "99999999999999999999d", "soon"):
        assert cli_main(["log", "verify", "--since", since, *cfg]) == 2
        assert "--since" in capsys.readouterr().err

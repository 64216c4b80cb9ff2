"""`tapegate log verify` over archives built by hand, then attacked: each attack is named by
its own problem, and what at-least-once delivery does (duplicates) is not one."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from nacl.signing import SigningKey

from tapegate.cli import main as cli_main
from tapegate.keys import LocalKeyStore
from tapegate.log.note import Checkpoint
from tapegate.log.tiles import decode_bundle, encode_bundle
from tapegate.log.verify import LogProblemKind as K
from tests.log.fleet import HEARTBEAT_S, Fleet, a_day


def kinds(fleet: Fleet) -> set[K]:
    return {p.kind for p in fleet.verify().problems}


def test_an_untouched_log_is_consistent(tmp_path: Path, capsys) -> None:
    fleet = Fleet(tmp_path)
    ids = a_day(fleet)
    verdict = fleet.verify()
    # What the verdict rests on was there to be checked: every leaf, every session.
    assert verdict.leaves == 2 + 2 * len(ids) + len(ids) and verdict.sessions == len(ids)
    assert verdict.problems == [] and verdict.consistent
    assert cli_main(["log", "verify", "--config", str(fleet.config_file)]) == 0
    out = capsys.readouterr().out
    assert out.rstrip().endswith("consistent") and f"{len(ids)} session(s)" in out


def test_duplicate_deliveries_are_harmless(tmp_path: Path) -> None:
    fleet = Fleet(tmp_path)
    fleet.heartbeat("start")
    fleet.session()
    first = fleet.deliver()
    fleet.archive()  # sequenced once ...
    fleet.redeliver(first)  # ... then delivered again, and sequenced again
    fleet.heartbeat("stop")
    fleet.redeliver(fleet.deliver())
    verdict = fleet.verify()
    assert verdict.sessions == 1 and verdict.leaves == 4
    assert verdict.problems == []


def test_deleting_a_sessions_objects_is_detected(tmp_path: Path, capsys) -> None:
    fleet = Fleet(tmp_path)
    fleet.heartbeat("start")
    fleet.session()
    fleet.deliver()
    victim, _ = fleet.session()
    victim_object = fleet.deliver()
    fleet.heartbeat("stop")
    fleet.deliver()
    assert fleet.verify().consistent
    victim_object.unlink()  # every chunk of the session, gone from the evidence
    verdict = fleet.verify()
    assert [(p.kind, p.session_id) for p in verdict.problems] == [(K.SESSION_MISSING, victim)]
    assert cli_main(["log", "verify", "--config", str(fleet.config_file)]) == 1
    assert f"session_missing: session {victim}" in capsys.readouterr().out


def test_deleting_a_session_from_the_index_too_is_detected(tmp_path: Path) -> None:
    fleet = Fleet(tmp_path)
    victim = a_day(fleet, sessions=2)[0]
    fleet.verify()
    index = sqlite3.connect(fleet.config.data_dir / "archive" / "index.sqlite")
    with index:
        index.execute("DELETE FROM sessions WHERE session_id = ?", (victim,))
        index.execute("DELETE FROM chunks WHERE session_id = ?", (victim,))
    problems = fleet.verify().problems
    assert [(p.kind, p.session_id) for p in problems] == [(K.SESSION_MISSING, victim)]


def test_a_one_chunk_session_dropped_from_a_delivery_object_is_detected(tmp_path: Path) -> None:
    fleet = Fleet(tmp_path)
    fleet.heartbeat("start")
    fleet.session()
    victim, chunks = fleet.session(exchanges=0)
    assert len(chunks) == 1  # one chunk: chunk 0, final
    fleet.session()
    fleet.pending.remove(chunks[0])  # cut out of the object before the archive saw it
    fleet.heartbeat("stop")
    fleet.deliver()
    problems = fleet.verify().problems
    assert [(p.kind, p.session_id) for p in problems] == [(K.SESSION_MISSING, victim)]


def test_dropping_a_session_with_its_leaves_leaves_a_counter_gap(tmp_path: Path) -> None:
    fleet = Fleet(tmp_path)
    fleet.heartbeat("start")
    fleet.deliver()
    start = len(fleet.pending)
    fleet.session(exchanges=0)
    del fleet.pending[start:]  # its leaves and its chunk: nothing of it reaches the archive
    fleet.heartbeat("stop")
    fleet.deliver()
    problems = fleet.verify().problems
    assert [p.kind for p in problems] == [K.COUNTER_GAP]
    assert "leaves 1-2 are missing" in problems[0].detail


def test_a_session_missing_a_middle_chunk_is_broken(tmp_path: Path) -> None:
    fleet = Fleet(tmp_path)
    fleet.heartbeat("start")
    victim, chunks = fleet.session(exchanges=4)
    assert len(chunks) >= 3
    fleet.pending.remove(chunks[1])
    fleet.heartbeat("stop")
    fleet.deliver()
    problems = fleet.verify().problems
    assert [(p.kind, p.session_id) for p in problems] == [(K.SESSION_BROKEN, victim)]


def test_a_truncated_log_is_detected(tmp_path: Path) -> None:
    fleet = Fleet(tmp_path)
    a_day(fleet)
    assert fleet.verify().consistent
    for bundle in (fleet.log_dir / "tile" / "entries").rglob("*"):
        if bundle.is_file():
            entries = decode_bundle(bundle.read_bytes())
            bundle.write_bytes(encode_bundle(entries[:-2]))  # the last two leaves, gone
    assert kinds(fleet) == {K.TRUNCATED}


def test_a_log_rolled_back_to_an_older_checkpoint_misses_sessions(tmp_path: Path) -> None:
    """Remove the newest checkpoints and everything after them: the log agrees with itself,
    but the archive holds sessions it does not name."""
    fleet = Fleet(tmp_path)
    fleet.heartbeat("start")
    fleet.deliver()
    fleet.archive()
    kept = {p.name: p.read_bytes() for p in (fleet.log_dir / "checkpoints").iterdir()}
    a_day(fleet)
    fleet.archive()
    for path in (fleet.log_dir / "checkpoints").iterdir():
        if path.name not in kept:
            path.unlink()
    (fleet.log_dir / "checkpoint").write_bytes(next(iter(kept.values())))
    assert kinds(fleet) == {K.NOT_IN_LOG}


def test_a_fork_is_detected(tmp_path: Path) -> None:
    fleet = Fleet(tmp_path)
    a_day(fleet)
    verdict = fleet.verify()
    key = LocalKeyStore(fleet.config.data_dir).log_key()
    forked = Checkpoint(fleet.config.log.origin, verdict.size, b"\x07" * 32, verdict.latest_ms - 1)
    (fleet.log_dir / "checkpoints" / f"{forked.time_ms:015d}").write_bytes(
        forked.sign(fleet.config.log.origin, key)
    )
    assert K.FORK in kinds(fleet)


def test_reordered_leaves_are_detected(tmp_path: Path) -> None:
    fleet = Fleet(tmp_path)
    a_day(fleet)
    fleet.verify()
    (bundle,) = [p for p in (fleet.log_dir / "tile" / "entries").rglob("*") if p.is_file()]
    entries = decode_bundle(bundle.read_bytes())
    entries[1], entries[2] = entries[2], entries[1]
    bundle.write_bytes(encode_bundle(entries))
    assert kinds(fleet) == {K.ROOT_MISMATCH}


def test_a_skipped_heartbeat_window_is_a_suppression_window(tmp_path: Path) -> None:
    fleet = Fleet(tmp_path)
    fleet.heartbeat("start")
    fleet.session()
    fleet.tick(HEARTBEAT_S / 2)
    fleet.heartbeat()
    fleet.deliver()
    fleet.tick(10 * HEARTBEAT_S)  # ten heartbeats' worth of nothing, counters still contiguous
    fleet.heartbeat()
    fleet.heartbeat("stop")
    fleet.deliver()
    problems = fleet.verify().problems
    assert [p.kind for p in problems] == [K.HEARTBEAT_GAP]
    assert "suppression window" in problems[0].detail


def test_an_instance_that_went_silent_without_stopping_is_named(tmp_path: Path) -> None:
    fleet = Fleet(tmp_path)
    fleet.heartbeat("start")
    fleet.session()
    fleet.deliver()
    fleet.tick(5 * HEARTBEAT_S)
    assert [p.kind for p in fleet.verify().problems] == [K.UNCLEAN_END]


def test_a_checkpoint_forged_with_another_key_is_detected(tmp_path: Path) -> None:
    fleet = Fleet(tmp_path)
    a_day(fleet)
    verdict = fleet.verify()
    forged = Checkpoint(fleet.config.log.origin, verdict.size + 1, b"\x01" * 32,
                        verdict.latest_ms + 1)  # fmt: skip
    note = forged.sign(fleet.config.log.origin, SigningKey.generate())
    (fleet.log_dir / "checkpoints" / f"{forged.time_ms:015d}").write_bytes(note)
    assert kinds(fleet) == {K.FORGED_CHECKPOINT}


def test_two_leaves_with_one_counter_are_a_conflict(tmp_path: Path) -> None:
    fleet = Fleet(tmp_path)
    fleet.heartbeat("start")
    fleet.leaves.counter = 0  # a second writer numbering the same instance's leaves
    fleet.tick(1)
    fleet.heartbeat("start")
    fleet.heartbeat("stop")
    fleet.deliver()
    assert kinds(fleet) == {K.LEAF_CONFLICT}


def test_a_leaf_signed_by_an_untrusted_key_is_not_taken(tmp_path: Path) -> None:
    """The pipeline refuses it, so it never reaches the log: its counter is missing."""
    fleet = Fleet(tmp_path)
    fleet.heartbeat("start")
    real = fleet.signer
    fleet.leaves.signer = SigningKey.generate()
    fleet.heartbeat()
    fleet.leaves.signer = real
    fleet.heartbeat("stop")
    fleet.deliver()
    problems = fleet.verify().problems
    assert [p.kind for p in problems] == [K.COUNTER_GAP]

"""The embedded archive shared by several processes: the gateway's loop indexing a backlog while
`tapegate sessions` and `tapegate query` catch up themselves, and `tapegate up` stopped by
SIGTERM in the middle of it. Real processes, a real SQLite file, real Parquet files."""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from gateway_task.devtools.throwaway_pg import free_port
from tapegate.archive.embedded import LocalArchive
from tapegate.config import load_config
from tapegate.keys import LocalKeyStore
from tapegate.tape import decode_record
from tests.tapes import record_session

TAPEGATE = [sys.executable, "-m", "tapegate.cli"]
EXCHANGES = 4  # query events per session
# One scanning process: says it is ready, starts when told to (so that both scanners really
# start together), prints the keys of the objects it processed.
SCANNER = """
import json, sys, time
from pathlib import Path
from tapegate.archive.embedded import LocalArchive
from tapegate.config import load_config
archive = LocalArchive(load_config(sys.argv[1]))
Path(sys.argv[2]).touch()
while not Path(sys.argv[3]).exists():
    time.sleep(0.005)
print(json.dumps([r.key for r in archive.scan()]))
"""


@dataclass
class Backlog:
    config: Path
    data_dir: Path
    chunks_of: dict[str, set[tuple[str, int]]]  # delivery key -> the (session, seq) it holds
    sessions: int


def _backlog(tmp_path: Path, sessions: int, *, redelivered: int = 0) -> Backlog:
    """Sessions sealed with the data dir's own key, each delivered in two objects; the first
    `redelivered` sessions are delivered a second time whole, as Firehose may."""
    data_dir = tmp_path / "data"
    keys = LocalKeyStore(data_dir)
    signer, auditor = keys.signing_key(), keys.auditor_key()
    folder = data_dir / "deliveries" / "2025" / "11" / "24" / "12"
    folder.mkdir(parents=True)
    chunks_of: dict[str, set[tuple[str, int]]] = {}

    def deliver(name: str, records: list[bytes]) -> None:
        (folder / name).write_bytes(b"".join(records))
        decoded = [decode_record(r, events=False) for r in records]
        key = str((folder / name).relative_to(data_dir / "deliveries"))
        chunks_of[key] = {(str(d.session_id), d.seq) for d in decoded}

    for i in range(sessions):
        s = record_session(exchanges=EXCHANGES, signer=signer, auditor=auditor)
        half = len(s.records) // 2
        deliver(f"tapegate-{i:05d}-a.bin", s.records[:half])
        deliver(f"tapegate-{i:05d}-b.bin", s.records[half:])
        if i < redelivered:
            deliver(f"tapegate-{i:05d}-c.bin", s.records)
    config = tmp_path / "tapegate.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "data_dir": str(data_dir),
                "identity": {"issuer": "dev", "dev_listen": f"127.0.0.1:{free_port()}"},
                "listen": {"postgres": f"127.0.0.1:{free_port()}"},
            }
        )
    )
    return Backlog(config, data_dir, chunks_of, sessions)


def _index_rows(backlog: Backlog) -> tuple[set[str], set[tuple[str, int]], list[dict]]:
    """(processed objects, claimed chunks, session records), read straight from the file."""
    path = backlog.data_dir / "archive" / "index.sqlite"
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        objects = {k for (k,) in db.execute("SELECT key FROM objects")}
        chunks = {(sid, seq) for sid, seq in db.execute("SELECT session_id, seq FROM chunks")}
        records = [json.loads(r) for (r,) in db.execute("SELECT record FROM sessions")]
    finally:
        db.close()
    return objects, chunks, records


def _processed_count(backlog: Backlog) -> int:
    path = backlog.data_dir / "archive" / "index.sqlite"
    if not path.exists():
        return 0
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return db.execute("SELECT count(*) FROM objects").fetchone()[0]
    except sqlite3.OperationalError:  # the table is not created yet
        return 0
    finally:
        db.close()


def _check_index(backlog: Backlog) -> set[str]:
    """The index holds exactly the chunks of the objects it marked processed, and a session
    is closed exactly when all of its chunks are in; returns the processed objects of the
    backlog (a gateway run over it adds objects of its own, with its heartbeats)."""
    objects, chunks, records = _index_rows(backlog)
    objects = {k for k in objects if k in backlog.chunks_of}
    assert chunks == set().union(*(backlog.chunks_of[k] for k in objects))
    total = {sid: 0 for cs in backlog.chunks_of.values() for sid, _ in cs}
    for cs in backlog.chunks_of.values():
        for sid, seq in cs:
            total[sid] = max(total[sid], seq + 1)
    for rec in records:
        held = sum(1 for sid, _ in chunks if sid == rec["session_id"])
        assert rec["chunks"] == held, rec["session_id"]
        complete = held == total[rec["session_id"]]
        assert (rec["status"], rec["verified"]) == (
            ("closed", True) if complete else ("open", False)
        )
    return objects


def test_concurrent_scanners_and_readers_never_race(tmp_path: Path) -> None:
    backlog = _backlog(tmp_path, 150, redelivered=30)
    cfg = str(backlog.config)
    ready, go = [tmp_path / "ready-1", tmp_path / "ready-2"], tmp_path / "go"
    scanners = [
        subprocess.Popen(
            [sys.executable, "-c", SCANNER, cfg, str(flag), str(go)],
            text=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for flag in ready
    ]
    readings = 0
    try:
        deadline = time.monotonic() + 60
        while not all(flag.exists() for flag in ready):
            for s in scanners:
                assert s.poll() is None, s.communicate()[1]
            assert time.monotonic() < deadline
            time.sleep(0.01)
        go.touch()
        # Readers while the two scanners index the backlog: each `tapegate` command scans
        # first too, so these are a third and fourth indexer as well.
        while readings < 2 or any(s.poll() is None for s in scanners):
            listed = subprocess.run([*TAPEGATE, "sessions", "--json", "--config", cfg],
                                    capture_output=True, text=True, timeout=120)  # fmt: skip
            assert listed.returncode == 0, listed.stderr
            for session in json.loads(listed.stdout):
                assert session["status"] in ("open", "closed"), session
                assert session["verified"] == (session["status"] == "closed"), session
            counted = subprocess.run(
                [*TAPEGATE, "query", "SELECT count(*) AS n FROM events WHERE type = 'query'",
                 "--json", "--config", cfg], capture_output=True, text=True, timeout=120,
            )  # fmt: skip
            assert counted.returncode == 0, counted.stderr
            assert json.loads(counted.stdout)[0]["n"] <= EXCHANGES * backlog.sessions
            readings += 1
        outputs = [s.communicate(timeout=120) for s in scanners]
    finally:
        for s in scanners:
            if s.poll() is None:
                s.kill()
    for s, (_, err) in zip(scanners, outputs, strict=True):
        assert s.returncode == 0 and "Traceback" not in err, err
    first, second = (set(json.loads(out)) for out, _ in outputs)
    assert first or second, "the scanners indexed something"
    assert not first & second, "an object was processed by both scanners"
    assert _check_index(backlog) == set(backlog.chunks_of)
    assert not list((backlog.data_dir / "archive" / "curated").rglob("*.tmp"))
    archive = LocalArchive(load_config(cfg))
    records = archive.index.sessions()
    assert len(records) == backlog.sessions
    assert all(r.status == "closed" and r.verified for r in records)
    _, rows = archive.query_engine.query("SELECT count(*) FROM events WHERE type = 'query'")
    assert rows == [(EXCHANGES * backlog.sessions,)], "each object's events exactly once"


OPENER = """
import sys
from pathlib import Path
from tapegate.archive.local import SqliteIndex
while not Path(sys.argv[2]).exists():
    pass
SqliteIndex(Path(sys.argv[1])).sessions()
"""


def test_processes_opening_a_new_index_together_all_open_it(tmp_path: Path) -> None:
    # Switching a new file to WAL answered "database is locked" at once to all but one of
    # them (no busy wait): two `tapegate` commands started together on a fresh data dir.
    for attempt in range(4):
        path, go = tmp_path / str(attempt) / "index.sqlite", tmp_path / f"go-{attempt}"
        openers = [
            subprocess.Popen(
                [sys.executable, "-c", OPENER, str(path), str(go)],
                stderr=subprocess.PIPE,
                text=True,
            )
            for _ in range(3)
        ]
        time.sleep(0.5)  # all three are spinning on the flag
        go.touch()
        for opener in openers:
            _, err = opener.communicate(timeout=120)
            assert opener.returncode == 0, err


@pytest.mark.slow
def test_sigterm_while_indexing_a_backlog_stops_cleanly(tmp_path: Path) -> None:
    backlog = _backlog(tmp_path, 400)
    log = tmp_path / "up.log"  # a file, not a pipe that could fill while the test waits
    with log.open("w") as stderr:
        up = subprocess.Popen([*TAPEGATE, "up", "--config", str(backlog.config)], text=True,
                              stdout=subprocess.PIPE, stderr=stderr)  # fmt: skip
    try:
        assert "ready" in up.stdout.readline(), log.read_text()
        deadline = time.monotonic() + 60
        while _processed_count(backlog) == 0:  # the first scan is under way
            assert up.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.02)
        up.send_signal(signal.SIGTERM)
        up.wait(timeout=60)
    finally:
        if up.poll() is None:
            up.kill()
    err = log.read_text()
    assert up.returncode == 0, err
    assert "Traceback" not in err and "cannot start" not in err, err
    indexed = _check_index(backlog)
    assert 0 < len(indexed) < len(backlog.chunks_of), "stopped after the object in hand"
    # What was left is indexed by the next scan, once, and the whole backlog verifies.
    rest = LocalArchive(load_config(backlog.config)).scan()
    # Beside the backlog, the gateway's own objects: its start and stop heartbeats, no chunks.
    own = [r for r in rest if r.key not in backlog.chunks_of]
    assert all(not r.sessions and r.leaves for r in own), own
    assert {r.key for r in rest} - {r.key for r in own} == set(backlog.chunks_of) - indexed
    assert _check_index(backlog) == set(backlog.chunks_of)
    archive = LocalArchive(load_config(backlog.config))
    assert all(r.status == "closed" and r.verified for r in archive.index.sessions())
    _, rows = archive.query_engine.query("SELECT count(*) FROM events WHERE type = 'query'")
    assert rows == [(EXCHANGES * backlog.sessions,)]
    assert not list((backlog.data_dir / "archive" / "curated").rglob("*.tmp"))

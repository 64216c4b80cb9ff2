"""The archive pipeline on the embedded adapters, fed synthetic tapes in awkward orders."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from nacl.signing import SigningKey

from tapegate.archive.local import DuckDBQuery, LocalObjectStore, SqliteIndex
from tapegate.keys import Keyring
from tapegate.pipeline import Pipeline
from tests.tapes import T0, record_session


@pytest.fixture
def archive(tmp_path: Path):
    signer = SigningKey.generate()
    index = SqliteIndex(tmp_path / "index.sqlite")
    curated = tmp_path / "curated"
    pipe = Pipeline(Keyring.of(signer.verify_key), index, LocalObjectStore(curated))
    return pipe, signer, index, DuckDBQuery(curated)


NOW = T0 + 10**12


def test_a_session_in_one_object_is_closed_and_queryable(archive) -> None:
    pipe, signer, index, duck = archive
    s = record_session(exchanges=4, signer=signer)
    report = pipe.process_object("o1", b"".join(s.records), NOW)
    assert report.new == len(s.records) and not report.rejected
    (rec,) = index.sessions()
    assert rec.status == "closed" and rec.verified and rec.subject == "agent-7"
    assert rec.statements == 4 and rec.chunks == len(s.records)
    assert rec.bytes_client == sum(len(d) for _, dd, d in s.sent if dd == 0)
    _, rows = duck.query(
        "SELECT type, text, subject, target FROM events WHERE type = 'query' ORDER BY ts_ns"
    )
    assert rows == [("query", f"SELECT {i}", "agent-7", "appdb") for i in range(4)]
    _, rows = duck.query("SELECT status, verified, statements FROM sessions")
    assert rows == [("closed", True, 4)]
    _, rows = duck.query("SELECT count(*), sum(length) FROM frames")
    assert rows == [(len(s.sent), sum(len(d) for _, _, d in s.sent))]


def test_duplicates_and_reordering_across_objects(archive) -> None:
    pipe, signer, index, duck = archive
    s = record_session(exchanges=6, signer=signer)
    shuffled = s.records * 2
    random.Random(3).shuffle(shuffled)
    half = len(shuffled) // 2
    r1 = pipe.process_object("a", b"".join(shuffled[:half]), NOW)
    r2 = pipe.process_object("b", b"".join(shuffled[half:]), NOW)
    assert r1.new + r2.new == len(s.records)
    assert r1.duplicates + r2.duplicates == len(s.records)
    (rec,) = index.sessions()
    assert rec.status == "closed" and rec.verified
    _, rows = duck.query("SELECT count(*) FROM events WHERE type = 'query'")
    assert rows == [(6,)], "duplicates must not double the events"


def test_processing_the_same_object_twice_changes_nothing(archive) -> None:
    pipe, signer, index, duck = archive
    s = record_session(exchanges=3, signer=signer)
    data = b"".join(s.records)
    pipe.process_object("same", data, NOW)
    pipe.process_object("same", data, NOW)
    _, rows = duck.query("SELECT count(*) FROM events WHERE type = 'query'")
    assert rows == [(3,)]
    assert index.sessions()[0].status == "closed"


def test_open_then_truncated_after_grace(archive) -> None:
    pipe, signer, index, _ = archive
    s = record_session(exchanges=4, signer=signer)
    pipe.process_object("o", b"".join(s.records[:-1]), NOW)
    (rec,) = index.sessions()
    assert rec.status == "open" and not rec.verified
    assert pipe.sweep(rec.last_seen_ns + pipe.grace_ns - 1) == []
    assert pipe.sweep(rec.last_seen_ns + pipe.grace_ns) == [rec.session_id]
    (rec,) = index.sessions()
    assert rec.status == "truncated" and "no final chunk yet" in rec.problems


def test_missing_middle_chunk_then_late_arrival(archive) -> None:
    pipe, signer, index, _ = archive
    s = record_session(exchanges=6, signer=signer)
    assert len(s.records) >= 4
    pipe.process_object("o1", b"".join(s.records[:1] + s.records[2:]), NOW)
    (rec,) = index.sessions()
    assert rec.status == "open" and "missing seq 1" in rec.problems
    pipe.process_object("o2", s.records[1], NOW)
    (rec,) = index.sessions()
    assert rec.status == "closed" and rec.verified


def test_conflicting_copy_is_a_tamper_alert_and_the_first_is_kept(archive) -> None:
    pipe, signer, index, _ = archive
    s = record_session(exchanges=3, signer=signer)
    pipe.process_object("o1", b"".join(s.records), NOW)
    from tests.test_tape_verify import _resign

    other = record_session(exchanges=3, signer=signer)
    forged = _resign(other.records[1], signer, session_id=s.writer.session_id.bytes)
    report = pipe.process_object("o2", forged, NOW)
    assert report.conflicts == 1
    (rec,) = index.sessions()
    assert rec.status == "tampered" and not rec.verified
    assert any(a.startswith("conflict at seq 1") for a in rec.alerts)


def test_bad_signature_unknown_key_and_garbage(archive) -> None:
    pipe, signer, index, _ = archive
    s = record_session(exchanges=3, signer=signer)
    flipped = bytearray(s.records[1])
    flipped[120] ^= 1
    stranger = record_session(exchanges=1)  # signed by a key nobody trusts
    data = s.records[0] + bytes(flipped) + b"".join(s.records[2:]) + b"not a tape at all"
    report = pipe.process_object("o", data + b"".join(stranger.records), NOW)
    assert any("bad signature" in r for r in report.rejected)
    assert any("unknown signing key" in r for r in report.rejected)
    assert any("no record magic" in r for r in report.rejected)
    statuses = {r.session_id: r.status for r in index.sessions()}
    assert statuses[str(s.writer.session_id)] == "tampered"
    assert statuses[str(stranger.writer.session_id)] == "tampered"


def test_an_object_that_is_not_a_tape(archive) -> None:
    pipe, _, index, _ = archive
    report = pipe.process_object("junk", b'{"hello": "world"}\n' * 100, NOW)
    assert report.records == 0 and report.rejected and index.sessions() == []


def test_chunk_sealed_after_delivery_is_flagged(archive) -> None:
    pipe, signer, index, _ = archive
    s = record_session(exchanges=1, signer=signer)
    pipe.process_object("o", b"".join(s.records), delivered_ns=T0 - 10**12)
    (rec,) = index.sessions()
    assert any(a.startswith("clock") for a in rec.alerts) and not rec.verified


def test_events_of_unexpected_types_still_land_in_the_table(archive) -> None:
    """A writer that puts odd types in attrs (rows as text, a boolean result) is not refused."""
    from tapegate.tape import Direction, Event, TapeWriter
    from tests.tapes import make_header

    pipe, signer, _index, duck = archive
    from nacl.public import PrivateKey

    writer = TapeWriter(make_header(), signer, [PrivateKey.generate().public_key])
    writer.add_event(Event(T0, "result", Direction.SERVER_TO_CLIENT,
                           {"tag": "SELECT 1", "rows": "one", "result": True}))  # fmt: skip
    writer.add_event(Event(T0 + 1, "query", Direction.CLIENT_TO_SERVER, {"sql": "SELECT 2"}))
    writer.add_event(Event(T0 + 2, "error", Direction.SERVER_TO_CLIENT, {"sqlstate": 42}))
    pipe.process_object("odd", writer.close(T0 + 3, "client_terminate"), NOW)
    _, rows = duck.query("SELECT type, text, outcome, rows FROM events ORDER BY ts_ns")
    assert rows == [("result", None, "SELECT 1", None), ("query", "SELECT 2", None, None),
                    ("error", None, "42", None)]  # fmt: skip
    _, rows = duck.query("SELECT type, event FROM events ORDER BY ts_ns")
    assert rows[0][1] is None and rows[1][1] is None, "query and result live in the columns"
    assert '"sqlstate":42' in rows[2][1], "an error is kept whole, as sealed"


def test_a_long_open_session_has_its_row_and_it_is_rewritten_when_it_closes(archive) -> None:
    import time

    pipe, signer, index, duck = archive
    now = time.time_ns()
    s = record_session(exchanges=4, signer=signer)  # started at T0, long before now
    pipe.process_object("o1", b"".join(s.records[:-1]), now)
    assert [r.status for r in index.sessions()] == ["open"]
    _, rows = duck.query("SELECT status FROM sessions")
    assert rows == [("open",)], "open for more than a minute: the table shows it"
    pipe.process_object("o2", s.records[-1], now)
    _, rows = duck.query("SELECT status, verified FROM sessions")
    assert rows == [("closed", True)]


def test_a_young_open_session_waits_for_its_row(tmp_path) -> None:
    import time

    from nacl.public import PrivateKey

    from tapegate.tape import Direction, TapeWriter
    from tests.tapes import make_header

    signer = SigningKey.generate()
    curated = tmp_path / "c"
    pipe = Pipeline(Keyring.of(signer.verify_key), SqliteIndex(tmp_path / "i.sqlite"),
                    LocalObjectStore(curated))  # fmt: skip
    now = time.time_ns()
    writer = TapeWriter(make_header(now), signer, [PrivateKey.generate().public_key])
    first = writer.add_frame(now, Direction.CLIENT_TO_SERVER, b"x" * 300_000)
    pipe.process_object("o1", b"".join(first), now)
    assert pipe.index.sessions()[0].status == "open"
    assert not list(curated.glob("sessions/*/*.parquet"))
    pipe.process_object("o2", writer.close(now + 1, "client_terminate"), now)
    _, rows = DuckDBQuery(curated).query("SELECT status FROM sessions")
    assert rows == [("closed",)]

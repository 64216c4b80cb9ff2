"""Anchors: the latest checkpoint copied out of the log's reach, with an RFC 3161 token from a
real timestamp authority (OpenSSL's), read and checked with rfc3161-client; `log verify` takes
every anchor as one of the log's checkpoints and checks its token."""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Iterator
from pathlib import Path

import pytest
import rfc3161_client

from tapegate.archive.local import LocalObjectStore
from tapegate.log.anchor import (
    AnchorError,
    anchor_key,
    check_token,
    rfc3161_timestamper,
    write_anchor,
)
from tapegate.log.verify import LogProblemKind as K
from tapegate.log.verify import verify_log
from tests.log.fleet import Fleet, a_day
from tests.log.tsa import LocalTsa

DAY = dt.date(2026, 12, 4)


@pytest.fixture
def tsa() -> Iterator[LocalTsa]:
    server = LocalTsa()
    yield server
    server.close()


def _sources(fleet: Fleet, anchors: Path):  # the local log, with an anchor folder beside it
    import dataclasses

    archive = fleet.archive()
    return dataclasses.replace(archive.log_sources(), anchors=LocalObjectStore(anchors))


def test_an_anchor_carries_a_tsa_token_over_the_checkpoint(tmp_path: Path, tsa: LocalTsa) -> None:
    fleet = Fleet(tmp_path)
    a_day(fleet, sessions=1)
    src = _sources(fleet, tmp_path / "anchors")
    key = write_anchor(src.log, "", src.anchors, src.origin, DAY, rfc3161_timestamper(tsa.url))
    assert key == anchor_key(src.origin, DAY) and tsa.requests == 1
    note = (tmp_path / "anchors" / key).read_bytes()
    assert note == (fleet.log_dir / "checkpoint").read_bytes()
    token = (tmp_path / "anchors" / anchor_key(src.origin, DAY, ".tsr")).read_bytes()
    # The token is the TSA's, over this note: rfc3161-client's verifier with the TSA's root.
    response = rfc3161_client.decode_timestamp_response(token)
    verifier = rfc3161_client.VerifierBuilder(roots=[tsa.ca]).build()
    assert verifier.verify(response, hashlib.sha256(note).digest())
    assert abs(check_token(token, note) - dt.datetime.now(dt.UTC)) < dt.timedelta(minutes=5)
    with pytest.raises(AnchorError, match="over something else"):
        check_token(token, note + b"x")
    verdict = verify_log(src, now_ns=fleet.now)
    assert verdict.consistent and verdict.checkpoints >= 1


def test_a_log_rolled_back_behind_its_anchor_is_caught(tmp_path: Path) -> None:
    """The newest checkpoints removed from the log (history and latest) and the tiles cut back:
    the log agrees with itself; its anchor does not."""
    import shutil

    fleet = Fleet(tmp_path)
    a_day(fleet, sessions=1)
    fleet.archive()
    shutil.copytree(fleet.log_dir, tmp_path / "early-log")  # the log as it was then
    a_day(fleet, sessions=1)
    src = _sources(fleet, tmp_path / "anchors")
    write_anchor(src.log, "", src.anchors, src.origin, DAY)
    shutil.rmtree(fleet.log_dir)
    shutil.copytree(tmp_path / "early-log", fleet.log_dir)  # put back: tiles and checkpoints
    kinds = {p.kind for p in verify_log(src, now_ns=fleet.now).problems}
    assert kinds & {K.TRUNCATED, K.SHRUNK, K.INCONSISTENT}


def test_a_token_that_is_not_over_its_anchor_is_named(tmp_path: Path, tsa: LocalTsa) -> None:
    fleet = Fleet(tmp_path)
    a_day(fleet, sessions=1)
    src = _sources(fleet, tmp_path / "anchors")
    write_anchor(src.log, "", src.anchors, src.origin, DAY, rfc3161_timestamper(tsa.url))
    other = rfc3161_timestamper(tsa.url)(b"another note\n")
    (tmp_path / "anchors" / anchor_key(src.origin, DAY, ".tsr")).write_bytes(other)
    problems = verify_log(src, now_ns=fleet.now).problems
    assert [p.kind for p in problems] == [K.BAD_TOKEN]


def test_a_tsa_that_cannot_be_reached_is_an_anchor_error(tmp_path: Path) -> None:
    with pytest.raises(AnchorError, match="timestamp authority"):
        rfc3161_timestamper("http://127.0.0.1:9/tsa", timeout_s=2)(b"note\n")

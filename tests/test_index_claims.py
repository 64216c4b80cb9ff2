"""Chunk claiming: one decision (tapegate.archive.Index), the same answers from every adapter."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import boto3
import pytest

from tapegate.archive import ChunkEntry, Claim, Index, LeafEntry
from tapegate.archive.local import SqliteIndex

REGION = "us-east-1"
FIRST = ChunkEntry("s-1", 3, "aa" * 32, "bb" * 32, False, 1, "object-1", 10, 20, 1, 1, 2)


@pytest.fixture(params=["sqlite", "dynamodb"])
def index(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Index]:
    if request.param == "sqlite":
        yield SqliteIndex(tmp_path / "index.sqlite")
        return
    moto = pytest.importorskip("moto")
    from tapegate.archive.aws import TABLE_SPEC, DynamoIndex

    mp = pytest.MonkeyPatch()
    for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        mp.setenv(k, "testing")
    try:
        with moto.mock_aws():
            client = boto3.client("dynamodb", region_name=REGION)
            client.create_table(TableName="index", **TABLE_SPEC)
            yield DynamoIndex("index", client)
    finally:
        mp.undo()


def test_every_case_of_a_claim(index: Index) -> None:
    assert index.claim_chunk(FIRST) == (Claim.NEW, None)
    assert index.claim_chunk(FIRST) == (Claim.AGAIN, FIRST.digest)
    elsewhere = replace(FIRST, object_key="object-2")
    assert index.claim_chunk(elsewhere) == (Claim.DUPLICATE, FIRST.digest)
    forged = replace(FIRST, digest="cc" * 32, object_key="object-3")
    assert index.claim_chunk(forged) == (Claim.CONFLICT, FIRST.digest)
    assert index.claim_chunk(replace(FIRST, seq=4)) == (Claim.NEW, None)
    # The first copy is the one kept, whatever came after it.
    assert [(e.seq, e.digest, e.object_key) for e in index.chunks("s-1")] == [
        (3, FIRST.digest, "object-1"),
        (4, FIRST.digest, "object-1"),
    ]


def test_a_chunk_claimed_through_another_connection_is_held(tmp_path: Path) -> None:
    """Two processes each have their own connection to the index file."""
    one, other = SqliteIndex(tmp_path / "index.sqlite"), SqliteIndex(tmp_path / "index.sqlite")
    assert one.claim_chunk(FIRST) == (Claim.NEW, None)
    assert other.claim_chunk(replace(FIRST, object_key="object-2")) == (
        Claim.DUPLICATE,
        FIRST.digest,
    )
    with other.transaction():  # a claim inside an object's transaction sees the same
        assert other.claim_chunk(replace(FIRST, digest="cc" * 32))[0] is Claim.CONFLICT


def _leaf(counter: int, digest: str = "dd", session: str | None = "s-1") -> LeafEntry:
    return LeafEntry("inst-1", counter, digest * 32, 100 + counter, "session_open", session,
                     "object-1", b"leaf %d" % counter)  # fmt: skip


def test_leaves_wait_for_the_sequencer_once_each(index: Index) -> None:
    """Every adapter holds a leaf once per (instance, counter, digest), hands pending leaves
    over in claim order, and forgets them as pending once sequenced."""
    assert index.claim_leaf(_leaf(0))
    assert not index.claim_leaf(_leaf(0))  # delivered again: nothing new
    assert index.claim_leaf(_leaf(0, digest="ee"))  # one counter, another leaf: both kept
    assert index.claim_leaf(_leaf(1, session=None))
    pending = index.pending_leaves()
    assert [(p.counter, p.digest[:2], p.raw) for p in pending] == [
        (0, "dd", b"leaf 0"), (0, "ee", b"leaf 0"), (1, "dd", b"leaf 1"),
    ]  # fmt: skip
    index.mark_sequenced(pending[:2], 7)
    assert [(p.counter, p.digest[:2]) for p in index.pending_leaves()] == [(1, "dd")]
    assert index.leaf_positions("s-1") == [7, 8]
    assert index.leaf_positions("s-2") == []

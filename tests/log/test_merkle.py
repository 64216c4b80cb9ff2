"""RFC 9162 hashing and proofs, the tile layout and checkpoint notes, against a reference
written straight from the RFC's definitions (recursion over lists, no shortcuts)."""

from __future__ import annotations

import hashlib
import random
from pathlib import Path

import pytest
from nacl.signing import SigningKey

from tapegate.archive.local import LocalObjectStore
from tapegate.log import merkle
from tapegate.log.note import (
    Checkpoint,
    NoteError,
    parse_checkpoint,
    parse_verifier_key,
    verifier_key,
)
from tapegate.log.tiles import TileError, TileLog, decode_bundle, encode_bundle, index_path


def mth(leaves: list[bytes]) -> bytes:
    """MTH of RFC 9162 2.1.1, as written."""
    n = len(leaves)
    if n == 0:
        return hashlib.sha256(b"").digest()
    if n == 1:
        return hashlib.sha256(b"\x00" + leaves[0]).digest()
    k = 1 << ((n - 1).bit_length() - 1)
    return hashlib.sha256(b"\x01" + mth(leaves[:k]) + mth(leaves[k:])).digest()


DATA = [f"leaf {i}".encode() for i in range(70)]
HASHES = [merkle.leaf_hash(d) for d in DATA]


def test_known_answers() -> None:
    # The empty tree and the one-leaf tree, as RFC 9162 defines them.
    assert merkle.root(merkle.list_nodes([]), 0).hex() == (
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    )
    assert merkle.leaf_hash(b"") == hashlib.sha256(b"\x00").digest()
    assert (
        merkle.node_hash(b"a" * 32, b"b" * 32)
        == hashlib.sha256(b"\x01" + b"a" * 32 + b"b" * 32).digest()
    )


@pytest.mark.parametrize("size", [1, 2, 3, 4, 5, 7, 8, 9, 31, 32, 33, 70])
def test_roots_and_inclusion_proofs(size: int) -> None:
    nodes = merkle.list_nodes(HASHES)
    root = merkle.root(nodes, size)
    assert root == mth(DATA[:size])
    for index in range(size):
        proof = merkle.inclusion_proof(nodes, index, size)
        merkle.check_inclusion(HASHES[index], index, size, proof, root)
        with pytest.raises(merkle.ProofError):  # another leaf at that position
            merkle.check_inclusion(merkle.leaf_hash(b"forged"), index, size, proof, root)
        if proof:
            with pytest.raises(merkle.ProofError):  # a proof cut short
                merkle.check_inclusion(HASHES[index], index, size, proof[:-1], root)


@pytest.mark.parametrize("new", [1, 2, 3, 5, 8, 13, 32, 70])
def test_consistency_proofs(new: int) -> None:
    nodes = merkle.list_nodes(HASHES)
    new_root = merkle.root(nodes, new)
    for old in range(0, new + 1):
        proof = merkle.consistency_proof(nodes, old, new)
        merkle.check_consistency(old, new, mth(DATA[:old]), new_root, proof)
        if 0 < old < new:
            rewritten = mth([b"rewritten", *DATA[1:old]])
            with pytest.raises(merkle.ProofError):
                merkle.check_consistency(old, new, rewritten, new_root, proof)
    with pytest.raises(merkle.ProofError, match="same size"):
        merkle.check_consistency(new, new, new_root, mth([b"other"] * new), [])


def test_tile_paths_and_bundles() -> None:
    assert index_path(0) == "000"
    assert index_path(1234067) == "x001/x234/067"
    assert decode_bundle(encode_bundle([b"", b"a", b"bc" * 300])) == [b"", b"a", b"bc" * 300]
    with pytest.raises(TileError):
        decode_bundle(b"\x00\x05abc")


def test_tiles_across_levels(tmp_path: Path) -> None:
    """Appends of every shape, read back by a fresh reader: roots, entries and proofs equal the
    in-memory tree's, past a full level-1 tile (65,536 leaves: level-2 tiles exist)."""
    rnd = random.Random(7)
    data = [f"entry {i} ".encode() * rnd.randint(1, 4) for i in range(66_000)]
    log = TileLog(LocalObjectStore(tmp_path))
    size = 0
    while size < len(data):
        step = rnd.choice([1, 2, 255, 256, 257, 4000])
        size = log.append(size, data[size : size + step])
    assert (tmp_path / "tile/2/000.p/1").exists()
    reference = merkle.list_nodes([merkle.leaf_hash(d) for d in data])
    fresh = TileLog(LocalObjectStore(tmp_path))
    for n in (1, 255, 256, 257, 65_535, 65_536, 65_537, len(data)):
        assert fresh.root(n) == merkle.root(reference, n), n
        assert fresh.entries(max(n - 3, 0), n, n) == data[max(n - 3, 0) : n]
        i = rnd.randrange(n)
        assert merkle.inclusion_proof(fresh.nodes(n), i, n) == merkle.inclusion_proof(
            reference, i, n
        )
    with pytest.raises(TileError):
        TileLog(LocalObjectStore(tmp_path)).root(len(data) + 300)


def test_checkpoint_notes() -> None:
    key = SigningKey.generate()
    cp = Checkpoint("tapegate.test/log", 42, bytes(range(32)), 1_764_000_000_123)
    note = cp.sign("tapegate.test/log", key)
    text = note.decode()
    assert text.startswith("tapegate.test/log\n42\n")
    assert "\ntime 2025-11-24T16:00:00.123Z\n\n\u2014 tapegate.test/log " in text
    assert parse_checkpoint(note, {"tapegate.test/log": key.verify_key}).checkpoint == cp
    name, vk = parse_verifier_key(verifier_key("tapegate.test/log", key.verify_key))
    assert name == "tapegate.test/log" and vk == key.verify_key
    with pytest.raises(NoteError, match="no trusted key"):  # signed by another key
        parse_checkpoint(note, {"tapegate.test/log": SigningKey.generate().verify_key})
    with pytest.raises(NoteError, match="does not match"):  # the text changed after signing
        parse_checkpoint(note.replace(b"\n42\n", b"\n43\n"), {"tapegate.test/log": key.verify_key})
    with pytest.raises(NoteError):
        parse_checkpoint(b"garbage", {"tapegate.test/log": key.verify_key})


def test_the_tile_cache_stays_bounded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The embedded sequencer's TileLog lives as long as the gateway: its cache must not hold
    the whole log, and what it dropped is read again."""
    from tapegate.log import tiles

    monkeypatch.setattr(tiles, "CACHE_TILES", 8)
    log = TileLog(LocalObjectStore(tmp_path))
    size = 0
    for i in range(40):
        size = log.append(size, [b"x%d" % i] * 300)
        assert len(log._tiles) <= 8
    reference = merkle.list_nodes([merkle.leaf_hash(b"x%d" % (n // 300)) for n in range(size)])
    assert log.root(size) == merkle.root(reference, size)

"""The session log's committed test vectors (tests/vectors/log): the generator reproduces them
byte for byte, and they verify by RFC 9162's definitions, independently of the tile reader."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from tapegate.log import merkle
from tapegate.log.leaf import decode_leaf
from tapegate.log.note import NoteError, parse_checkpoint, parse_verifier_key
from tapegate.log.tiles import decode_bundle
from tests.log.test_merkle import mth
from tests.vectors import log_generate

HERE = Path(log_generate.__file__).parent / "log"
DOC = json.loads((HERE / "vectors.json").read_text())


def _b64(text: str) -> bytes:
    return base64.b64decode(text, validate=True)


def test_the_generator_writes_exactly_the_committed_files(tmp_path: Path) -> None:
    doc = log_generate.build(tmp_path / "log")
    assert json.loads(json.dumps(doc)) == DOC
    committed = sorted(p.relative_to(HERE) for p in HERE.rglob("*") if p.is_file())
    written = sorted(p.relative_to(tmp_path / "log") for p in (tmp_path / "log").rglob("*")
                     if p.is_file())  # fmt: skip
    assert [p for p in committed if p.name != "vectors.json"] == written
    for path in written:
        assert (HERE / path).read_bytes() == (tmp_path / "log" / path).read_bytes(), path


def test_the_entries_hash_to_the_signed_root_by_the_rfcs_definition() -> None:
    tiles = HERE / "tiles" / "tile"
    entries = decode_bundle((tiles / "entries" / "000").read_bytes())
    entries += decode_bundle((tiles / "entries" / "001.p" / "44").read_bytes())
    assert len(entries) == DOC["size"]
    assert [merkle.leaf_hash(e).hex() for e in entries] == DOC["leaf_hashes"]
    level0 = (tiles / "0" / "000").read_bytes() + (tiles / "0" / "001.p" / "44").read_bytes()
    assert level0.hex() == "".join(DOC["leaf_hashes"])
    # The level-1 tile holds the root of the full level-0 tile.
    assert (tiles / "1" / "000.p" / "1").read_bytes() == mth(entries[:256])
    name, key = parse_verifier_key(DOC["log_verifier_key"])
    signed = parse_checkpoint((HERE / "checkpoint").read_bytes(), {name: key})
    assert signed.checkpoint.size == DOC["size"] and signed.checkpoint.root == mth(entries)
    for size, root in DOC["roots"].items():
        assert _b64(root) == mth(entries[: int(size)])
    gateway = bytes.fromhex(DOC["gateway_public_key"])
    from tapegate.keys import Keyring

    trusted = Keyring.of(gateway)
    leaves = [decode_leaf(e) for e in entries]
    assert all(leaf.check(trusted) for leaf in leaves)
    assert [leaf.counter for leaf in leaves] == list(range(DOC["size"]))


def test_the_proofs_check_and_a_forged_checkpoint_does_not() -> None:
    hashes = [bytes.fromhex(h) for h in DOC["leaf_hashes"]]
    for case in DOC["inclusion"]:
        i, n = case["index"], case["size"]
        root = _b64(DOC["roots"][str(n)]) if str(n) in DOC["roots"] else None
        root = root or merkle.root(merkle.list_nodes(hashes), n)
        merkle.check_inclusion(hashes[i], i, n, [_b64(h) for h in case["proof"]], root)
    for case in DOC["consistency"]:
        m, n = case["old"], case["new"]
        nodes = merkle.list_nodes(hashes)
        merkle.check_consistency(m, n, merkle.root(nodes, m), merkle.root(nodes, n),
                                 [_b64(h) for h in case["proof"]])  # fmt: skip
    name, key = parse_verifier_key(DOC["log_verifier_key"])
    with pytest.raises(NoteError, match="no trusted key"):
        parse_checkpoint(_b64(DOC["forged_checkpoint"]), {name: key})
    with pytest.raises(NoteError, match="does not match"):
        parse_checkpoint(_b64(DOC["tampered_checkpoint"]), {name: key})
    assert (HERE / "checkpoint").read_bytes().startswith(DOC["checkpoint_text"].encode())

"""The committed test vectors (tests/vectors/) verify as docs/FORMAT.md says they do.

These are the files an independent verifier checks itself against, so the checks here go through
the same public steps such a verifier would: split, decode, verify, unseal, decrypt, re-encode.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import pytest
from nacl.public import PrivateKey
from nacl.signing import SigningKey

from tapegate.keys import Keyring
from tapegate.tape import (
    decode_record,
    open_frames,
    open_session_key,
    split_records,
    verify_session,
)
from tapegate.tape.writer import seal_chunk

VECTORS = Path(__file__).parent / "vectors"
DOC: dict[str, Any] = json.loads((VECTORS / "vectors.json").read_text())
TRUSTED = Keyring.of(bytes.fromhex(DOC["signing_public_key"]))


@pytest.mark.parametrize("case", DOC["cases"], ids=lambda c: c["name"])
def test_case_verdicts(case: dict[str, Any]) -> None:
    records, errors = split_records((VECTORS / case["file"]).read_bytes())
    assert [e.offset for e in errors] == case.get("damage", [])
    if "sessions" in case:  # an object of several sessions: each is judged on its own
        groups: dict[str, list[bytes]] = {}
        for raw in records:
            groups.setdefault(str(decode_record(raw).session_id), []).append(raw)
        verdicts = {sid: verify_session(recs, TRUSTED).status for sid, recs in groups.items()}
        assert verdicts == case["sessions"]
        return
    verdict = verify_session(records, TRUSTED, uuid.UUID(DOC["session_id"]))
    assert verdict.status == case["status"]
    # In the verdict's own order: by seq (none first), then by rule.
    assert [[p.kind.value, p.seq] for p in verdict.problems] == case["problems"]


def test_digests_and_links() -> None:
    records, _ = split_records((VECTORS / "intact.bin").read_bytes())
    decoded = [decode_record(r) for r in records]
    assert [
        {
            "seq": d.seq,
            "length": len(d.raw),
            "digest": d.digest.hex(),
            "prev_digest": d.prev_digest.hex(),
            "final": d.final,
        }
        for d in decoded
    ] == DOC["chunks"]


def test_payload_decrypts_to_the_frames() -> None:
    records, _ = split_records((VECTORS / "intact.bin").read_bytes())
    decoded = sorted((decode_record(r) for r in records), key=lambda r: r.seq)
    auditor = PrivateKey(bytes.fromhex(DOC["auditor_private_key"]))
    key = open_session_key(decoded[0], {bytes.fromhex(DOC["auditor_key_id"]): auditor})
    assert key is not None and key.hex() == DOC["session_key"]
    frames = [f for d in decoded for f in open_frames(d, key)]
    assert [{"direction": int(f.direction), "data": f.data.hex()} for f in frames] == DOC["frames"]


def test_keys_match_their_seeds() -> None:
    signer = SigningKey(bytes.fromhex(DOC["signing_seed"]))
    assert bytes(signer.verify_key).hex() == DOC["signing_public_key"]
    auditor = PrivateKey(bytes.fromhex(DOC["auditor_private_key"]))
    assert bytes(auditor.public_key).hex() == DOC["auditor_public_key"]


def test_encoder_reproduces_every_record_byte_for_byte() -> None:
    """Re-seal each chunk from its decoded contents: the format is fully determined by them."""
    signer = SigningKey(bytes.fromhex(DOC["signing_seed"]))
    session_key = bytes.fromhex(DOC["session_key"])
    records, _ = split_records((VECTORS / "intact.bin").read_bytes())
    for raw in records:
        rec = decode_record(raw)
        assert rec.version == 1  # these are format version 1 records, still read as such
        frames = [(f.ts_ns, f.direction, f.stream, f.data) for f in open_frames(rec, session_key)]
        again, digest = seal_chunk(
            signer=signer,
            session_key=session_key,
            session_id=rec.session_id,
            seq=rec.seq,
            sealed_ns=rec.sealed_ns,
            prev_digest=rec.prev_digest,
            frames=frames,
            event_json=[json.dumps(e, separators=(",", ":")).encode() for e in rec.meta["events"]],
            session=rec.meta.get("session"),
            end=rec.meta.get("end"),
            version=rec.version,
        )
        assert again == raw and digest == rec.digest


V2: dict[str, Any] = DOC["v2"]


def _v2_records() -> list[Any]:
    records, errors = split_records((VECTORS / V2["file"]).read_bytes())
    assert not errors
    return sorted((decode_record(r) for r in records), key=lambda r: r.seq)


def test_v2_session_verifies_and_its_streams_decrypt() -> None:
    decoded = _v2_records()
    assert [{"seq": d.seq, "version": d.version, "length": len(d.raw), "digest": d.digest.hex(),
             "final": d.final} for d in decoded] == V2["chunks"]  # fmt: skip
    verdict = verify_session([d.raw for d in decoded], TRUSTED, uuid.UUID(V2["session_id"]))
    assert verdict.status == V2["status"] and not verdict.problems
    auditor = PrivateKey(bytes.fromhex(DOC["auditor_private_key"]))
    key = open_session_key(decoded[0], {bytes.fromhex(DOC["auditor_key_id"]): auditor})
    assert key is not None and key.hex() == V2["session_key"]
    frames = [f for d in decoded for f in open_frames(d, key)]
    assert [{"direction": int(f.direction), "stream": int(f.stream), "data": f.data.hex()}
            for f in frames] == V2["frames"]  # fmt: skip
    assert {f.stream for f in frames} == {0, 1}  # both streams are there to tell apart


def test_v2_encoder_reproduces_every_record_byte_for_byte() -> None:
    signer = SigningKey(bytes.fromhex(DOC["signing_seed"]))
    key = bytes.fromhex(V2["session_key"])
    for rec in _v2_records():
        frames = [(f.ts_ns, f.direction, f.stream, f.data) for f in open_frames(rec, key)]
        again, _ = seal_chunk(
            signer=signer, session_key=key, session_id=rec.session_id, seq=rec.seq,
            sealed_ns=rec.sealed_ns, prev_digest=rec.prev_digest, frames=frames,
            event_json=[json.dumps(e, separators=(",", ":"), ensure_ascii=False).encode()
                        for e in rec.meta["events"]],
            session=rec.meta.get("session"), end=rec.meta.get("end"),
        )  # fmt: skip
        assert again == rec.raw

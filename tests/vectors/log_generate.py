"""The session log's test vectors (docs/LOG.md): `python -m tests.vectors.log_generate`.

Everything here is deterministic (Ed25519 signatures are, and every time is fixed), so the
generator writes the same bytes every run, and tests/log/test_log_vectors.py checks both that
the committed files are what it writes and that they verify.

    tests/vectors/log/tiles/...        the tlog-tiles of a 300-leaf log (a full tile and a partial)
    tests/vectors/log/checkpoint       its checkpoint, signed with the log key
    tests/vectors/log/vectors.json     keys, every leaf's hash, roots, proofs, a forged checkpoint
"""

from __future__ import annotations

import base64
import hashlib
import json
import shutil
import uuid
from pathlib import Path
from typing import Any

from nacl.signing import SigningKey

from tapegate.archive.local import LocalObjectStore
from tapegate.log import merkle
from tapegate.log.leaf import LeafWriter
from tapegate.log.note import Checkpoint, verifier_key
from tapegate.log.tiles import TileLog
from tapegate.tape.model import Identity, SessionHeader

HERE = Path(__file__).parent / "log"
T0 = 1_767_225_600_000_000_000  # 2026-01-01T00:00:00Z
GATEWAY_SEED = hashlib.sha256(b"tapegate test vector signing key").digest()  # as the tape's
LOG_SEED = hashlib.sha256(b"tapegate test vector log key").digest()
OTHER_SEED = hashlib.sha256(b"tapegate test vector untrusted key").digest()
ORIGIN = "vectors.tapegate/log"
INSTANCE = uuid.UUID("019b7a4c-0000-7000-8000-00000000aaaa")
SIZE = 300  # one full level-0 tile (256) and a partial one (44)
CHECKPOINT_MS = T0 // 1_000_000 + 3_600_000
INCLUSION = [(0, 1), (0, 300), (5, 8), (255, 256), (256, 300), (299, 300)]
CONSISTENCY = [(1, 300), (7, 8), (8, 300), (100, 256), (256, 300), (299, 300)]


def leaves() -> list[bytes]:
    """A gateway instance's leaves: start, 99 sessions opened and closed, heartbeats, stop."""
    writer = LeafWriter(SigningKey(GATEWAY_SEED), "gw-vectors", instance=INSTANCE)
    ts = T0
    out = [writer.heartbeat("start", 60, 0, ts)]
    identity = Identity("dev", "agent-7", "agent7@example.com", ("agents",), "jti-1", None)
    n = 0
    while len(out) + 2 <= SIZE - 1:  # every session opened is closed before the stop
        ts += 7_000_000_000
        sid = uuid.UUID(int=(0x019B7A4C_0000_7000_8000 << 48) | n)
        header = SessionHeader(identity, "appdb", "postgres", "127.0.0.1:50000", "gw-vectors", ts)
        out.append(writer.session_open(sid, header, ts))
        final = hashlib.sha256(sid.bytes).digest() + bytes(64)  # stands in for a chunk
        totals = {"bytes_c2s": 10 * n, "bytes_s2c": 100 * n}
        out.append(writer.session_close(sid, final, 1, totals, "client_terminate", ts + 1))
        if n % 8 == 7 and len(out) < SIZE - 1:
            out.append(writer.heartbeat("running", 60, 0, ts + 2))
        n += 1
    while len(out) < SIZE - 1:
        ts += 60_000_000_000
        out.append(writer.heartbeat("running", 60, 0, ts))
    out.append(writer.heartbeat("stop", 60, 0, ts + 3))
    assert len(out) == SIZE
    return out


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def build(root: Path) -> dict[str, Any]:
    """Write the tiles and the checkpoint under `root`; the vectors document."""
    if root.exists():
        shutil.rmtree(root)
    store = LocalObjectStore(root / "tiles")
    log = TileLog(store)
    entries = leaves()
    log.append(0, entries[:200])  # two appends: the partial tile 0 grows into a full one
    log.append(200, entries[200:])
    nodes = log.nodes(SIZE)
    log_key, other = SigningKey(LOG_SEED), SigningKey(OTHER_SEED)
    checkpoint = Checkpoint(ORIGIN, SIZE, merkle.root(nodes, SIZE), CHECKPOINT_MS)
    (root / "checkpoint").write_bytes(checkpoint.sign(ORIGIN, log_key))
    hashes = [merkle.leaf_hash(e) for e in entries]
    reference = merkle.list_nodes(hashes)
    return {
        "comment": "Inputs and expected results for docs/LOG.md. Hex unless noted; proofs, "
        "roots and whole notes in standard base64, as in checkpoints. entries_sha256: SHA-256 "
        "of the entries concatenated (without the bundles' length prefixes).",
        "origin": ORIGIN,
        "gateway_seed": GATEWAY_SEED.hex(),
        "gateway_public_key": bytes(SigningKey(GATEWAY_SEED).verify_key).hex(),
        "log_seed": LOG_SEED.hex(),
        "log_public_key": bytes(log_key.verify_key).hex(),
        "log_verifier_key": verifier_key(ORIGIN, log_key.verify_key),
        "instance": str(INSTANCE),
        "size": SIZE,
        "leaf_hashes": [h.hex() for h in hashes],
        "entries_sha256": hashlib.sha256(b"".join(entries)).hexdigest(),
        "roots": {str(n): _b64(merkle.root(reference, n)) for n in (0, 1, 2, 3, 8, 256, 257, SIZE)},
        "inclusion": [
            {
                "index": i,
                "size": n,
                "proof": [_b64(h) for h in merkle.inclusion_proof(reference, i, n)],
            }
            for i, n in INCLUSION
        ],
        "consistency": [
            {
                "old": m,
                "new": n,
                "proof": [_b64(h) for h in merkle.consistency_proof(reference, m, n)],
            }
            for m, n in CONSISTENCY
        ],
        "checkpoint_text": checkpoint.text().decode(),
        # Whole notes, base64. The same checkpoint signed by another key under the log's name
        # (its key hash is not the log key's: no trusted signature), and the log's own
        # signature over a text changed after signing (the log key's hash, a signature that
        # fails): neither may verify.
        "forged_checkpoint": _b64(checkpoint.sign(ORIGIN, other)),
        "tampered_checkpoint": _b64(
            checkpoint.sign(ORIGIN, log_key).replace(b"\n300\n", b"\n299\n", 1)
        ),
    }


def main() -> None:
    doc = build(HERE)
    (HERE / "vectors.json").write_text(json.dumps(doc, indent=1) + "\n")


if __name__ == "__main__":
    main()

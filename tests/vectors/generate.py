"""Regenerate the tape test vectors: `python -m tests.vectors.generate`.

The vectors are committed; regenerating changes chunk 0 (SealedBox uses a fresh ephemeral key)
and therefore every digest after it. Only regenerate when the format version changes.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from pathlib import Path

from nacl.public import PrivateKey
from nacl.signing import SigningKey

from tapegate.tape import Direction, Event, Identity, SessionHeader, TapeWriter, decode_record
from tapegate.tape.codec import FIXED_LEN, SIGNATURE_LEN
from tapegate.tape.seal import key_id, sign_digest

HERE = Path(__file__).parent
T0 = 1_767_225_600_000_000_000  # 2026-01-01T00:00:00Z
SIGNING_SEED = hashlib.sha256(b"tapegate test vector signing key").digest()
UNTRUSTED_SEED = hashlib.sha256(b"tapegate test vector untrusted key").digest()
AUDITOR_SECRET = hashlib.sha256(b"tapegate test vector auditor key").digest()
SESSION_KEY = hashlib.sha256(b"tapegate test vector session key").digest()
SESSION_ID = uuid.UUID("019b7a4c-0000-7000-8000-000000000001")

EXCHANGE = [
    (Direction.CLIENT_TO_SERVER, b"Q\x00\x00\x00\x0dSELECT 1;\x00", "SELECT 1;"),
    (Direction.SERVER_TO_CLIENT, b"T\x00\x00\x00\x21\x00\x01?column?\x00" + bytes(18), None),
    (
        Direction.CLIENT_TO_SERVER,
        b"Q\x00\x00\x00\x16SELECT now(), 'hi';\x00",
        "SELECT now(), 'hi';",
    ),
    (Direction.SERVER_TO_CLIENT, b"C\x00\x00\x00\x0dSELECT 1\x00Z\x00\x00\x00\x05I", None),
]


def record() -> list[bytes]:
    signer = SigningKey(SIGNING_SEED)
    auditor = PrivateKey(AUDITOR_SECRET)
    header = SessionHeader(
        identity=Identity("dev", "agent-7", "agent7@example.com", ("agents",), "jti-1", 1767229200),
        target="appdb",
        protocol="postgres",
        client_addr="127.0.0.1:50000",
        gateway="gw-vectors",
        started_ns=T0,
    )
    writer = TapeWriter(
        header,
        signer,
        [auditor.public_key],
        session_id=SESSION_ID,
        session_key=SESSION_KEY,
        max_chunk_bytes=1024,
    )
    out: list[bytes] = []
    ts = T0
    for direction, data, sql in EXCHANGE:
        ts += 1_000_000
        if sql is not None:
            out += writer.add_event(Event(ts, "query", direction, {"sql": sql}))
        out += writer.add_frame(ts, direction, data)
        out += writer.tick(ts)  # age bound 1 s: never reached here
        ts += 1_000_000_000  # a second between messages: each pair lands in its own chunk
        out += writer.tick(ts)
    out.append(writer.close(ts, "client_terminate"))
    return out


def resign(raw: bytes, seed: bytes) -> bytes:
    signer = SigningKey(seed)
    body = bytearray(raw[:-SIGNATURE_LEN])
    body[76:84] = key_id(bytes(signer.verify_key))
    return bytes(body) + sign_digest(signer, hashlib.sha256(body).digest())


def main() -> None:
    records = record()
    flipped = bytearray(records[1])
    flipped[FIXED_LEN + 3] ^= 0x01  # inside the ciphertext
    cases = {
        "intact": (records, "intact", []),
        "reordered-duplicated": ([records[2], records[0], records[2], *records[1:]], "intact", []),
        "flipped-payload-byte": (
            [records[0], bytes(flipped), *records[2:]],
            "broken",
            [["bad_signature", 1], ["missing", 1]],
        ),
        "missing-seq-1": ([records[0], *records[2:]], "broken", [["missing", 1]]),
        "open-no-final": (records[:-1], "open", [["no_final", None]]),
        "untrusted-key": (
            [records[0], resign(records[1], UNTRUSTED_SEED), *records[2:]],
            "broken",
            [["unknown_key", 1], ["missing", 1]],
        ),
    }
    listing = []
    for name, (recs, status, problems) in cases.items():
        (HERE / f"{name}.bin").write_bytes(b"".join(recs))
        listing.append(
            {"name": name, "file": f"{name}.bin", "status": status, "problems": problems}
        )
    decoded = [decode_record(r) for r in records]
    auditor = PrivateKey(AUDITOR_SECRET)
    doc = {
        "comment": "Inputs and expected results for docs/FORMAT.md. Hex unless noted.",
        "signing_seed": SIGNING_SEED.hex(),
        "signing_public_key": bytes(SigningKey(SIGNING_SEED).verify_key).hex(),
        "signing_key_id": key_id(bytes(SigningKey(SIGNING_SEED).verify_key)).hex(),
        "untrusted_public_key": bytes(SigningKey(UNTRUSTED_SEED).verify_key).hex(),
        "auditor_private_key": AUDITOR_SECRET.hex(),
        "auditor_public_key": bytes(auditor.public_key).hex(),
        "auditor_key_id": key_id(bytes(auditor.public_key)).hex(),
        "session_id": str(SESSION_ID),
        "session_key": SESSION_KEY.hex(),
        "chunks": [
            {
                "seq": d.seq,
                "length": len(d.raw),
                "digest": d.digest.hex(),
                "prev_digest": d.prev_digest.hex(),
                "final": d.final,
            }
            for d in decoded
        ],
        "frames": [
            {"direction": int(direction), "data": data.hex()} for direction, data, _ in EXCHANGE
        ],
        "cases": listing,
    }
    (HERE / "vectors.json").write_text(json.dumps(doc, indent=2) + "\n")


if __name__ == "__main__":
    main()

"""Regenerate the tape test vectors: `python -m tests.vectors.generate`.

The vectors are committed; regenerating changes chunk 0 (SealedBox uses a fresh ephemeral key)
and therefore every digest after it. The PostgreSQL session and its problem cases are format
version 1 records (a verifier must still accept them), written by the writer in its version 1
mode; `--v2` writes only the version 2 vector, an SSH exec whose stdout and stderr are told
apart (`python -m tests.vectors.generate --v2`), and `--problem-cases` only the problem cases.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from pathlib import Path
from typing import Any

from nacl.public import PrivateKey
from nacl.signing import SigningKey

from tapegate.tape import (
    Direction,
    Event,
    Identity,
    SessionHeader,
    Stream,
    TapeWriter,
    decode_record,
)
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
        version=1,
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


def resign(raw: bytes, seed: bytes, **fields: bytes) -> bytes:
    """The record with header fields replaced (offset ranges as in docs/FORMAT.md), signed
    again: what someone holding that key could write."""
    signer = SigningKey(seed)
    body = bytearray(raw[:-SIGNATURE_LEN])
    for name, value in fields.items():
        start, end = _FIELDS[name]
        assert len(value) == end - start, name
        body[start:end] = value
    body[76:84] = key_id(bytes(signer.verify_key))
    return bytes(body) + sign_digest(signer, hashlib.sha256(body).digest())


_FIELDS = {"version": (4, 6), "session_id": (12, 28), "seq": (28, 36), "sealed_ns": (36, 44),
           "prev_digest": (44, 76)}  # fmt: skip


def problem_cases(records: list[bytes]) -> dict[str, tuple[list[bytes], str, list[Any]]]:
    """A case for every kind of finding, derived from the intact session's records (so they
    can be added without regenerating, and changing, the intact session)."""
    r = records
    digest = [decode_record(x).digest for x in r]
    final = len(r) - 1
    sealed = decode_record(r[1]).sealed_ns

    def copy(lower: bool) -> bytes:
        """A second chunk 1 (sealed 1 ns later, or more) whose digest is below, or above, the
        original's: which one the verdict keeps then shows."""
        for later_ns in range(sealed + 1, sealed + 1000):
            forged = resign(r[1], SIGNING_SEED, sealed_ns=later_ns.to_bytes(8, "big"))
            if (decode_record(forged).digest < digest[1]) == lower:
                return forged
        raise AssertionError("no copy found")

    # Of two validly signed copies of one seq, the verdict keeps the one with the lower digest,
    # whichever comes first: both orders give one verdict. Kept, the forged copy does not link
    # to chunk 2.
    later, lower = copy(lower=False), copy(lower=True)
    fork = [["conflict", 1]]
    fork_lower = [["conflict", 1], ["broken_link", 2]]
    beyond = resign(r[1], SIGNING_SEED, seq=(final + 1).to_bytes(8, "big"),
                    prev_digest=digest[final])  # fmt: skip
    other = resign(r[1], SIGNING_SEED, session_id=uuid.UUID(int=SESSION_ID.int + 1).bytes)
    bad_version = resign(r[1], SIGNING_SEED, version=(9).to_bytes(2, "big"))
    relinked = resign(r[2], SIGNING_SEED, prev_digest=bytes(32))
    grown = bytearray(r[1])
    grown[8:12] = (len(r[1]) + len(r[2])).to_bytes(4, "big")  # swallows chunk 2
    other_session, prev = [], bytes(32)  # the session again under another id, re-chained
    for x in r:
        second = uuid.UUID(int=SESSION_ID.int + 2).bytes
        other_session.append(resign(x, SIGNING_SEED, prev_digest=prev, session_id=second))
        prev = decode_record(other_session[-1]).digest
    return {
        "conflict-copy-first": ([r[0], r[1], later, *r[2:]], "broken", fork),
        "conflict-copy-second": ([r[0], later, r[1], *r[2:]], "broken", fork),
        "conflict-lower-copy-first": ([r[0], r[1], lower, *r[2:]], "broken", fork_lower),
        "conflict-lower-copy-second": ([r[0], lower, r[1], *r[2:]], "broken", fork_lower),
        "broken-link-2": (
            [*r[:2], relinked, *r[3:]],
            "broken",
            [["broken_link", 2], ["broken_link", 3]],
        ),
        "after-final": ([*r, beyond], "broken", [["after_final", final + 1]]),
        "other-session-mixed-in": ([*r[:2], other, *r[2:]], "broken", [["other_session", 1]]),
        "undecodable-version": (
            [r[0], bad_version, *r[2:]],
            "broken",
            [["undecodable", None], ["missing", 1]],
        ),
        "set-aside-chunk-0": (
            [resign(r[0], UNTRUSTED_SEED), *r[1:]],
            "broken",
            [["unknown_key", 0], ["missing", 0]],
        ),
        "set-aside-final": (
            [*r[:-1], resign(r[-1], UNTRUSTED_SEED)],
            "broken",
            [["no_final", None], ["unknown_key", final]],
        ),
        "two-sessions-in-one-object": ([*other_session[:2], *r, *other_session[2:]], "intact", []),
        "grown-record-len": ([r[0], bytes(grown), *r[2:]], "broken", [["missing", 1]]),
        "empty": ([], "broken", [["empty", None]]),
    }


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
        **problem_cases(records),
    }
    listing = []
    for name, (recs, status, problems) in cases.items():
        listing.append(_write_case(name, recs, status, problems, records))
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


def _write_case(
    name: str, recs: list[bytes], status: str, problems: list[Any], intact: list[bytes]
) -> dict[str, Any]:
    (HERE / f"{name}.bin").write_bytes(b"".join(recs))
    entry = {"name": name, "file": f"{name}.bin", "status": status, "problems": problems}
    if name == "grown-record-len":  # the splitter reports it where chunk 1 starts
        entry["damage"] = [len(intact[0])]
    if name == "two-sessions-in-one-object":  # split, group by session id, judge each
        entry["sessions"] = {str(SESSION_ID): "intact",
                             str(uuid.UUID(int=SESSION_ID.int + 2)): "intact"}  # fmt: skip
    return entry


def add_problem_cases() -> None:
    """Write the problem cases from the committed intact session, and list them (no other
    vector changes): `python -m tests.vectors.generate --problem-cases`."""
    from tapegate.tape import split_records

    records, _ = split_records((HERE / "intact.bin").read_bytes())
    doc = json.loads((HERE / "vectors.json").read_text())
    names = set()
    for name, (recs, status, problems) in problem_cases(records).items():
        names.add(name)
        entry = _write_case(name, recs, status, problems, records)
        doc["cases"] = [c for c in doc["cases"] if c["name"] != name] + [entry]
    (HERE / "vectors.json").write_text(json.dumps(doc, indent=2) + "\n")


V2_SESSION_ID = uuid.UUID("019b7a4c-0000-7000-8000-000000000002")
V2_SESSION_KEY = hashlib.sha256(b"tapegate test vector v2 session key").digest()
OUT, ERR = Stream.DATA, Stream.STDERR
V2_FRAMES = [  # an exec of `ls /etc/missing /tmp`: both directions' streams, interleaved
    (Direction.CLIENT_TO_SERVER, Stream.DATA, b"y\n"),
    (Direction.SERVER_TO_CLIENT, ERR, b"ls: cannot access '/etc/missing': No such file\n"),
    (Direction.SERVER_TO_CLIENT, OUT, b"/tmp:\nsystemd-private\n"),
    (Direction.SERVER_TO_CLIENT, ERR, "é\n".encode()),
]


def record_v2() -> list[bytes]:
    """A format version 2 session: SSH, so its frames carry a stream."""
    header = SessionHeader(
        identity=Identity("dev", "agent-7", "agent7@example.com", ("agents",), "jti-2", 1767229200),
        target="bastion",
        protocol="ssh",
        client_addr="127.0.0.1:50001",
        gateway="gw-vectors",
        started_ns=T0,
    )
    writer = TapeWriter(header, SigningKey(SIGNING_SEED), [PrivateKey(AUDITOR_SECRET).public_key],
                        session_id=V2_SESSION_ID, session_key=V2_SESSION_KEY,
                        max_chunk_bytes=1024)  # fmt: skip
    ts = T0 + 1_000_000
    out = writer.add_event(Event(ts, "exec", Direction.CLIENT_TO_SERVER,
                                 {"command": "ls /etc/missing /tmp"}))  # fmt: skip
    for direction, stream, data in V2_FRAMES:
        ts += 1_000_000
        out += writer.add_frame(ts, direction, data, stream)
    out += writer.flush(ts)  # the frames in chunk 0, the exit in the final chunk
    ts += 1_000_000
    out += writer.add_event(Event(ts, "exit", Direction.SERVER_TO_CLIENT, {"status": 2}))
    out.append(writer.close(ts, "closed"))
    return out


def add_v2() -> None:
    """Write tests/vectors/ssh-streams-v2.bin and its "v2" entry in vectors.json."""
    records = record_v2()
    (HERE / "ssh-streams-v2.bin").write_bytes(b"".join(records))
    doc = json.loads((HERE / "vectors.json").read_text())
    doc["v2"] = {
        "comment": "Format version 2: the frame index entry has a stream byte. Same keys.",
        "file": "ssh-streams-v2.bin",
        "session_id": str(V2_SESSION_ID),
        "session_key": V2_SESSION_KEY.hex(),
        "status": "intact",
        "chunks": [
            {
                "seq": d.seq,
                "version": d.version,
                "length": len(d.raw),
                "digest": d.digest.hex(),
                "final": d.final,
            }
            for d in map(decode_record, records)
        ],
        "frames": [
            {"direction": int(d), "stream": int(s), "data": data.hex()} for d, s, data in V2_FRAMES
        ],
    }
    (HERE / "vectors.json").write_text(json.dumps(doc, indent=2) + "\n")


if __name__ == "__main__":
    import sys

    if "--problem-cases" in sys.argv:
        add_problem_cases()
    elif "--v2" in sys.argv:
        add_v2()
    else:
        main()
        add_v2()

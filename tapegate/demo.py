"""`make demo`: the tape end to end on the embedded default.

Records a synthetic PostgreSQL-like session (both directions), writes its sealed chunks as a
delivery object the way Firehose would, verifies it with the CLI, opens the payload with the
local auditor key, then flips one byte and shows the verifier catching it.
"""

from __future__ import annotations

import struct
import time
from pathlib import Path

from tapegate.keys import LocalKeyStore
from tapegate.tape import (
    Direction,
    Event,
    Identity,
    SessionHeader,
    TapeWriter,
    decode_record,
    key_id,
    open_frames,
    open_session_key,
    split_records,
)


def _pg(tag: bytes, body: bytes) -> bytes:
    return tag + struct.pack(">I", len(body) + 4) + body


def _conversation() -> list[tuple[Direction, bytes, str | None]]:
    """What an agent might say to a database, and what it hears back."""
    c2s, s2c = Direction.CLIENT_TO_SERVER, Direction.SERVER_TO_CLIENT
    convo: list[tuple[Direction, bytes, str | None]] = []
    for sql, rows in [
        ("SELECT id, email FROM customers WHERE id < 4", [b"1", b"2", b"3"]),
        ("UPDATE orders SET status = 'shipped' WHERE id = 42", []),
    ]:
        convo.append((c2s, _pg(b"Q", sql.encode() + b"\0"), sql))
        reply = b"".join(_pg(b"D", b"\x00\x01" + struct.pack(">I", len(r)) + r) for r in rows)
        tag = f"SELECT {len(rows)}" if rows else "UPDATE 1"
        reply += _pg(b"C", tag.encode() + b"\0") + _pg(b"Z", b"I")
        convo.append((s2c, reply, None))
    return convo


def run_tape_demo(data_dir: Path) -> int:
    from tapegate.cli import main as cli_main

    keys = LocalKeyStore(data_dir)
    signer, auditor = keys.signing_key(), keys.auditor_key()
    now = time.time_ns()
    header = SessionHeader(
        identity=Identity("dev", "demo-agent", None, ("agents",), "demo-token", now // 10**9 + 900),
        target="appdb",
        protocol="postgres",
        client_addr="127.0.0.1:50000",
        gateway="demo",
        started_ns=now,
    )
    writer = TapeWriter(header, signer, keys.auditor_public_keys(), max_chunk_bytes=1024)
    records: list[bytes] = []
    ts = now
    for direction, data, sql in _conversation():
        ts += 2_000_000
        records += writer.add_frame(ts, direction, data)
        if sql:
            records += writer.add_event(Event(ts, "query", direction, {"sql": sql}))
        records += writer.tick(ts + 1_000_000_000)  # as if a second passed: one chunk each
    records.append(writer.close(ts + 3_000_000, "client_terminate"))

    deliveries = data_dir / "deliveries"
    deliveries.mkdir(parents=True, exist_ok=True)
    delivered = deliveries / f"demo-{writer.session_id}.bin"
    delivered.write_bytes(b"".join(records))

    print(f"1. Recorded session {writer.session_id}: {len(records)} sealed chunks")
    print(f"   signed by key {key_id(bytes(signer.verify_key)).hex()}, written to {delivered}")

    print("\n2. Verify it with nothing but the public key:")
    print(f"   $ tapegate verify {delivered}")
    status = cli_main(["verify", "--data-dir", str(data_dir), str(delivered)])
    if status != 0:
        print("   unexpected: the fresh tape did not verify")
        return 1

    print("\n3. Open the payload with the auditor private key (without it, bytes stay sealed):")
    chunks = sorted(
        (decode_record(r) for r in split_records(delivered.read_bytes())[0]), key=lambda r: r.seq
    )
    session_key = open_session_key(chunks[0], {key_id(bytes(auditor.public_key)): auditor})
    assert session_key is not None
    for chunk in chunks:
        for event in chunk.meta["events"]:
            print(f"   event  seq={chunk.seq} {event['type']}: {event['attrs'].get('sql')}")
        for frame in open_frames(chunk, session_key):
            arrow = "→" if frame.direction is Direction.CLIENT_TO_SERVER else "←"
            print(
                f"   frame  seq={chunk.seq} {arrow} {len(frame.data):4d} bytes {frame.data[:40]!r}"
            )

    print("\n4. Flip one byte in chunk 1 and verify again:")
    tampered_bytes = bytearray(delivered.read_bytes())
    offset = len(records[0]) + 200
    tampered_bytes[offset] ^= 0x20
    tampered = deliveries / f"demo-{writer.session_id}-tampered.bin"
    tampered.write_bytes(bytes(tampered_bytes))
    print(f"   $ tapegate verify {tampered}   (byte {offset} flipped)")
    status = cli_main(["verify", "--data-dir", str(data_dir), str(tampered)])
    print(f"   exit status {status}: the change is detected and located.")
    return 0 if status == 1 else 1

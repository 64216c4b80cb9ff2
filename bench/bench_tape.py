"""Seal and verify throughput of the tape, as a ratio to hashlib.sha256 over the same bytes.

    .venv/bin/python bench/bench_tape.py [--seconds S] [--no-write]

Sealing = what the gateway does per chunk: TapeWriter collecting 16 KiB reads, then encode +
encrypt (XChaCha20-Poly1305) + SHA-256 + Ed25519 sign when the chunk is full.
Verifying = decode + SHA-256 + Ed25519 check (what the pipeline does; it decrypts nothing).
Opening = decrypting the payload with the session key (what an auditor's replay does).
All on one core. Goal: sealing 256 KiB chunks at >= 30% of raw SHA-256 speed.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from nacl.public import PrivateKey
from nacl.signing import SigningKey

from bench.results import write_section
from tapegate.keys import Keyring
from tapegate.tape import (
    Direction,
    Event,
    Identity,
    SessionHeader,
    TapeWriter,
    decode_record,
    open_frames,
    verify_session,
)
from tapegate.tape.writer import seal_chunk

SIZES = [4 * 1024, 64 * 1024, 256 * 1024]
NOTES = """
Small chunks are bound by the fixed cost per chunk (one Ed25519 signature to seal, one check to
verify, a JSON meta), which is why the writer cuts at 256 KiB by default and small chunks only
happen when the 1 s age bound fires on a quiet session. Sealing went from 24% to 35% of SHA-256
at 256 KiB when the payload moved ahead of the meta in the record and began to be encrypted in
place, in the buffer the frames are collected in, instead of through PyNaCl's public wrapper
(which allocates and copies the ciphertext). The remaining copy is `bytes(record)` at the end,
kept so that records handed around are immutable.
"""
FRAME = 16 * 1024  # a typical socket read
QUERY = {"sql": "SELECT id, email FROM customers WHERE id = $1"}


def rate(fn: Callable[[], object], nbytes: int, seconds: float) -> float:
    """MB/s of `fn` processing `nbytes` per call, best of three timed slices."""
    best = 0.0
    for _ in range(3):
        calls, start = 0, time.perf_counter()
        deadline = start + seconds / 3
        while True:
            fn()
            calls += 1
            now = time.perf_counter()
            if now >= deadline:
                break
        best = max(best, calls * nbytes / (now - start) / 1e6)
    return best


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=1.5, help="per measurement")
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args()

    signer = SigningKey.generate()
    trusted = Keyring.of(signer.verify_key)
    session_key = os.urandom(32)
    sid = uuid.uuid4()
    auditor = PrivateKey.generate().public_key
    header = SessionHeader(Identity("bench", "bench"), "t", "postgres", "127.0.0.1:1", "bench", 0)
    rows = []
    for size in SIZES:
        data = os.urandom(size)
        frames = [
            (i, i % 2, 0, data[off : off + FRAME]) for i, off in enumerate(range(0, size, FRAME))
        ]
        events = [b'{"ts":1,"dir":"c2s","type":"query","attrs":{"sql":"SELECT 1"}}'] * 4

        writer = TapeWriter(header, signer, [auditor], max_chunk_bytes=size)
        read = data[: min(size, FRAME)]
        reads = size // len(read)

        def seal(writer=writer, read=read, n=reads) -> object:
            sealed = []
            for i in range(n):
                sealed += writer.add_frame(i, Direction.SERVER_TO_CLIENT, read)
            sealed += writer.add_event(Event(n, "query", Direction.CLIENT_TO_SERVER, QUERY))
            return sealed

        record, _ = seal_chunk(
            signer=signer,
            session_key=session_key,
            session_id=sid,
            seq=1,
            sealed_ns=1,
            prev_digest=bytes(32),
            frames=frames,
            event_json=events,
        )
        rec = decode_record(record)

        def verify(record=record) -> object:
            return verify_session([record], trusted)

        def open_(rec=rec) -> object:
            return open_frames(rec, session_key)

        sha = rate(lambda data=data: hashlib.sha256(data).digest(), size, args.seconds)
        s, v, o = (rate(f, size, args.seconds) for f in (seal, verify, open_))
        rows.append((size, sha, s, v, o))

    lines = [
        "| chunk | sha256 MB/s | seal MB/s | seal / sha256 | verify MB/s | verify / sha256 "
        "| open MB/s | open / sha256 |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for size, sha, s, v, o in rows:
        lines.append(
            f"| {size // 1024} KiB | {sha:,.0f} | {s:,.0f} | {s / sha:.0%} | {v:,.0f} "
            f"| {v / sha:.0%} | {o:,.0f} | {o / sha:.0%} |"
        )
    goal = rows[-1][2] / rows[-1][1]
    verdict = "met" if goal >= 0.30 else "NOT met"
    lines.append("")
    lines.append(f"Goal (seal 256 KiB chunks at >= 30% of SHA-256): {verdict}, {goal:.0%}.")
    table = "\n".join(lines) + "\n" + NOTES
    print(table)
    if not args.no_write:
        write_section(
            "tape",
            "Tape: seal and verify throughput (one core)",
            ".venv/bin/python bench/bench_tape.py",
            table,
        )


if __name__ == "__main__":
    main()

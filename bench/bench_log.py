"""The session log's costs, as ratios to a baseline measured in the same run.

    .venv/bin/python bench/bench_log.py [--sessions N] [--no-write]

- Leaves: what a gateway adds per session (a session_open and a session_close leaf, each one
  Ed25519 signature), against one bare Ed25519 signature of the same digest.
- Sequencing: appending those leaves to tiles and signing a checkpoint (the embedded archive's
  step), against writing the same leaf bytes to one file.
- Verifying: `log verify` over the archive (tiles, checkpoints, every session's chunks read
  back from the evidence and checked), against `tapegate verify`'s own per-session check of the
  same chunks (split, decode, signatures, chain).
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from nacl.signing import SigningKey

from bench.results import write_section
from tapegate.archive.local import LocalObjectStore
from tapegate.log.leaf import LeafWriter
from tapegate.log.tiles import TileLog
from tapegate.log.verify import verify_log
from tapegate.tape import split_records, verify_session
from tapegate.tape.codec import MAGIC


def _best(fn, repeat: int = 3) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def leaves_vs_signature(n: int) -> tuple[float, float]:
    from tests.tapes import make_header

    signer = SigningKey.generate()
    writer = LeafWriter(signer, "bench")
    header = make_header()
    import uuid

    sid = uuid.uuid4()
    final = bytes(200)
    digest = hashlib.sha256(b"x").digest()

    def leaves() -> None:
        for _ in range(n):
            writer.session_open(sid, header, 1)
            writer.session_close(sid, final, 3, {"bytes_c2s": 1, "bytes_s2c": 2}, "closed", 2)

    def signatures() -> None:
        for _ in range(2 * n):
            signer.sign(digest)

    return _best(leaves) / n, _best(signatures) / n


def sequencing(leaves: list[bytes]) -> tuple[float, float]:
    def tiles() -> None:
        with tempfile.TemporaryDirectory() as d:
            log = TileLog(LocalObjectStore(Path(d)))
            size = 0
            for i in range(0, len(leaves), 500):  # the embedded archive's batches
                size = log.append(size, leaves[i : i + 500])
            log.root(size)

    def one_file() -> None:
        with tempfile.TemporaryDirectory() as d:
            (Path(d) / "leaves").write_bytes(b"".join(leaves))

    return _best(tiles), _best(one_file)


def verifying(sessions: int) -> tuple[float, float, int]:
    from tests.log.fleet import Fleet

    with tempfile.TemporaryDirectory() as d:
        fleet = Fleet(Path(d))
        fleet.heartbeat("start")
        for i in range(sessions):
            fleet.session(exchanges=2)
            if i % 50 == 49:
                fleet.heartbeat()
                fleet.deliver()
        fleet.heartbeat("stop")
        fleet.deliver()
        archive = fleet.archive()
        src = archive.log_sources()
        verdict = verify_log(src, now_ns=fleet.now)
        assert verdict.consistent and verdict.sessions == sessions, verdict.problems[:3]
        trusted = archive.trusted()

        def log_check() -> None:
            verify_log(src, now_ns=fleet.now)

        def tape_check() -> None:
            by_session: dict[bytes, list[bytes]] = {}
            for path in sorted(fleet.config.delivery_dir.glob("*.bin")):
                records, _ = split_records(path.read_bytes())
                for raw in records:
                    if raw[:4] == MAGIC:
                        by_session.setdefault(raw[12:28], []).append(raw)
            for records in by_session.values():
                verify_session(records, trusted)

        return _best(log_check, 2), _best(tape_check, 2), verdict.leaves


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sessions", type=int, default=2000)
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args()
    per_session, per_two_signatures = leaves_vs_signature(2000)
    writer = LeafWriter(SigningKey.generate(), "bench")
    leaves = [writer.heartbeat("running", 60, 0, i) for i in range(10_000)]
    tiles_s, file_s = sequencing(leaves)
    log_s, tape_s, n_leaves = verifying(args.sessions)
    rows = [
        ("a session's two leaves (sign)", f"{per_session * 1e6:.0f} µs",
         f"two Ed25519 signatures: {per_two_signatures * 1e6:.0f} µs",
         f"{per_session / per_two_signatures:.2f}x"),
        ("sequencing 10,000 leaves (tiles + root)",
         f"{tiles_s * 1e3:.0f} ms ({10_000 / tiles_s:,.0f} leaves/s)",
         f"the same bytes to one file: {file_s * 1e3:.1f} ms", f"{tiles_s / file_s:.0f}x"),
        (f"`log verify`, {args.sessions:,} sessions ({n_leaves:,} leaves)", f"{log_s:.2f} s",
         f"verifying their tapes alone: {tape_s:.2f} s", f"{log_s / tape_s:.2f}x"),
    ]  # fmt: skip
    table = "| measure | tapegate | baseline | ratio |\n|---|---:|---:|---:|\n"
    table += "".join(f"| {a} | {b} | {c} | {d} |\n" for a, b, c, d in rows)
    body = (
        table
        + """
A session costs the gateway two leaf signatures, a little more than two bare signatures (the
leaf's JSON body and its SHA-256 besides), once per session, never per statement or request.
The sequencer writes a few tiles per batch (partial tiles are new files each time: a batch of
500 leaves writes about four), which is why it is far slower than one sequential write, and
still orders of magnitude above what gateways emit (two leaves per session, one heartbeat a
minute per instance). `log verify` reads every session's chunks
back from the evidence and checks them, so it costs about what verifying the tapes themselves
costs, plus the tree.
"""
    )
    print(body)
    if not args.no_write:
        write_section("log", "Session log: leaves, sequencing, log verify (one core)",
                      "python bench/bench_log.py", body)  # fmt: skip


if __name__ == "__main__":
    main()

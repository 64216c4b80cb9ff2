"""Archive pipeline throughput, Firehose sink batching, and Parquet size, in one run.

    .venv/bin/python bench/bench_pipeline.py [--mb 64] [--no-write]

- Pipeline (median of three runs): delivery objects of ~4 MiB (as Firehose writes them)
  through tapegate.pipeline with the embedded adapters (SQLite index, Parquet on disk), one
  core, as MB/s of tape and as a ratio to hashlib.sha256 over the same bytes. Two mixes:
  "chatty" (pgbench-like: small messages, a query and a result event per round trip) and "bulk"
  (COPY-like: 64 KiB reads, few events).
- Firehose sink: 100 concurrent sessions, each a round trip every 20 ms for 5 s, into the sink
  (a counting client): records and bytes per PutRecordBatch, mean record size against
  Firehose's 5 KB billing unit.
- Parquet bytes written per tape byte, for each mix.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from nacl.public import PrivateKey
from nacl.signing import SigningKey

from bench.results import write_section
from gateway_task.recording.firehose import FirehoseSink
from tapegate.archive.local import LocalObjectStore, SqliteIndex
from tapegate.keys import Keyring
from tapegate.pipeline import Pipeline
from tapegate.tape import Direction, Event, Identity, SessionHeader, TapeWriter

C2S, S2C = Direction.CLIENT_TO_SERVER, Direction.SERVER_TO_CLIENT
NOTES = """
Where the time goes in the chatty mix (cProfile over `process_object`, 48 MB): Arrow's JSON
reader over the events is the largest part (it parses about 190 MB/s of event JSON, and a
pgbench-like tape is more than half events by bytes), then writing the Parquet files (ZSTD),
cutting the events out of each chunk's meta, decoding records and the per-session summary files.
Tried, and kept, in this order (chatty MB/s in this bench): building the tables column-wise
instead of one dict per row (29 → 37); events cut from the meta's bytes and parsed in bulk,
chunks sorted instead of rows (→ 58); whole events kept only for the types whose attributes the
columns do not carry, per-chunk values expanded in Arrow, the SQLite index committing without an
fsync per chunk, statistics only on filtered columns (→ 83 to 94 across runs); the events'
separators replaced by a space instead of removed, which CPython does in place, and the one-row
session files written without ZSTD except for `problems` (ZSTD costs ~17 µs of context per
column chunk, 0.6 ms a file) (→ 108 to 110 as the median of three runs).
Not adopted: orjson (a side measurement, not in bench/, found it about twice as fast as json on
these metas, which the bulk path no longer parses). Not done: a faster events decoder than
Arrow's JSON reader, e.g. events sealed in a binary layout or as Arrow IPC next to the JSON.
"""


def make_tapes(kind: str, target_bytes: int, signer: SigningKey) -> list[bytes]:
    auditor = PrivateKey.generate().public_key
    records: list[bytes] = []
    total, n = 0, 0
    payload = os.urandom(65536)
    while total < target_bytes:
        n += 1
        t0 = time.time_ns()
        header = SessionHeader(Identity("bench", f"agent-{n}", groups=("agents",)), "appdb",
                               "postgres", "127.0.0.1:5", "bench", t0)  # fmt: skip
        writer = TapeWriter(header, signer, [auditor])
        ts = t0
        for i in range(2000 if kind == "chatty" else 200):
            ts += 50_000
            if kind == "chatty":
                sql = f"SELECT abalance FROM pgbench_accounts WHERE aid = {i * 7919 % 100000};"
                records += writer.add_frame(ts, C2S, b"Q" + sql.encode())
                records += writer.add_event(
                    Event(ts, "query", C2S, {"sql": sql, "kinds": ["SELECT"]})
                )
                records += writer.add_frame(ts + 30_000, S2C, payload[:90])
                records += writer.add_event(Event(ts + 30_000, "result", S2C, {
                    "tag": "SELECT 1", "rows": 1, "columns": ["abalance"],
                    "duration_ns": 30_000, "sql": sql}))  # fmt: skip
            else:
                records += writer.add_frame(ts, S2C, payload)
        records.append(writer.close(ts + 1, "client_terminate"))
        total = sum(len(r) for r in records)
    return records


def objects_of(records: list[bytes], size: int = 4 << 20) -> list[bytes]:
    out, cur, cur_len = [], [], 0
    for r in records:
        if cur_len + len(r) > size and cur:
            out.append(b"".join(cur))
            cur, cur_len = [], 0
        cur.append(r)
        cur_len += len(r)
    if cur:
        out.append(b"".join(cur))
    return out


def pipeline_rate(kind: str, mb: int, tmp: Path, runs: int = 3) -> tuple[float, float, float]:
    """Median over `runs` fresh pipelines (empty index and folder) of the same objects: the
    machine is shared, and one run can land on a busy moment."""
    signer = SigningKey.generate()
    objects = objects_of(make_tapes(kind, mb << 20, signer))
    tape_bytes = sum(len(o) for o in objects)
    rates, sha_rates, parquet = [], [], 0
    for run in range(runs):
        root = tmp / f"{kind}-{run}"
        pipeline = Pipeline(Keyring.of(signer.verify_key), SqliteIndex(root / "index.sqlite"),
                            LocalObjectStore(root / "curated"))  # fmt: skip
        started = time.process_time()
        for i, obj in enumerate(objects):
            pipeline.process_object(f"o{i}", obj, time.time_ns())
        rates.append(tape_bytes / (time.process_time() - started) / 1e6)
        started = time.process_time()
        for obj in objects:
            hashlib.sha256(obj).digest()
        sha_rates.append(tape_bytes / (time.process_time() - started) / 1e6)
        parquet = sum(p.stat().st_size for p in (root / "curated").rglob("*.parquet"))
    return statistics.median(rates), statistics.median(sha_rates), parquet / tape_bytes


class CountingFirehose:
    def __init__(self) -> None:
        self.calls: list[tuple[int, int]] = []

    def put_record_batch(self, DeliveryStreamName: str, Records: list[dict[str, Any]]) -> dict:
        self.calls.append((len(Records), sum(len(r["Data"]) for r in Records)))
        return {"FailedPutCount": 0, "RequestResponses": [{"RecordId": "x"} for _ in Records]}


async def sink_efficiency(tmp: Path, sessions: int = 100, seconds: float = 5.0) -> dict[str, float]:
    client = CountingFirehose()
    sink = FirehoseSink("tapes", client, tmp / "spool", flush_ms=500)
    signer, auditor = SigningKey.generate(), PrivateKey.generate().public_key

    async def session(n: int) -> None:
        header = SessionHeader(Identity("bench", f"s{n}"), "appdb", "postgres", "127.0.0.1:5",
                               "bench", time.time_ns())  # fmt: skip
        writer = TapeWriter(header, signer, [auditor])
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            ts = time.time_ns()
            out = writer.add_frame(ts, C2S, b"Q" + b"SELECT * FROM t WHERE id = 42;\0")
            out += writer.add_event(
                Event(ts, "query", C2S, {"sql": "SELECT * FROM t WHERE id = 42"})
            )
            out += writer.add_frame(ts, S2C, os.urandom(120))
            out += writer.tick(time.time_ns())
            sink.put(out)
            await asyncio.sleep(0.02)
        sink.put([writer.close(time.time_ns(), "client_terminate")])

    async def ticker() -> None:
        for _ in range(int(seconds * 10) + 20):
            sink.tick()
            await asyncio.sleep(0.1)

    await asyncio.gather(ticker(), *(session(n) for n in range(sessions)))
    sink.close()
    records = sum(c for c, _ in client.calls)
    size = sum(b for _, b in client.calls)
    return {"calls": len(client.calls), "records_per_call": records / len(client.calls),
            "bytes_per_call": size / len(client.calls), "mean_record": size / records}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mb", type=int, default=64, help="MB of tape per mix")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="tapegate-bench-pipeline-"))
    lines = ["| mix | pipeline MB/s (one core) | sha256 MB/s | pipeline / sha256 "
             "| Parquet bytes per tape byte |", "|---|---:|---:|---:|---:|"]  # fmt: skip
    rates = {}
    for kind in ("chatty", "bulk"):
        rate, sha, ratio = pipeline_rate(kind, args.mb, tmp)
        rates[kind] = rate
        lines.append(f"| {kind} | {rate:,.0f} | {sha:,.0f} | {rate / sha:.1%} | {ratio:.3f} |")
    eff = asyncio.run(sink_efficiency(tmp))
    lines += [
        "",
        f"Firehose sink, 100 sessions, a round trip every 20 ms each for 5 s: {eff['calls']:.0f} "
        f"PutRecordBatch calls, {eff['records_per_call']:.0f} records and "
        f"{eff['bytes_per_call'] / 1024:.0f} KiB per call, mean record {eff['mean_record']:,.0f} "
        f"bytes ({eff['mean_record'] / 5120:.1f}x Firehose's 5 KB billing unit).",
        "",
        "Goal (>= 100 MB/s of tape per core): "
        + ", ".join(f"{k} {'met' if v >= 100 else 'NOT met'}" for k, v in rates.items())
        + ".",
    ]
    table = "\n".join(lines) + "\n" + NOTES
    print(table)
    if not args.no_write:
        write_section("pipeline", "Archive pipeline, Firehose sink batching, Parquet size",
                      ".venv/bin/python bench/bench_pipeline.py", table)  # fmt: skip


if __name__ == "__main__":
    main()

"""The fault figures of issue 14, each against a baseline measured in the same run.

    .venv/bin/python bench/bench_faults.py [--sessions 100] [--outage-s 30] [--kill-runs 3] ...

1. Gateway RSS through an archive outage: `--sessions` sessions running INSERTs back to back
   with the Firehose sink (moto's Firehose behind a TCP proxy, tests/faults/firehose.py), the
   proxy stopped for `--outage-s` and started again. Reported: RSS at ready, with the sessions
   open and idle, under load with Firehose healthy (the baseline), the peak in the outage and
   while the spool drains, against load RSS + `sink.max_memory_bytes`.
2. The buffered-mode loss window after kill -9: `--kill-sessions` sessions of INSERTs with
   unique ids, then kill -9, `--kill-runs` times per sink (the folder sink; Firehose, killed in
   the middle of an outage and restarted to drain its spool). The loss window of a run is the
   time of the kill minus the completion time of the oldest statement a client saw complete
   whose id is on no recorded tape; the goal is `recording.max_age_ms` + `sink.flush_ms` (the
   interval at which the sink writes what it holds: the folder's objects, the spool's files).
3. A bystander's round trips while another session sends a large statement: one session runs
   `SELECT 1` in a loop while another (its own process) sends `SELECT length('<N MB>')`,
   `--big-repeats` times; directly against PostgreSQL (the baseline) and through the gateway.

Everything runs on this machine: PostgreSQL, `tapegate up` (its own process, TLS, one
PostgreSQL target with guardrails, durability buffered, no embedded pipeline, as on Fargate),
the Firehose stand-in and the clients (psycopg, one thread per session) share its cores.
`--only outage|kill|bystander` runs one part (and writes nothing); `--no-write` prints only.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import multiprocessing
import re
import shlex
import shutil
import sys
import tempfile
import textwrap
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from queue import Empty
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import psycopg

from bench.results import write_section
from tests.faults.firehose import firehose_behind_proxy, firehose_sink, gateway_env
from tests.faults.harness import (
    PASSWORD_ENV,
    GatewayProcess,
    Load,
    RssSampler,
    Worker,
    create_table,
    delivery_records,
    dir_bytes,
    ids_in_database,
    ids_in_query_events,
    kill_during_outage,
    mib,
    poll,
    read_tapes,
    write_config,
)
from tests.pg import APP_PASSWORD, PgServer, start_postgres

PARTS = ("outage", "kill", "bystander")
# The gateway alone, as on Fargate: the embedded pipeline would also index on these cores.
ARCHIVE = {"kind": "local", "embedded_pipeline": False}


def gateway_config(tmp: Path, pg: PgServer, args: argparse.Namespace, **overrides: Any) -> Path:
    """The fault harness's tapegate.yaml, with guardrails on the target (so every statement is
    named, as in production) and the recording and sink intervals of this run."""
    tmp.mkdir(parents=True, exist_ok=True)
    target = {"name": "appdb", "protocol": "postgres", "upstream": f"{pg.host}:{pg.port}",
              "database": "app", "username": "app", "password_env": PASSWORD_ENV,
              "allow_groups": ["agents"], "upstream_tls": "disable",
              "guardrails": {"deny": [{"kind": "DROP"}]}}  # fmt: skip
    sink = overrides.pop("sink", {"kind": "local"})
    return write_config(tmp, pg, targets=[target], archive=ARCHIVE, durability="buffered",
                        recording={"max_age_ms": args.max_age_ms},
                        sink={**sink, "flush_ms": args.flush_ms}, **overrides)  # fmt: skip


def para(text: str) -> str:
    """A paragraph of the section, wrapped as the rest of RESULTS.md is (not inside `code`)."""
    kept = re.sub(r"`[^`]*`|\d (?:MB|MiB|ms|s)\b", lambda m: m.group().replace(" ", "\0"), text)
    wrapped = textwrap.fill(kept, width=99, break_long_words=False, break_on_hyphens=False)
    return wrapped.replace("\0", " ")


def met(ok: bool) -> str:
    return "met" if ok else "NOT met"


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest rank: defined for any non-empty sample, however small."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)] if ordered else math.nan


def statements_per_s(load: Load, since: float, until: float) -> float:
    done = sum(1 for w in load.workers for _, t in w.completed if since <= t < until)
    return done / max(until - since, 1e-9)


# -- 1. RSS through a Firehose outage ---------------------------------------------------------


@dataclass
class Outage:
    sessions: int
    seconds: float
    cap: int
    ready: int
    idle: int
    healthy: int
    peak_outage: int
    peak_drain: int
    rate_healthy: float
    rate_outage: float
    rate_drain: float
    spooled: int
    drain_s: float | None  # None: not drained within the timeout
    timeline: list[int]  # peak RSS per 5 s from the outage's start
    errors: int

    @property
    def bound(self) -> int:
        return self.healthy + self.cap

    @property
    def met(self) -> bool:
        return max(self.peak_outage, self.peak_drain) <= self.bound


def outage_rss(pg: PgServer, tmp: Path, args: argparse.Namespace) -> Outage:
    table = "bench_faults_outage"
    create_table(pg, table)
    cap = args.max_memory_mib << 20
    spool = tmp / "spool"
    with firehose_behind_proxy() as (firehose, proxy):
        sink = firehose_sink(firehose.stream, str(spool), max_memory_bytes=cap)
        gateway = GatewayProcess(gateway_config(tmp, pg, args, sink=sink), env=gateway_env(proxy))
        rss = RssSampler(gateway, interval=0.25)
        try:
            ready = gateway.rss_bytes() or 0
            token = gateway.token()
            rss.start()
            load = Load([Worker(i, "insert", gateway.dsn(token), table)
                         for i in range(args.sessions)])  # fmt: skip
            load.connect(timeout=120)
            time.sleep(2)
            idle = rss.peak(since=time.monotonic() - 1.0)
            load.go()
            time.sleep(1)  # the load's ramp is not its steady state
            healthy_start = time.monotonic()
            time.sleep(args.healthy_s)
            outage_start = time.monotonic()
            healthy = rss.peak(since=healthy_start, until=outage_start)
            print(f"  Firehose down for {args.outage_s} s ...", flush=True)
            proxy.stop()
            time.sleep(args.outage_s)
            spooled = dir_bytes(spool)
            proxy.start()
            outage_end = time.monotonic()
            drained = poll(lambda: dir_bytes(spool) == 0, timeout=args.drain_timeout_s)
            drained_at = time.monotonic()
            time.sleep(1)
            load.stop()
            gateway.terminate()
        finally:
            rss.stop()
            gateway.ensure_dead()
    return Outage(
        sessions=args.sessions, seconds=outage_end - outage_start, cap=cap, ready=ready,
        idle=idle, healthy=healthy, peak_outage=rss.peak(outage_start, outage_end),
        peak_drain=rss.peak(outage_end, drained_at),
        rate_healthy=statements_per_s(load, healthy_start, outage_start),
        rate_outage=statements_per_s(load, outage_start, outage_end),
        rate_drain=statements_per_s(load, outage_end, drained_at),
        spooled=spooled, drain_s=drained_at - outage_end if drained else None,
        timeline=[rss.peak(outage_start + t, min(outage_start + t + 5, outage_end))
                  for t in range(0, max(1, int(outage_end - outage_start)), 5)],
        errors=len(load.errors()),
    )  # fmt: skip


def render_outage(o: Outage) -> list[str]:
    drain = f"{o.drain_s:.1f} s" if o.drain_s is not None else "not drained"
    return [
        f"### Gateway RSS through a {o.seconds:.0f} s Firehose outage, {o.sessions} sessions",
        "",
        para(
            f"Each session runs INSERTs back to back (`durability: buffered`); the Firehose "
            f"stand-in's proxy is stopped for {o.seconds:.0f} s (open connections reset, new "
            f"ones refused), then started again; `sink.max_memory_bytes` {mib(o.cap)}. RSS "
            "sampled every 0.25 s."
        ),
        "",
        "| phase | gateway RSS | over the baseline | statements/s |",
        "|---|---:|---:|---:|",
        f"| at ready | {mib(o.ready)} | | |",
        f"| {o.sessions} sessions open, idle | {mib(o.idle)} | | |",
        f"| under load, Firehose healthy (the baseline) | {mib(o.healthy)} | | "
        f"{o.rate_healthy:,.0f} |",
        f"| peak during the outage | {mib(o.peak_outage)} | {mib(o.peak_outage - o.healthy)} | "
        f"{o.rate_outage:,.0f} |",
        f"| peak while the spool drains ({drain}) | {mib(o.peak_drain)} | "
        f"{mib(o.peak_drain - o.healthy)} | {o.rate_drain:,.0f} |",
        f"| bound: the baseline + `sink.max_memory_bytes` | {mib(o.bound)} | {mib(o.cap)} | |",
        "",
        para(
            f"Spool at the outage's end: {mib(o.spooled)}; drained {drain} after Firehose came "
            f"back (to the stand-in, which runs in the bench's process). Peak RSS by 5 s from "
            f"the outage's start: {', '.join(f'{b / 2**20:.0f}' for b in o.timeline)} MiB. "
            f"Sessions that ended with an error: {o.errors}."
        ),
        "",
    ]


# -- 2. loss window after kill -9 (buffered) --------------------------------------------------


@dataclass
class KillRun:
    sink: str  # local | firehose
    statements: int  # seen complete by clients before the kill
    unrecorded: int  # of those, on no recorded tape
    window_s: float  # kill - completion of the oldest unrecorded one (0: none)
    held_unrecorded: int  # rows in the database on no tape
    spooled: int = 0  # Firehose: spool bytes at the kill
    drained: bool = True


def loss_window(load: Load, recorded: set[int], killed_at: float) -> tuple[int, float]:
    """(how many statements seen complete are on no tape, the oldest one's age at the kill)."""
    lost = [killed_at - t for w in load.workers for i, t in w.completed
            if t <= killed_at and i not in recorded]  # fmt: skip
    return len(lost), max(lost, default=0.0)


def kill_local(pg: PgServer, tmp: Path, args: argparse.Namespace) -> KillRun:
    table = "bench_faults_kill"
    create_table(pg, table)
    gateway = GatewayProcess(gateway_config(tmp, pg, args))
    try:
        token = gateway.token()
        load = Load([Worker(i, "insert", gateway.dsn(token), table)
                     for i in range(args.kill_sessions)])  # fmt: skip
        load.start()
        time.sleep(args.kill_after_s)
        killed_at = time.monotonic()
        gateway.kill9()
        load.stop()
    finally:
        gateway.ensure_dead()
    records, _ = delivery_records(gateway.data_dir / "deliveries")
    return _kill_result("local", load, records, gateway, killed_at, pg, table)


def kill_firehose(pg: PgServer, tmp: Path, args: argparse.Namespace) -> KillRun:
    table = "bench_faults_kill"
    create_table(pg, table)
    spool = tmp / "spool"
    with firehose_behind_proxy() as (firehose, proxy):
        cap = args.max_memory_mib << 20
        sink = firehose_sink(firehose.stream, str(spool), max_memory_bytes=cap)
        cfg = gateway_config(tmp, pg, args, sink=sink)
        env = gateway_env(proxy)
        gateway = GatewayProcess(cfg, env=env)
        token = gateway.token()
        load = Load([Worker(i, "insert", gateway.dsn(token), table)
                     for i in range(args.kill_sessions)])  # fmt: skip
        killed = kill_during_outage(gateway, load, proxy, cfg, env, spool,
                                    into_outage_s=args.kill_into_outage_s,
                                    drain_timeout_s=args.drain_timeout_s)  # fmt: skip
        records = firehose.delivered_records()
    run = _kill_result("firehose", load, records, gateway, killed.killed_at, pg, table)
    run.spooled, run.drained = killed.spooled, killed.drained
    return run


def _kill_result(sink: str, load: Load, records: list[bytes], gateway: GatewayProcess,
                 killed_at: float, pg: PgServer, table: str) -> KillRun:  # fmt: skip
    sessions = read_tapes(records, gateway.data_dir)
    recorded = ids_in_query_events(sessions.values())
    unrecorded, window = loss_window(load, recorded, killed_at)
    held = ids_in_database(pg, table)
    assert any(s.events for s in sessions.values()), f"{sink}: nothing was recorded"
    return KillRun(sink=sink, statements=len(load.completed_before(killed_at)),
                   unrecorded=unrecorded, window_s=window,
                   held_unrecorded=len(held - recorded))  # fmt: skip


def render_kills(runs: list[KillRun], args: argparse.Namespace) -> list[str]:
    goal_ms = args.max_age_ms + args.flush_ms
    lines = [
        "### Loss window after kill -9, `durability: buffered`",
        "",
        para(
            f"{args.kill_sessions} sessions of INSERTs with unique ids; `recording.max_age_ms` "
            f"{args.max_age_ms}, `sink.flush_ms` {args.flush_ms}. Folder sink: kill -9 after "
            f"{args.kill_after_s:g} s of load. Firehose: the proxy stopped after 2 s of load, "
            f"kill -9 {args.kill_into_outage_s:g} s into the outage, then the proxy started and "
            "`tapegate up` run again on the same spool until it drained. The loss window is the "
            "time of the kill minus the completion time of the oldest statement a client saw "
            "complete whose id is on no recorded tape."
        ),
        "",
        "| sink | run | statements seen complete | of those on no tape | loss window | rows in "
        "the database on no tape | spool at the kill |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for sink in ("local", "firehose"):
        for n, r in enumerate((r for r in runs if r.sink == sink), 1):
            spool = "" if sink == "local" else mib(r.spooled) + ("" if r.drained else ", stuck")
            lines.append(f"| {sink} | {n} | {r.statements:,} | {r.unrecorded:,} | "
                         f"{r.window_s * 1000:,.0f} ms | {r.held_unrecorded:,} | "
                         f"{spool} |")  # fmt: skip
    worst = {sink: max((r.window_s for r in runs if r.sink == sink), default=math.nan)
             for sink in ("local", "firehose")}  # fmt: skip
    lines += ["", para(f"Goal: loss window ≤ max_age_ms + flush_ms = {goal_ms:,} ms; the worst "
                       f"run: folder sink {worst['local'] * 1000:,.0f} ms, Firehose during an "
                       f"outage {worst['firehose'] * 1000:,.0f} ms."), ""]  # fmt: skip
    return lines


# -- 3. a bystander's round trips during a large statement ------------------------------------


@dataclass
class Bystander:
    label: str
    quiet: list[float] = field(default_factory=list)  # round trips, s, before the big ones
    during: list[float] = field(default_factory=list)  # round trips overlapping a big one
    big_s: list[float] = field(default_factory=list)  # how long each big statement took


def send_big(dsn: str, mb: int, repeats: int, quiet_s: float, out: Any) -> None:
    """In a process of its own, so the bystander's client does not share its GIL: the large
    statements, each after a pause; sends back their (start, end) on the shared clock."""
    sql = f"SELECT length('{'x' * (mb * 10**6)}')"
    spans = []
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("SELECT 1")
        time.sleep(quiet_s)
        for _ in range(repeats):
            start = time.monotonic()
            (length,) = conn.execute(sql).fetchone()  # type: ignore[misc]
            spans.append((start, time.monotonic()))
            assert length == mb * 10**6, length
            time.sleep(1)
    out.put(spans)


def bystander(label: str, dsn: str, args: argparse.Namespace) -> Bystander:
    samples: list[tuple[float, float]] = []
    errors: list[BaseException] = []
    stop = threading.Event()

    def loop() -> None:
        try:
            with psycopg.connect(dsn, autocommit=True) as conn:
                for _ in range(200):
                    conn.execute("SELECT 1")
                while not stop.is_set():
                    start = time.monotonic()
                    conn.execute("SELECT 1")
                    samples.append((start, time.monotonic()))
        except psycopg.Error as exc:
            errors.append(exc)

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    quiet_s = 3.0
    sender = ctx.Process(target=send_big, args=(dsn, args.big_mb, args.big_repeats, quiet_s, queue))
    sender.start()
    spans: list[tuple[float, float]] | None = None
    while spans is None and (sender.is_alive() or not queue.empty()):
        with contextlib.suppress(Empty):
            spans = queue.get(timeout=1)
    sender.join(30)
    stop.set()
    thread.join(30)
    if spans is None or errors:
        raise RuntimeError(f"{label}: the large statement failed (exit {sender.exitcode}) or "
                           f"the bystander did: {errors}")  # fmt: skip
    result = Bystander(label, big_s=[end - start for start, end in spans])
    first = spans[0][0]
    for start, end in samples:
        if any(start < b_end and end > b_start for b_start, b_end in spans):
            result.during.append(end - start)
        elif end < first and start > first - quiet_s + 1:
            result.quiet.append(end - start)
    return result


def bystanders(pg: PgServer, tmp: Path, args: argparse.Namespace) -> list[Bystander]:
    print("  directly against PostgreSQL ...", flush=True)
    direct = bystander("directly against PostgreSQL", pg.dsn(user="app", password=APP_PASSWORD),
                       args)  # fmt: skip
    gateway = GatewayProcess(gateway_config(tmp, pg, args))
    try:
        print("  through tapegate ...", flush=True)
        token = gateway.token()
        through = bystander("through tapegate", gateway.dsn(token), args)
        gateway.terminate()
    finally:
        gateway.ensure_dead()
    return [direct, through]


def render_bystanders(results: list[Bystander], args: argparse.Namespace) -> list[str]:
    def ms(values: list[float], q: float | None) -> str:
        if not values:
            return "-"
        return f"{(max(values) if q is None else percentile(values, q)) * 1000:,.2f} ms"

    n = args.big_repeats
    repeats = "once" if n == 1 else f"{n} times, a second apart"
    lines = [
        f"### A bystander's round trips while another session sends a {args.big_mb} MB statement",
        "",
        para(
            f"One session runs `SELECT 1` back to back; another, in its own process, sends "
            f"`SELECT length('<{args.big_mb} MB literal>')` {repeats}. \"During\" is every "
            'round trip that overlaps a large statement; "quiet" the 2 s before the first. '
            "Through tapegate both sessions use TLS and the target has "
            "guardrails, so every statement is named."
        ),
        "",
        "| bystander | round trips | p50 | p99 | max | large statement took |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        took = ", ".join(f"{s:.2f}" for s in r.big_s) + " s"
        lines.append(f"| {r.label}, quiet | {len(r.quiet):,} | {ms(r.quiet, 50)} | "
                     f"{ms(r.quiet, 99)} | {ms(r.quiet, None)} | |")  # fmt: skip
        lines.append(f"| {r.label}, during | {len(r.during):,} | {ms(r.during, 50)} | "
                     f"{ms(r.during, 99)} | {ms(r.during, None)} | {took} |")  # fmt: skip
    return [*lines, ""]


# -- the run ----------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add = p.add_argument
    add("--sessions", type=int, default=100, help="sessions under load in the outage (100)")
    add("--outage-s", type=float, default=30, help="how long Firehose is down (30)")
    add("--healthy-s", type=float, default=5, help="load with Firehose healthy first (5)")
    add("--max-memory-mib", type=int, default=64, help="sink.max_memory_bytes in MiB (64)")
    add("--drain-timeout-s", type=float, default=120, help="longest wait for the spool (120)")
    add("--kill-runs", type=int, default=3, help="kill -9 runs per sink (3)")
    add("--kill-sessions", type=int, default=20, help="sessions under load at the kill (20)")
    add("--kill-after-s", type=float, default=5, help="folder sink: load before the kill (5)")
    add("--kill-into-outage-s", type=float, default=15,
        help="Firehose: kill this long into the outage (15)")  # fmt: skip
    add("--max-age-ms", type=int, default=1000, help="recording.max_age_ms (1000, the default)")
    add("--flush-ms", type=int, default=500, help="sink.flush_ms (500, the default)")
    add("--big-mb", type=int, default=40, help="size of the large statement in MB (40)")
    add("--big-repeats", type=int, default=3, help="large statements per bystander run (3)")
    add("--only", choices=PARTS, action="append", help="run only this part (no write)")
    add("--no-write", action="store_true", help="print, do not write bench/RESULTS.md")
    return p.parse_args(argv)


def main() -> None:
    args = parse_args()
    parts = args.only or list(PARTS)
    print(f"recording.max_age_ms {args.max_age_ms}, sink.flush_ms {args.flush_ms}, "
          f"sink.max_memory_bytes {args.max_memory_mib} MiB", flush=True)  # fmt: skip
    started = time.monotonic()
    tmp = Path(tempfile.mkdtemp(prefix="tapegate-bench-faults-"))
    print(f"working in {tmp} (removed at the end unless a part fails)", flush=True)
    pg = start_postgres(max_connections=max(args.sessions, args.kill_sessions) + 100)
    body: list[str] = []
    goals: list[str] = []
    try:
        if "outage" in parts:
            print(f"outage: {args.sessions} sessions ...", flush=True)
            outage = outage_rss(pg, tmp / "outage", args)
            body += render_outage(outage)
            peak = max(outage.peak_outage, outage.peak_drain)
            goals.append(f"outage peak RSS ≤ the baseline + sink.max_memory_bytes: "
                         f"{met(outage.met)} ({mib(peak)}, bound {mib(outage.bound)})")  # fmt: skip
        if "kill" in parts:
            runs = []
            for n in range(args.kill_runs):
                print(f"kill -9, run {n + 1}: folder sink, then Firehose ...", flush=True)
                runs.append(kill_local(pg, tmp / f"kill-local-{n}", args))
                runs.append(kill_firehose(pg, tmp / f"kill-firehose-{n}", args))
            body += render_kills(runs, args)
            goal = (args.max_age_ms + args.flush_ms) / 1000
            worst = {sink: max(r.window_s for r in runs if r.sink == sink)
                     for sink in ("local", "firehose")}  # fmt: skip
            goals.append(f"loss window ≤ max_age_ms + flush_ms: folder sink "
                         f"{met(worst['local'] <= goal)}, Firehose in an outage "
                         f"{met(worst['firehose'] <= goal)}")  # fmt: skip
        if "bystander" in parts:
            print(f"bystander during {args.big_mb} MB statements ...", flush=True)
            results = bystanders(pg, tmp / "bystander", args)
            body += render_bystanders(results, args)
            p99 = percentile(results[-1].during, 99)
            goals.append(f"bystander p99 < 50 ms during a {args.big_mb} MB statement: "
                         f"{met(p99 < 0.050)} ({p99 * 1000:,.1f} ms)")  # fmt: skip
    finally:
        pg.stop()
    shutil.rmtree(tmp, ignore_errors=True)  # kept when a part failed, for its logs
    elapsed = time.monotonic() - started
    body.append(para(f"Goals: {'; '.join(goals)}."))
    body.append("")
    body.append(f"The run took {elapsed / 60:.1f} minutes.")
    text = "\n".join(body)
    print(text)
    if args.only or args.no_write:
        return
    command = shlex.join([".venv/bin/python", "bench/bench_faults.py", *sys.argv[1:]])
    write_section("faults", "Faults: memory in an outage, loss after kill -9, a large statement",
                  command, text)  # fmt: skip


if __name__ == "__main__":
    main()

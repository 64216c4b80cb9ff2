"""The PostgreSQL gateway against a direct connection and pgbouncer, all in one run.

    .venv/bin/python bench/bench_gateway.py [--seconds 20] [--copy-mb 1024] [--idle 1000]

- pgbench -S -c 8 -j 2 for N seconds: direct, through pgbouncer (session pooling, nothing
  recorded) and through tapegate (recording on), as TPS and ratios;
- added latency per round trip at 1 client (SELECT 1, psycopg), p50 and p99;
- COPY TO STDOUT of about 1 GB to /dev/null with psql, direct and through tapegate, MB/s;
- RSS of the gateway process per idle session, with N sessions open.

The gateway records with the folder sink and without the embedded pipeline, as on Fargate where
the pipeline runs in Lambda; `tapegate up`'s default also indexes on the same cores.

All servers run on this machine: PostgreSQL, pgbouncer, the gateway (`tapegate up` in its own
process) and the clients share its two cores, which is part of what the ratios show.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import yaml

from bench.results import write_section
from gateway_task.devtools.throwaway_pg import APP_PASSWORD, PgServer, free_port, start_postgres

ROOT = Path(__file__).resolve().parent.parent
TAPEGATE = [sys.executable, "-m", "tapegate.cli"]


NOTES = """
Where the time goes (`bench/profile_gateway.py pgbench|copy [--native]`: py-spy on `tapegate up`).
pgbench -S: the machine's two cores are saturated by pgbench, eight backends and the gateway.
With the asyncio.Protocol relay driver about 20% of the gateway's samples sit in the write()
syscall (58% with asyncio streams: on loopback the sender also runs the receiver's TCP
delivery and is preempted by the woken process). The rest is the Python work per round trip:
two frames, a query and a result event as JSON (about 15%), naming the statement on
PostgreSQL's parser for the guardrails (about 10%: 13 µs for a pgbench SELECT), the relay's
message scanning (about 16%), against pgbouncer's few µs in C. The 0.35x-direct goal needs
that work out of Python (events in a binary layout, a C scanner) or a core of its own.
COPY: 55% of the event loop's time is sealing (XChaCha20-Poly1305 29%,
SHA-256 16%, Ed25519 4%), which bounds one session at roughly the seal rate of bench_tape.py,
on a core that PostgreSQL and psql also need. Tried, and kept: moving the local sink's writes
and fsyncs off the event loop (they were 40% of the loop's time in a COPY) and skipping row
messages by length in a tight loop (the general scanner was the next largest cost). Tried, and
dropped: sealing on a thread of its own (both primitives release the GIL). On these two cores,
shared with the client and the server, it did not pay: A/B runs gave pgbench -S about 10% fewer
TPS, scp through the SSH gateway 9% less (bench_ssh_http.py --only scp), and COPY no difference
beyond the noise; with nothing else on the gateway's cores it may. Done: a protocol-based
relay without asyncio streams (0.25x -> 0.31-0.33x pgbouncer's TPS in A/B runs).
"""


def pgbench(host: str, port: int, user: str, password: str, db: str, seconds: int) -> float:
    env = {**os.environ, "PGPASSWORD": password, "PGSSLMODE": "disable"}
    out = subprocess.run(
        ["pgbench", "-S", "-n", "-c", "8", "-j", "2", "-T", str(seconds), "-h", host, "-p",
         str(port), "-U", user, db],
        env=env, capture_output=True, text=True, check=True,
    )  # fmt: skip
    match = re.search(r"tps = ([\d.]+) \(without initial connection time\)", out.stdout)
    assert match, out.stdout
    return float(match.group(1))


def prepare_pgbench(pg: PgServer) -> None:
    """pgbench's tables at scale 10, readable by the app role the targets log in as."""
    env = {**os.environ, "PGPASSWORD": pg.password}
    subprocess.run(["pgbench", "-i", "-q", "-s", "10", "-h", pg.host, "-p", str(pg.port),
                    "-U", pg.superuser, "app"], env=env, check=True,
                   capture_output=True)  # fmt: skip
    pg.psql("GRANT SELECT ON ALL TABLES IN SCHEMA public TO app")


def start_pgbouncer(pg: PgServer, tmp: Path) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    (tmp / "userlist.txt").write_text(f'"app" "{APP_PASSWORD}"\n')
    (tmp / "pgbouncer.ini").write_text(
        f"[databases]\napp = host={pg.host} port={pg.port} dbname=app\n"
        f"[pgbouncer]\nlisten_addr = 127.0.0.1\nlisten_port = {port}\n"
        f"auth_type = scram-sha-256\nauth_file = {tmp}/userlist.txt\npool_mode = session\n"
        "max_client_conn = 200\ndefault_pool_size = 20\nunix_socket_dir =\n"
    )
    for f in tmp.iterdir():
        os.chmod(f, 0o644)
    argv = ["pgbouncer", str(tmp / "pgbouncer.ini")]
    if os.geteuid() == 0:
        argv = ["runuser", "-u", "postgres", "--", *argv]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _wait_port(port)
    return proc, port


def start_tapegate(pg: PgServer, tmp: Path) -> tuple[subprocess.Popen[str], int]:
    path = tmp / "tapegate.yaml"
    if path.exists():  # a restart: same ports, same dev issuer, so tokens stay valid
        port = int(yaml.safe_load(path.read_text())["listen"]["postgres"].rsplit(":", 1)[1])
        return _launch(path, port), port
    port = free_port()
    cfg = {
        "data_dir": str(tmp / "data"),
        "identity": {"issuer": "dev", "dev_listen": f"127.0.0.1:{free_port()}"},
        "listen": {"postgres": f"127.0.0.1:{port}"},
        "tls": "optional",
        # The gateway alone, as on Fargate (the pipeline runs in Lambda there): with the
        # embedded pipeline on, this machine would also index everything it records.
        "archive": {"kind": "local", "embedded_pipeline": False},
        "targets": [{"name": "appdb", "protocol": "postgres", "upstream": f"{pg.host}:{pg.port}",
                     "database": "app", "username": "app", "password_env": "APPDB_PASSWORD",
                     "upstream_tls": "disable", "allow_groups": ["agents"],
                     "guardrails": {"deny": [{"kind": "DROP"}]}}],
    }  # fmt: skip
    path.write_text(yaml.safe_dump(cfg))
    return _launch(path, port), port


def _launch(path: Path, port: int) -> subprocess.Popen[str]:
    env = {**os.environ, "APPDB_PASSWORD": APP_PASSWORD}
    proc = subprocess.Popen([*TAPEGATE, "up", "--config", str(path)], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)  # fmt: skip
    line = proc.stdout.readline() if proc.stdout else ""
    assert "ready" in line and f":{port}" in line, line
    return proc


def tapegate_token(tmp: Path) -> str:
    out = subprocess.run([*TAPEGATE, "token", "--config", str(tmp / "tapegate.yaml"), "--sub",
                          "bench", "--group", "agents", "--ttl", "2h"],
                         capture_output=True, text=True, check=True)  # fmt: skip
    return out.stdout.strip()


def _wait_port(port: int) -> None:
    import socket

    deadline = time.time() + 20
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), 1).close()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"nothing listens on {port}")


def latencies(dsn: str, n: int) -> list[float]:
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as conn:
        for _ in range(200):
            conn.execute("SELECT 1")
        out = []
        for _ in range(n):
            t = time.perf_counter_ns()
            conn.execute("SELECT 1")
            out.append((time.perf_counter_ns() - t) / 1000)
    return out


def copy_rate(host: str, port: int, user: str, password: str, db: str, mb: int) -> float:
    sql = f"COPY (SELECT repeat('x', 1023) FROM generate_series(1, {mb * 1024})) TO STDOUT"
    env = {**os.environ, "PGPASSWORD": password, "PGSSLMODE": "disable"}
    started = time.perf_counter()
    with open(os.devnull, "wb") as sink:
        subprocess.run(["psql", "-X", "-h", host, "-p", str(port), "-U", user, "-d", db, "-c",
                        sql], env=env, stdout=sink, check=True)  # fmt: skip
    return mb * 1024 * 1024 / (time.perf_counter() - started) / 1e6


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


async def hold_sessions(port: int, token: str, n: int, pid: int, tls: bool) -> tuple[int, int]:
    import asyncpg

    before = rss_kib(pid)
    conns = []
    for i in range(0, n, 50):
        conns += await asyncio.gather(
            *(asyncpg.connect(host="127.0.0.1", port=port, user="agent", password=token,
                              database="appdb", ssl="require" if tls else False)
              for _ in range(min(50, n - i)))
        )  # fmt: skip
    await asyncio.gather(*(c.fetchval("SELECT 1") for c in conns))
    await asyncio.sleep(2)  # let chunks seal by age and the sink flush
    after = rss_kib(pid)
    await asyncio.gather(*(c.close() for c in conns))
    return before, after


def naming_us(n: int = 20_000) -> float:
    """Microseconds to name pgbench -S's statement, as the relay does for every Query."""
    import timeit

    from tapegate.protocols.postgres.sql import statement_kinds

    sql = "SELECT abalance FROM pgbench_accounts WHERE aid = 12345;"
    return min(timeit.repeat(lambda: statement_kinds(sql), number=n, repeat=3)) / n * 1e6


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=int, default=20)
    parser.add_argument("--copy-mb", type=int, default=1024)
    parser.add_argument("--idle", type=int, default=1000)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="tapegate-bench-"))
    os.chmod(tmp, 0o755)
    pg = start_postgres(max_connections=args.idle + 100)
    procs: list[subprocess.Popen] = []
    try:
        prepare_pgbench(pg)
        bouncer, bouncer_port = start_pgbouncer(pg, tmp)
        procs.append(bouncer)
        gate, gate_port = start_tapegate(pg, tmp)
        procs.append(gate)
        token = tapegate_token(tmp)

        print("pgbench -S ...", flush=True)
        tps_direct = pgbench(pg.host, pg.port, "app", APP_PASSWORD, "app", args.seconds)
        tps_bouncer = pgbench("127.0.0.1", bouncer_port, "app", APP_PASSWORD, "app", args.seconds)
        tps_gate = pgbench("127.0.0.1", gate_port, "agent", token, "appdb", args.seconds)

        print("latency ...", flush=True)
        direct_dsn = pg.dsn(user="app", password=APP_PASSWORD)
        gate_dsn = (f"host=127.0.0.1 port={gate_port} dbname=appdb user=agent "
                    f"password={token} sslmode=disable")  # fmt: skip
        lat_direct = latencies(direct_dsn, 3000)
        lat_gate = latencies(gate_dsn, 3000)

        print("COPY ...", flush=True)
        copy_direct = copy_rate(pg.host, pg.port, "app", APP_PASSWORD, "app", args.copy_mb)
        copy_gate = copy_rate("127.0.0.1", gate_port, "agent", token, "appdb", args.copy_mb)

        print("idle sessions ...", flush=True)
        # A fresh gateway process, so that memory freed by the runs above is not reused.
        gate.send_signal(signal.SIGTERM)
        gate.wait(30)
        gate, gate_port = start_tapegate(pg, tmp)
        procs.append(gate)
        before, after = asyncio.run(hold_sessions(gate_port, token, args.idle, gate.pid, True))
        per_session_tls = (after - before) / args.idle
    finally:
        for proc in procs:
            if proc.poll() is not None:
                continue
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
        pg.stop()

    def pct(values: list[float], q: float) -> float:
        return statistics.quantiles(values, n=100)[int(q) - 1]

    p50d, p99d, p50g, p99g = (pct(lat_direct, 50), pct(lat_direct, 99), pct(lat_gate, 50),
                              pct(lat_gate, 99))  # fmt: skip
    lines = [
        "| measure | direct | pgbouncer | tapegate | tapegate / direct | tapegate / pgbouncer |",
        "|---|---:|---:|---:|---:|---:|",
        f"| pgbench -S -c 8 -j 2, {args.seconds} s (TPS) | {tps_direct:,.0f} | {tps_bouncer:,.0f} "
        f"| {tps_gate:,.0f} | {tps_gate / tps_direct:.2f} | {tps_gate / tps_bouncer:.2f} |",
        f"| COPY TO STDOUT {args.copy_mb} MiB (MB/s) | {copy_direct:,.0f} | | {copy_gate:,.0f} "
        f"| {copy_gate / copy_direct:.2f} | |",
        "",
        f"Round trip at 1 client (SELECT 1, psycopg, 3000 samples): direct p50 {p50d:.0f} µs, "
        f"p99 {p99d:.0f} µs; through tapegate p50 {p50g:.0f} µs, p99 {p99g:.0f} µs; added "
        f"p50 {p50g - p50d:.0f} µs, p99 {p99g - p99d:.0f} µs.",
        "",
        f"Statement naming for the guardrails (tapegate/protocols/postgres/sql.py, PostgreSQL's "
        f"parser via pglast), one core: {naming_us():.1f} µs per pgbench SELECT.",
        "",
        f"Gateway RSS per idle session (fresh `tapegate up` process, {args.idle} TLS sessions "
        f"opened, one query each, then idle): {per_session_tls:.1f} KiB "
        f"({before:,} → {after:,} KiB).",
        "",
        f"Goals: TPS ≥ pgbouncer's: {'met' if tps_gate >= tps_bouncer else 'NOT met'}; "
        f"bulk ≥ 0.8x direct: {'met' if copy_gate >= 0.8 * copy_direct else 'NOT met'}; "
        f"≤ 64 KiB per idle session: {'met' if per_session_tls <= 64 else 'NOT met'}.",
        NOTES,
    ]
    table = "\n".join(lines)
    print(table)
    if not args.no_write:
        write_section("gateway", "PostgreSQL gateway vs direct and pgbouncer",
                      ".venv/bin/python bench/bench_gateway.py", table)  # fmt: skip


if __name__ == "__main__":
    main()

"""Real clients through the gateway behave as if connected directly, and every session verifies."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time

import asyncpg
import psycopg
import pytest

from tests.gateway_harness import RunningGateway
from tests.pg import PgServer


def _events(gw: RunningGateway, sid: str | None = None) -> list[dict]:
    from tapegate.tape import decode_record

    out = []
    for session_id, records in gw.sessions().items():
        if sid and session_id != sid:
            continue
        for rec in sorted((decode_record(r) for r in records), key=lambda r: r.seq):
            out += rec.meta["events"]
    return out


def _all_intact(gw: RunningGateway) -> None:
    verdicts = gw.verdicts()
    assert verdicts, "nothing was recorded"
    for sid, verdict in verdicts.items():
        assert verdict.intact, (sid, [str(p) for p in verdict.problems])


def test_psql_simple_and_multi_statement(gw: RunningGateway) -> None:
    out = gw.psql(gw.token(), "SELECT 40 + 2; SELECT 'a' || 'b'")
    assert out.stdout.split() == ["42", "ab"], out.stderr
    _all_intact(gw)
    events = _events(gw)
    types = [e["type"] for e in events]
    assert types[:2] == ["startup", "auth"]
    assert any(e["type"] == "query" and "40 + 2" in e["attrs"]["sql"] for e in events)
    results = [e["attrs"] for e in events if e["type"] == "result"]
    assert [r["tag"] for r in results] == ["SELECT 1", "SELECT 1"]
    assert results[0]["rows"] == 1 and results[0]["columns"] == ["?column?"]
    assert all(r["duration_ns"] >= 0 for r in results)
    (auth,) = [e for e in events if e["type"] == "auth"]
    assert auth["attrs"]["subject"] == "agent-7" and auth["attrs"]["result"] == "ok"


def test_psycopg_extended_protocol_transactions_and_errors(gw: RunningGateway) -> None:
    with psycopg.connect(gw.dsn(gw.token()), autocommit=False) as conn:
        conn.execute("CREATE TEMP TABLE t (id int primary key, name text)")
        conn.execute("INSERT INTO t VALUES (%s, %s), (%s, %s)", (1, "one", 2, "two"))
        with conn.cursor() as cur:
            cur.execute("SELECT name FROM t WHERE id = %s", (2,), prepare=True)
            assert cur.fetchone() == ("two",)
            cur.execute("SELECT name FROM t WHERE id = %s", (1,), prepare=True)
            assert cur.fetchone() == ("one",)
        conn.commit()
        conn.execute("INSERT INTO t VALUES (%s::int, %s)", ("3", "three"))
        conn.rollback()
        assert conn.execute("SELECT count(*) FROM t").fetchone() == (2,)
        with pytest.raises(psycopg.errors.DivisionByZero):
            conn.execute("SELECT 1 / 0")
        conn.rollback()
        assert conn.execute("SELECT 'still usable'").fetchone() == ("still usable",)
        # binary parameters
        with conn.cursor(binary=True) as cur:
            cur.execute("SELECT %b::bytea", (b"\x00\x01\xff",))
            assert cur.fetchone() == (b"\x00\x01\xff",)
    _all_intact(gw)
    events = _events(gw)
    binds = [e["attrs"] for e in events if e["type"] == "bind"]
    # psycopg sends ints in binary (int2 here) and strs as text
    assert any(b["params"] == [{"binary": "0002", "length": 2}] for b in binds)
    assert any(b["params"] == ["3", "three"] for b in binds)
    assert any(
        isinstance(p, dict) and p.get("binary") == "0001ff" for b in binds for p in b["params"]
    )
    errors = [e["attrs"] for e in events if e["type"] == "error"]
    assert any(e["sqlstate"] == "22012" for e in errors)
    parses = [e["attrs"]["sql"] for e in events if e["type"] == "parse"]
    assert any("WHERE id = $1" in sql for sql in parses)


def test_pipeline_mode(gw: RunningGateway) -> None:
    with psycopg.connect(gw.dsn(gw.token()), autocommit=True) as conn, conn.pipeline():
        curs = [conn.execute("SELECT %s::int * 2", (i,)) for i in range(20)]
        assert [c.fetchone()[0] for c in curs] == [i * 2 for i in range(20)]
    _all_intact(gw)


def test_copy_in_and_out(gw: RunningGateway) -> None:
    rows = [(i, f"name-{i}") for i in range(5000)]
    with psycopg.connect(gw.dsn(gw.token()), autocommit=True) as conn:
        conn.execute("CREATE TEMP TABLE c (id int, name text)")
        with conn.cursor().copy("COPY c FROM STDIN") as copy:
            for row in rows:
                copy.write_row(row)
        assert conn.execute("SELECT count(*), sum(id) FROM c").fetchone() == (
            5000,
            sum(range(5000)),
        )
        out = bytearray()
        with conn.cursor().copy("COPY c TO STDOUT") as copy:
            for data in copy:
                out += data
        assert out.count(b"\n") == 5000 and b"4999\tname-4999\n" in out
    _all_intact(gw)
    events = _events(gw)
    copies = [e["attrs"]["direction"] for e in events if e["type"] == "copy"]
    assert copies == ["in", "out"]
    tags = [e["attrs"]["tag"] for e in events if e["type"] == "result"]
    assert "COPY 5000" in tags
    out_result = [
        e["attrs"] for e in events if e["type"] == "result" and e["attrs"]["tag"] == "COPY 5000"
    ]
    assert out_result[-1]["rows"] == 5000  # CopyData messages counted as rows


def test_large_result_streams(gw: RunningGateway) -> None:
    with psycopg.connect(gw.dsn(gw.token())) as conn:
        (blob,) = conn.execute("SELECT repeat('x', 50 * 1024 * 1024)").fetchone()
        assert len(blob) == 50 * 1024 * 1024
        rows = conn.execute(
            "SELECT g, repeat('y', 1000) FROM generate_series(1, 20000) g"
        ).fetchall()
        assert len(rows) == 20000
    _all_intact(gw)


def test_notices_and_listen_notify(gw: RunningGateway) -> None:
    notices: list[str] = []
    with (
        psycopg.connect(gw.dsn(gw.token()), autocommit=True) as listener,
        psycopg.connect(gw.dsn(gw.token()), autocommit=True) as sender,
    ):
        listener.add_notice_handler(lambda d: notices.append(d.message_primary))
        listener.execute("DO $$ BEGIN RAISE NOTICE 'hello from plpgsql'; END $$")
        listener.execute("LISTEN jobs")
        sender.execute("NOTIFY jobs, 'payload-1'")
        got = next(listener.notifies(timeout=5))
        assert (got.channel, got.payload) == ("jobs", "payload-1")
    assert notices == ["hello from plpgsql"]
    _all_intact(gw)
    events = _events(gw)
    assert any(
        e["type"] == "notice" and e["attrs"]["message"] == "hello from plpgsql" for e in events
    )
    assert any(e["type"] == "notification" and e["attrs"]["payload"] == "payload-1" for e in events)


def test_asyncpg_prepared_and_cancel(gw: RunningGateway) -> None:
    async def scenario() -> None:
        conn = await asyncpg.connect(
            host=gw.host, port=gw.port, user="agent", password=gw.token(), database="appdb",
            ssl="require",
        )  # fmt: skip
        try:
            stmt = await conn.prepare("SELECT $1::int + $2::int")
            assert await stmt.fetchval(2, 3) == 5
            started = time.monotonic()
            with pytest.raises(asyncio.TimeoutError):
                await conn.fetchval("SELECT pg_sleep(30)", timeout=0.5)
            assert time.monotonic() - started < 10, "the cancel must reach the upstream"
            assert await conn.fetchval("SELECT 'after cancel'") == "after cancel"
        finally:
            await conn.close()

    asyncio.run(scenario())
    _all_intact(gw)
    events = _events(gw)
    assert any(e["type"] == "cancel_request" for e in events)
    assert any(e["type"] == "error" and e["attrs"]["sqlstate"] == "57014" for e in events)


def test_psql_ctrl_c_cancels(gw: RunningGateway) -> None:
    env = {**os.environ, "PGPASSWORD": gw.token(), "PGSSLMODE": "require"}
    proc = subprocess.Popen(
        ["psql", "-X", "-h", gw.host, "-p", str(gw.port), "-U", "agent", "-d", "appdb",
         "-c", "SELECT pg_sleep(30)"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    time.sleep(1.5)
    started = time.monotonic()
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=15)
    assert time.monotonic() - started < 10
    assert "canceling statement due to user request" in err


def test_hundred_concurrent_sessions(gw: RunningGateway) -> None:
    token = gw.token()

    async def one(i: int) -> int:
        conn = await asyncpg.connect(host=gw.host, port=gw.port, user="agent", password=token,
                                     database="appdb", ssl="require")  # fmt: skip
        try:
            return await conn.fetchval("SELECT $1::int", i)
        finally:
            await conn.close()

    async def all_of_them() -> list[int]:
        return await asyncio.gather(*(one(i) for i in range(100)))

    assert asyncio.run(all_of_them()) == list(range(100))
    verdicts = gw.verdicts()
    assert len(verdicts) == 100 and all(v.intact for v in verdicts.values())


def test_upstream_md5_and_cleartext_logins(gw: RunningGateway) -> None:
    for target in ("appdb_md5", "appdb_plain"):
        out = gw.psql(gw.token(), "SELECT current_user", target=target)
        assert out.stdout.strip() == target.replace("appdb", "app"), out.stderr


def test_upstream_tls_verify_full(gw: RunningGateway) -> None:
    out = gw.psql(gw.token(), "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
                  target="appdb_tls")  # fmt: skip
    assert out.stdout.strip() == "t", out.stderr
    plain = gw.psql(gw.token(), "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
    assert plain.stdout.strip() == "f"


@pytest.mark.slow
def test_pgbench_select_only(gw: RunningGateway, pg: PgServer) -> None:
    env = {**os.environ, "PGPASSWORD": pg.password}
    subprocess.run(["pgbench", "-i", "-q", "-s", "1", "-h", pg.host, "-p", str(pg.port), "-U",
                    pg.superuser, "app"], env=env, check=True, capture_output=True)  # fmt: skip
    pg.psql("GRANT SELECT ON ALL TABLES IN SCHEMA public TO app")
    env = {**os.environ, "PGPASSWORD": gw.token(), "PGSSLMODE": "require"}
    out = subprocess.run(
        ["pgbench", "-S", "-c", "4", "-j", "2", "-t", "200", "-h", gw.host, "-p", str(gw.port),
         "-U", "agent", "appdb"],
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "number of transactions actually processed: 800/800" in out.stdout
    _all_intact(gw)


def test_client_startup_parameters_reach_the_upstream(gw: RunningGateway) -> None:
    dsn = gw.dsn(gw.token(), options="'-c search_path=audit,public -c statement_timeout=1234'")
    with psycopg.connect(dsn) as conn:
        assert conn.execute("SHOW search_path").fetchone() == ("audit,public",)
        assert conn.execute("SHOW statement_timeout").fetchone() == ("1234ms",)
        assert conn.execute("SELECT current_user").fetchone() == ("app",), "the target's role"

"""Denied statements never reach the upstream, get 42501, are recorded, and the session goes on."""

from __future__ import annotations

import psycopg
import pytest

from tests.gateway_harness import RunningGateway
from tests.pg import PgServer


@pytest.fixture
def tables(pg: PgServer) -> None:
    pg.psql("DROP TABLE IF EXISTS keepme, audit_log")
    pg.psql("CREATE TABLE keepme (id int); CREATE TABLE audit_log (id int); "
            "INSERT INTO audit_log VALUES (1), (2); "
            "GRANT ALL ON keepme, audit_log TO app")  # fmt: skip


def _blocked_events(gw: RunningGateway) -> list[dict]:
    from tapegate.tape import decode_record

    return [
        e["attrs"]
        for r in gw.delivered_records()
        for e in decode_record(r).meta["events"]
        if e["type"] == "blocked"
    ]


def test_simple_query_denied_by_kind(gw: RunningGateway, pg: PgServer, tables: None) -> None:
    with psycopg.connect(gw.dsn(gw.token()), autocommit=True) as conn:
        with pytest.raises(psycopg.errors.InsufficientPrivilege) as exc:
            conn.execute("DROP TABLE keepme")
        assert "blocked by tapegate guardrail (kind DROP)" in str(exc.value)
        # Two statements in one Query: the whole message is denied, the SELECT does not run.
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("INSERT INTO keepme VALUES (1); drop table keepme")
        assert conn.execute("SELECT 'session still usable'").fetchone() == ("session still usable",)
    assert pg.psql("SELECT count(*) FROM keepme") == "0"
    blocked = _blocked_events(gw)
    assert [b["rule"] for b in blocked] == ["kind DROP", "kind DROP"]
    assert blocked[0]["sql"] == "DROP TABLE keepme"


def test_extended_protocol_denied_by_regex(gw: RunningGateway, pg: PgServer, tables: None) -> None:
    with psycopg.connect(gw.dsn(gw.token())) as conn:
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("DELETE FROM audit_log WHERE id = %s", (1,))
        conn.rollback()
        assert conn.execute("SELECT count(*) FROM audit_log WHERE id > %s", (0,)).fetchone() == (2,)
    assert pg.psql("SELECT count(*) FROM audit_log") == "2"
    assert _blocked_events(gw)[0]["rule"].startswith("regex")


def test_denial_inside_a_transaction_keeps_upstream_state(gw: RunningGateway, tables: None) -> None:
    with psycopg.connect(gw.dsn(gw.token())) as conn:
        conn.execute("INSERT INTO keepme VALUES (7)")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("ALTER ROLE app SUPERUSER")
        # The upstream never saw the statement, so its transaction is still good.
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.INTRANS
        assert conn.execute("SELECT count(*) FROM keepme").fetchone() == (1,)
        conn.rollback()


def test_denial_in_a_pipeline_keeps_order(gw: RunningGateway, tables: None) -> None:
    with psycopg.connect(gw.dsn(gw.token()), autocommit=True) as conn:
        with conn.pipeline() as p:
            first = conn.execute("SELECT %s::int", (1,))
            p.sync()
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute("DROP TABLE keepme")
                p.sync()
        assert first.fetchone() == (1,)
        assert conn.execute("SELECT %s::text", ("after",)).fetchone() == ("after",)


def test_asyncpg_prepare_of_a_denied_statement(gw: RunningGateway, tables: None) -> None:
    import asyncio

    import asyncpg

    async def scenario() -> None:
        conn = await asyncpg.connect(
            host=gw.host,
            port=gw.port,
            user="agent",
            password=gw.token(),
            database="appdb",
            ssl="require",
        )
        try:
            with pytest.raises(asyncpg.InsufficientPrivilegeError, match="guardrail"):
                await asyncio.wait_for(conn.prepare("DROP TABLE keepme"), 10)
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await asyncio.wait_for(conn.execute("DROP TABLE keepme"), 10)
            assert await conn.fetchval("SELECT count(*) FROM keepme") == 0
        finally:
            await conn.close()

    asyncio.run(scenario())

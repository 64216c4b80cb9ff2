"""A permanent Firehose error (the stream does not exist: moto answers ResourceNotFoundException)
fails fast and loudly: /readyz turns 503 with the reason, and new sessions are refused with
58030, instead of the sink retrying and spooling until the spool is full."""

from __future__ import annotations

import asyncio
import subprocess
import time
from pathlib import Path

import asyncpg
import psycopg
import pytest

from tests.faults.firehose import firehose_behind_proxy, firehose_sink, gateway_env
from tests.faults.harness import GatewayProcess, write_config
from tests.pg import PgServer

MISSING_STREAM = "tapegate-fault-no-such-stream"
DEADLINE_S = 45  # generous: the point is that it happens, not how fast on a loaded machine


def _run_session(dsn: str) -> str | None:
    """One short session through the gateway (its chunks are what the sink tries to send).
    None when it ran, else why not."""
    try:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("SELECT 1")
        return None
    except psycopg.Error as exc:
        return str(exc).strip()[:200]


def _refusal(gateway: GatewayProcess, token: str) -> str | None:
    """The SQLSTATE a new session is refused with, None when admitted. asyncpg, because it
    reads the server's ErrorResponse itself and keeps its code (libpq-based clients turn a
    startup refusal into a message without one)."""
    host, port = gateway.address("postgres")

    async def attempt() -> str | None:
        try:
            conn = await asyncpg.connect(host=host, port=port, user="agent", password=token,
                                         database="appdb", ssl="require", timeout=10)  # fmt: skip
        except asyncpg.PostgresError as exc:
            return str(exc.sqlstate)
        await conn.close()
        return None

    return asyncio.run(attempt())


@pytest.mark.slow
def test_missing_stream_turns_not_ready_and_refuses_sessions(tmp_path: Path, pg: PgServer) -> None:
    with firehose_behind_proxy() as (_firehose, proxy):
        sink = firehose_sink(MISSING_STREAM, str(tmp_path / "spool"))
        cfg = write_config(tmp_path, pg, sink=sink)
        gateway = GatewayProcess(cfg, env=gateway_env(proxy))
        try:
            token = gateway.token()
            started = time.monotonic()
            ready: tuple[int, str] = (200, "")
            sessions: list[str | None] = []  # each attempt's failure, None when it ran
            refused_with: str | None = None
            deadline = started + DEADLINE_S
            while time.monotonic() < deadline:
                ready = gateway.get("/readyz")
                if ready[0] == 503:
                    refused_with = _refusal(gateway, token)
                    break
                sessions.append(_run_session(gateway.dsn(token)))
                time.sleep(0.5)
            elapsed = time.monotonic() - started
            metrics = gateway.get("/metrics")[1]
            stop_started = time.monotonic()
            try:
                rc: int | str = gateway.terminate(timeout=20)
            except subprocess.TimeoutExpired:
                rc = "none within 20 s of SIGTERM"
            stop_s = time.monotonic() - stop_started
        finally:
            gateway.ensure_dead()
    named = sum("ResourceNotFound" in line for line in gateway.stderr().splitlines())
    sink_metrics = [ln for ln in metrics.splitlines() if not ln.startswith("#") and "sink" in ln]
    spool = sorted(p.name for p in (tmp_path / "spool").glob("*"))
    print(
        f"\n/readyz {ready[0]} {ready[1].strip()!r} after {elapsed:.1f} s and {len(sessions)} "
        f"sessions (outcomes: {sorted({str(s) for s in sessions})}); new session refused with "
        f"{refused_with}; spool files {len(spool)}; exit {rc} after {stop_s:.1f} s; "
        f"log lines naming the error: {named}; sink metrics: {sink_metrics}"
    )

    # No assertion that sessions ran first: a sink that checks the stream at start may be right
    # to refuse the very first one.
    assert ready[0] == 503, f"/readyz still {ready[0]} after {DEADLINE_S} s of a missing stream"
    reason = ready[1]
    assert MISSING_STREAM in reason or "ResourceNotFound" in reason, reason
    assert "spool is full" not in reason, f"it spooled until full instead of failing fast: {reason}"
    assert refused_with == "58030", f"a new session got {refused_with}, not 58030"

"""kill -9 in the middle of a Firehose outage (buffered), then `tapegate up` again on the same
data dir and spool with Firehose back: every statement a client saw complete more than
recording.max_age_ms + 1 s before the crash is on a delivered tape."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.faults.firehose import firehose_behind_proxy, firehose_sink, gateway_env
from tests.faults.harness import (
    GatewayExited,
    GatewayProcess,
    Load,
    Worker,
    create_table,
    ids_in_database,
    ids_in_query_events,
    kill_during_outage,
    read_tapes,
    write_config,
)
from tests.pg import PgServer

TABLE = "fault_firehose_outage_kill"
SESSIONS = 20
MAX_AGE_MS = 500
MAX_MEMORY = 8 * 2**20


@pytest.mark.slow
def test_kill9_during_firehose_outage_loses_only_the_last_moments(
    tmp_path: Path, pg: PgServer
) -> None:
    create_table(pg, TABLE)
    spool = tmp_path / "spool"
    with firehose_behind_proxy() as (firehose, proxy):
        sink = firehose_sink(firehose.stream, str(spool), max_memory_bytes=MAX_MEMORY)
        cfg = write_config(tmp_path, pg, sink=sink, durability="buffered",
                           recording={"max_age_ms": MAX_AGE_MS})  # fmt: skip
        env = gateway_env(proxy)
        try:
            gateway = GatewayProcess(cfg, env=env)
        except GatewayExited as exc:
            pytest.fail(f"tapegate up refused the config: {exc.stderr.strip()[-300:]}")
        token = gateway.token()
        load = Load([Worker(i, "insert", gateway.dsn(token), TABLE) for i in range(SESSIONS)])
        run = kill_during_outage(
            gateway, load, proxy, cfg, env, spool, into_outage_s=15, drain_timeout_s=60
        )  # half of a 30 s outage
        spooled, killed_at, drained, rc = run.spooled, run.killed_at, run.drained, run.rc
        records = firehose.delivered_records()
    (tmp_path / "delivered.bin").write_bytes(b"".join(records))  # for a post-mortem

    held = ids_in_database(pg, TABLE)
    sessions = read_tapes(records, gateway.data_dir)
    recorded = ids_in_query_events(sessions.values())
    window_s = MAX_AGE_MS / 1000 + 1
    promised = load.completed_before(killed_at - window_s)
    lost = promised - recorded
    completion = {i: t for w in load.workers for i, t in w.completed}
    oldest_lost = max((killed_at - completion[i] for i in lost), default=0.0)
    # The loss window measured: how far before the kill the oldest unrecorded statement was seen.
    window = max((killed_at - t for i, t in completion.items() if i not in recorded), default=0.0)
    print(
        f"\n{load.statements} statements seen complete, {len(held)} rows held; "
        f"{len(promised)} completed more than {window_s:.1f} s before the kill, {len(lost)} of "
        f"them lost ({100 * len(lost) / max(1, len(promised)):.0f}%), the oldest "
        f"{oldest_lost:.1f} s before the kill; all unrecorded rows: {len(held - recorded)}, "
        f"seen complete up to {window:.2f} s before the kill; "
        f"spool at the kill {spooled} bytes, drained after restart: {bool(drained)}, exit {rc}; "
        f"{len(records)} records, {len(sessions)} sessions"
    )

    assert len([s for s in sessions.values() if s.events]) >= SESSIONS, "sessions were recorded"
    assert promised, "clients completed statements before the window"
    assert not lost, (
        f"{len(lost)} of {len(promised)} statements seen complete more than {window_s:.1f} s "
        f"before the kill are on no delivered tape (the oldest {oldest_lost:.1f} s before)"
    )
    broken = {sid: s.verdict.problems for sid, s in sessions.items() if not s.prefix_verified}
    assert not broken, f"sessions whose delivered prefix does not verify: {broken}"
    assert drained and rc == 0

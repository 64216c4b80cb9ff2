"""A 30 s Firehose outage under 20 sessions (buffered): the outage costs at most
sink.max_memory_bytes plus a fixed overhead of RSS, the spool drains, and every session
delivered is complete or truncated with its prefix verified.

The bound: the gateway's RSS under the same load with Firehose healthy (measured in the same
run, before the outage), plus the cap, plus what botocore's encoding of the PutRecordBatch calls
in flight can hold (IN_FLIGHT_BYTES_MAX: a fixed figure, whatever the outage's length). Idle RSS
is reported beside it; the load alone takes more than the cap above idle.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from gateway_task.recording.firehose import IN_FLIGHT_BYTES_MAX
from tests.faults.firehose import firehose_behind_proxy, firehose_sink, gateway_env
from tests.faults.harness import (
    GatewayExited,
    GatewayProcess,
    Load,
    RssSampler,
    Worker,
    create_table,
    dir_bytes,
    ids_in_database,
    ids_in_query_events,
    mib,
    poll,
    read_tapes,
    write_config,
)
from tests.pg import PgServer

TABLE = "fault_firehose_outage"
SESSIONS = 20
OUTAGE_S = 30
MAX_MEMORY = 8 * 2**20


@pytest.mark.slow
def test_firehose_outage_bounds_memory_and_loses_nothing(tmp_path: Path, pg: PgServer) -> None:
    create_table(pg, TABLE)
    spool = tmp_path / "spool"
    with firehose_behind_proxy() as (firehose, proxy):
        sink = firehose_sink(firehose.stream, str(spool), max_memory_bytes=MAX_MEMORY)
        cfg = write_config(tmp_path, pg, sink=sink, durability="buffered")
        try:
            gateway = GatewayProcess(cfg, env=gateway_env(proxy))
        except GatewayExited as exc:
            pytest.fail(f"tapegate up refused the config: {exc.stderr.strip()[-300:]}")
        rss = RssSampler(gateway)
        try:
            bare = gateway.rss_bytes() or 0
            token = gateway.token()
            rss.start()
            load = Load([Worker(i, "insert", gateway.dsn(token), TABLE) for i in range(SESSIONS)])
            load.connect()  # every session open and idle
            time.sleep(1.5)
            idle = rss.peak(since=time.monotonic() - 1.0)
            load.go()
            time.sleep(3)
            healthy = rss.peak(since=time.monotonic() - 3.0)
            before_outage = load.statements
            proxy.stop()
            outage_start = time.monotonic()
            time.sleep(OUTAGE_S)
            during = load.statements - before_outage
            spooled = dir_bytes(spool)
            proxy.start()
            outage_end = time.monotonic()
            # Let the sessions go on while the spool drains, then end them as clients do.
            drained = poll(lambda: dir_bytes(spool) == 0, timeout=30)
            time.sleep(3)
            load.stop()
            rc = gateway.terminate()
        finally:
            rss.stop()
            gateway.ensure_dead()
        peak = rss.peak(since=outage_start, until=outage_end + 5)
        # Every 5 s from the outage's start: a plateau and a steady climb call for different fixes.
        timeline = [mib(rss.peak(outage_start + t, outage_start + t + 5)) for t in range(0, 40, 5)]
        records = firehose.delivered_records()
    (tmp_path / "delivered.bin").write_bytes(b"".join(records))  # for a post-mortem

    held = ids_in_database(pg, TABLE)
    sessions = read_tapes(records, gateway.data_dir)
    with_load = [s for s in sessions.values() if s.events]
    intact = sum(1 for s in sessions.values() if s.verdict.intact)
    unrecorded = held - ids_in_query_events(sessions.values())
    leftover = sorted(p.name for p in spool.iterdir()) if spool.exists() else []
    print(
        f"\nRSS at ready {mib(bare)}, idle with {SESSIONS} sessions {mib(idle)}, "
        f"under load {mib(healthy)}, peak in the {OUTAGE_S} s outage {mib(peak)} "
        f"(bound: load + cap + in flight = {mib(healthy + MAX_MEMORY + IN_FLIGHT_BYTES_MAX)}), "
        f"by 5 s: "
        f"{' '.join(timeline)}; "
        f"statements: {before_outage} before, {during} during the outage, {load.statements} "
        f"in all; spool at the outage's end {mib(spooled)}, drained: {bool(drained)}, "
        f"left: {leftover}; exit {rc}; {len(records)} records, {len(sessions)} sessions "
        f"({intact} intact); unrecorded ids {len(unrecorded)}; client errors: {load.errors()}"
    )

    assert len(with_load) >= SESSIONS, "the load's sessions were delivered"
    not_verified = {sid: s.verdict.problems for sid, s in sessions.items() if not s.prefix_verified}
    assert not not_verified, f"sessions neither complete nor a verified prefix: {not_verified}"
    assert peak <= healthy + MAX_MEMORY + IN_FLIGHT_BYTES_MAX, (
        f"RSS peaked at {mib(peak)} during the outage: more than sink.max_memory_bytes "
        f"({mib(MAX_MEMORY)}) and the calls in flight ({mib(IN_FLIGHT_BYTES_MAX)}) over the "
        f"same load with Firehose healthy ({mib(healthy)})"
    )
    assert not leftover, f"the spool did not drain: {leftover}"
    assert rc == 0
    assert not unrecorded, f"{len(unrecorded)} ids in the database are on no tape"

"""kill -9 under a multi-session load in `durability: acked`: every row the database holds must
be on a tape, including rows that came in by COPY (CopyData makes no event, only frames)."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import pytest

from tests.faults.harness import (
    GatewayProcess,
    Load,
    Worker,
    create_table,
    delivery_records,
    ids_in_copy_data,
    ids_in_database,
    ids_in_query_events,
    read_tapes,
    write_config,
)
from tests.pg import PgServer

TABLE = "fault_kill_acked"
WORKERS = 8  # half INSERT, half COPY


@pytest.mark.slow
def test_kill9_in_acked_loses_no_row_the_database_holds(tmp_path: Path, pg: PgServer) -> None:
    create_table(pg, TABLE)
    # Small chunks, so that each COPY batch (32 KiB, see Worker.copy_data) fills two of them by
    # size alone: that is where acked must hold each chunk before its bytes go on.
    cfg = write_config(tmp_path, pg, durability="acked", recording={"max_chunk_bytes": 16384})
    gateway = GatewayProcess(cfg)
    try:
        token = gateway.token()
        workers = [
            Worker(i, "insert" if i % 2 == 0 else "copy", gateway.dsn(token), TABLE)
            for i in range(WORKERS)
        ]
        # The crash lands the moment a client sees a COPY complete (after ~3 s of load): the
        # adversarial instant, when that COPY's last chunk is least likely to be on disk yet.
        armed, killed, lock = threading.Event(), threading.Event(), threading.Lock()

        def crash() -> None:
            with lock:
                if armed.is_set() and not killed.is_set():
                    os.kill(gateway.pid, signal.SIGKILL)
                    killed.set()

        for w in workers:
            w.after_copy = crash
        load = Load(workers)
        load.start()
        time.sleep(3)
        armed.set()
        if not killed.wait(5):  # no COPY completed: crash anyway
            crash()
        gateway.proc.wait(10)
        completed = load.statements
        load.stop()
    finally:
        gateway.ensure_dead()

    held = ids_in_database(pg, TABLE)
    records, damage = delivery_records(gateway.data_dir / "deliveries")
    sessions = read_tapes(records, gateway.data_dir)
    with_load = [s for s in sessions.values() if s.events]
    in_queries = ids_in_query_events(sessions.values())
    in_copies = ids_in_copy_data(sessions.values())
    missing_inserts = {i for i in held if load.kind_of(i) == "insert"} - in_queries
    missing_copied = {i for i in held if load.kind_of(i) == "copy"} - in_copies
    # A cross-check of the parsing above: ids that turn up anywhere in the recorded bytes.
    raw = b"".join(s.c2s for s in sessions.values())
    in_raw = {i for i in missing_inserts | missing_copied if str(i).encode() in raw}
    print(
        f"\nclients saw {completed} ids complete before the kill; database holds {len(held)}; "
        f"{len(records)} records, {len(sessions)} sessions ({len(with_load)} with events); "
        f"unrecorded: {len(missing_inserts)} inserted, {len(missing_copied)} copied rows "
        f"({len(in_raw)} of them in the raw c2s bytes after all); "
        f"damaged delivery bytes: {damage}; client errors: {load.errors()}"
    )

    assert len(with_load) >= WORKERS, "the load's sessions were recorded"
    assert held, "the load put rows in the database"
    broken = {sid: s.verdict.problems for sid, s in sessions.items() if not s.prefix_verified}
    assert not broken, f"sessions whose recorded prefix does not verify: {broken}"
    assert not missing_inserts, (
        f"{len(missing_inserts)} INSERTed ids are in the database but in no query event, "
        f"e.g. {sorted(missing_inserts)[:5]}"
    )
    assert not missing_copied, (
        f"{len(missing_copied)} COPY rows are in the database but in no recorded CopyData, "
        f"e.g. {sorted(missing_copied)[:5]}"
    )

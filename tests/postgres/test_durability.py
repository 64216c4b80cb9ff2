"""`durability: acked`: no client message reaches PostgreSQL before its chunk is accepted."""

from __future__ import annotations

import threading
import time
from concurrent.futures import Future
from pathlib import Path

import psycopg

from gateway_task.sinks.local import LocalFolderSink
from tests.gateway_harness import RunningGateway, gateway_config
from tests.pg import PgServer


class GatedSink(LocalFolderSink):
    """A folder sink whose acknowledgements wait for the test to open the gate."""

    def __init__(self, root: Path) -> None:
        super().__init__(root, flush_ms=50)
        self.gate = threading.Event()
        self.waiting = threading.Event()

    def put(self, records: list[bytes], urgent: bool = False) -> Future[None] | None:
        inner = super().put(records, urgent)
        if inner is None:
            return None
        outer: Future[None] = Future()

        def release() -> None:
            inner.result()
            self.waiting.set()
            self.gate.wait()
            outer.set_result(None)

        threading.Thread(target=release, daemon=True).start()
        return outer


def test_acked_statement_waits_for_the_archive(pg: PgServer, tmp_path: Path) -> None:
    pg.psql("DROP TABLE IF EXISTS acked; CREATE TABLE acked (id int); GRANT ALL ON acked TO app")
    config = gateway_config(tmp_path / "d", pg, durability="acked")
    sink = GatedSink(config.delivery_dir)
    sink.gate.set()  # let the login through
    gw = RunningGateway(config, sink=sink)
    try:
        conn = psycopg.connect(gw.dsn(gw.token()), autocommit=True)
        sink.gate.clear()
        sink.waiting.clear()
        done = threading.Event()

        def insert() -> None:
            conn.execute("INSERT INTO acked VALUES (1)")
            done.set()

        threading.Thread(target=insert, daemon=True).start()
        assert sink.waiting.wait(5), "the INSERT's chunk was handed to the sink"
        time.sleep(0.3)
        assert pg.psql("SELECT count(*) FROM acked") == "0", "it must not run before the ack"
        assert not done.is_set()
        sink.gate.set()
        assert done.wait(5)
        assert pg.psql("SELECT count(*) FROM acked") == "1"
        conn.close()
    finally:
        sink.gate.set()
        gw.stop()
    assert all(v.intact for v in gw.verdicts().values())

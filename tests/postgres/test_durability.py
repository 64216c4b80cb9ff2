"""`durability: acked`: no client message reaches PostgreSQL before its chunk is accepted."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import psycopg

from tests.gateway_harness import RunningGateway, gateway_config
from tests.pg import PgServer
from tests.sinks import GatedAcks


def test_acked_statement_waits_for_the_archive(pg: PgServer, tmp_path: Path) -> None:
    pg.psql("DROP TABLE IF EXISTS acked; CREATE TABLE acked (id int); GRANT ALL ON acked TO app")
    config = gateway_config(tmp_path / "d", pg, durability="acked")
    sink = GatedAcks(config.delivery_dir)
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


def test_full_spool_refuses_sessions_until_firehose_recovers(pg: PgServer, tmp_path: Path) -> None:
    """Firehose down and the spool full: sessions stop and new ones are refused, with a clear
    error; when Firehose is back, what was kept is delivered and sessions are admitted again."""
    from gateway_task.recording.firehose import FirehoseSink
    from tests.test_firehose_sink import FakeFirehose

    client = FakeFirehose()
    client.down = True
    sink = FirehoseSink("tapes", client, tmp_path / "spool", flush_ms=20, attempts=1,
                        base_delay_s=0.001, max_delay_s=0.01, spool_max_bytes=4096)  # fmt: skip
    gw = RunningGateway(gateway_config(tmp_path / "d", pg), sink=sink)
    try:
        with psycopg.connect(gw.dsn(gw.token()), autocommit=True) as conn:
            for _ in range(5):
                try:
                    conn.execute("SELECT repeat('x', 2000)")
                except psycopg.OperationalError as exc:
                    assert "cannot record" in str(exc)
                    break
                time.sleep(0.2)
            else:
                raise AssertionError("the session kept running with nowhere to record")
        assert sink.failure is not None and "spool is full" in sink.failure
        try:
            psycopg.connect(gw.dsn(gw.token())).close()
            raise AssertionError("a new session was admitted while the archive was full")
        except psycopg.OperationalError as exc:
            assert "cannot record" in str(exc)
        client.down = False
        deadline = time.monotonic() + 10
        while sink.failure is not None and time.monotonic() < deadline:
            time.sleep(0.05)
        with psycopg.connect(gw.dsn(gw.token())) as conn:
            assert conn.execute("SELECT 'admitted again'").fetchone() == ("admitted again",)
    finally:
        gw.stop()
    from tapegate.keys import LocalKeyStore
    from tapegate.tape import decode_record, verify_session

    trusted = LocalKeyStore(tmp_path / "d").trusted()
    by_session: dict[str, list[bytes]] = {}
    for raw in client.accepted:
        if raw[:4] == b"TGCK":  # the chunks (the log's leaves were accepted beside them)
            by_session.setdefault(str(decode_record(raw).session_id), []).append(raw)
    verdicts = [verify_session(recs, trusted) for recs in by_session.values()]
    assert len(verdicts) == 3 and all(v.intact for v in verdicts), "nothing accepted was lost"

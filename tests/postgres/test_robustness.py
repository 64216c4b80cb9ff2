"""Bad input, dropped upstreams, failing archives and shutdowns: a clear error, nothing lost."""

from __future__ import annotations

import itertools
import shutil
import socket
import struct
import threading
import time
from pathlib import Path

import psycopg
import pytest

from tapegate.keys import LocalKeyStore
from tapegate.protocols.postgres import messages as m
from tapegate.tape import Direction, decode_record, key_id, open_frames, open_session_key
from tests.gateway_harness import RunningGateway
from tests.pg import APP_PASSWORD, PgServer
from tests.rawpg import RawPg, error_fields


def _decrypted_frames(gw: RunningGateway, sid: str) -> list:
    auditor = LocalKeyStore(gw.config.data_dir).auditor_key()
    recs = sorted((decode_record(r) for r in gw.sessions()[sid]), key=lambda r: r.seq)
    key = open_session_key(recs[0], {key_id(bytes(auditor.public_key)): auditor})
    assert key is not None
    return [f for r in recs for f in open_frames(r, key)]


def _only_session(gw: RunningGateway) -> str:
    (sid,) = gw.sessions().keys()
    return sid


def test_recorded_frames_are_exactly_the_bytes_relayed(gw: RunningGateway) -> None:
    client = RawPg(gw.host, gw.port)
    client.login("appdb", gw.token())
    client.query("SELECT generate_series(1, 1000), 'row'")
    client.query("SELECT 1/0")
    client.query("DROP TABLE whatever")  # denied: its bytes are still what the client sent
    client.close()
    frames = _decrypted_frames(gw, _only_session(gw))
    c2s = b"".join(f.data for f in frames if f.direction is Direction.CLIENT_TO_SERVER)
    s2c = b"".join(f.data for f in frames if f.direction is Direction.SERVER_TO_CLIENT)
    assert c2s == bytes(client.sent)
    assert s2c == bytes(client.received)
    assert all(a.ts_ns <= b.ts_ns for a, b in itertools.pairwise(frames))


def test_secrets_never_reach_the_client_or_the_disk(gw: RunningGateway) -> None:
    token = gw.token()
    client = RawPg(gw.host, gw.port)
    client.login("appdb", token)
    client.query("SELECT current_user, session_user")
    client.close()
    assert APP_PASSWORD.encode() not in client.received
    frames = _decrypted_frames(gw, _only_session(gw))
    plaintext = b"".join(f.data for f in frames)
    assert APP_PASSWORD.encode() not in plaintext and token.encode() not in plaintext
    for path in Path(gw.config.data_dir).rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            assert APP_PASSWORD.encode() not in data, path
            assert token.encode() not in data, path


@pytest.mark.parametrize(
    ("name", "payload"),
    [
        ("length_below_minimum", struct.pack(">I", 3)),
        ("oversized_startup", struct.pack(">I", 1 << 24) + b"x" * 100),
        ("unknown_protocol", struct.pack(">II", 8, 0x00020000)),
        ("unterminated_params", struct.pack(">II", 13, 196608) + b"user"),
        ("truncated", b"\x00\x00"),
    ],
)
def test_malformed_startup(gw: RunningGateway, name: str, payload: bytes) -> None:
    with psycopg.connect(gw.dsn(gw.token()), autocommit=True) as bystander:
        sock = socket.create_connection((gw.host, gw.port), 5)
        sock.sendall(payload)
        sock.shutdown(socket.SHUT_WR)
        reply = b""
        while chunk := sock.recv(4096):
            reply += chunk
        sock.close()
        if reply:
            assert reply[:1] == b"E" and b"08P01" in reply, (name, reply)
        assert bystander.execute("SELECT 'still here'").fetchone() == ("still here",)


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("length_below_four", b"Q\x00\x00\x00\x02"),
        ("oversized_length", b"Q\x7f\xff\xff\xff" + b"x" * 64),
        ("malformed_bind", m.message(b"B", b"\x00\x00\x00\x05\x00")),
        ("unterminated_query", m.message(b"Q", b"SELECT 1")),
    ],
)
def test_malformed_messages_after_login(gw: RunningGateway, name: str, message: bytes) -> None:
    with psycopg.connect(gw.dsn(gw.token()), autocommit=True) as bystander:
        client = RawPg(gw.host, gw.port)
        client.login("appdb", gw.token())
        client.send_raw(message)
        reply = client.read_until_ready()
        fields = error_fields(reply)
        assert fields["C"] == "08P01" and "protocol violation" in fields["M"], (name, fields)
        with pytest.raises((ConnectionError, OSError)):
            client.read_message()
        assert bystander.execute("SELECT 'unaffected'").fetchone() == ("unaffected",)
    for verdict in gw.verdicts().values():
        assert verdict.intact


def test_upstream_drops_mid_query(gw: RunningGateway, pg: PgServer) -> None:
    errors: list[Exception] = []

    def victim() -> None:
        try:
            with psycopg.connect(gw.dsn(gw.token(), application_name="victim")) as conn:
                conn.execute("SELECT pg_sleep(20)")
        except psycopg.OperationalError as exc:
            errors.append(exc)

    thread = threading.Thread(target=victim)
    thread.start()
    deadline = time.time() + 10
    while time.time() < deadline:
        killed = pg.psql(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE application_name = 'victim' AND query LIKE '%pg_sleep%'"
        )
        if killed == "1":
            break
        time.sleep(0.1)
    thread.join(15)
    assert errors and "terminating connection" in str(errors[0])
    recs = [decode_record(r) for r in gw.sessions()[_only_session(gw)]]
    end = next(r.meta["end"] for r in recs if r.final)
    assert end["reason"] == "upstream_closed"


def test_shutdown_closes_sessions_with_a_final_chunk(pg: PgServer, tmp_path: Path) -> None:
    from tests.gateway_harness import gateway_config

    gw = RunningGateway(gateway_config(tmp_path / "d", pg))
    conn = psycopg.connect(gw.dsn(gw.token()), autocommit=True)
    conn.execute("SELECT 1")
    gw.stop(drain_s=0.5)
    with pytest.raises(psycopg.OperationalError, match="shutting down"):
        conn.execute("SELECT 2")
    conn.close()
    records = gw.delivered_records(wait=False)
    recs = [decode_record(r) for r in records]
    assert next(r.meta["end"] for r in recs if r.final)["reason"] == "gateway_shutdown"
    assert all(v.intact for v in gw.verdicts().values())


def test_failing_archive_stops_forwarding(gw: RunningGateway, pg: PgServer) -> None:
    pg.psql("DROP TABLE IF EXISTS unrecorded; CREATE TABLE unrecorded (id int); "
            "GRANT ALL ON unrecorded TO app")  # fmt: skip
    with psycopg.connect(gw.dsn(gw.token()), autocommit=True) as conn:
        conn.execute("SELECT 1")
        deliveries = gw.config.delivery_dir
        shutil.rmtree(deliveries, ignore_errors=True)
        deliveries.write_text("not a folder")  # the archive can no longer be written
        conn.execute("SELECT 2")
        deadline = time.time() + 5
        while gw.gateway.sink.failure is None and time.time() < deadline:
            time.sleep(0.02)
        assert gw.gateway.sink.failure is not None
        with pytest.raises(psycopg.OperationalError) as exc:
            conn.execute("INSERT INTO unrecorded VALUES (1)")
        assert "cannot record this session" in str(exc.value) or "closed" in str(exc.value)
    assert pg.psql("SELECT count(*) FROM unrecorded") == "0"
    # New sessions are refused too, with the reason.
    with pytest.raises(psycopg.OperationalError, match="cannot record"):
        psycopg.connect(gw.dsn(gw.token())).execute("SELECT 1")
    # Once the archive is back, everything kept in memory is written: nothing was lost.
    deliveries.unlink()
    deadline = time.time() + 5
    while gw.gateway.sink.failure is not None and time.time() < deadline:
        time.sleep(0.02)
    verdicts = gw.verdicts()
    assert verdicts and all(v.intact for v in verdicts.values()), [
        [str(p) for p in v.problems] for v in verdicts.values()
    ]


def test_a_40mb_statement_is_named_off_the_loop_and_guardrails_still_hold(
    gw: RunningGateway, pg: PgServer
) -> None:
    """The statement is parsed on a thread (its naming takes seconds); another session is
    served meanwhile, and a DROP after megabytes of literal is still denied."""
    big = "x" * 40_000_000
    served = []
    stop = threading.Event()

    def bystander() -> None:
        with psycopg.connect(gw.dsn(gw.token()), autocommit=True) as other:
            while not stop.is_set():
                served.append(other.execute("SELECT 1").fetchone())

    thread = threading.Thread(target=bystander, daemon=True)
    thread.start()
    try:
        with psycopg.connect(gw.dsn(gw.token()), autocommit=True) as conn:
            row = conn.execute(f"SELECT length('{big}')").fetchone()
            assert row == (40_000_000,)
            with pytest.raises(psycopg.errors.InsufficientPrivilege, match="guardrail"):
                conn.execute(f"SELECT '{big[:2_000_000]}'; DROP TABLE IF EXISTS nothing_here")
            assert conn.execute("SELECT 2").fetchone() == (2,)
    finally:
        stop.set()
        thread.join(30)
    assert served and all(r == (1,) for r in served)
    events = [e for evs in gw.events().values() for e in evs]
    assert any(e["type"] == "blocked" for e in events), "the denial was recorded"

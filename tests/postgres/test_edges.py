"""PostgreSQL's edges, against a real server: guardrails on the server's own grammar, role
switches, an upstream that is not what it claims, libpq's TLS reads, the backend pid."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import socket
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from gateway_task.tls import ensure_self_signed
from tapegate.protocols.postgres import messages as m
from tests.gateway_harness import PASSWORD_ENV, RunningGateway, gateway_config
from tests.pg import APP_PASSWORD, PgServer, free_port
from tests.rawpg import RawPg


def _targets(pg: PgServer, **extra: Any) -> list[dict[str, Any]]:
    common = {"protocol": "postgres", "upstream": f"{pg.host}:{pg.port}", "database": "app",
              "password_env": PASSWORD_ENV, "username": "app", "allow_groups": ["agents"],
              "upstream_tls": "disable"}  # fmt: skip
    return [
        {**common, "name": "guarded",
         "guardrails": {"deny": [{"kind": "DROP"}, {"kind": "SET ROLE"}],
                        "deny_function_call": True}},
        {**common, "name": "open"},
        # None removes a key: {"upstream_tls": None} leaves the default.
        *({k: v for k, v in {**common, **t}.items() if v is not None}
          for t in extra.get("more", [])),
    ]  # fmt: skip


@pytest.fixture
def guarded(pg: PgServer, tmp_path: Path) -> Iterator[RunningGateway]:
    running = RunningGateway(gateway_config(tmp_path / "data", pg, targets=_targets(pg)))
    yield running
    running.stop()


@pytest.fixture
def keepme(pg: PgServer) -> None:
    pg.psql("DROP TABLE IF EXISTS keepme; CREATE TABLE keepme (id int); "
            "GRANT ALL ON keepme TO app")  # fmt: skip


def _table_exists(pg: PgServer) -> bool:
    return pg.psql("SELECT to_regclass('public.keepme') IS NOT NULL") == "t"


def _blocked(gw: RunningGateway) -> list[dict[str, Any]]:
    return [e["attrs"] for events in gw.events().values() for e in events
            if e["type"] == "blocked"]  # fmt: skip


def _query(client: RawPg, raw_sql: bytes) -> list[tuple[int, bytes]]:
    client.send_raw(m.message(b"Q", raw_sql + b"\0"))
    return client.read_until_ready()


def _errors(replies: list[tuple[int, bytes]]) -> list[dict[str, str]]:
    return [m.decode_fields(body) for tag, body in replies if tag == ord("E")]


# -- guardrails on the server's grammar --------------------------------------------------------

EVASIONS = [
    b"select 1 -- a comment that a carriage return ends\r; drop table keepme",
    b"select 1 --\r;drop table keepme",
    "select 1 as é$$; drop table keepme; -- $$".encode(),
    "select 1 as é$x$; drop table keepme; -- $x$".encode(),
]


@pytest.mark.parametrize("sql", EVASIONS)
def test_lexer_evasions_are_denied(guarded: RunningGateway, pg: PgServer, keepme: None,
                                   sql: bytes) -> None:  # fmt: skip
    client = RawPg(guarded.host, guarded.port)
    client.login("guarded", guarded.token())
    errors = _errors(_query(client, sql))
    assert errors and errors[0]["C"] == "42501", errors
    client.close()
    assert _table_exists(pg), "PostgreSQL never ran the DROP"
    assert any("DROP" in b["kinds"] for b in _blocked(guarded))
    # Sent to PostgreSQL directly, the same text does drop a table: the evasion is real.
    pg.psql("CREATE TABLE keepme_probe (id int)", db="app")
    pg.psql(sql.decode().replace("keepme", "keepme_probe"), db="app")
    assert pg.psql("SELECT to_regclass('public.keepme_probe') IS NULL", db="app") == "t"


def test_backslashes_with_standard_conforming_strings_off(
    guarded: RunningGateway, pg: PgServer, keepme: None
) -> None:
    client = RawPg(guarded.host, guarded.port)
    client.login("guarded", guarded.token())
    assert not _errors(_query(client, b"SET standard_conforming_strings = off"))
    # To the server this is one string literal and then a DROP; to a parser with the setting
    # on it is one string. Refused: it cannot be checked the way the server will read it.
    errors = _errors(_query(client, b"select 'a\\' ; drop table keepme; --'"))
    assert errors and errors[0]["C"] == "42501" and "cannot check" in errors[0]["M"]
    assert not _errors(_query(client, b"select 'no backslash here'"))
    client.close()
    assert _table_exists(pg)
    assert any("standard_conforming_strings" in b.get("unchecked", "") for b in _blocked(guarded))


@pytest.mark.parametrize("setting", [
    b"SET standard_conforming_strings = off",
    b"SELECT set_config('standard_conforming_strings', 'off', false)",
    b"DO $$BEGIN SET standard_conforming_strings = off; END$$",
])  # fmt: skip
def test_text_pipelined_behind_a_settings_change_is_not_read_with_the_old_settings(
    guarded: RunningGateway, pg: PgServer, keepme: None, setting: bytes
) -> None:
    """Sent in one write, the second query reaches the server after the setting changed, while
    the gateway has not yet seen the server say so: it cannot be checked, so it is refused."""
    client = RawPg(guarded.host, guarded.port)
    client.login("guarded", guarded.token())
    evasion = b"select 'a\\' ; drop table keepme; --'"
    client.send_raw(m.message(b"Q", setting + b"\0") + m.message(b"Q", evasion + b"\0"))
    first, second = client.read_until_ready(), client.read_until_ready()
    assert not _errors(first), _errors(first)
    errors = _errors(second)
    assert errors and errors[0]["C"] == "42501" and "before the server answered" in errors[0]["M"]
    # Once answered, text is checked again (with the setting now off: the backslash is refused).
    assert "standard_conforming_strings" in _errors(_query(client, evasion))[0]["M"]
    assert not _errors(_query(client, b"select 'fine'"))
    client.close()
    assert _table_exists(pg), "PostgreSQL never ran the DROP"


def test_a_multibyte_client_encoding_is_read_as_the_server_reads_it(
    guarded: RunningGateway, pg: PgServer, keepme: None
) -> None:
    client = RawPg(guarded.host, guarded.port)
    client.login("guarded", guarded.token())
    assert not _errors(_query(client, b"SET client_encoding = 'SJIS'"))
    # 表 in SJIS ends in 0x5C: read as UTF-8 (or Latin-1) it escapes the closing quote and
    # hides the DROP inside the "string".
    errors = _errors(_query(client, "select E'表'; drop table keepme".encode("cp932")))
    assert errors and errors[0]["C"] == "42501" and "kind DROP" in errors[0]["M"]
    client.close()
    assert _table_exists(pg)


def test_unparsable_text_is_refused_on_a_guarded_target_and_forwarded_on_an_open_one(
    guarded: RunningGateway,
) -> None:
    client = RawPg(guarded.host, guarded.port)
    client.login("guarded", guarded.token())
    errors = _errors(_query(client, b"selec 1"))
    assert errors[0]["C"] == "42501" and "parser" in errors[0]["M"]
    client.close()
    client = RawPg(guarded.host, guarded.port)
    client.login("open", guarded.token())
    errors = _errors(_query(client, b"selec 1"))
    assert errors[0]["C"] == "42601", "the server's own syntax error: it was forwarded"
    client.close()


# -- role and identity switches ----------------------------------------------------------------

ROLE_SWITCHES = [
    "SET ROLE app",
    "SET LOCAL ROLE app",
    "SET SESSION ROLE app",
    'SET "role" = app',
    "SET SESSION AUTHORIZATION app",
    "SELECT set_config('role', 'app', false)",
]


@pytest.mark.parametrize("sql", ROLE_SWITCHES)
def test_every_role_switch_falls_under_set_role(guarded: RunningGateway, sql: str) -> None:
    with psycopg.connect(guarded.dsn(guarded.token(), target="guarded"), autocommit=True) as conn:
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="kind SET ROLE"):
            conn.execute(sql)
        assert conn.execute("SELECT current_user").fetchone() == ("app",)
    assert any(b["rule"] == "kind SET ROLE" for b in _blocked(guarded))


@pytest.mark.parametrize("options", ["-c role=app", "-crole=app", "--role=app",
                                     "-c session_authorization=app"])  # fmt: skip
def test_a_role_switch_in_the_startup_options_is_refused(
    guarded: RunningGateway, options: str
) -> None:
    with pytest.raises(psycopg.OperationalError, match="guardrail \\(kind SET ROLE\\)"):
        psycopg.connect(guarded.dsn(guarded.token(), target="guarded", options=f"'{options}'"))
    startups = [e["attrs"] for events in guarded.events().values() for e in events
                if e["type"] == "startup"]  # fmt: skip
    assert any("role" in s.get("settings", {}) or "session_authorization" in
               s.get("settings", {}) for s in startups)  # fmt: skip
    # The same options on a target without the rule pass through to the server.
    with psycopg.connect(guarded.dsn(guarded.token(), target="open",
                                     options=f"'{options}'")) as conn:  # fmt: skip
        assert conn.execute("SELECT current_user").fetchone() == ("app",)


def _function_call(oid: int, args: list[bytes]) -> bytes:
    body = m._U32.pack(oid) + m._I16.pack(0) + m._I16.pack(len(args))
    for arg in args:
        body += m._I32.pack(len(arg)) + arg
    return m.message(b"F", body + m._I16.pack(0))


def test_fast_path_function_calls_are_recorded_and_can_be_denied(guarded: RunningGateway) -> None:
    int4pl = 177  # int4pl(int4, int4): the + of integers
    for target, denied in (("open", False), ("guarded", True)):
        client = RawPg(guarded.host, guarded.port)
        client.login(target, guarded.token())
        client.send_raw(_function_call(int4pl, [b"2", b"40"]))
        replies = client.read_until_ready()
        if denied:
            assert _errors(replies)[0]["C"] == "42501"
        else:
            (result,) = [body for tag, body in replies if tag == ord("V")]
            assert result.endswith(b"42")
        # The session goes on either way.
        assert not _errors(client.query("SELECT 1"))
        client.close()
    events = [e for evs in guarded.events().values() for e in evs]
    calls = [e["attrs"] for e in events if e["type"] == "function_call"]
    assert calls and calls[0]["oid"] == int4pl and calls[0]["args"][1]["hex"] == b"40".hex()
    assert any(b["rule"] == "deny_function_call" for b in _blocked(guarded))


# -- an upstream that is not what it claims ----------------------------------------------------


class StandIn:
    """Listens at an upstream's address: answers SSLRequest with `ssl_answer` (then whatever
    `after_ssl` says), and asks for a password with `auth_code`. Keeps every byte received."""

    def __init__(self, ssl_answer: bytes = b"N", auth_code: int = m.AUTH_CLEARTEXT) -> None:
        self.ssl_answer, self.auth_code = ssl_answer, auth_code
        self.received = bytearray()
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._one, args=(conn,), daemon=True).start()

    def _one(self, conn: socket.socket) -> None:
        conn.settimeout(10)
        with contextlib.suppress(OSError), conn:
            head = conn.recv(8)
            self.received += head
            if head[4:8] == m._I32.pack(m.SSL_REQUEST):
                conn.sendall(self.ssl_answer)
                if self.ssl_answer != b"N":
                    return
                self.received += conn.recv(65536)  # the startup packet, in clear
            extra = b"salt" if self.auth_code == m.AUTH_MD5 else b""
            conn.sendall(m.auth_request(self.auth_code, extra))
            while data := conn.recv(65536):
                self.received += data

    def close(self) -> None:
        self.sock.close()


class ImpostorOk(StandIn):
    """Says the login succeeded without proving anything: at once (as a `trust` server would),
    or after the client's first SCRAM message. Keeps every byte received."""

    def __init__(self, sasl: bool) -> None:
        self.sasl = sasl
        super().__init__(b"N")

    def _one(self, conn: socket.socket) -> None:
        conn.settimeout(10)
        with contextlib.suppress(OSError), conn:
            head = conn.recv(8)
            if head[4:8] == m._I32.pack(m.SSL_REQUEST):
                conn.sendall(b"N")
                head = b""
            self.received += head + conn.recv(65536)  # the startup packet
            if self.sasl:
                conn.sendall(m.auth_request(m.AUTH_SASL, b"SCRAM-SHA-256\0\0"))
                self.received += conn.recv(65536)  # the client-first message
            conn.sendall(m.auth_request(m.AUTH_OK) + b"Z\x00\x00\x00\x05I")
            while data := conn.recv(65536):
                self.received += data


@pytest.mark.parametrize(
    ("sasl", "says"),
    [(False, "without a password"), (True, "before completing SCRAM")],
)
def test_an_impostor_that_just_says_ok_gets_no_session(
    pg: PgServer, tmp_path: Path, sasl: bool, says: str
) -> None:
    # Found by review: AuthenticationOk was taken in any state, so anyone answering at the
    # upstream's address (under upstream_tls: require, with its own certificate) took over.
    impostor = ImpostorOk(sasl)
    target = {"name": "spoofed", "upstream": f"127.0.0.1:{impostor.port}",
              "upstream_tls": "disable"}  # fmt: skip
    gw = RunningGateway(gateway_config(tmp_path / "data", pg, targets=_targets(pg, more=[target])))
    try:
        with (
            pytest.raises(psycopg.OperationalError, match=says),
            psycopg.connect(gw.dsn(gw.token(), target="spoofed")) as conn,
        ):
            conn.execute("SELECT 'reached the impostor'")
    finally:
        gw.stop()
        impostor.close()
    assert impostor.received, "the gateway did talk to the impostor"
    assert b"reached the impostor" not in impostor.received


@pytest.mark.parametrize(
    ("settings", "auth_code", "says"),
    [
        ({}, m.AUTH_CLEARTEXT, "does not offer TLS"),  # the default is upstream_tls: require
        ({"upstream_tls": "prefer"}, m.AUTH_CLEARTEXT, "cleartext password"),
        ({"upstream_tls": "disable"}, m.AUTH_MD5, "md5 password"),
    ],
)
def test_a_stand_in_at_the_upstreams_address_never_gets_the_password(
    pg: PgServer, tmp_path: Path, settings: dict[str, str], auth_code: int, says: str
) -> None:
    stand_in = StandIn(b"N", auth_code)
    target = {"name": "spoofed", "upstream": f"127.0.0.1:{stand_in.port}", "upstream_tls": None,
              **settings}  # fmt: skip
    targets = _targets(pg, more=[target])
    gw = RunningGateway(gateway_config(tmp_path / "data", pg, targets=targets))
    try:
        with pytest.raises(psycopg.OperationalError, match=says):
            psycopg.connect(gw.dsn(gw.token(), target="spoofed"))
    finally:
        gw.stop()
        stand_in.close()
    assert stand_in.received, "the gateway did talk to the stand-in"
    assert APP_PASSWORD.encode() not in stand_in.received
    inner = hashlib.md5((APP_PASSWORD + "app").encode()).hexdigest()
    assert hashlib.md5(inner.encode() + b"salt").hexdigest().encode() not in stand_in.received


def test_bytes_after_the_ssl_request_are_a_protocol_violation(guarded: RunningGateway) -> None:
    """CVE-2021-23214's pattern: bytes sent before the TLS handshake must not count as
    having come through TLS."""
    sock = socket.create_connection((guarded.host, guarded.port), 10)
    startup = m.StartupMessage({"user": "agent", "database": "guarded"}).encode()
    sock.sendall(m.SSLRequest().encode() + startup)
    data = sock.recv(65536)
    sock.close()
    assert data[:1] == b"E" and b"08P01" in data, data


class TlsInTheMiddle:
    """Terminates the gateway's TLS with its own certificate and relays to the real server
    over TLS: what a machine in the middle does when the target only says `require`."""

    def __init__(self, pg: PgServer, cert_dir: Path) -> None:
        cert, key = ensure_self_signed(cert_dir)
        self.ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.ctx.load_cert_chain(cert, key)
        self.pg = pg
        self.loop = asyncio.new_event_loop()
        self.port = free_port()
        self.relayed = 0
        threading.Thread(target=self.loop.run_forever, daemon=True).start()
        asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(10)

    async def _start(self) -> None:
        self.server = await asyncio.start_server(self._one, "127.0.0.1", self.port)

    async def _one(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readexactly(8)  # SSLRequest
        writer.write(b"S")
        await writer.drain()
        await writer.start_tls(self.ctx)
        up_r, up_w = await asyncio.open_connection(self.pg.host, self.pg.port)
        up_w.write(m.SSLRequest().encode())
        await up_w.drain()
        assert await up_r.readexactly(1) == b"S"
        client_ctx = ssl.create_default_context()
        client_ctx.check_hostname, client_ctx.verify_mode = False, ssl.CERT_NONE
        await up_w.start_tls(client_ctx)

        async def pump(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            with contextlib.suppress(Exception):
                while data := await r.read(65536):
                    self.relayed += len(data)
                    w.write(data)
                    await w.drain()
            w.close()

        await asyncio.gather(pump(reader, up_w), pump(up_r, writer))

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.server.close)
        self.loop.call_soon_threadsafe(self.loop.stop)


def test_channel_binding_defeats_a_tls_machine_in_the_middle(pg: PgServer, tmp_path: Path) -> None:
    mitm = TlsInTheMiddle(pg, tmp_path / "mitm")
    targets = _targets(pg, more=[
        {"name": "direct_tls", "upstream_tls": "require"},
        {"name": "intercepted", "upstream": f"127.0.0.1:{mitm.port}", "upstream_tls": "require"},
    ])  # fmt: skip
    gw = RunningGateway(gateway_config(tmp_path / "data", pg, targets=targets))
    try:
        with psycopg.connect(gw.dsn(gw.token(), target="direct_tls")) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
        with pytest.raises(psycopg.OperationalError, match="could not log in"):
            psycopg.connect(gw.dsn(gw.token(), target="intercepted"))
        assert mitm.relayed > 0, "the login did go through the machine in the middle"
    finally:
        gw.stop()
        mitm.close()
    methods = [e["attrs"] for evs in gw.events().values() for e in evs if e["type"] == "upstream"]
    assert methods and methods[0]["method"] == "scram-sha-256-plus"


# -- libpq over TLS, the backend pid -----------------------------------------------------------


def test_libpq_async_fetches_over_tls_never_stall(guarded: RunningGateway) -> None:
    """Records above ~8 KiB left bytes inside OpenSSL where an older libpq's poll could not
    see them (14-18 of 30 such fetches stalled). The libpq psycopg bundles here (18) does not
    stall either way, so what fails without the cap is tests/test_driver.py's record-size test;
    this loop stays as the client's view of it."""

    async def fetches() -> None:
        conn = await psycopg.AsyncConnection.connect(
            guarded.dsn(guarded.token(), target="open"), autocommit=True
        )
        async with conn:
            for i in range(30):
                width = 5_000 + i * 1_499
                cur = await asyncio.wait_for(
                    conn.execute("SELECT repeat('x', %s) FROM generate_series(1, 40)", (width,)),
                    20,
                )
                rows = await asyncio.wait_for(cur.fetchall(), 20)
                assert len(rows) == 40 and all(len(r[0]) == width for r in rows)

    asyncio.run(fetches())


def test_the_backend_pid_is_the_servers_and_notifications_match_it(
    guarded: RunningGateway, pg: PgServer
) -> None:
    with psycopg.connect(guarded.dsn(guarded.token(), target="open"), autocommit=True) as conn:
        pid = conn.info.backend_pid
        assert conn.execute("SELECT pg_backend_pid()").fetchone() == (pid,)
        conn.execute("LISTEN edges")
        conn.execute("NOTIFY edges, 'mine'")
        (note,) = list(conn.notifies(timeout=5, stop_after=1))
        assert note.pid == pid, "a client recognises its own notifications"
        assert pg.psql(f"SELECT usename FROM pg_stat_activity WHERE pid = {pid}") == "app"


def test_cancel_still_uses_the_gateways_own_secret(guarded: RunningGateway) -> None:
    """The pid is the server's, the secret the gateway's: the cancel (sent over TLS by libpq's
    newer API; the older blocking PQcancel holds the GIL in psycopg's binary build, which would
    stall this in-process gateway) still reaches the right backend."""
    with psycopg.connect(guarded.dsn(guarded.token(), target="open")) as conn:
        threading.Timer(0.5, conn.cancel_safe).start()
        with pytest.raises(psycopg.errors.QueryCanceled):
            conn.execute("SELECT pg_sleep(10)")

"""Refused callers get a real ErrorResponse that helps them, and the refusal is recorded."""

from __future__ import annotations

import pytest

from tapegate.tape import decode_record
from tests.bad_tokens import bad_tokens
from tests.gateway_harness import RunningGateway
from tests.rawpg import RawPg, error_fields


def test_bad_tokens_are_refused_and_recorded(gw: RunningGateway) -> None:
    cases = bad_tokens(gw)
    for name, (token, phrase) in cases.items():
        client = RawPg(gw.host, gw.port)
        reply = client.login("appdb", token)
        fields = error_fields(reply)
        assert fields.get("C") == "28000", (name, fields)
        assert phrase in fields["M"], (name, fields["M"])
        assert fields.get("H"), "a refusal says how to fix it"
        client.close()
    refusals = []
    for records in gw.sessions().values():
        recs = [decode_record(r) for r in records]
        events = [e for r in recs for e in r.meta["events"]]
        auth = [e["attrs"] for e in events if e["type"] == "auth"]
        if auth and auth[0]["result"] == "refused":
            refusals.append(auth[0])
            end = next(r.meta["end"] for r in recs if r.final)
            assert end["reason"] == "refused"
    assert len(refusals) == len(cases)
    everything = b"".join(gw.delivered_records())
    for token, _ in cases.values():
        assert token.encode() not in everything, "a token never lands in a recording"
    assert all(v.intact for v in gw.verdicts().values())


def test_group_not_allowed(gw: RunningGateway) -> None:
    client = RawPg(gw.host, gw.port)
    fields = error_fields(client.login("appdb", gw.token(groups=("interns",))))
    assert fields["C"] == "42501"
    assert "admits groups dba, agents" in fields["M"] and "interns" in fields["M"]


def test_unknown_target(gw: RunningGateway) -> None:
    out = gw.psql(gw.token(), "SELECT 1", target="nosuchdb", check=False)
    assert out.returncode != 0
    assert "unknown target 'nosuchdb'" in out.stderr and "appdb" in out.stderr


def test_plain_connection_refused_when_tls_required(gw: RunningGateway) -> None:
    client = RawPg(gw.host, gw.port, tls=False)
    fields = error_fields(client.login("appdb", gw.token()))
    assert fields["C"] == "28000" and "requires TLS" in fields["M"]
    out = gw.psql(gw.token(), "SELECT 1", sslmode="disable", check=False)
    assert out.returncode != 0 and "requires TLS" in out.stderr


def test_verify_full_against_the_gateway_certificate(gw: RunningGateway) -> None:
    import psycopg

    cert = gw.config.data_dir / "tls" / "gateway.crt"
    dsn = gw.dsn(gw.token(), sslmode="verify-full", sslrootcert=str(cert))
    with psycopg.connect(dsn) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
        assert conn.info.pgconn.ssl_in_use


def test_gssenc_request_is_declined_then_tls_works(gw: RunningGateway) -> None:
    import socket
    import struct

    sock = socket.create_connection((gw.host, gw.port), 5)
    sock.sendall(struct.pack(">II", 8, 80877104))
    assert sock.recv(1) == b"N"
    sock.sendall(struct.pack(">II", 8, 80877103))
    assert sock.recv(1) == b"S"
    sock.close()


def test_upstream_down(gw: RunningGateway) -> None:
    out = gw.psql(gw.token(), "SELECT 1", target="downdb", check=False)
    assert out.returncode != 0
    assert "target 'downdb' is unreachable" in out.stderr


@pytest.mark.parametrize("tls_mode", ["optional"])
def test_tls_optional_admits_plain(pg, tmp_path, tls_mode: str) -> None:
    from tests.gateway_harness import gateway_config

    running = RunningGateway(gateway_config(tmp_path / "d", pg, tls=tls_mode))
    try:
        out = running.psql(running.token(), "SELECT 'plain ok'", sslmode="disable")
        assert out.stdout.strip() == "plain ok"
    finally:
        running.stop()


def test_newer_protocol_minor_is_negotiated_down(gw: RunningGateway) -> None:
    """A client asking for 3.2 with a protocol option gets NegotiateProtocolVersion (3.0, the
    option unrecognised), as PostgreSQL answers, and carries on in 3.0."""
    import struct

    from tapegate.protocols.postgres import messages as m

    client = RawPg(gw.host, gw.port)
    body = struct.pack(">I", (3 << 16) | 2) + b"user\0agent\0database\0appdb\0_pq_.test\0x\0\0"
    client.send_raw(struct.pack(">I", len(body) + 4) + body)
    tag, payload = client.read_message()
    assert tag == ord("v")
    newest, count = struct.unpack_from(">II", payload)
    assert newest == 196608 and count == 1 and payload[8:] == b"_pq_.test\0"
    tag, _ = client.read_message()
    assert tag == ord("R")
    client.send_raw(m.password_message(gw.token().encode()))
    client._authed = True
    reply = client.read_until_ready()
    assert reply[-1][0] == ord("Z")
    assert client.query("SELECT 1")[-1][0] == ord("Z")
    client.close()

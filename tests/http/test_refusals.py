"""Refused, broken and failing HTTP exchanges: a clear answer, a recording, bystanders unharmed."""

from __future__ import annotations

import socket
import ssl
from pathlib import Path

import httpx
import pytest

from tapegate.protocols.http import relay as http_relay
from tapegate.tape import decode_record
from tests.bad_tokens import bad_tokens
from tests.gateway_harness import RunningGateway
from tests.http.conftest import API_KEY_ENV, http_config
from tests.http_upstream import API_KEY, HttpUpstream


def _get(gw: RunningGateway, path: str, token: str | None = None) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.get(gw.base + path, headers=headers, timeout=30)  # type: ignore[attr-defined]


def _refusals(gw: RunningGateway) -> list[dict[str, object]]:
    out = []
    for events in gw.events().values():
        out += [e["attrs"] for e in events if e["type"] == "auth" and e["attrs"]["result"] != "ok"]
    return out


def test_missing_and_bad_tokens_get_401_with_a_challenge(hgw: RunningGateway) -> None:
    missing = _get(hgw, "/api/v1/items")
    assert missing.status_code == 401
    assert missing.headers["www-authenticate"] == 'Bearer realm="tapegate"'
    assert "Authorization: Bearer" in missing.json()["message"]
    cases = bad_tokens(hgw)
    for name, (token, phrase) in cases.items():
        reply = _get(hgw, "/api/v1/items", token)
        assert reply.status_code == 401, name
        challenge = reply.headers["www-authenticate"]
        assert challenge.startswith('Bearer realm="tapegate", error="invalid_token"'), name
        assert phrase in reply.json()["message"], (name, reply.json())
    refusals = _refusals(hgw)
    assert len(refusals) == len(cases) + 1
    assert {r["status"] for r in refusals} == {401}


def test_wrong_group_unknown_target_and_no_tls(
    hgw: RunningGateway, upstream: HttpUpstream, tmp_path: Path
) -> None:
    forbidden = _get(hgw, "/admin/v1/items", hgw.token())
    assert forbidden.status_code == 403 and "admits groups admins" in forbidden.json()["message"]
    assert _get(hgw, "/admin/v1/items", hgw.token(groups=("admins",))).status_code == 200
    unknown = _get(hgw, "/nowhere/v1", hgw.token())
    assert unknown.status_code == 404 and "api, admin" in unknown.json()["message"]
    assert _get(hgw, "/", hgw.token()).status_code == 404
    subjects = {r["status"]: r for r in _refusals(hgw)}
    assert set(subjects) == {403, 404}


def test_tls_to_clients_and_plain_refused_when_required(
    upstream: HttpUpstream, ws_upstream: str, tmp_path: Path
) -> None:
    config = http_config(tmp_path / "data", upstream.url, ws_upstream, tls="required")
    gw = RunningGateway(config)
    try:
        host, port = gw.address("http")
        token = gw.token()
        ca = tmp_path / "data" / "tls" / "gateway.crt"
        ctx = ssl.create_default_context(cafile=str(ca))
        secure = httpx.get(f"https://localhost:{port}/api/v1/items",
                           headers={"Authorization": f"Bearer {token}"}, verify=ctx)  # fmt: skip
        assert secure.status_code == 200 and secure.json()["path"] == "/base/v1/items"
        plain = httpx.get(f"http://{host}:{port}/api/v1/items",
                          headers={"Authorization": f"Bearer {token}"})  # fmt: skip
        assert plain.status_code == 403 and "requires TLS" in plain.json()["message"]
        ok = [evs for evs in gw.events().values() if any(e["type"] == "request" for e in evs)]
        auth = [e["attrs"] for evs in ok for e in evs if e["type"] == "auth"]
        assert auth[0]["result"] == "ok" and auth[0]["tls"] is True
    finally:
        gw.stop()


def test_malformed_and_oversized_requests_get_4xx_and_close(hgw: RunningGateway) -> None:
    host, port = hgw.address("http")
    with _client(hgw) as bystander:
        assert bystander.get("/api/v1/items").status_code == 200
        for raw, status in [
            (b"GET /api/v1 HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n", b" 400 "),
            (b"NOT HTTP AT ALL\r\n\r\n", b" 400 "),
            (b"GET /api/v1 HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 100_000 + b"\r\n\r\n",
             b" 431 "),
            (b"\x00\x01\x02\x03garbage\r\n\r\n", b" 400 "),
        ]:  # fmt: skip
            with socket.create_connection((host, port), timeout=10) as sock:
                sock.sendall(raw)
                reply = _read_all(sock)
            assert status in reply.split(b"\r\n")[0], reply[:200]
        assert bystander.get("/api/v1/items").status_code == 200  # the same connection, still up


def test_upstream_down_hanging_dropping_and_truncating(
    hgw: RunningGateway, upstream: HttpUpstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(http_relay, "RESPONSE_TIMEOUT_S", 1.0)
    token = hgw.token()
    down = _get(hgw, "/down/x", token)
    assert down.status_code == 502 and "unreachable" in down.json()["message"]
    hang = _get(hgw, "/api/v1/hang", token)
    assert hang.status_code == 504 and "did not answer" in hang.json()["message"]
    drop = _get(hgw, "/api/v1/drop", token)
    assert drop.status_code == 502 and "closed before answering" in drop.json()["message"]
    with pytest.raises(httpx.RemoteProtocolError):
        _get(hgw, "/api/v1/half", token)  # headers sent, then the upstream vanished
    assert _get(hgw, "/api/v1/items", token).status_code == 200
    events = [e for evs in hgw.events().values() for e in evs]
    errors = [e["attrs"]["reason"] for e in events if e["type"] == "upstream_error"]
    assert len(errors) == 4 and any("closed mid-response" in r for r in errors)
    half = [e["attrs"] for e in events if e["type"] == "response" and e["attrs"].get("incomplete")]
    assert half and half[0]["body_length"] == 10
    assert all(v.intact for v in hgw.verdicts().values())
    ends = [decode_record(r).meta["end"]["reason"] for r in hgw.delivered_records()
            if decode_record(r).final]  # fmt: skip
    assert ends.count("upstream_unavailable") == 3 and ends.count("upstream_closed") == 1, ends


def test_missing_credential_is_a_502_that_names_no_value(
    hgw: RunningGateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(API_KEY_ENV)
    reply = _get(hgw, "/api/v1/items", hgw.token())
    assert reply.status_code == 502
    assert "no usable credential" in reply.json()["message"]
    assert API_KEY not in reply.text


def _client(gw: RunningGateway) -> httpx.Client:
    return httpx.Client(base_url=gw.base, headers={"Authorization": f"Bearer {gw.token()}"})  # type: ignore[attr-defined]


def _read_all(sock: socket.socket) -> bytes:
    out = b""
    while chunk := sock.recv(65536):
        out += chunk
    return out

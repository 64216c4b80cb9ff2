"""The HTTP gateway with real clients (httpx, curl, websockets) and a real upstream."""

from __future__ import annotations

import json
import subprocess
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.exceptions import ConnectionClosedError
from websockets.sync.client import connect

from tapegate.archive.embedded import LocalArchive
from tests.gateway_harness import RunningGateway
from tests.http.conftest import http_config
from tests.http_upstream import API_KEY, HttpUpstream


def _client(gw: RunningGateway, token: str | None = None, **kw: Any) -> httpx.Client:
    headers = {"Authorization": f"Bearer {token or gw.token()}"}
    return httpx.Client(base_url=gw.base, headers=headers, timeout=30, **kw)  # type: ignore[attr-defined]


def _events(gw: RunningGateway) -> dict[str, list[dict[str, Any]]]:
    return gw.events()


def _frames(gw: RunningGateway, sid: str) -> bytes:
    return b"".join(f.data for f in gw.frames(sid))


def _the_session(events: dict[str, list[dict[str, Any]]]) -> tuple[str, list[dict[str, Any]]]:
    ok = [(sid, evs) for sid, evs in events.items()
          if any(e["type"] == "auth" and e["attrs"]["result"] == "ok" for e in evs)]  # fmt: skip
    assert len(ok) == 1, list(events)
    return ok[0]


def test_requests_on_one_kept_alive_connection(hgw: RunningGateway, upstream: HttpUpstream) -> None:
    token = hgw.token()
    with _client(hgw, token) as client:
        first = client.get("/api/v1/items", params={"q": "a b"})
        second = client.post("/api/v1/echo", json={"n": 1})
    assert first.status_code == 200
    seen = first.json()
    assert seen["path"] == "/base/v1/items?q=a+b"
    assert seen["headers"]["x-api-key"] == "the test key"  # the gateway's credential, added
    assert upstream.seen[-2]["headers"]["x-api-key"] == API_KEY
    assert "authorization" not in {k.lower() for k in seen["headers"]}  # the token, removed
    assert seen["headers"]["x-forwarded-for"] == "127.0.0.1"
    assert second.json() == {"n": 1}
    sid, events = _the_session(_events(hgw))
    requests = [e for e in events if e["type"] == "request"]
    responses = [e for e in events if e["type"] == "response"]
    assert [r["attrs"]["url"] for r in requests] == ["/api/v1/items?q=a+b", "/api/v1/echo"]
    assert requests[1]["attrs"]["body"] == '{"n":1}'
    assert responses[0]["attrs"]["status"] == 200 and responses[0]["attrs"]["duration_ns"] > 0
    assert json.loads(responses[1]["attrs"]["body"]) == {"n": 1}
    recorded = dict(map(tuple, requests[0]["attrs"]["headers"]))
    assert recorded["authorization"] == "[redacted]"
    # Neither the token nor the credential is anywhere in the recording or the data dir.
    frames = _frames(hgw, sid)
    assert b"GET /base/v1/items?q=a+b HTTP/1.1" in frames and b'{"n":1}' in frames
    assert b"x-api-key: [redacted]" in frames
    for path in Path(hgw.config.data_dir).rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            assert API_KEY.encode() not in data and token.encode() not in data, path
    assert all(v.intact for v in hgw.verdicts().values())


def test_large_chunked_upload_and_download(hgw: RunningGateway) -> None:
    blob = bytes(range(256)) * 40_000  # 10 MB

    def parts():
        for i in range(0, len(blob), 65536):
            yield blob[i : i + 65536]

    with _client(hgw) as client:
        echoed = client.post("/api/v1/echo", content=parts())  # chunked: no length known
        big = client.get("/api/v1/big", params={"n": 20_000_000})
    assert echoed.content == blob
    assert len(big.content) == 20_000_000
    _, events = _the_session(_events(hgw))
    upload = next(e["attrs"] for e in events if e["type"] == "request")
    assert upload["body_length"] == len(blob) and upload["body_truncated"]
    assert upload["body_encoding"] == "base64"  # binary, capped at body_cap
    assert dict(map(tuple, upload["headers"]))["transfer-encoding"] == "chunked"


def test_chunked_and_streamed_responses_arrive_as_sent(hgw: RunningGateway) -> None:
    with _client(hgw) as client:
        assert client.get("/api/v1/chunked").text == "one two three"
        arrivals = []
        with client.stream("GET", "/api/v1/sse") as sse:
            assert sse.headers["content-type"] == "text/event-stream"
            for line in sse.iter_lines():
                if line.startswith("data:"):
                    arrivals.append((time.monotonic(), line))
    assert [line for _, line in arrivals] == ["data: tick 0", "data: tick 1", "data: tick 2"]
    # The upstream waits 0.3 s between events: they were passed on one by one, not buffered.
    assert arrivals[-1][0] - arrivals[0][0] > 0.4


def test_an_event_stream_ends_with_its_client(hgw: RunningGateway) -> None:
    """An event stream may never end by itself: once its client has closed, the gateway stops
    reading it from the target (it would otherwise read on for as long as the target sends)."""
    with _client(hgw) as client, client.stream("GET", "/api/v1/sse") as sse:
        next(line for line in sse.iter_lines() if line.startswith("data:"))  # then it goes
    hgw.wait_closed()
    _, events = _the_session(_events(hgw))
    (answer,) = [e["attrs"] for e in events if e["type"] == "response"]
    assert answer["client_closed"] is True and answer["incomplete"] is True
    assert b"tick 2" not in answer.get("body", "").encode()  # the rest was not read for no one
    assert not [e for e in events if e["type"] == "upstream_error"]  # not the target's doing


def test_curl_upload_with_expect_continue_and_head(hgw: RunningGateway, tmp_path: Path) -> None:
    payload = tmp_path / "payload.bin"
    payload.write_bytes(b"z" * 3_000_000)  # curl sends Expect: 100-continue for this
    common = ["curl", "-sS", "--http1.1", "--max-time", "30", "-H",
              f"Authorization: Bearer {hgw.token()}"]  # fmt: skip
    put = subprocess.run([*common, "-T", str(payload), f"{hgw.base}/api/v1/echo", "-o",  # type: ignore[attr-defined]
                          str(tmp_path / "out")], capture_output=True, text=True)  # fmt: skip
    assert put.returncode == 0, put.stderr
    assert (tmp_path / "out").read_bytes() == payload.read_bytes()
    head = subprocess.run([*common, "-I", f"{hgw.base}/api/v1/items"],  # type: ignore[attr-defined]
                          capture_output=True, text=True)  # fmt: skip
    assert head.returncode == 0 and "content-length: 1234" in head.stdout.lower()


def test_websocket_messages_are_relayed_and_recorded(hgw: RunningGateway) -> None:
    url = hgw.base.replace("http://", "ws://") + "/ws/chat"  # type: ignore[attr-defined]
    with connect(url, additional_headers={"Authorization": f"Bearer {hgw.token()}"}) as ws:
        ws.send("hello")
        assert ws.recv(timeout=10) == "hello"
        ws.send(b"\x00\x01binary")
        assert ws.recv(timeout=10) == b"\x00\x01binary"
        ws.send("close-me")
        with pytest.raises(ConnectionClosedError):
            ws.recv(timeout=10)
        assert ws.close_code == 4000
    _, events = _the_session(_events(hgw))
    switch = next(e["attrs"] for e in events if e["type"] == "response")
    assert switch["status"] == 101
    messages = [(e["dir"], e["attrs"]["opcode"], e["attrs"]["data"])
                for e in events if e["type"] == "ws_message"]  # fmt: skip
    assert messages == [("c2s", "text", "hello"), ("s2c", "text", "hello"),
                        ("c2s", "binary", "AAFiaW5hcnk="), ("s2c", "binary", "AAFiaW5hcnk="),
                        ("c2s", "text", "close-me")]  # fmt: skip
    closes = [(e["dir"], e["attrs"]["code"]) for e in events if e["type"] == "ws_close"]
    assert ("s2c", 4000) in closes
    # The upstream offered compression; the gateway asked for none, so frames stay readable.
    assert not any(e["type"] == "ws_protocol_error" for e in events)


def test_a_credential_echoed_over_websocket_is_masked(hgw: RunningGateway) -> None:
    # Found by review: after the 101 an echoed key went to the agent, the frames and the
    # ws_message event (which is not encrypted) as it was.
    url = hgw.base.replace("http://", "ws://") + "/ws/chat"  # type: ignore[attr-defined]
    with connect(url, additional_headers={"Authorization": f"Bearer {hgw.token()}"}) as ws:
        ws.send("show-credential")
        shown = ws.recv(timeout=10)
        ws.send("hello")
        assert ws.recv(timeout=10) == "hello"  # frames stay framed after the masking
    assert shown == "you sent Bearer " + "*" * len(API_KEY)
    sid, events = _the_session(_events(hgw))
    echoed = [e["attrs"]["data"] for e in events if e["type"] == "ws_message" and e["dir"] == "s2c"]
    assert echoed[0] == shown, "the echo was recorded, masked"
    assert API_KEY not in json.dumps(events)
    assert not any(API_KEY.encode() in f.data for f in hgw.frames(sid))


def test_har_replay_of_a_session(hgw: RunningGateway, capsys: pytest.CaptureFixture[str]) -> None:
    from tapegate.cli import main

    with _client(hgw) as client:
        client.post("/api/v1/echo", json={"k": "v"})
    hgw.wait_closed()
    sid, _ = _the_session(_events(hgw))
    hgw.stop()
    LocalArchive(hgw.config).scan()
    cfg = Path(hgw.config.data_dir).parent / "tapegate.yaml"
    cfg.write_text(f"data_dir: {hgw.config.data_dir}\n")
    capsys.readouterr()
    assert main(["replay", sid, "--format", "har", "--config", str(cfg)]) == 0
    har = json.loads(capsys.readouterr().out)
    entry = har["log"]["entries"][0]
    assert entry["request"]["method"] == "POST" and entry["request"]["url"] == "/api/v1/echo"
    assert entry["response"]["status"] == 200
    assert json.loads(entry["response"]["content"]["text"]) == {"k": "v"}


def test_https_upstream_is_verified(
    upstream: HttpUpstream, ws_upstream: str, tmp_path: Path
) -> None:
    secure = HttpUpstream(tls_dir=tmp_path / "upstream-tls")
    try:
        config = http_config(tmp_path / "data", secure.url, ws_upstream)
        api = config.targets["api"]
        targets = dict(config.targets)
        targets["api"] = replace(api, upstream_ca_file=secure.ca_file)
        targets["admin"] = replace(config.targets["admin"], upstream_url=secure.url)  # no CA
        gw = RunningGateway(replace(config, targets=targets))
        try:
            host, port = gw.address("http")
            gw.base = f"http://{host}:{port}"  # type: ignore[attr-defined]
            with _client(gw) as client:
                assert client.get("/api/v1/items").json()["path"] == "/base/v1/items"
            unverified = _client(gw, gw.token(groups=("admins",))).get("/admin/v1/items")
            assert unverified.status_code == 502
            assert "CERTIFICATE_VERIFY_FAILED" in unverified.json()["message"]
        finally:
            gw.stop()
    finally:
        secure.close()

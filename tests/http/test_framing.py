"""HTTP framing end to end, with a real upstream as ground truth: what could smuggle a request
past the gateway reaches nothing, and both sides read only the framing the gateway wrote."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.gateway_harness import RunningGateway
from tests.http.conftest import raw_exchange
from tests.http_upstream import HttpUpstream

SMUGGLED = "/api/v1/smuggled"  # a lenient hop would run it as a request of its own

VECTORS = {
    "CL.TE": "Content-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "TE.CL": "Transfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n0\r\n\r\n",
    "duplicate CL": "Content-Length: 0\r\nContent-Length: 5\r\n\r\n",
    "obs-fold TE": "Transfer-Encoding:\r\n chunked\r\n\r\n0\r\n\r\n",
    "TE not chunked": "Transfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n",
    "bare LF": "Content-Length: 0\n\n",
    "chunk size overflow": "Transfer-Encoding: chunked\r\n\r\n10000000000000001\r\nab\r\n",
}


def _events(gw: RunningGateway) -> list[dict[str, Any]]:
    return [e for events in gw.events().values() for e in events]


@pytest.mark.parametrize("name", VECTORS)
def test_a_smuggling_vector_is_refused_and_reaches_nothing(
    hgw: RunningGateway, upstream: HttpUpstream, name: str
) -> None:
    smuggled = f"GET {SMUGGLED} HTTP/1.1\r\nHost: gw\r\n\r\n"
    raw = (f"POST /api/v1/echo HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {hgw.token()}\r\n"
           f"{VECTORS[name]}{smuggled}").encode()  # fmt: skip
    before = len(upstream.seen)
    reply = raw_exchange(hgw, raw)
    assert reply.startswith(b"HTTP/1.1 400 "), reply[:200]
    assert reply.count(b"HTTP/1.1 ") == 1  # one answer: nothing read as a second request
    assert b"malformed HTTP request" in reply
    seen = [s["path"] for s in upstream.seen[before:]]
    assert not any("smuggled" in p for p in seen), seen  # ground truth: the upstream's own log
    assert not any(p.endswith("/echo") for p in seen)  # and not the carrier either
    recorded = [
        e["attrs"] for e in _events(hgw)
        if e["type"] == "protocol_error" or e["attrs"].get("refusal") == "malformed"
    ]  # fmt: skip
    assert recorded, "the refusal was recorded"
    assert all("malformed HTTP request" in (a.get("message") or a.get("reason")) for a in recorded)


@pytest.fixture
def client(hgw: RunningGateway) -> Iterator[httpx.Client]:
    host, port = hgw.address("http")
    headers = {"Authorization": f"Bearer {hgw.token()}"}
    with httpx.Client(base_url=f"http://{host}:{port}", headers=headers, timeout=10) as c:
        yield c


def test_the_upstream_reads_the_gateways_framing(
    client: httpx.Client, upstream: HttpUpstream
) -> None:
    def parts() -> Iterator[bytes]:
        yield b"first,"
        yield b"second"

    chunked = client.post("/api/v1/echo", content=parts())
    assert chunked.status_code == 200 and chunked.content == b"first,second"
    sized = client.post("/api/v1/echo", content=b"0123456789")
    assert sized.content == b"0123456789"
    got = [s["headers"] for s in upstream.seen if s["path"] == "/base/v1/echo"][-2:]
    names = [{k.lower(): v for k, v in h.items()} for h in got]
    assert names[0]["transfer-encoding"] == "chunked" and "content-length" not in names[0]
    assert names[1]["content-length"] == "10" and "transfer-encoding" not in names[1]


def test_an_upstream_that_frames_twice_gets_a_502_and_shows_nothing(
    client: httpx.Client,
) -> None:
    bad = client.get("/api/v1/smuggle-response")
    assert bad.status_code == 502 and "broke the exchange" in bad.json()["message"]
    assert b"smuggle" not in bad.content.replace(b"smuggle-response", b"")
    after = client.get("/api/v1/items")  # the next request is answered by its own response
    assert after.status_code == 200 and after.json()["path"] == "/base/v1/items"


def test_a_close_delimited_answer_is_chunked_and_the_connection_stays(
    hgw: RunningGateway, client: httpx.Client
) -> None:
    r = client.get("/api/v1/until-close")
    assert r.content == b"read until the close"
    assert r.headers["transfer-encoding"] == "chunked"
    assert client.get("/api/v1/items").status_code == 200
    responses = [e["attrs"] for e in _events(hgw) if e["type"] == "response"]
    assert any(a.get("body") == "read until the close" for a in responses)


def test_head_and_pipelined_requests(hgw: RunningGateway) -> None:
    auth = f"Authorization: Bearer {hgw.token()}\r\n"
    raw = (f"HEAD /api/v1/items HTTP/1.1\r\nHost: gw\r\n{auth}\r\n"
           f"GET /api/v1/items HTTP/1.1\r\nHost: gw\r\n{auth}\r\n"
           f"GET /api/v1/whoami HTTP/1.1\r\nHost: gw\r\n{auth}"
           "Connection: close\r\n\r\n").encode()  # fmt: skip
    reply = raw_exchange(hgw, raw)
    assert reply.count(b"HTTP/1.1 ") == reply.count(b"HTTP/1.1 200 OK") == 3, reply[:500]
    head, _, rest = reply.partition(b"\r\n\r\n")
    assert b"content-length: 1234" in head.lower()
    assert rest.startswith(b"HTTP/1.1 200 OK")  # the HEAD's answer carried no body
    assert b'"/base/v1/items"' in rest and b'"/base/v1/whoami"' in rest
    assert rest.index(b"/base/v1/items") < rest.index(b"/base/v1/whoami")


def test_an_http_10_client_gets_no_chunks(hgw: RunningGateway) -> None:
    raw = (f"GET /api/v1/chunked HTTP/1.0\r\nHost: gw\r\nAuthorization: Bearer {hgw.token()}"
           "\r\n\r\n").encode()  # fmt: skip
    head, _, body = raw_exchange(hgw, raw).partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ") and b"transfer-encoding" not in head.lower()
    assert body == b"one two three"  # delimited by the close, as RFC 9112 §6.1 asks


def test_a_trailer_flood_is_cut_off_and_recorded(hgw: RunningGateway, client: httpx.Client) -> None:
    # httptools gathers a trailer whole before the gateway sees it: without the bound, the
    # gateway read on for as long as the client sent (96 MiB were measured, held in memory).
    head = (f"POST /api/v1/echo HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {hgw.token()}\r\n"
            "Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\nX-Trailer: ").encode()  # fmt: skip
    block, offered, sent, reply = b"v" * 65_536, 64 << 20, 0, b""
    with socket.create_connection(hgw.address("http"), 10) as sock:
        try:
            sock.sendall(head)
            while sent < offered:
                sock.sendall(block)
                sent += len(block)
        except OSError:  # the gateway stopped reading and closed: the ground truth here
            pass
        with contextlib.suppress(OSError):
            while data := sock.recv(65_536):
                reply += data
    assert sent < offered // 4, f"the gateway read {sent} bytes of one trailer"
    assert not reply or reply.startswith(b"HTTP/1.1 400 "), reply[:200]
    hgw.wait_closed()
    errors = [e["attrs"]["message"] for e in _events(hgw) if e["type"] == "protocol_error"]
    assert any("chunk lines or trailers exceed 65536 bytes" in m for m in errors), errors
    assert client.get("/api/v1/items").status_code == 200  # others are unaffected


def test_an_error_inside_a_session_is_recorded_as_the_client_read_it(hgw: RunningGateway) -> None:
    # Found by review: the gateway's own answers (400, 408, 503/401 at an end) were written
    # to the client but not to the session's frames.
    auth = f"Authorization: Bearer {hgw.token()}\r\n"
    raw = (f"GET /api/v1/items HTTP/1.1\r\nHost: gw\r\n{auth}\r\n"
           f"GET /api/v1/items HTTP/1.1\nHost: gw\n\n").encode()  # fmt: skip
    reply = raw_exchange(hgw, raw)
    assert reply.startswith(b"HTTP/1.1 200 ") and b"HTTP/1.1 400 " in reply, reply[:300]
    hgw.wait_closed()
    ((sid, _),) = hgw.events().items()
    told = b"".join(f.data for f in hgw.frames(sid) if f.direction.short == "s2c")
    assert b"HTTP/1.1 400 " in told and b"malformed HTTP request" in told

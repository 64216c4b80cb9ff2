"""The sans-IO pieces of the HTTP and SSH gateways, driven with bytes only."""

from __future__ import annotations

import hashlib
import struct

from gateway_task.protocols.http import exchange as x
from gateway_task.protocols.http.websocket import WebSocketObserver
from gateway_task.protocols.ssh.sftp import SftpObserver
from tapegate.tape import Direction


def _pkt(kind: int, *fields: bytes) -> bytes:
    body = bytes([kind]) + b"".join(fields)
    return struct.pack(">I", len(body)) + body


def _s(data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + data


def test_routes_and_header_rewriting() -> None:
    assert x.route(b"/api/v1/items?x=1") == x.Route("api", "/v1/items?x=1")
    assert x.route(b"/api") == x.Route("api", "/")
    assert x.route(b"*") is None and x.route(b"/") is None
    headers = [(b"host", b"gw"), (b"authorization", b"Bearer tok"), (b"connection", b"close"),
               (b"x-api-key", b"client-supplied"), (b"accept", b"*/*")]  # fmt: skip
    out = x.upstream_request_headers(headers, b"up:9000", (b"x-api-key", b"SECRET"), "10.0.0.1:5")
    assert out == [(b"host", b"up:9000"), (b"accept", b"*/*"),
                   (b"x-forwarded-for", b"10.0.0.1"), (b"x-api-key", b"SECRET")]  # fmt: skip
    assert (
        x.bearer_token(headers) == "tok"
        and x.bearer_token([(b"authorization", b"Basic a")]) is None
    )
    assert ["x-api-key", "[redacted]"] in x.recorded_headers(out)


def test_sftp_upload_digest_and_garbage() -> None:
    seen = SftpObserver(lambda: 1)
    data = b"hello world" * 1000
    seen.from_client(
        _pkt(3, struct.pack(">I", 1), _s(b"/tmp/f"), struct.pack(">I", 0x1A), b"\0" * 4)
    )
    seen.from_server(_pkt(102, struct.pack(">I", 1), _s(b"H1")))
    # Two writes split across reads, in order.
    stream = _pkt(6, struct.pack(">I", 2), _s(b"H1"), struct.pack(">Q", 0), _s(data[:5000]))
    stream += _pkt(6, struct.pack(">I", 3), _s(b"H1"), struct.pack(">Q", 5000), _s(data[5000:]))
    for i in range(0, len(stream), 777):
        seen.from_client(stream[i : i + 777])
    seen.from_client(_pkt(4, struct.pack(">I", 4), _s(b"H1")))
    (event,) = seen.from_server(_pkt(101, struct.pack(">I", 4), struct.pack(">I", 0), _s(b""),
                                     _s(b"")))  # fmt: skip
    assert event.attrs == {"op": "upload", "path": "/tmp/f", "mode": "write", "bytes": len(data),
                           "result": "ok", "sha256": hashlib.sha256(data).hexdigest()}  # fmt: skip
    (bad,) = seen.from_client(b"\xff\xff\xff\xff garbage")
    assert bad.type == "sftp_protocol_error" and seen.from_client(b"more") == []


def test_websocket_observer_refuses_unmasked_client_frames() -> None:
    watch = WebSocketObserver(Direction.CLIENT_TO_SERVER, 100, lambda: 1)
    (event,) = watch.feed(b"\x81\x05hello")  # a client frame must be masked
    assert event.type == "ws_protocol_error" and watch.feed(b"\x81\x05hello") == []

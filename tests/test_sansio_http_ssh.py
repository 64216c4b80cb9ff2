"""The sans-IO pieces of the HTTP and SSH gateways, driven with bytes only."""

from __future__ import annotations

import hashlib
import json
import struct

from hypothesis import assume, given
from hypothesis import strategies as st

from tapegate.protocols.http import exchange as x
from tapegate.protocols.http import paths
from tapegate.protocols.http.websocket import WebSocketObserver
from tapegate.protocols.ssh.scp import ScpObserver
from tapegate.protocols.ssh.sftp import SftpObserver
from tapegate.tape import Direction


def _pkt(kind: int, *fields: bytes) -> bytes:
    body = bytes([kind]) + b"".join(fields)
    return struct.pack(">I", len(body)) + body


def _s(data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + data


def test_routes_and_header_rewriting() -> None:
    assert paths.route(b"/api/v1/items?x=1") == paths.Route("api", "/v1/items?x=1")
    assert paths.route(b"/api") == paths.Route("api", "/")
    assert paths.route(b"*") is None and paths.route(b"/") is None
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


def test_scp_commands_are_recognised() -> None:
    def kind(command: str) -> tuple[bool, str] | None:
        o = ScpObserver.for_command(command, lambda: 0)
        return None if o is None else (o.upload, o.target)

    assert kind("scp -t /srv/x") == (True, "/srv/x")
    assert kind("/usr/bin/scp -r -p -t -- '-odd name'") == (True, "-odd name")
    assert kind("scp -f dir/file") == (False, "dir/file")
    assert kind("scp a b") is None and kind("ls -t /x") is None and kind("scp -t 'x") is None


def test_scp_stream_in_any_split_with_a_refusal_and_a_source_error() -> None:
    body = bytes(range(256)) * 40
    # An upload in protocol order: each source message (client) waits for the sink's answer.
    talk = [
        (b"D0755 0 dir\n", b"\0"),
        (b"C0644 %d f.bin\n" % len(body), b"\0"),
        (body + b"\0", b"\0"),
        (b"C0600 5 no.txt\n", b"\x01scp: no.txt: Permission denied\n"),  # refused: no bytes
        (b"E\n", b"\0"),
        (b"C0644 6 bad\n", b"\0"),
        (b"abcdef\x01read error\n", b"\0"),  # the source failed reading it
    ]
    for split in (1, 7, 1 << 20):
        o = ScpObserver(upload=True, target="/srv", clock=lambda: 1)
        events = o.from_server(b"\0")  # the sink is ready
        for message, answer in talk:
            for i in range(0, len(message), split):
                events += o.from_client(message[i : i + split])
            events += o.from_server(answer)
        events += o.close()
        got = [(e.attrs["path"], e.attrs["bytes"], e.attrs["sha256"], e.attrs["result"])
               for e in events if e.type == "scp"]  # fmt: skip
        assert got == [
            ("dir/f.bin", len(body), hashlib.sha256(body).hexdigest(), "ok"),
            ("dir/no.txt", 0, None, "scp: no.txt: Permission denied"),
            ("bad", 6, hashlib.sha256(b"abcdef").hexdigest(), "source error: read error"),
        ], split


def test_scp_garbage_becomes_one_protocol_error_and_relaying_goes_on() -> None:
    o = ScpObserver(upload=False, target="x", clock=lambda: 1)
    o.from_client(b"\0")
    events = o.from_server(b"HELLO not scp\n")
    assert [e.type for e in events] == ["scp_protocol_error"]
    assert o.from_server(b"C0644 1 f\n") == [] and o.failed


@given(st.binary(max_size=40), st.binary(min_size=8, max_size=12), st.integers(0, 40))
def test_the_masker_finds_the_credential_across_any_split(
    noise: bytes, secret: bytes, cut: int
) -> None:
    assume(b"*" not in secret)
    body = noise + secret + noise[::-1] + secret[:5]
    masker = x.Masker(secret)
    out = masker.feed(body[:cut]) + masker.feed(body[cut:]) + masker.flush()
    assert len(out) == len(body) and secret not in out and masker.masked >= 1
    # The tail held back is the longest end that could start the credential, no more.
    naive = next((n for n in range(min(len(secret) - 1, len(body)), 0, -1)
                  if body.endswith(secret[:n])), 0)  # fmt: skip
    assert x._partial_tail(body, secret) == naive


def test_a_credential_is_masked_as_json_writes_it_and_whole_when_it_holds_another() -> None:
    pem = b'-----BEGIN KEY-----\nMIIB"quoted"\\x\n-----END KEY-----'
    masker = x.Masker(pem, b"abcdefgh", b"XXabcdefghYY")
    escaped = json.dumps({"k": pem.decode()}).encode()  # what a JSON answer holds: \n, \", \\
    out = masker.feed(escaped + b" XXabcdefghYY abcdefgh") + masker.flush()
    assert b"BEGIN KEY" not in out and b"abcdefgh" not in out
    assert b"XX" not in out  # the longer credential masked whole, not around the shorter
    assert masker.masked == 3

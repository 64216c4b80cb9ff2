"""The fault tests' own stand-ins do what the tests rely on: the proxy refuses and resets when
stopped and serves again on the same port, and the Firehose stand-in delivers what a separate
process's boto3 sends to AWS_ENDPOINT_URL_FIREHOSE (as `tapegate up` will)."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.capture import TcpProxy
from tests.faults.firehose import FirehoseStandIn, firehose_behind_proxy, gateway_env
from tests.tapes import record_session


@pytest.fixture
def echo() -> Iterator[tuple[str, int]]:
    server = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            threading.Thread(target=_echo, args=(conn,), daemon=True).start()

    threading.Thread(target=serve, daemon=True).start()
    yield server.getsockname()[:2]
    server.close()


def _echo(conn: socket.socket) -> None:
    with conn, contextlib.suppress(ConnectionResetError):  # the proxy resets this side too
        while data := conn.recv(4096):
            conn.sendall(data)


def _roundtrip(port: int) -> tuple[socket.socket, bytes]:
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    sock.sendall(b"ping")
    return sock, sock.recv(4)


@pytest.mark.slow
def test_proxy_stop_refuses_and_resets_then_start_serves_on_the_same_port(
    echo: tuple[str, int],
) -> None:
    proxy = TcpProxy(echo)
    try:
        open_conn, reply = _roundtrip(proxy.port)
        assert reply == b"ping"
        proxy.stop()
        with pytest.raises(ConnectionResetError):  # an RST, not an orderly FIN
            open_conn.sendall(b"more")
            if not open_conn.recv(4):
                pytest.fail("the open connection got a FIN, not a reset")
        open_conn.close()
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", proxy.port), timeout=5)
        proxy.start()
        again, reply = _roundtrip(proxy.port)
        again.close()
        assert reply == b"ping"
    finally:
        proxy.close()


SEND = """
import sys, boto3
records = [bytes.fromhex(line) for line in open(sys.argv[2]).read().split()]
client = boto3.client("firehose", region_name="us-east-1")
out = client.put_record_batch(DeliveryStreamName=sys.argv[1],
                              Records=[{"Data": r} for r in records])
print(out["FailedPutCount"])
"""


def _send(stream: str, records: list[bytes], tmp_path: Path, proxy: TcpProxy) -> str:
    path = tmp_path / "records.hex"
    path.write_text("\n".join(r.hex() for r in records))
    env = {**os.environ, **gateway_env(proxy)}
    out = subprocess.run([sys.executable, "-c", SEND, stream, str(path)], env=env,
                         capture_output=True, text=True, timeout=60)  # fmt: skip
    return out.stdout + out.stderr


@pytest.mark.slow
def test_firehose_standin_delivers_what_boto3_sends_through_the_proxy(tmp_path: Path) -> None:
    records = record_session(exchanges=4).records
    with firehose_behind_proxy() as (firehose, proxy):
        assert isinstance(firehose, FirehoseStandIn)
        assert _send(firehose.stream, records[:2], tmp_path, proxy).strip() == "0"
        assert _send(firehose.stream, records[2:], tmp_path, proxy).strip() == "0"
        assert len(firehose.object_keys()) == 2, "one S3 object per PutRecordBatch"
        assert sorted(firehose.delivered_records()) == sorted(records)  # order is not kept
        missing = _send("no-such-stream", records[:1], tmp_path, proxy)
        assert "ResourceNotFoundException" in missing

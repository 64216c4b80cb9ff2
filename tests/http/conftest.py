from __future__ import annotations

import os
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from websockets.sync.server import ServerConnection, serve

from tapegate.config import Config, parse_config
from tests.gateway_harness import RunningGateway
from tests.http_upstream import API_KEY, HttpUpstream
from tests.pg import free_port

API_KEY_ENV = "TAPEGATE_TEST_API_KEY"


@pytest.fixture(scope="session")
def upstream() -> Iterator[HttpUpstream]:
    server = HttpUpstream()
    yield server
    server.close()


def _echo(ws: ServerConnection) -> None:
    for message in ws:
        if message == "close-me":
            ws.close(4000, "asked to")
            return
        if message == "show-credential":  # a debugging upstream, echoing what it was sent
            ws.send(f"you sent {ws.request.headers['Authorization']}")  # type: ignore[union-attr]
            continue
        ws.send(message)


@pytest.fixture(scope="session")
def ws_upstream() -> Iterator[str]:
    server = serve(_echo, "127.0.0.1", 0, compression="deflate")
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.socket.getsockname()[1]}"
    server.shutdown()


def http_config(data_dir: Path, api_url: str, ws_url: str, **overrides: Any) -> Config:
    os.environ[API_KEY_ENV] = API_KEY
    inject = {"name": "X-Api-Key", "value_env": API_KEY_ENV}
    raw: dict[str, Any] = {
        "data_dir": str(data_dir),
        "identity": {"issuer": "dev", "dev_listen": f"127.0.0.1:{free_port()}"},
        "listen": {"http": "127.0.0.1:0"},
        "tls": "optional",
        "sink": {"flush_ms": 50},
        "recording": {"max_age_ms": 50, "body_cap": 1024},
        "targets": [
            {"name": "api", "protocol": "http", "upstream": api_url + "/base",
             "inject_header": inject, "allow_groups": ["agents"]},
            {"name": "admin", "protocol": "http", "upstream": api_url,
             "inject_header": inject, "allow_groups": ["admins"]},
            {"name": "ws", "protocol": "http", "upstream": ws_url,
             "inject_header": {"name": "Authorization", "prefix": "Bearer ",
                               "value_env": API_KEY_ENV}, "allow_groups": ["agents"]},
            {"name": "down", "protocol": "http", "upstream": f"http://127.0.0.1:{free_port()}",
             "inject_header": inject, "allow_groups": ["agents"]},
        ],
    }  # fmt: skip
    raw.update(overrides)
    return parse_config(raw)


@pytest.fixture
def hgw(upstream: HttpUpstream, ws_upstream: str, tmp_path: Path) -> Iterator[RunningGateway]:
    running = RunningGateway(http_config(tmp_path / "data", upstream.url, ws_upstream))
    host, port = running.address("http")
    running.base = f"http://{host}:{port}"  # type: ignore[attr-defined]
    yield running
    running.stop()


def raw_exchange(gw: RunningGateway, raw: bytes) -> bytes:
    """These bytes to the HTTP listener as they are (no client would send them), and all it
    answers until it closes."""
    with socket.create_connection(gw.address("http"), 10) as sock:
        sock.sendall(raw)
        sock.shutdown(socket.SHUT_WR)
        out = bytearray()
        while data := sock.recv(65536):
            out += data
    return bytes(out)

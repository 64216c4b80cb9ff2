from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tapegate.config import parse_config
from tests.gateway_harness import RunningGateway
from tests.pg import free_port

KEY_ENV = "TAPEGATE_TEST_MCP_KEY"
MCP_KEY = "mcp-upstream-secret-5f2c9a"  # generated for the tests: the target's own credential


class McpUpstream:
    """The SDK's server in its own process, and what it logged."""

    def __init__(self, tmp: Path, json_response: bool = False, resumable: bool = False) -> None:
        self.port = free_port()
        self.log = tmp / f"upstream-{self.port}.jsonl"
        args = [sys.executable, str(Path(__file__).with_name("upstream.py")), str(self.port),
                str(self.log)] + (["--json"] if json_response else []) + (
                ["--resumable"] if resumable else [])  # fmt: skip
        self.proc = subprocess.Popen(args, cwd=Path(__file__).parents[2])
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), 0.2).close()
                break
            except OSError:
                time.sleep(0.1)
        else:
            self.proc.kill()
            raise RuntimeError("the MCP upstream did not start")
        self.url = f"http://127.0.0.1:{self.port}/mcp"

    def entries(self) -> list[dict[str, Any]]:
        if not self.log.exists():
            return []
        return [json.loads(line) for line in self.log.read_text().splitlines()]

    def calls(self) -> list[dict[str, Any]]:
        return [e for e in self.entries() if "called" in e]

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


@pytest.fixture(scope="session")
def mcp_upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[McpUpstream]:
    server = McpUpstream(tmp_path_factory.mktemp("mcp"))
    yield server
    server.close()


def mcp_config(
    data_dir: Path,
    upstream_url: str,
    max_body_bytes: int = 65536,
    session_idle_s: float = 0.5,
    **overrides: Any,
) -> Any:
    os.environ[KEY_ENV] = MCP_KEY
    raw: dict[str, Any] = {
        "data_dir": str(data_dir),
        "identity": {"issuer": "dev", "dev_listen": f"127.0.0.1:{free_port()}"},
        "listen": {"mcp": "127.0.0.1:0"},
        "tls": "optional",
        "sink": {"flush_ms": 50},
        "recording": {"max_age_ms": 50, "body_cap": 4096},
        "targets": [
            {"name": "tickets", "protocol": "mcp", "upstream": upstream_url,
             "inject_header": {"name": "Authorization", "prefix": "Bearer ",
                               "value_env": KEY_ENV},
             "allow_groups": ["agents"],
             "tools": {"allow": ["search_*", "get_ticket", "run_*", "flaky", "broken",
                                 "echo_key", "store", "change_definition", "slow", "erase",
                                 "announce"],
                       "deny": ["delete_*"]},
             "guardrails": {"deny_args": [{"tool": "run_*", "regex": "rm\\s+-rf"}]},
             "max_body_bytes": max_body_bytes, "session_idle_s": session_idle_s},
        ],
    }  # fmt: skip
    raw.update(overrides)
    return parse_config(raw)


@pytest.fixture
def mgw(mcp_upstream: McpUpstream, tmp_path: Path) -> Iterator[RunningGateway]:
    running = RunningGateway(mcp_config(tmp_path / "data", mcp_upstream.url))
    host, port = running.address("mcp")
    running.base = f"http://{host}:{port}"  # type: ignore[attr-defined]
    yield running
    running.stop()

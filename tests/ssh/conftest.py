from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway_task.devtools.throwaway_sshd import SshServer, askpass_env, start_sshd
from tapegate.config import Config, parse_config
from tests.gateway_harness import RunningGateway
from tests.pg import free_port


@pytest.fixture(scope="session")
def sshd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SshServer]:
    server = start_sshd(tmp_path_factory.mktemp("sshd"))
    yield server
    server.stop()


def ssh_config(data_dir: Path, sshd: SshServer, **overrides: Any) -> Config:
    common = {"protocol": "ssh", "upstream": f"{sshd.host}:{sshd.port}", "username": sshd.user,
              "private_key_file": str(sshd.key_file),
              "known_hosts": str(sshd.known_hosts)}  # fmt: skip
    raw: dict[str, Any] = {
        "data_dir": str(data_dir),
        "identity": {"issuer": "dev", "dev_listen": f"127.0.0.1:{free_port()}"},
        "listen": {"ssh": "127.0.0.1:0"},
        "sink": {"flush_ms": 50},
        "recording": {"max_age_ms": 50},
        "targets": [
            {"name": "web1", "allow_groups": ["agents"],
             "guardrails": {"deny": [{"regex": "rm\\s+-rf\\s+/"}, {"regex": "^shutdown\\b"}]},
             **common},
            # known_hosts as the lines themselves (as on Fargate, where no file can be)
            {"name": "web1fwd", "allow_groups": ["agents"], "allow_port_forwarding": True,
             **common, "known_hosts": sshd.known_hosts.read_text()},
            {"name": "admin1", "allow_groups": ["admins"], **common},
            {**common, "name": "down1", "allow_groups": ["agents"],
             "upstream": f"127.0.0.1:{free_port()}"},
        ],
    }  # fmt: skip
    raw.update(overrides)
    return parse_config(raw)


@pytest.fixture
def sgw(sshd: SshServer, tmp_path: Path) -> Iterator[RunningGateway]:
    running = RunningGateway(ssh_config(tmp_path / "data", sshd))
    yield running
    running.stop()


def openssh(
    gw: RunningGateway,
    target: str,
    token: str,
    *args: str,
    input: bytes | None = None,
    tool: str = "ssh",
    timeout: float = 60,
) -> subprocess.CompletedProcess[bytes]:
    """Run the real OpenSSH client (ssh, scp or sftp) against the gateway, token as password."""
    host, port = gw.address("ssh")
    folder = Path(gw.config.data_dir).parent
    env = askpass_env(folder, token)
    known = folder / "gateway_known_hosts"
    pub = (Path(gw.config.data_dir) / "ssh" / "host_ed25519.pub").read_text().split()
    known.write_text(f"[{host}]:{port} {pub[0]} {pub[1]}\n")
    port_flag = "-p" if tool == "ssh" else "-P"
    opts = ["-o", f"UserKnownHostsFile={known}", "-o", "StrictHostKeyChecking=yes",
            "-o", "PreferredAuthentications=password", "-o", "NumberOfPasswordPrompts=1",
            "-o", "BatchMode=no", "-F", "/dev/null", port_flag, str(port)]  # fmt: skip
    if tool == "ssh":
        argv = ["ssh", *opts, f"{target}@{host}", *args]
    else:
        argv = [tool, *opts, *[a.replace("GW:", f"{target}@{host}:") for a in args]]
    return subprocess.run(argv, input=input, capture_output=True, env=env, timeout=timeout)

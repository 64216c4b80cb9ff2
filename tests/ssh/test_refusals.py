"""Refused logins and failing targets over SSH: a clear reason, a recording, bystanders unharmed."""

from __future__ import annotations

import asyncio
import os
import socket
import threading
from dataclasses import replace
from pathlib import Path

import asyncssh
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gateway_task.devtools.throwaway_sshd import SshServer
from gateway_task.server import ssh as ssh_server
from tapegate.config import Address
from tests.bad_tokens import bad_tokens
from tests.gateway_harness import RunningGateway
from tests.ssh.conftest import openssh, ssh_config

pytestmark = pytest.mark.slow


def _refusals(gw: RunningGateway) -> list[dict[str, object]]:
    return [e["attrs"] for evs in gw.events().values() for e in evs
            if e["type"] == "auth" and e["attrs"]["result"] == "refused"]  # fmt: skip


def test_bad_tokens_wrong_group_and_unknown_target(sgw: RunningGateway) -> None:
    cases = bad_tokens(sgw)
    for name, (token, phrase) in [*list(cases.items())[:5], ("garbage", cases["garbage"])]:
        done = openssh(sgw, "web1", token, "true")
        assert done.returncode == 255, name
        assert b"Permission denied" in done.stderr and phrase.encode() in done.stderr, name
    group = openssh(sgw, "admin1", sgw.token(), "true")
    assert b"admits groups admins" in group.stderr
    unknown = openssh(sgw, "nosuch", sgw.token(), "true")
    assert b"unknown target 'nosuch'" in unknown.stderr
    reasons = [r["reason"] for r in _refusals(sgw)]
    assert len(reasons) == 8 and any("admits groups" in str(r) for r in reasons)
    assert openssh(sgw, "web1", sgw.token(), "echo fine").stdout == b"fine\n"


def test_changed_host_key_and_unreachable_target(sshd: SshServer, tmp_path: Path) -> None:
    config = ssh_config(tmp_path / "data", sshd)
    wrong = tmp_path / "wrong_known_hosts"
    other = (sshd.folder / "gateway_ed25519.pub").read_text().split()  # not the host's key
    wrong.write_text(f"[{sshd.host}]:{sshd.port} {other[0]} {other[1]}\n")
    targets = dict(config.targets)
    targets["web1"] = replace(targets["web1"], known_hosts=wrong)
    gw = RunningGateway(replace(config, targets=targets))
    try:
        changed = openssh(gw, "web1", gw.token(), "true")
        assert changed.returncode == 255
        assert b"host key its known_hosts does not list" in changed.stderr
        down = openssh(gw, "down1", gw.token(), "true")
        assert b"unreachable from the gateway" in down.stderr
        assert openssh(gw, "web1fwd", gw.token(), "echo ok").stdout == b"ok\n"
        gw.wait_closed()
        errors = [e["attrs"]["reason"] for evs in gw.events().values() for e in evs
                  if e["type"] == "upstream_error"]  # fmt: skip
        assert len(errors) == 2
    finally:
        gw.stop()


def test_gateway_host_key_persists_and_key_never_leaks(sshd: SshServer, tmp_path: Path) -> None:
    config = ssh_config(tmp_path / "data", sshd)
    first = RunningGateway(config)
    token = first.token()
    assert openssh(first, "web1", token, "echo 1").stdout == b"1\n"
    first.stop()
    second = RunningGateway(config)
    try:
        # The client pinned the first run's host key (openssh writes it from the data dir and
        # checks strictly): the same key serves again.
        assert openssh(second, "web1", second.token(), "echo 2").stdout == b"2\n"
    finally:
        second.stop()
    secret = sshd.key_file.read_bytes().split(b"\n")[2]  # key material (line 1 is a header)
    for path in Path(config.data_dir).rglob("*"):
        if path.is_file():
            assert secret not in path.read_bytes(), path
            assert token.encode() not in path.read_bytes(), path


def test_hanging_and_dropping_target(sgw: RunningGateway, monkeypatch: pytest.MonkeyPatch) -> None:
    # A target that accepts TCP and never speaks SSH: the login waits UPSTREAM_TIMEOUT_S, then
    # the client's channel is refused with the reason.
    monkeypatch.setattr(ssh_server, "UPSTREAM_TIMEOUT_S", 1.0)
    silent = socket.create_server(("127.0.0.1", 0))
    held: list[socket.socket] = []
    threading.Thread(target=lambda: held.append(silent.accept()[0]), daemon=True).start()
    port = silent.getsockname()[1]
    targets = dict(sgw.gateway.config.targets)
    targets["down1"] = replace(targets["down1"], upstream=Address("127.0.0.1", port))
    monkeypatch.setattr(sgw.gateway, "config", replace(sgw.gateway.config, targets=targets))
    hung = openssh(sgw, "down1", sgw.token(), "true")
    assert hung.returncode == 255 and b"did not answer in 1 s" in hung.stderr, hung.stderr
    silent.close()
    # A target that drops the connection mid-command (its session process killed).
    dropped = openssh(sgw, "web1", sgw.token(), "echo started; sleep 0.5; kill -9 $PPID; sleep 5")
    assert dropped.stdout == b"started\n" and dropped.returncode != 0
    assert openssh(sgw, "web1", sgw.token(), "echo fine").stdout == b"fine\n"
    sgw.wait_closed()
    events = sgw.events().values()
    assert any(e["type"] == "upstream_error" and "did not answer" in e["attrs"]["reason"]
               for evs in events for e in evs)  # fmt: skip
    exits = [e["attrs"] for evs in events for e in evs if e["type"] == "exit"]
    assert {"status": None, "stdin_bytes": 0, "stdout_bytes": 8, "stderr_bytes": 0} in exits, exits


def test_configured_host_key_is_the_one_presented(sshd: SshServer, tmp_path: Path) -> None:
    """keys.ssh_host_key (a seed file here; a Secrets Manager ARN on AWS): every task behind the
    load balancer presents the same key, and none is made in the data dir."""
    seed = os.urandom(32)
    seed_file = tmp_path / "ssh_host_seed.hex"
    seed_file.write_text(seed.hex())
    public = (
        Ed25519PrivateKey.from_private_bytes(seed)
        .public_key()
        .public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    )
    config = ssh_config(tmp_path / "data", sshd, keys={"ssh_host_key": str(seed_file)})
    gw = RunningGateway(config)
    try:
        host, port = gw.address("ssh")
        pinned = asyncssh.import_known_hosts(f"[{host}]:{port} {public.decode()}\n")

        async def run() -> bytes:
            async with asyncssh.connect(host, port, username="web1", password=gw.token(),
                                        known_hosts=pinned, config=None, agent_path=None,
                                        client_keys=None) as conn:  # fmt: skip
                return (await conn.run("echo pinned", check=True)).stdout  # type: ignore[return-value]

        assert asyncio.run(run()) == "pinned\n"
        assert not (Path(config.data_dir) / "ssh").exists()
    finally:
        gw.stop()

"""A throwaway OpenSSH server on a loopback port (for `make demo` and the tests): its own host
key and authorized_keys in a temp dir.

The gateway logs in to it with a key made here; the tests' own client keys never exist: clients
log in to the gateway with tokens.
"""

from __future__ import annotations

import getpass
import os
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from gateway_task.devtools.throwaway_pg import free_port

SSHD = shutil.which("sshd") or "/usr/sbin/sshd"


@dataclass
class SshServer:
    host: str
    port: int
    user: str
    folder: Path
    key_file: Path  # the gateway's private key for this server
    known_hosts: Path  # this server's host key, as the gateway's known_hosts
    host_key: Path
    proc: subprocess.Popen[bytes]

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def _keygen(path: Path, kind: str = "ed25519") -> None:
    path.unlink(missing_ok=True)
    path.with_suffix(".pub").unlink(missing_ok=True)
    subprocess.run(["ssh-keygen", "-q", "-t", kind, "-N", "", "-C", "tapegate-test", "-f",
                    str(path)], check=True)  # fmt: skip


def start_sshd(folder: Path) -> SshServer:
    folder = folder.resolve()
    folder.mkdir(parents=True, exist_ok=True)
    port = free_port()
    host_key, client_key = folder / "host_ed25519", folder / "gateway_ed25519"
    _keygen(host_key)
    _keygen(client_key)
    (folder / "authorized_keys").write_bytes(client_key.with_suffix(".pub").read_bytes())
    public = host_key.with_suffix(".pub").read_text().split()
    known_hosts = folder / "known_hosts"
    known_hosts.write_text(f"[127.0.0.1]:{port} {public[0]} {public[1]}\n")
    config = folder / "sshd_config"
    config.write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {host_key}\n"
        f"AuthorizedKeysFile {folder}/authorized_keys\nPidFile {folder}/sshd.pid\n"
        "UsePAM no\nStrictModes no\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n"
        "PermitRootLogin prohibit-password\nSubsystem sftp internal-sftp\n"
        "AllowTcpForwarding yes\nMaxSessions 100\nMaxStartups 100:30:200\nLogLevel ERROR\n"
        # Debian's default (LANG LC_*) and more, so that the gateway's allow_env is what decides.
        "AcceptEnv LANG LC_* TAPE_* EVIL_*\n"
    )
    if os.geteuid() == 0:
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # privilege separation needs it
    log = (folder / "sshd.log").open("wb")
    proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(config)], stdout=log, stderr=log)
    deadline = time.monotonic() + 10
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                why = (folder / "sshd.log").read_text()
                raise RuntimeError(f"sshd did not start: {why}") from None
            time.sleep(0.05)
    return SshServer("127.0.0.1", port, getpass.getuser(), folder, client_key, known_hosts,
                     host_key, proc)  # fmt: skip


def askpass_env(folder: Path, token: str) -> dict[str, str]:
    """The environment that makes OpenSSH's ssh/scp/sftp answer the password prompt with `token`.

    The token goes to a 0600 file the script reads, not into the script or the command line.
    """
    folder.mkdir(parents=True, exist_ok=True)
    token_file, script = folder / "token", folder / "askpass.sh"
    fd = os.open(token_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(token)
    script.write_text(f"#!/bin/sh\ncat {token_file}\n")
    script.chmod(0o700)
    return {**os.environ, "SSH_ASKPASS": str(script), "SSH_ASKPASS_REQUIRE": "force",
            "DISPLAY": ":0"}  # fmt: skip

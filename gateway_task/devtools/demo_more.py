"""The SSH and HTTP part of `make demo`: a throwaway sshd and a small JSON API behind the gateway,
one `ssh` command and one `curl` call through it, each with the agent's token."""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from gateway_task.devtools.throwaway_pg import free_port
from gateway_task.devtools.throwaway_sshd import SshServer, askpass_env

API_KEY_ENV = "TAPEGATE_DEMO_API_KEY"


class _Api(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        ok = self.headers.get("X-Api-Key") == os.environ.get(API_KEY_ENV)
        doc = {"orders": [{"id": 42, "status": "shipped"}]} if ok else {"error": "bad key"}
        body = json.dumps(doc).encode()
        self.send_response(200 if ok else 401)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def start_api() -> tuple[ThreadingHTTPServer, str]:
    os.environ[API_KEY_ENV] = "demo-" + secrets.token_hex(16)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Api)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"


def listen_and_targets(sshd: SshServer, api_url: str) -> tuple[dict[str, str], list[dict]]:
    listen = {"ssh": f"127.0.0.1:{free_port()}", "http": f"127.0.0.1:{free_port()}"}
    targets = [
        {"name": "web1", "protocol": "ssh", "upstream": f"{sshd.host}:{sshd.port}",
         "username": sshd.user, "private_key_file": str(sshd.key_file),
         "known_hosts": str(sshd.known_hosts), "allow_groups": ["agents"],
         "guardrails": {"deny": [{"regex": r"rm\s+-rf"}]}},
        {"name": "api", "protocol": "http", "upstream": api_url,
         "inject_header": {"name": "X-Api-Key", "value_env": API_KEY_ENV},
         "allow_groups": ["agents"]},
    ]  # fmt: skip
    return listen, targets


async def agent_ssh_and_http(addresses: dict[str, str], data_dir: Path, token: str) -> None:
    ssh_host, ssh_port = addresses["ssh"].rsplit(":", 1)
    http_address = addresses["http"]
    work = data_dir / "agent"
    env = askpass_env(work, token)
    pub = (data_dir / "ssh" / "host_ed25519.pub").read_text().split()
    (work / "known_hosts").write_text(f"[{ssh_host}]:{ssh_port} {pub[0]} {pub[1]}\n")
    command = "uname -s; ls / | head -3; echo 'disk check' >&2"
    print("\n   The agent runs a command on host web1 over SSH (token as the password):")
    print(f'   $ ssh -p {ssh_port} web1@{ssh_host} "{command}"')
    await _show(["ssh", "-F", "/dev/null", "-o", f"UserKnownHostsFile={work / 'known_hosts'}",
                 "-o", "StrictHostKeyChecking=yes", "-o", "PreferredAuthentications=password",
                 "-p", ssh_port, f"web1@{ssh_host}", command], env)  # fmt: skip
    url = f"https://localhost:{http_address.rsplit(':', 1)[1]}/api/v1/orders?limit=1"
    print("\n   ...and calls an API through the gateway, which swaps its token for the API key:")
    print(f'   $ curl -H "Authorization: Bearer $TOKEN" {url}')
    await _show(["curl", "-sS", "--cacert", str(data_dir / "tls" / "gateway.crt"), "-H",
                 f"Authorization: Bearer {token}", url], env)  # fmt: skip
    print()


async def _show(argv: list[str], env: dict[str, str]) -> None:
    proc = await asyncio.create_subprocess_exec(
        *argv, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        stdin=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    out, _ = await proc.communicate()
    for line in out.decode(errors="replace").splitlines():
        print(f"   | {line}")

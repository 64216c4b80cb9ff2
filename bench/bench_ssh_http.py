"""SSH and HTTP through the gateway vs direct, in one run (bench/RESULTS.md has the figures).

- HTTP: wrk, keep-alive, 1 KiB responses, against a small asyncio upstream (direct), through
  nginx as a plain reverse proxy (one worker, keep-alive to the upstream, nothing recorded) and
  through `tapegate up` (folder sink, no embedded pipeline, as on Fargate). Goal ≥ 0.2x nginx.
  Then one connection, one request at a time: the time each adds to a request.
- SSH exec round trips: asyncssh runs `true` 200 times on one connection, direct and through.
- scp of a 1 GB file (OpenSSH scp, SFTP protocol), direct, through tapegate, and through a bare
  asyncssh relay (bench/plain_relay.py); the median of 3 alternated runs. Goal ≥ 0.7x direct.
- The ceilings of the libraries: the HTTP readers' and writers' own cost per proxied exchange
  (llhttp through httptools, and h11 for comparison), the bare relay above; and asyncssh's
  encryption rate per cipher a client might pick.

Usage: .venv/bin/python bench/bench_ssh_http.py [--scp-mb 1024] [--seconds 10]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import asyncssh
import h11
import yaml
from asyncssh.encryption import get_encryption, get_encryption_params

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gateway_task.dev_issuer import mint_token
from gateway_task.devtools.throwaway_pg import free_port
from gateway_task.devtools.throwaway_sshd import SshServer, askpass_env, start_sshd
from tapegate.config import load_config
from tapegate.protocols.http import wire

UPSTREAM_RESPONSE = (b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 1024\r\n\r\n"
                     + b"x" * 1024)  # fmt: skip
UPSTREAM = r"""
import asyncio, sys
BODY = b"x" * 1024
RESP = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 1024\r\n\r\n" + BODY
class P(asyncio.Protocol):
    def connection_made(self, t): self.t, self.buf = t, b""
    def data_received(self, d):
        self.buf += d
        n = self.buf.count(b"\r\n\r\n")
        if n:
            self.buf = self.buf[self.buf.rfind(b"\r\n\r\n") + 4:]
            self.t.write(RESP * n)
async def main():
    s = await asyncio.get_running_loop().create_server(P, "127.0.0.1", int(sys.argv[1]))
    await s.serve_forever()
asyncio.run(main())
"""


def wrk(url: str, seconds: int, token: str | None, connections: int = 16) -> float:
    threads = min(2, connections)
    argv = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds}s", url]
    if token:
        argv[1:1] = ["-H", f"Authorization: Bearer {token}"]
    out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
    return float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]


async def exec_rate(host: str, port: int, n: int, **kw: object) -> float:
    async with asyncssh.connect(host, port, known_hosts=None, config=None, agent_path=None,
                                **kw) as conn:  # type: ignore[arg-type]  # fmt: skip
        await conn.run("true", check=True)
        start = time.perf_counter()
        for _ in range(n):
            await conn.run("true", check=True)
        return n / (time.perf_counter() - start)


ROUNDS = 3


def cpu_seconds(pid: int) -> float:
    """CPU time of a process and of its children it has reaped (sshd's session processes)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return sum(int(f) for f in fields[11:15]) / os.sysconf("SC_CLK_TCK")


def scp_run(
    argv: list[str], sshd_pid: int, gateway_pid: int, env: dict[str, str] | None = None
) -> tuple[float, dict[str, float]]:
    """Seconds for one scp, and the CPU seconds the client, gateway and server spent on it."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    server, gateway = cpu_seconds(sshd_pid), cpu_seconds(gateway_pid)
    start = time.perf_counter()
    subprocess.run(argv, check=True, env=env, capture_output=True)
    seconds = time.perf_counter() - start
    time.sleep(0.5)  # sshd reaps its session processes (and so counts their CPU) just after
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    client = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    return seconds, {"client": client, "gateway": cpu_seconds(gateway_pid) - gateway,
                     "server": cpu_seconds(sshd_pid) - server}  # fmt: skip


NGINX_CONF = """
worker_processes 1;
pid {work}/nginx.pid;
error_log {work}/nginx-error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {work}/body;
    proxy_temp_path {work}/proxy;
    fastcgi_temp_path {work}/fastcgi;
    uwsgi_temp_path {work}/uwsgi;
    scgi_temp_path {work}/scgi;
    upstream api {{ server 127.0.0.1:{up_port}; keepalive 32; }}
    server {{
        listen 127.0.0.1:{port};
        location /api/ {{
            proxy_pass http://api/;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
    }}
}}
"""


@contextmanager
def nginx(work: Path, up_port: int) -> Iterator[int]:
    """nginx as a plain reverse proxy in front of the same upstream: the baseline."""
    port = free_port()
    conf = work / "nginx.conf"
    conf.write_text(NGINX_CONF.format(work=work, up_port=up_port, port=port))
    proc = subprocess.Popen(["nginx", "-p", str(work), "-c", str(conf), "-g", "daemon off;"])
    try:
        time.sleep(1)
        yield port
    finally:
        proc.terminate()
        proc.wait(10)


def wire_exchange_seconds(n: int = 20000) -> float:
    """The wire module's own cost of one proxied exchange (read the request, write it upstream,
    read the response, write it back), without sockets: a ceiling for the gateway's HTTP path."""
    request = b"GET /api/v1/x HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer t\r\n\r\n"
    requests = wire.RequestReader()
    start = time.perf_counter()
    for _ in range(n):
        requests.receive(request)
        req = requests.next_event()
        assert isinstance(req, wire.Request) and requests.next_event() is wire.END
        wire.request_head(req.method, b"/v1/x", req.headers, req.body)
        responses = wire.ResponseReader()
        responses.receive(UPSTREAM_RESPONSE)
        resp, body = responses.next_event(), responses.next_event()
        assert isinstance(resp, wire.Response) and isinstance(body, wire.Data)
        assert responses.next_event() is wire.END
        wire.response_head(resp.status, resp.reason, resp.headers, resp.body) + body.data
    return (time.perf_counter() - start) / n


def h11_exchange_seconds(n: int = 20000) -> float:
    """h11's own cost of one proxied exchange (parse the request, write it upstream, parse the
    response, write it back), without sockets: a ceiling for any h11 gateway."""
    token = b"Bearer " + b"t" * 600
    request = b"GET /api/v1/x HTTP/1.1\r\nHost: gw\r\nAuthorization: " + token + b"\r\n\r\n"
    response = UPSTREAM_RESPONSE
    server, client = h11.Connection(h11.SERVER), h11.Connection(h11.CLIENT)
    start = time.perf_counter()
    for _ in range(n):
        server.receive_data(request)
        req = server.next_event()
        assert isinstance(req, h11.Request) and server.next_event() == h11.EndOfMessage()
        headers = [(b"host", b"api"), (b"x-api-key", b"k")]
        client.send(h11.Request(method=req.method, target=b"/v1/x", headers=headers))
        client.send(h11.EndOfMessage())
        client.receive_data(response)
        resp, body = client.next_event(), client.next_event()
        assert isinstance(resp, h11.Response) and isinstance(body, h11.Data)
        client.next_event()
        server.send(h11.Response(status_code=resp.status_code, headers=resp.headers,
                                 reason=resp.reason))  # fmt: skip
        server.send(body)
        server.send(h11.EndOfMessage())
        server.start_next_cycle()
        client.start_next_cycle()
    return (time.perf_counter() - start) / n


def cipher_rates(n: int = 3000) -> None:
    """asyncssh's own cost per 32 KiB packet for each cipher (and MAC) a client might pick: why
    the gateway's SSH listener offers what it offers (gateway_task/server/ssh.py)."""
    print("asyncssh encrypting 32 KiB packets, one core:")
    choices = [(b"aes128-gcm@openssh.com", b""), (b"aes128-ctr", b"umac-64-etm@openssh.com"),
               (b"chacha20-poly1305@openssh.com", b""),
               (b"aes128-ctr", b"hmac-sha2-256-etm@openssh.com")]  # fmt: skip
    packet = os.urandom(32768)
    for enc, mac in choices:
        key_len, iv_len, _, mac_key_len, _, etm = get_encryption_params(enc, mac)
        cipher = get_encryption(enc, os.urandom(key_len), os.urandom(iv_len), mac,
                                os.urandom(mac_key_len), etm)  # fmt: skip
        start = time.perf_counter()
        for seq in range(n):
            cipher.encrypt_packet(seq, b"\0\0\x80\x00", packet)
        rate = n * len(packet) / (time.perf_counter() - start) / 1e6
        print(f"  {enc.decode()} {mac.decode() or '(AEAD)'}: {rate:,.0f} MB/s")


def http_rates(seconds: int, up_port: int, gw_http: str, token: str, work: Path) -> None:
    print("HTTP keep-alive, 1 KiB responses, wrk -t2 -c16:")
    with nginx(work, up_port) as nginx_port:
        direct = wrk(f"http://127.0.0.1:{up_port}/v1/x", seconds, None)
        proxied = wrk(f"http://127.0.0.1:{nginx_port}/api/v1/x", seconds, None)
        through = wrk(f"http://{gw_http}/api/v1/x", seconds, token)
        print(f"  direct {direct:,.0f} req/s, nginx {proxied:,.0f} req/s, tapegate "
              f"{through:,.0f} req/s → {through / proxied:.3f}x nginx (goal ≥ 0.2x), "
              f"{through / direct:.3f}x direct")  # fmt: skip
        for name, cost in (("wire (llhttp)", wire_exchange_seconds()),
                           ("h11", h11_exchange_seconds())):  # fmt: skip
            rate = 1 / cost
            print(f"  {name} alone, no I/O: {cost * 1e6:.1f} µs per proxied exchange → at "
                  f"most {rate:,.0f} req/s on one core = {rate / proxied:.2f}x nginx")  # fmt: skip
        # One connection, one request at a time: what each proxy adds to a request's time.
        one = {name: wrk(url, seconds, tok, connections=1) for name, url, tok in (
            ("direct", f"http://127.0.0.1:{up_port}/v1/x", None),
            ("nginx", f"http://127.0.0.1:{nginx_port}/api/v1/x", None),
            ("tapegate", f"http://{gw_http}/api/v1/x", token))}  # fmt: skip
    added = {k: (1 / one[k] - 1 / one["direct"]) * 1e6 for k in ("nginx", "tapegate")}
    print(f"  one connection: direct {one['direct']:,.0f} req/s, nginx {one['nginx']:,.0f}, "
          f"tapegate {one['tapegate']:,.0f} → nginx adds {added['nginx']:.0f} µs per request, "
          f"tapegate {added['tapegate']:.0f} µs")  # fmt: skip


def exec_rates(sshd: SshServer, gw_ssh: str, token: str) -> None:
    key = asyncssh.read_private_key(sshd.key_file)
    host, port = gw_ssh.rsplit(":", 1)
    d = asyncio.run(exec_rate(sshd.host, sshd.port, 200, username=sshd.user,
                              client_keys=[key]))  # fmt: skip
    t = asyncio.run(exec_rate(host, int(port), 200, username="web1", password=token,
                              client_keys=None))  # fmt: skip
    print(f"SSH exec round trips (asyncssh, `true`, one connection): direct {d:.1f}/s, "
          f"tapegate {t:.1f}/s → {t / d:.2f}x")  # fmt: skip


def scp_rates(
    sshd: SshServer, gw_ssh: str, token: str, gw_pid: int, work: Path, size_mb: int
) -> None:
    host, port = gw_ssh.rsplit(":", 1)
    blob = work / "blob.bin"
    with blob.open("wb") as fh:
        for _ in range(size_mb):
            fh.write(os.urandom(1 << 20))
    opts = ["-F", "/dev/null", "-o", "StrictHostKeyChecking=no",
            "-o", "UserKnownHostsFile=/dev/null", "-q"]  # fmt: skip
    direct_argv = ["scp", *opts, "-i", str(sshd.key_file), "-P", str(sshd.port), str(blob),
                   f"{sshd.user}@{sshd.host}:{work}/direct.bin"]  # fmt: skip
    through_argv = ["scp", *opts, "-o", "PreferredAuthentications=password", "-P", port,
                    str(blob), f"web1@{host}:{work}/through.bin"]  # fmt: skip
    env = askpass_env(work / "agent", token)
    relay_port = free_port()
    relay = subprocess.Popen([sys.executable, str(Path(__file__).with_name("plain_relay.py")),
                              str(relay_port), sshd.host, str(sshd.port), sshd.user,
                              str(sshd.key_file), str(sshd.known_hosts)])  # fmt: skip
    relay_argv = ["scp", *opts, "-o", "PreferredAuthentications=password", "-P", str(relay_port),
                  str(blob), f"web1@127.0.0.1:{work}/relay.bin"]  # fmt: skip
    time.sleep(2)
    runs: dict[str, list[tuple[float, dict[str, float]]]] = {"direct": [], "tapegate": []}
    relayed: list[float] = []
    try:
        for _ in range(ROUNDS):  # alternated: the machine's speed drifts between runs
            runs["direct"].append(scp_run(direct_argv, sshd.proc.pid, gw_pid))
            runs["tapegate"].append(scp_run(through_argv, sshd.proc.pid, gw_pid, env))
            relayed.append(scp_run(relay_argv, sshd.proc.pid, relay.pid, env)[0])
            for name in ("direct.bin", "through.bin", "relay.bin"):
                (work / name).unlink()
    finally:
        relay.terminate()
        relay.wait(10)
    mb = size_mb * 1.048576
    direct_s = statistics.median(secs for secs, _ in runs["direct"])
    through_s = statistics.median(secs for secs, _ in runs["tapegate"])
    relay_s = statistics.median(relayed)
    print(f"scp {size_mb} MiB, median of {ROUNDS}: direct {mb / direct_s:.0f} MB/s, tapegate "
          f"{mb / through_s:.0f} MB/s → {direct_s / through_s:.2f}x direct "
          "(goal ≥ 0.7x)")  # fmt: skip
    print(f"  asyncssh relaying alone (bench/plain_relay.py, nothing recorded): "
          f"{mb / relay_s:.0f} MB/s → {direct_s / relay_s:.2f}x direct")  # fmt: skip
    for name, results in runs.items():
        secs = statistics.median(s for s, _ in results)
        cpu = {k: statistics.median(c[k] for _, c in results) for k in results[0][1]}
        used = ", ".join(f"{k} {v:.1f}" for k, v in cpu.items())
        print(f"  CPU seconds, {name} (medians): {used}; 2 cores x {secs:.1f} s = {2 * secs:.1f}")


@dataclass
class Setup:
    """A throwaway sshd and HTTP upstream, and `tapegate up` in front of both."""

    work: Path
    sshd: SshServer
    up_port: int
    gateway: subprocess.Popen[bytes]
    gw_http: str
    gw_ssh: str
    token: str


@contextmanager
def running() -> Iterator[Setup]:
    work = Path(tempfile.mkdtemp(prefix="tapegate-bench-"))
    sshd = start_sshd(work / "sshd")
    up_port = free_port()
    upstream = subprocess.Popen([sys.executable, "-c", UPSTREAM, str(up_port)])
    os.environ["BENCH_API_KEY"] = "bench-key"
    listen = {"ssh": f"127.0.0.1:{free_port()}", "http": f"127.0.0.1:{free_port()}"}
    raw = {
        "data_dir": str(work / "data"),
        "identity": {"issuer": "dev", "dev_listen": f"127.0.0.1:{free_port()}"},
        "listen": listen,
        "tls": "optional",
        "archive": {"embedded_pipeline": False},
        "targets": [
            {"name": "web1", "protocol": "ssh", "upstream": f"{sshd.host}:{sshd.port}",
             "username": sshd.user, "private_key_file": str(sshd.key_file),
             "known_hosts": str(sshd.known_hosts), "allow_groups": ["agents"]},
            {"name": "api", "protocol": "http", "upstream": f"http://127.0.0.1:{up_port}",
             "inject_header": {"name": "X-Api-Key", "value_env": "BENCH_API_KEY"},
             "allow_groups": ["agents"]},
        ],
    }  # fmt: skip
    cfg_file = work / "tapegate.yaml"
    cfg_file.write_text(yaml.safe_dump(raw))
    config = load_config(cfg_file)
    gw = subprocess.Popen([sys.executable, "-m", "tapegate.cli", "up", "--config", str(cfg_file)],
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        time.sleep(3)
        token = mint_token(config.data_dir, config.identity, "bench", ["agents"], 3600)
        yield Setup(work, sshd, up_port, gw, listen["http"], listen["ssh"], token)
    finally:
        gw.terminate()
        gw.wait(30)
        upstream.terminate()
        sshd.stop()
        subprocess.run(["rm", "-rf", str(work)])


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--scp-mb", type=int, default=1024)
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--only", choices=["http", "exec", "scp", "ciphers"], help="one measure")
    args = ap.parse_args()
    with running() as run:
        if args.only in (None, "http"):
            http_rates(args.seconds, run.up_port, run.gw_http, run.token, run.work)
        if args.only in (None, "exec"):
            exec_rates(run.sshd, run.gw_ssh, run.token)
        if args.only in (None, "ciphers"):
            cipher_rates()
        if args.only in (None, "scp"):
            scp_rates(run.sshd, run.gw_ssh, run.token, run.gateway.pid, run.work, args.scp_mb)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Where the gateway's time goes: py-spy on `tapegate up` during pgbench -S, a COPY, wrk through
the HTTP gateway, or an scp of 256 MiB through the SSH gateway.

    .venv/bin/pip install py-spy
    .venv/bin/python bench/profile_gateway.py pgbench|copy|http|scp [--native]

Prints the figure of the run (TPS or MB/s) and the functions with the most samples in the
gateway's main thread (self and inclusive). The profile itself is written to /tmp.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.bench_gateway import (
    copy_rate,
    pgbench,
    prepare_pgbench,
    start_tapegate,
    tapegate_token,
)
from bench.bench_ssh_http import running, wrk
from gateway_task.devtools.throwaway_pg import start_postgres
from gateway_task.devtools.throwaway_sshd import askpass_env


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["pgbench", "copy", "http", "scp"])
    parser.add_argument("--native", action="store_true", help="include C frames (syscalls)")
    args = parser.parse_args()
    out = Path(tempfile.gettempdir()) / f"tapegate-profile-{args.mode}.txt"
    if args.mode in ("http", "scp"):
        profile_ssh_http(args.mode, out, args.native)
    else:
        profile_postgres(args.mode, out, args.native)
    report(out)


def spy_on(pid: int, out: Path, native: bool) -> subprocess.Popen[bytes]:
    spy_bin = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    argv = [spy_bin, "record", "-p", str(pid), "-o", str(out), "-f", "raw", "-r", "200"]
    spy = subprocess.Popen([*argv, *(["--native"] if native else [])],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    time.sleep(1)
    return spy


def stop(spy: subprocess.Popen[bytes]) -> None:
    spy.send_signal(signal.SIGINT)
    spy.wait(30)


def profile_postgres(mode: str, out: Path, native: bool) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="tapegate-profile-"))
    os.chmod(tmp, 0o755)
    pg = start_postgres()
    try:
        prepare_pgbench(pg)
        gate, port = start_tapegate(pg, tmp)
        token = tapegate_token(tmp)
        spy = spy_on(gate.pid, out, native)
        if mode == "copy":
            rate = copy_rate("127.0.0.1", port, "agent", token, "appdb", 256)
            print(f"COPY through tapegate: {rate:.0f} MB/s")
        else:
            tps = pgbench("127.0.0.1", port, "agent", token, "appdb", 10)
            print(f"pgbench -S through tapegate: {tps:.0f} TPS")
        stop(spy)
        gate.send_signal(signal.SIGTERM)
        gate.wait(20)
    finally:
        pg.stop()


def profile_ssh_http(mode: str, out: Path, native: bool) -> None:
    with running() as run:
        spy = spy_on(run.gateway.pid, out, native)
        if mode == "http":
            rate = wrk(f"http://{run.gw_http}/api/v1/x", 10, run.token)
            print(f"HTTP through tapegate (wrk -t2 -c16, 1 KiB): {rate:,.0f} req/s")
        else:
            blob = run.work / "blob.bin"
            blob.write_bytes(os.urandom(256 << 20))
            host, port = run.gw_ssh.rsplit(":", 1)
            argv = ["scp", "-F", "/dev/null", "-o", "StrictHostKeyChecking=no",
                    "-o", "UserKnownHostsFile=/dev/null", "-q", "-o",
                    "PreferredAuthentications=password", "-P", port, str(blob),
                    f"web1@{host}:{run.work}/through.bin"]  # fmt: skip
            env = askpass_env(run.work / "agent", run.token)
            start = time.perf_counter()
            subprocess.run(argv, check=True, env=env, capture_output=True)
            print(f"scp 256 MiB through tapegate: {268.4 / (time.perf_counter() - start):.0f} MB/s")
        stop(spy)


def report(path: Path) -> None:
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if "cmd_up (" not in stack:  # the main thread only (not the sink or issuer threads)
            continue
        # By function, not by line: a function's share is what matters, wherever it was.
        frames = [re.sub(r":\d+\)$", ")", frame) for frame in stack.split(";")]
        total += int(count)
        own[frames[-1]] += int(count)
        for frame in set(frames):
            inclusive[frame] += int(count)
    print(f"{total} samples of the main thread ({path})")
    for frame, n in own.most_common(15):
        print(f"{n / total:6.1%} self  {frame[:120]}")
    for frame, n in inclusive.most_common(30):
        print(f"{n / total:6.1%} incl  {frame[:120]}")


if __name__ == "__main__":
    main()

"""Where the gateway's time goes: py-spy on `tapegate up` during pgbench -S or a COPY.

    .venv/bin/pip install py-spy
    .venv/bin/python bench/profile_gateway.py pgbench|copy [--native]

Prints the figure of the run (TPS or MB/s) and the functions with the most samples in the
gateway's main thread (self and inclusive). The profile itself is written to /tmp.
"""

from __future__ import annotations

import argparse
import os
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
from tapegate.throwaway_pg import start_postgres


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["pgbench", "copy"])
    parser.add_argument("--native", action="store_true", help="include C frames (syscalls)")
    args = parser.parse_args()
    spy_bin = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    tmp = Path(tempfile.mkdtemp(prefix="tapegate-profile-"))
    os.chmod(tmp, 0o755)
    out = Path(tempfile.gettempdir()) / f"tapegate-profile-{args.mode}.txt"
    pg = start_postgres()
    try:
        prepare_pgbench(pg)
        gate, port = start_tapegate(pg, tmp)
        token = tapegate_token(tmp)
        argv = [spy_bin, "record", "-p", str(gate.pid), "-o", str(out), "-f", "raw", "-r", "200"]
        spy = subprocess.Popen([*argv, *(["--native"] if args.native else [])],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
        time.sleep(1)
        if args.mode == "copy":
            rate = copy_rate("127.0.0.1", port, "agent", token, "appdb", 256)
            print(f"COPY through tapegate: {rate:.0f} MB/s")
        else:
            tps = pgbench("127.0.0.1", port, "agent", token, "appdb", 10)
            print(f"pgbench -S through tapegate: {tps:.0f} TPS")
        spy.send_signal(signal.SIGINT)
        spy.wait(30)
        gate.send_signal(signal.SIGTERM)
        gate.wait(20)
    finally:
        pg.stop()
    report(out)


def report(path: Path) -> None:
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if "cli.py" not in stack:  # the main thread only (not the sink or issuer threads)
            continue
        frames = stack.split(";")
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

"""Write a benchmark's figures into bench/RESULTS.md, between markers named after the bench.

Each bench owns one section; re-running it replaces that section and leaves the others alone.
"""

from __future__ import annotations

import platform
import re
import time
from pathlib import Path

RESULTS = Path(__file__).with_name("RESULTS.md")
HEADER = """# Benchmark results

Figures are ratios against a baseline measured in the same run: these machines are shared and
noisy, so absolute numbers move between runs while ratios mostly do not. Each section names the
command that produced it; re-running the command rewrites its section.
"""


def machine() -> str:
    return f"{platform.python_implementation()} {platform.python_version()}, {platform.machine()}"


def write_section(name: str, title: str, command: str, body: str) -> None:
    text = RESULTS.read_text() if RESULTS.exists() else HEADER
    start, end = f"<!-- {name} -->", f"<!-- /{name} -->"
    stamp = time.strftime("%Y-%m-%d", time.gmtime())
    section = f"{start}\n## {title}\n\n`{command}` — {stamp}, {machine()}\n\n{body.rstrip()}\n{end}"
    pattern = re.compile(re.escape(start) + ".*?" + re.escape(end), re.S)
    if pattern.search(text):
        text = pattern.sub(lambda _: section, text)
    else:
        text = text.rstrip() + "\n\n" + section + "\n"
    RESULTS.write_text(text)

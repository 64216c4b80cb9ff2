"""How an SSH session reads in a replay: its events' lines, and the terminal as asciicast v2."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from tapegate.tape import Direction

if TYPE_CHECKING:
    from tapegate.audit.timeline import Replay

Attrs = dict[str, Any]


def _command(a: Attrs) -> str:
    text = " ".join(str(a.get("command") or a.get("sql") or "").split())
    return text + (" …(truncated)" if a.get("sql_truncated") else "")


def _exit(a: Attrs) -> tuple[str, str]:
    took = f"exit     status {a.get('status', a.get('signal'))} (stdout {a.get('stdout_bytes')} B"
    err = " ".join(str(a.get("stderr") or "").split())
    return ("red" if a.get("status") else "green"), took + (
        f", stderr {a.get('stderr_bytes')} B: {err[:120]})" if err else ")"
    )


def _transfer(kind: str) -> Callable[[Attrs], tuple[str, str]]:
    def line(a: Attrs) -> tuple[str, str]:  # scp: the legacy protocol; its paths are in the copy
        digest = f" sha256 {a['sha256'][:16]}…" if a.get("sha256") else ""
        size = f" {a.get('bytes')} B" if "bytes" in a else ""
        where = f" (to {a['target']})" if kind == "scp" and a.get("op") == "upload" else ""
        text = f"{kind:<8} {a.get('op')} {a.get('path')}{where}{size}{digest} [{a.get('result')}]"
        return ("red" if a.get("result") not in (None, "ok") else "cyan"), text

    return line


VIEWS: dict[str, Callable[[Attrs], tuple[str, str]]] = {
    "exec": lambda a: ("cyan", f"exec     {_command(a)}"),
    "exit": _exit,
    "sftp": _transfer("sftp"),
    "scp": _transfer("scp"),
}


def asciicast(replay: Replay) -> Iterator[str]:
    """asciicast v2 of a terminal session: output as "o", input as "i", resizes as "r"."""
    start = int(replay.header.get("started_ns") or 0)
    pty = next((e["attrs"] for e in replay.events if e.get("type") == "pty"), {})
    yield json.dumps(
        {
            "version": 2,
            "width": int(pty.get("cols") or 80),
            "height": int(pty.get("rows") or 24),
            "timestamp": start // 10**9,
            "title": f"{replay.header.get('target')} {replay.session_id}",
        }
    )
    items: list[tuple[int, str, str]] = []
    for f in replay.frames:
        code = "o" if f.direction is Direction.SERVER_TO_CLIENT else "i"
        items.append((f.ts_ns, code, f.data.decode("utf-8", errors="replace")))
    for e in replay.events:
        if e.get("type") == "resize":
            a = e.get("attrs") or {}
            items.append((int(e["ts"]), "r", f"{a.get('cols')}x{a.get('rows')}"))
    for ts, code, data in sorted(items, key=lambda i: i[0]):
        yield json.dumps([round((ts - start) / 1e9, 6), code, data], ensure_ascii=False)

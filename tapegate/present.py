"""Turning archive rows into text for people (aligned tables) and scripts (JSON, CSV)."""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import sys
from collections.abc import Sequence
from typing import Any


def plain(value: Any) -> Any:
    """A JSON-friendly value: timestamps as ISO 8601 UTC, bytes as hex."""
    if isinstance(value, dt.datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=dt.UTC)
        return value.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")
    if isinstance(value, dt.date):
        return value.isoformat()
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    return value


def as_json(columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    return json.dumps(
        [{c: plain(v) for c, v in zip(columns, row, strict=True)} for row in rows], indent=2
    )


def as_csv(columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(columns)
    for row in rows:
        writer.writerow([_cell(v) for v in row])
    return buf.getvalue()


def as_table(columns: Sequence[str], rows: Sequence[Sequence[Any]], max_width: int = 60) -> str:
    cells = [[_cell(v)[:max_width] for v in row] for row in rows]
    widths = [max([len(c), *(len(r[i]) for r in cells)]) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip()]
    lines.append("  ".join("-" * w for w in widths))
    for row in cells:
        lines.append("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip())
    lines.append(f"({len(rows)} row{'s' if len(rows) != 1 else ''})")
    return "\n".join(lines)


def _cell(value: Any) -> str:
    value = plain(value)
    if value is None:
        return ""
    if isinstance(value, list):
        return ",".join(str(v) for v in value)
    return str(value).replace("\n", " ")


class Output:
    """Lines for people: styled by rich on a terminal, plain text when piped or redirected."""

    def __init__(self) -> None:
        self._console = None
        if sys.stdout.isatty():
            from rich.console import Console

            self._console = Console(highlight=False)

    def line(self, text: str, style: str = "") -> None:
        if self._console is None:
            print(text, flush=True)
            return
        from rich.text import Text

        self._console.print(Text(text, style=style or ""), soft_wrap=True)

    def pair(self, label: str, value: str, style: str = "") -> None:
        """A `label  value` line with the label in bold on a terminal."""
        if self._console is None:
            print(f"{label:<11} {value}" if label else value, flush=True)
            return
        from rich.text import Text

        text = Text(f"{label:<11} ", style="bold")
        text.append(value, style=style or "")
        self._console.print(text, soft_wrap=True)

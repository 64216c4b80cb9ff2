"""How a PostgreSQL session's events read in a replay: one (style, line) per event type."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

Attrs = dict[str, Any]


def sql(attrs: Attrs) -> str:
    text = " ".join(str(attrs.get("sql") or attrs.get("command") or "").split())
    return text + (" …(truncated)" if attrs.get("sql_truncated") else "")


def params(values: list[Any]) -> str:
    """$1='text', $2=<binary 0019>, $3=NULL; capped values say how long they were."""
    shown = []
    for n, value in enumerate(values, 1):
        if value is None:
            text = "NULL"
        elif isinstance(value, dict) and "binary" in value:
            text = f"<binary {value['binary']}>"
        elif isinstance(value, dict):
            text = f"'{value.get('text')}'…({value.get('length')} bytes)"
        else:
            text = f"'{value}'"
        shown.append(f"${n}={text}")
    return ", ".join(shown) or "(no parameters)"


def _parse(a: Attrs) -> tuple[str, str]:
    return "cyan", f"parse    {sql(a)}" + (f"  [{a['statement']}]" if a.get("statement") else "")


def _result(a: Attrs) -> tuple[str, str]:
    ms = a.get("duration_ns")
    took = f", {ms / 1e6:.2f} ms" if isinstance(ms, int | float) else ""
    rows = a.get("rows")
    return "green", f"result   {a.get('tag')}" + (
        f" ({rows} rows{took})" if rows is not None else f" ({took[2:]})" if took else ""
    )


VIEWS: dict[str, Callable[[Attrs], tuple[str, str]]] = {
    "query": lambda a: ("cyan", f"query    {sql(a)}"),
    "parse": _parse,
    "bind": lambda a: ("", f"bind     {params(a.get('params') or [])}"),
    "execute": lambda a: ("cyan", f"execute  {sql(a)}"),
    "result": _result,
    "error": lambda a: ("red", f"ERROR    {a.get('sqlstate')} {a.get('message')}"),
}

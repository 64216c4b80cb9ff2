"""Replay renderers: a text timeline, JSON lines, asciicast v2, HAR 1.2.

Each takes a Replay and yields output lines; the CLI decides where they go (and adds colour on a
terminal). `TextTimeline` and `JsonLines` are incremental so that `--follow` can feed them the
chunks that arrive after the first screenful.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator
from typing import Any

from tapegate.audit.postgres import ResultReader, ResultSet
from tapegate.audit.timeline import Replay
from tapegate.present import as_table
from tapegate.tape import Direction, Frame


class RenderError(Exception):
    """The format does not fit the session (e.g. asciicast of a SQL session)."""


def _iso(ns: int) -> str:
    return dt.datetime.fromtimestamp(ns / 1e9, dt.UTC).isoformat(timespec="microseconds")


class _Results:
    """Pairs each `result` event with the result set the client was shown (PostgreSQL)."""

    def __init__(self, max_rows: int) -> None:
        self.reader = ResultReader(max_rows)
        self.sets: list[ResultSet] = []
        self.taken = 0

    def feed(self, frames: list[Frame]) -> None:
        for frame in frames:
            if frame.direction is Direction.SERVER_TO_CLIENT:
                self.sets += self.reader.feed(frame.data)

    def next(self) -> ResultSet | None:
        if self.taken >= len(self.sets):
            return None
        self.taken += 1
        return self.sets[self.taken - 1]


class TextTimeline:
    """A timeline for people: one entry per event, offsets from the session's start."""

    def __init__(self, replay: Replay, max_rows: int = 20) -> None:
        self.replay = replay
        self.start = int(replay.header.get("started_ns") or 0)
        self.results = _Results(max_rows) if replay.protocol == "postgres" else None

    def header(self) -> Iterator[tuple[str, str]]:
        h = self.replay.header
        ident = h.get("identity", {})
        yield (
            "bold",
            (
                f"session {self.replay.session_id}  {ident.get('subject')} → "
                f"{h.get('target')} ({h.get('protocol')})  started {_iso(self.start)}"
            ),
        )
        if self.replay.payload_note:
            yield "yellow", self.replay.payload_note

    def lines(self, events: list[dict[str, Any]], frames: list[Frame]) -> Iterator[tuple[str, str]]:
        """(style, text) lines for these events; frames are the decrypted bytes that came with
        them (results are matched in order)."""
        if self.results is not None:
            self.results.feed(frames)
        for ev in events:
            offset = (int(ev.get("ts", self.start)) - self.start) / 1e9
            style, text = _describe(ev)
            yield style, f"+{offset:9.3f}s  {text}"
            if ev.get("type") == "result" and self.results is not None:
                shown = self.results.next()
                if shown is not None:
                    yield from _result_lines(shown)

    def footer(self) -> Iterator[tuple[str, str]]:
        end = self.replay.end
        if end is None:
            yield "yellow", "(no final chunk: the session is open, or was cut short)"
        else:
            totals = end.get("totals", {})
            yield (
                "bold",
                (
                    f"end: {end.get('reason')} at +{(end['ended_ns'] - self.start) / 1e9:.3f}s"
                    f" — {totals.get('events')} events, {totals.get('bytes_c2s')} bytes in,"
                    f" {totals.get('bytes_s2c')} bytes out"
                ),
            )


def _result_lines(shown: ResultSet) -> Iterator[tuple[str, str]]:
    pad = " " * 13
    if shown.columns and shown.rows:
        for line in as_table(shown.columns, shown.rows).splitlines()[:-1]:
            yield "dim", pad + line
    for line in shown.copy_lines:
        yield "dim", pad + line
    if shown.capped > 0:
        yield "dim", pad + f"… {shown.capped} more row(s) not shown (--max-rows)"


def _sql(attrs: dict[str, Any]) -> str:
    sql = " ".join(str(attrs.get("sql") or attrs.get("command") or "").split())
    return sql + (" …(truncated)" if attrs.get("sql_truncated") else "")


def _params(params: list[Any]) -> str:
    """$1='text', $2=<binary 0019>, $3=NULL; capped values say how long they were."""
    shown = []
    for n, value in enumerate(params, 1):
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


def _describe(ev: dict[str, Any]) -> tuple[str, str]:
    kind, a = str(ev.get("type")), ev.get("attrs") or {}
    if kind == "query":
        return "cyan", f"query    {_sql(a)}"
    if kind == "parse":
        return "cyan", f"parse    {_sql(a)}" + (
            f"  [{a['statement']}]" if a.get("statement") else ""
        )
    if kind == "bind":
        return "", f"bind     {_params(a.get('params') or [])}"
    if kind == "execute":
        return "cyan", f"execute  {_sql(a)}"
    if kind == "result":
        ms = a.get("duration_ns")
        took = f", {ms / 1e6:.2f} ms" if isinstance(ms, int | float) else ""
        rows = a.get("rows")
        return "green", f"result   {a.get('tag')}" + (
            f" ({rows} rows{took})" if rows is not None else f" ({took[2:]})" if took else ""
        )
    if kind == "error":
        return "red", f"ERROR    {a.get('sqlstate')} {a.get('message')}"
    if kind == "blocked":
        return "bold red", f"BLOCKED  {_sql(a)}  (guardrail {a.get('rule')})"
    if kind == "exec":
        return "cyan", f"exec     {_sql(a)}"
    if kind == "exit":
        took = (
            f"exit     status {a.get('status', a.get('signal'))} (stdout {a.get('stdout_bytes')} B"
        )
        err = " ".join(str(a.get("stderr") or "").split())
        return ("red" if a.get("status") else "green"), took + (
            f", stderr {a.get('stderr_bytes')} B: {err[:120]})" if err else ")"
        )
    if kind == "request":
        size = f" ({a.get('body_length')} B)" if a.get("body_length") else ""
        return "cyan", f"request  {a.get('method')} {a.get('url')}{size}"
    if kind == "response":
        ms = (a.get("duration_ns") or 0) / 1e6
        return ("red" if int(a.get("status") or 0) >= 400 else "green"), (
            f"response {a.get('status')} {a.get('reason', '')} ({ms:.2f} ms, "
            f"{a.get('body_length', 0)} B)"
        )
    if kind in ("sftp", "scp"):  # scp: the legacy protocol; its paths are inside the copy
        digest = f" sha256 {a['sha256'][:16]}…" if a.get("sha256") else ""
        size = f" {a.get('bytes')} B" if "bytes" in a else ""
        where = f" (to {a['target']})" if kind == "scp" and a.get("op") == "upload" else ""
        line = f"{kind:<8} {a.get('op')} {a.get('path')}{where}{size}{digest} [{a.get('result')}]"
        return ("red" if a.get("result") not in (None, "ok") else "cyan"), line
    if kind == "auth":
        if a.get("result") == "ok":
            return "", f"auth     ok ({a.get('method')}, {a.get('subject')})"
        return (
            "red",
            f"auth     {a.get('result')} {a.get('sqlstate') or ''} {a.get('reason') or ''}",
        )
    rest = json.dumps(a, ensure_ascii=False, separators=(", ", ": "))
    return ("red" if "error" in kind else ""), f"{kind:<8} {rest}"


class JsonLines:
    """One JSON object per event; a result event carries what the client was shown."""

    def __init__(self, replay: Replay, max_rows: int = 20) -> None:
        self.results = _Results(max_rows) if replay.protocol == "postgres" else None
        self.session_id = replay.session_id

    def lines(self, events: list[dict[str, Any]], frames: list[Frame]) -> Iterator[str]:
        if self.results is not None:
            self.results.feed(frames)
        for ev in events:
            out = {
                "session_id": self.session_id,
                "seq": ev.get("seq"),
                "ts": _iso(int(ev.get("ts", 0))),
                "ts_ns": ev.get("ts"),
                "type": ev.get("type"),
                "dir": ev.get("dir"),
                "attrs": ev.get("attrs"),
            }
            if ev.get("type") == "result" and self.results is not None:
                shown = self.results.next()
                if shown is not None:
                    out["shown"] = {
                        "columns": shown.columns,
                        "rows": shown.rows,
                        "copy_lines": shown.copy_lines,
                        "total_rows": shown.total_rows,
                        "not_shown": shown.capped,
                    }
            yield json.dumps(out, ensure_ascii=False)


def asciicast(replay: Replay) -> Iterator[str]:
    """asciicast v2 of a terminal session: output as "o", input as "i", resizes as "r"."""
    if replay.protocol != "ssh":
        raise RenderError(
            f"cast is for terminal (ssh) sessions; this is a {replay.protocol} "
            "session: use --format text or json"
        )
    if not replay.decrypted:
        raise RenderError(f"cast needs the session's bytes; {replay.payload_note}")
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


def har(replay: Replay) -> Iterator[str]:
    """HAR 1.2 of an HTTP session: one entry per `request` event and the `response` after it."""
    if replay.protocol != "http":
        raise RenderError(
            f"har is for HTTP sessions; this is a {replay.protocol} session: "
            "use --format text or json"
        )
    entries: list[dict[str, Any]] = []
    pending: dict[str, Any] | None = None
    for ev in replay.events:
        a = ev.get("attrs") or {}
        if ev.get("type") == "request":
            pending = {
                "startedDateTime": _iso(int(ev["ts"])),
                "time": 0,
                "request": {
                    "method": a.get("method"),
                    "url": a.get("url") or a.get("target"),
                    "httpVersion": a.get("http_version", "HTTP/1.1"),
                    "headers": _har_headers(a),
                    "queryString": [],
                    "cookies": [],
                    "headersSize": -1,
                    "bodySize": a.get("body_length", 0),
                },
                "cache": {},
                "timings": {"send": 0, "wait": 0, "receive": 0},
            }
            if a.get("body") is not None:
                pending["request"]["postData"] = {
                    "mimeType": a.get("content_type", ""),
                    "text": a["body"],
                }
            entries.append(pending)
        elif ev.get("type") == "response" and pending is not None:
            took = (a.get("duration_ns") or 0) / 1e6
            pending["time"] = took
            pending["timings"]["wait"] = took
            pending["response"] = {
                "status": a.get("status"),
                "statusText": a.get("reason", ""),
                "httpVersion": a.get("http_version", "HTTP/1.1"),
                "headers": _har_headers(a),
                "cookies": [],
                "redirectURL": "",
                "content": {
                    "size": a.get("body_length", 0),
                    "mimeType": a.get("content_type", ""),
                    "text": a.get("body") or "",
                },
                "headersSize": -1,
                "bodySize": a.get("body_length", 0),
            }
            pending = None
    for entry in entries:  # a request the upstream never answered still needs a response
        entry.setdefault(
            "response",
            {
                "status": 0,
                "statusText": "no response",
                "httpVersion": "HTTP/1.1",
                "headers": [],
                "cookies": [],
                "redirectURL": "",
                "content": {"size": 0, "mimeType": ""},
                "headersSize": -1,
                "bodySize": -1,
            },
        )
    doc = {
        "log": {
            "version": "1.2",
            "creator": {"name": "tapegate", "version": "0.1"},
            "entries": entries,
        }
    }
    yield json.dumps(doc, indent=2, ensure_ascii=False)


def _har_headers(attrs: dict[str, Any]) -> list[dict[str, str]]:
    return [{"name": str(n), "value": str(v)} for n, v in attrs.get("headers") or []]

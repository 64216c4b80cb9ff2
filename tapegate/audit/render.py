"""Replay renderers: a text timeline and JSON lines for every session, and the formats a
protocol has of its own (asciicast v2 for SSH, HAR 1.2 for HTTP: see its registry entry).

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
from tapegate.protocols.registry import PROTOCOLS
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
            style, text = _describe(self.replay.protocol, ev)
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


def _describe(protocol: str, ev: dict[str, Any]) -> tuple[str, str]:
    """The event's line: its protocol's view (tapegate/protocols/registry.py), or a shared one."""
    kind, a = str(ev.get("type")), ev.get("attrs") or {}
    entry = PROTOCOLS.get(protocol)
    if entry is not None and kind in entry.views:
        return entry.views[kind](a)
    if kind == "blocked":
        what = " ".join(str(a.get("sql") or a.get("command") or "").split())
        return "bold red", f"BLOCKED  {what}  (guardrail {a.get('rule')})"
    if kind == "auth":
        if a.get("result") == "ok":
            return "", f"auth     ok ({a.get('method')}, {a.get('subject')})"
        return (
            "red",
            f"auth     {a.get('result')} {a.get('sqlstate') or ''} {a.get('reason') or ''}",
        )
    rest = json.dumps(a, ensure_ascii=False, separators=(", ", ": "))
    return ("red" if "error" in kind else ""), f"{kind:<8} {rest}"


def render(replay: Replay, fmt: str) -> Iterator[str]:
    """A format only some protocols have (`cast`, `har`), for this session."""
    entry = PROTOCOLS.get(replay.protocol)
    found = entry.formats.get(fmt) if entry is not None else None
    if found is None:
        having = [p.title for p in PROTOCOLS.values() if fmt in p.formats]
        raise RenderError(
            f"{fmt} is for {' and '.join(having)} sessions; this is a {replay.protocol} "
            "session: use --format text or json"
        )
    if found.needs_bytes and not replay.decrypted:
        raise RenderError(f"{fmt} needs the session's bytes; {replay.payload_note}")
    return found.render(replay)


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

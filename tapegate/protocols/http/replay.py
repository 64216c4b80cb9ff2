"""How an HTTP session reads in a replay: its events' lines, and the exchanges as HAR 1.2."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tapegate.audit.timeline import Replay

Attrs = dict[str, Any]


def _request(a: Attrs) -> tuple[str, str]:
    size = f" ({a.get('body_length')} B)" if a.get("body_length") else ""
    return "cyan", f"request  {a.get('method')} {a.get('url')}{size}"


def _response(a: Attrs) -> tuple[str, str]:
    ms = (a.get("duration_ns") or 0) / 1e6
    return ("red" if int(a.get("status") or 0) >= 400 else "green"), (
        f"response {a.get('status')} {a.get('reason', '')} ({ms:.2f} ms, "
        f"{a.get('body_length', 0)} B)"
    )


VIEWS: dict[str, Callable[[Attrs], tuple[str, str]]] = {"request": _request, "response": _response}


def _iso(ns: int) -> str:
    return dt.datetime.fromtimestamp(ns / 1e9, dt.UTC).isoformat(timespec="microseconds")


def har(replay: Replay) -> Iterator[str]:
    """HAR 1.2 of an HTTP session: one entry per `request` event and the `response` after it."""
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

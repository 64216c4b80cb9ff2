"""What `tapegate show` says about a session, computed from its sealed records alone."""

from __future__ import annotations

import datetime as dt
from collections import Counter
from typing import Any

from tapegate.audit.timeline import Replay
from tapegate.schema import STATEMENT_EVENTS
from tapegate.tape import Direction, Verdict


def _iso(ns: int | None) -> str | None:
    if ns is None:
        return None
    return dt.datetime.fromtimestamp(ns / 1e9, dt.UTC).isoformat(timespec="milliseconds")


def summarize(replay: Replay, verdict: Verdict) -> dict[str, Any]:
    header, end = replay.header, replay.end or {}
    started = header.get("started_ns")
    ended = end.get("ended_ns")
    types = Counter(str(ev.get("type")) for ev in replay.events)
    sent = sum(n for _, d, n in replay.frame_sizes if d is Direction.CLIENT_TO_SERVER)
    received = sum(n for _, d, n in replay.frame_sizes if d is Direction.SERVER_TO_CLIENT)
    return {
        "session_id": replay.session_id,
        "verdict": verdict.status,
        "problems": [str(p) for p in verdict.problems],
        "identity": header.get("identity", {}),
        "target": header.get("target"),
        "protocol": header.get("protocol"),
        "client_addr": header.get("client_addr"),
        "gateway": header.get("gateway"),
        "started_at": _iso(started),
        "ended_at": _iso(ended),
        "duration_s": round((ended - started) / 1e9, 3) if started and ended else None,
        "end_reason": end.get("reason"),
        "chunks": verdict.chunks,
        "final_seq": verdict.final_seq,
        "head_digest": verdict.head_digest.hex() if verdict.head_digest else None,
        "signing_keys": sorted({r.key_id.hex() for r in verdict.records}),
        "statements": sum(types[t] for t in STATEMENT_EVENTS),
        "errors": types["error"],
        "blocked": types["blocked"],
        "bytes_client": sent,
        "bytes_server": received,
        "events": dict(sorted(types.items())),
    }


def summary_lines(s: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(label, value, style) lines: what `show` prints and the bundle's report.txt holds."""
    ident = s["identity"]
    groups = ", ".join(ident.get("groups") or []) or "-"
    if s["verdict"] == "intact":
        verdict = f"intact (signatures, chain and final chunk {s['final_seq']} all check)"
    else:
        verdict = f"{s['verdict'].upper()} ({len(s['problems'])} problem(s))"
    email = f", email {ident['email']}" if ident.get("email") else ""
    took = f" ({s['duration_s']} s)" if s["duration_s"] is not None else ""
    lines = [
        ("session", s["session_id"], "bold"),
        ("verdict", verdict, "green" if s["verdict"] == "intact" else "bold red"),
        *(("", f"- {p}", "red") for p in s["problems"]),
        ("who", f"{ident.get('subject')} ({ident.get('issuer')}), groups {groups}{email}", ""),
        ("target", f"{s['target']} ({s['protocol']}) from {s['client_addr']} "
                   f"via gateway {s['gateway']}", ""),
        ("when", f"{s['started_at']} → {s['ended_at'] or 'open'}{took}", ""),
        ("ended", s["end_reason"] or "-", ""),
        ("statements", f"{s['statements']} ({s['errors']} errors, {s['blocked']} blocked)",
         "red" if s["blocked"] else ""),
        ("bytes", f"{s['bytes_client']:,} from the client, {s['bytes_server']:,} to it", ""),
        ("chunks", f"{s['chunks']}, head digest {s['head_digest']}", ""),
        ("signed by", f"key id {', '.join(s['signing_keys']) or '-'}", ""),
        ("events", ", ".join(f"{k} {v}" for k, v in s["events"].items()), ""),
    ]  # fmt: skip
    return lines


def format_summary(s: dict[str, Any]) -> str:
    return "\n".join(f"{label:<11} {value}".rstrip() for label, value, _ in summary_lines(s))

"""Verify, dedupe, index and tabulate one delivered object: the archive pipeline.

The same function runs in the verify/index Lambda (S3 object → SQS → Lambda) and in the
embedded `tapegate up` (a new file in the delivery folder); only the adapters differ. It decrypts
nothing: signatures and the hash chain are checked with the public keys alone.

Delivery is at least once and unordered, so every step is idempotent: a chunk is claimed in the
index by (session, seq) — the same digest again is a harmless duplicate, another digest is a
tamper alert (the first copy is kept) — and session summaries are recomputed from the claimed
chunks rather than incremented.
"""

from __future__ import annotations

import hashlib
import io
import json
import time
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from nacl.signing import VerifyKey

from tapegate.archive import ChunkEntry, Claim, Index, ObjectStore, SessionRecord
from tapegate.schema import arrow_schema
from tapegate.tape import Record, TapeFormatError, decode_record, split_records
from tapegate.tape.codec import ZERO_DIGEST
from tapegate.tape.seal import check_signature

DEFAULT_SKEW_NS = 5 * 60 * 1_000_000_000  # a chunk sealed this long after delivery is flagged
DEFAULT_GRACE_NS = 15 * 60 * 1_000_000_000  # open and silent this long: truncated
_STATEMENT_EVENTS = frozenset({"query", "execute", "blocked"})


@dataclass
class ObjectReport:
    key: str
    records: int = 0
    new: int = 0
    duplicates: int = 0
    conflicts: int = 0
    rejected: list[str] = field(default_factory=list)  # undecodable bytes, bad signatures...
    sessions: set[str] = field(default_factory=set)
    files_written: list[str] = field(default_factory=list)


class Pipeline:
    def __init__(
        self,
        trusted: Mapping[bytes, VerifyKey],
        index: Index,
        curated: ObjectStore,
        *,
        skew_ns: int = DEFAULT_SKEW_NS,
        grace_ns: int = DEFAULT_GRACE_NS,
    ) -> None:
        self.trusted = trusted
        self.index = index
        self.curated = curated
        self.skew_ns = skew_ns
        self.grace_ns = grace_ns

    def process_object(self, key: str, data: bytes, delivered_ns: int) -> ObjectReport:
        report = ObjectReport(key)
        records, split_errors = split_records(data)
        report.rejected += [f"bytes at offset {e.offset}: {e.reason}" for e in split_errors]
        fresh: dict[str, list[Record]] = defaultdict(list)
        alerts: dict[str, list[str]] = defaultdict(list)
        seen: set[tuple[str, int, bytes]] = set()
        for raw in records:
            report.records += 1
            try:
                rec = decode_record(raw)
            except TapeFormatError as exc:
                report.rejected.append(f"undecodable record: {exc}")
                continue
            sid = str(rec.session_id)
            report.sessions.add(sid)
            verify_key = self.trusted.get(rec.key_id)
            if verify_key is None:
                alerts[sid].append(f"unknown_key at seq {rec.seq}: {rec.key_id.hex()}")
                report.rejected.append(f"session {sid} seq {rec.seq}: unknown signing key")
                continue
            if not check_signature(verify_key, rec.digest, rec.signature):
                alerts[sid].append(f"bad_signature at seq {rec.seq}")
                report.rejected.append(f"session {sid} seq {rec.seq}: bad signature")
                continue
            if rec.sealed_ns > delivered_ns + self.skew_ns:
                alerts[sid].append(f"clock at seq {rec.seq}: sealed after its delivery")
            if (sid, rec.seq, rec.digest) in seen:  # the same record twice in one object
                report.duplicates += 1
                continue
            seen.add((sid, rec.seq, rec.digest))
            claim, held = self.index.claim_chunk(_entry(rec, key))
            if claim is Claim.CONFLICT:
                report.conflicts += 1
                alerts[sid].append(
                    f"conflict at seq {rec.seq}: digest {rec.digest.hex()[:16]} "
                    f"differs from the first copy {str(held)[:16]}"
                )
            elif claim is Claim.DUPLICATE:
                report.duplicates += 1
            else:
                report.new += 1
                fresh[sid].append(rec)
        now = time.time_ns()
        headers = {sid: self._update_session(sid, fresh.get(sid, []), alerts.get(sid, []), key,
                                             now)
                   for sid in report.sessions}  # fmt: skip
        report.files_written += self._write_tables(key, fresh, headers)
        return report

    def sweep(self, now_ns: int | None = None) -> list[str]:
        """Mark sessions that stayed open past the grace period as truncated."""
        now = time.time_ns() if now_ns is None else now_ns
        changed = []
        for record in self.index.sessions(status="open"):
            if record.last_seen_ns and now - record.last_seen_ns >= self.grace_ns:
                record.status = "truncated"
                record.problems = _chain_problems(self.index.chunks(record.session_id))[0]
                self.index.put_session(record)
                self._write_session(record)
                changed.append(record.session_id)
        return changed

    # -- sessions -------------------------------------------------------------------------

    def _update_session(
        self, sid: str, fresh: list[Record], alerts: list[str], key: str, now_ns: int
    ) -> dict[str, Any] | None:
        record = self.index.get_session(sid) or SessionRecord(sid)
        for alert in alerts:
            if alert not in record.alerts:
                record.alerts.append(alert)
        for rec in fresh:
            if rec.seq == 0:
                header = {k: v for k, v in rec.meta["session"].items() if k != "auditor_keys"}
                record.header = header
                record.started_ns = int(header.get("started_ns") or rec.sealed_ns)
            if rec.final:
                record.end = rec.meta["end"]
                record.ended_ns = int(rec.meta["end"].get("ended_ns") or rec.sealed_ns)
        if key not in record.object_keys and len(record.object_keys) < 1000:
            record.object_keys.append(key)
        summarize(record, self.index.chunks(sid))
        self.index.put_session(record)
        self._write_session(record)
        return record.header

    def _write_session(self, record: SessionRecord) -> None:
        day = _day(record.started_ns or record.last_seen_ns or time.time_ns())
        row = session_row(record)
        self.curated.put(f"sessions/dt={day}/{record.session_id}.parquet",
                         _parquet("sessions", [row]))  # fmt: skip

    # -- events and frames --------------------------------------------------------------------

    def _write_tables(
        self, key: str, fresh: dict[str, list[Record]], headers: dict[str, Any]
    ) -> list[str]:
        events: dict[str, list[dict[str, Any]]] = defaultdict(list)
        frames: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for sid, recs in fresh.items():
            header = headers.get(sid) or {}
            who = header.get("identity", {}).get("subject")
            for rec in recs:
                for ev in rec.meta["events"]:
                    events[_day(ev["ts"])].append(event_row(sid, rec.seq, ev, who, header))
                for ref in rec.frames:
                    frames[_day(ref.ts_ns)].append({
                        "session_id": sid, "seq": rec.seq, "ts": ref.ts_ns // 1_000_000,
                        "ts_ns": ref.ts_ns, "direction": "c2s" if ref.direction == 0 else "s2c",
                        "length": ref.length,
                    })  # fmt: skip
        # One file per delivered object and day: processing the object again rewrites the same
        # file with the same rows instead of adding a copy.
        object_id = hashlib.sha256(key.encode()).hexdigest()[:20]
        written = []
        for table, by_day in (("events", events), ("frames", frames)):
            for day, rows in by_day.items():
                rows.sort(key=lambda r: (r["session_id"], r["seq"], r["ts_ns"]))
                path = f"{table}/dt={day}/{object_id}.parquet"
                self.curated.put(path, _parquet(table, rows))
                written.append(path)
        return written


def summarize(record: SessionRecord, entries: list[ChunkEntry]) -> None:
    """Recompute a session's totals, chain verdict and status from its claimed chunks."""
    record.chunks = len(entries)
    record.bytes_client = sum(e.bytes_c2s for e in entries)
    record.bytes_server = sum(e.bytes_s2c for e in entries)
    record.statements = sum(e.statements for e in entries)
    record.last_seen_ns = max((e.sealed_ns for e in entries), default=record.last_seen_ns)
    problems, complete, head = _chain_problems(entries)
    record.head_digest = head
    record.problems = record.alerts + problems
    if record.alerts:
        record.status = "tampered"
    elif complete:
        record.status = "closed"
    elif record.status != "truncated":
        record.status = "open"
    record.verified = record.status == "closed"


def _chain_problems(entries: list[ChunkEntry]) -> tuple[list[str], bool, str | None]:
    """(findings, complete, head digest) for a session's chunks sorted by seq."""
    problems: list[str] = []
    by_seq = {e.seq: e for e in entries}
    finals = [e.seq for e in entries if e.final]
    last = finals[0] if finals else max(by_seq, default=-1)
    missing, start = [], None
    for seq in range(last + 1):
        if seq not in by_seq:
            start = seq if start is None else start
        elif start is not None:
            missing.append((start, seq - 1))
            start = None
    if start is not None:
        missing.append((start, last))
    for lo, hi in missing:
        problems.append(f"missing seq {lo}" if lo == hi else f"missing seq {lo}-{hi}")
    for seq in sorted(by_seq):
        e = by_seq[seq]
        if seq == 0 and e.prev_digest != ZERO_DIGEST.hex():
            problems.append("broken_link at seq 0")
        elif seq > 0 and seq - 1 in by_seq and e.prev_digest != by_seq[seq - 1].digest:
            problems.append(f"broken_link at seq {seq}")
    head = None
    seq = 0
    while seq in by_seq and (seq == 0 or by_seq[seq].prev_digest == by_seq[seq - 1].digest):
        head = by_seq[seq].digest
        seq += 1
    if finals and any(s > finals[0] for s in by_seq):
        problems.append(f"chunks after the final chunk {finals[0]}")
    if not finals:
        problems.append("no final chunk yet")
    complete = bool(finals) and not problems
    return problems, complete, head


def _entry(rec: Record, key: str) -> ChunkEntry:
    c2s = sum(f.length for f in rec.frames if f.direction == 0)
    times = [f.ts_ns for f in rec.frames] + [e["ts"] for e in rec.meta["events"]]
    statements = sum(1 for e in rec.meta["events"] if e.get("type") in _STATEMENT_EVENTS)
    return ChunkEntry(
        session_id=str(rec.session_id),
        seq=rec.seq,
        digest=rec.digest.hex(),
        prev_digest=rec.prev_digest.hex(),
        final=rec.final,
        sealed_ns=rec.sealed_ns,
        object_key=key,
        bytes_c2s=c2s,
        bytes_s2c=sum(f.length for f in rec.frames) - c2s,
        statements=statements,
        first_ns=min(times, default=rec.sealed_ns),
        last_ns=max(times, default=rec.sealed_ns),
    )


def event_row(
    sid: str, seq: int, ev: dict[str, Any], subject: str | None, header: dict[str, Any]
) -> dict[str, Any]:
    attrs = ev.get("attrs") or {}
    outcome = attrs.get("tag") or attrs.get("sqlstate") or attrs.get("rule") or attrs.get("result")
    duration = attrs.get("duration_ns")
    rows = attrs.get("rows")
    return {
        "session_id": sid,
        "seq": seq,
        "ts": int(ev["ts"]) // 1_000_000,
        "ts_ns": int(ev["ts"]),
        "direction": ev.get("dir"),
        "type": ev.get("type"),
        "text": attrs.get("sql") or attrs.get("command"),
        "subject": subject,
        "target": header.get("target"),
        "protocol": header.get("protocol"),
        "outcome": str(outcome) if outcome is not None else None,
        "rows": int(rows) if isinstance(rows, int) else None,
        "duration_ms": duration / 1e6 if isinstance(duration, int | float) else None,
        "attrs": json.dumps(attrs, separators=(",", ":"), ensure_ascii=False),
    }


def session_row(record: SessionRecord) -> dict[str, Any]:
    header = record.header or {}
    ident = header.get("identity", {})
    return {
        "session_id": record.session_id,
        "subject": ident.get("subject"),
        "issuer": ident.get("issuer"),
        "email": ident.get("email"),
        "groups": list(ident.get("groups") or []),
        "target": header.get("target"),
        "protocol": header.get("protocol"),
        "client_addr": header.get("client_addr"),
        "gateway": header.get("gateway"),
        "started_at": record.started_ns // 1_000_000 if record.started_ns else None,
        "ended_at": record.ended_ns // 1_000_000 if record.ended_ns else None,
        "status": record.status,
        "end_reason": (record.end or {}).get("reason"),
        "verified": record.verified,
        "chunks": record.chunks,
        "bytes_client": record.bytes_client,
        "bytes_server": record.bytes_server,
        "statements": record.statements,
        "head_digest": record.head_digest,
        "problems": "\n".join(record.problems) or None,
    }


def _parquet(table: str, rows: list[dict[str, Any]]) -> bytes:
    buf = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows, schema=arrow_schema(table)), buf, compression="zstd")
    return buf.getvalue()


def _day(ns: int) -> str:
    return time.strftime("%Y-%m-%d", time.gmtime(ns / 1e9))

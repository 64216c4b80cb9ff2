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

import functools
import hashlib
import io
import json
import time
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pa_json
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
        events = _event_table(fresh, headers)
        frames = _frame_table(fresh)
        # One file per delivered object and day: processing the object again rewrites the same
        # file with the same rows instead of adding a copy.
        object_id = hashlib.sha256(key.encode()).hexdigest()[:20]
        written = []
        for name, table in (("events", events), ("frames", frames)):
            for day, part in _by_day(table):
                path = f"{name}/dt={day}/{object_id}.parquet"
                self.curated.put(path, _write_parquet(part))
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
    c2s = sum(n for n, d in zip(rec.frame_len, rec.frame_dir, strict=True) if d == 0)
    times = [*rec.frame_ts, *(e["ts"] for e in rec.meta["events"])]
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
        bytes_s2c=sum(rec.frame_len) - c2s,
        statements=statements,
        first_ns=min(times, default=rec.sealed_ns),
        last_ns=max(times, default=rec.sealed_ns),
    )


_EVENT_JSON = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)
# The fields of an event the table derives columns from; anything else stays in `event` only.
_EVENT_FIELDS = pa.schema([
    ("ts", pa.int64()), ("dir", pa.string()), ("type", pa.string()),
    ("attrs", pa.struct([(name, pa.string()) for name in
                         ("sql", "command", "tag", "sqlstate", "rule", "result")]
                        + [("rows", pa.int64()), ("duration_ns", pa.int64())])),
])  # fmt: skip


def _event_lines(rec: Record) -> list[bytes]:
    """Each event of a chunk as one line of JSON, cut from the meta bytes when the writer put
    one event per line (the reference writer does), else serialised again."""
    count = len(rec.meta["events"])
    if not count:
        return []
    lines = rec.meta_bytes.split(b"\n", count + 1)
    if lines[0] == b'{"events":[' and len(lines) == count + 2 and lines[-1].startswith(b"]"):
        return [line[:-1] if line.endswith(b",") else line for line in lines[1:-1]]
    return [_EVENT_JSON.encode(ev).encode() for ev in rec.meta["events"]]


def _event_table(fresh: dict[str, list[Record]], headers: dict[str, Any]) -> pa.Table:
    """All events of an object's new chunks, parsed in bulk by Arrow's JSON reader."""
    lines: list[bytes] = []
    context: dict[str, list[Any]] = {k: [] for k in ("session_id", "seq", "subject", "target",
                                                       "protocol")}  # fmt: skip
    for sid, recs in fresh.items():
        header = headers.get(sid) or {}
        subject = header.get("identity", {}).get("subject")
        for rec in recs:
            cut = _event_lines(rec)
            lines += cut
            for name, value in (("session_id", sid), ("seq", rec.seq), ("subject", subject),
                                ("target", header.get("target")),
                                ("protocol", header.get("protocol"))):  # fmt: skip
                context[name] += [value] * len(cut)
    schema = arrow_schema("events")
    if not lines:
        return schema.empty_table()
    try:
        parsed = pa_json.read_json(
            io.BytesIO(b"\n".join(lines)),
            read_options=pa_json.ReadOptions(use_threads=False, block_size=4 << 20),
            parse_options=pa_json.ParseOptions(
                explicit_schema=_EVENT_FIELDS, unexpected_field_behavior="ignore"
            ),
        )
    except pa.ArrowInvalid:  # a field of an unexpected type somewhere: go event by event
        parsed = pa.Table.from_pylist([_coerce(json.loads(line)) for line in lines],
                                      schema=_EVENT_FIELDS)  # fmt: skip
    attrs = parsed["attrs"]

    def attr(name: str) -> pa.ChunkedArray:
        return pc.struct_field(attrs, name)

    ts_ns = parsed["ts"]
    columns = {
        "session_id": pa.array(context["session_id"], pa.string()),
        "seq": pa.array(context["seq"], pa.int64()),
        "ts": pc.divide(ts_ns, 1_000_000).cast(schema.field("ts").type),
        "ts_ns": ts_ns,
        "direction": parsed["dir"],
        "type": parsed["type"],
        "text": pc.coalesce(attr("sql"), attr("command")),
        "subject": pa.array(context["subject"], pa.string()),
        "target": pa.array(context["target"], pa.string()),
        "protocol": pa.array(context["protocol"], pa.string()),
        "outcome": pc.coalesce(attr("tag"), attr("sqlstate"), attr("rule"), attr("result")),
        "rows": attr("rows"),
        "duration_ms": pc.divide(attr("duration_ns").cast(pa.float64()), 1e6),
        "event": pa.array(lines, pa.binary()).cast(pa.string()),
    }
    return pa.table([columns[f.name] for f in schema], schema=schema)


def _coerce(event: dict[str, Any]) -> dict[str, Any]:
    """An event reduced to _EVENT_FIELDS, with values of another type made to fit or dropped."""
    attrs = event.get("attrs") if isinstance(event.get("attrs"), dict) else {}
    out: dict[str, Any] = {}
    for spec in _EVENT_FIELDS.field("attrs").type:
        value = attrs.get(spec.name)
        if pa.types.is_string(spec.type):
            out[spec.name] = None if value is None else str(value)
        else:
            out[spec.name] = (
                value if isinstance(value, int) and not isinstance(value, bool) else None
            )
    ts = event.get("ts")
    return {"ts": ts if isinstance(ts, int) else 0,
            "dir": event.get("dir") if isinstance(event.get("dir"), str) else None,
            "type": str(event.get("type")), "attrs": out}  # fmt: skip


def _frame_table(fresh: dict[str, list[Record]]) -> pa.Table:
    sids: list[str] = []
    seqs: list[int] = []
    ts: list[int] = []
    dirs: list[int] = []
    lens: list[int] = []
    for sid, recs in fresh.items():
        for rec in recs:
            count = len(rec.frame_ts)
            sids += [sid] * count
            seqs += [rec.seq] * count
            ts += rec.frame_ts
            dirs += rec.frame_dir
            lens += rec.frame_len
    schema = arrow_schema("frames")
    ts_ns = pa.array(ts, pa.int64())
    direction = pc.if_else(pc.equal(pa.array(dirs, pa.int8()), 0), "c2s", "s2c")
    columns = [pa.array(sids, pa.string()), pa.array(seqs, pa.int64()),
               pc.divide(ts_ns, 1_000_000).cast(schema.field("ts").type), ts_ns,
               direction, pa.array(lens, pa.int64())]  # fmt: skip
    return pa.table(columns, schema=schema)


def _by_day(table: pa.Table) -> list[tuple[str, pa.Table]]:
    """Split rows by the UTC day of ts_ns (the partition), sorted by session, seq and time."""
    if not table.num_rows:
        return []
    table = table.sort_by([("session_id", "ascending"), ("seq", "ascending"),
                           ("ts_ns", "ascending")])  # fmt: skip
    day = pc.divide(table["ts_ns"], _DAY_NS)
    bounds = pc.min_max(day)
    first, last = bounds["min"].as_py(), bounds["max"].as_py()
    if first == last:
        return [(_day_name(first), table)]
    return [(_day_name(d), table.filter(pc.equal(day, d))) for d in range(first, last + 1)
            if pc.any(pc.equal(day, d)).as_py()]  # fmt: skip


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
    return _write_parquet(pa.Table.from_pylist(rows, schema=arrow_schema(table)))


def _write_parquet(data: pa.Table) -> bytes:
    buf = io.BytesIO()
    pq.write_table(data, buf, compression="zstd")
    return buf.getvalue()


_DAY_NS = 86_400 * 1_000_000_000


def _day(ns: int) -> str:
    return _day_name(ns // _DAY_NS)


@functools.lru_cache(maxsize=64)
def _day_name(day_index: int) -> str:
    return time.strftime("%Y-%m-%d", time.gmtime(day_index * 86_400))

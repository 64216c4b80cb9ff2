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
        alerts: dict[str, list[str]] = defaultdict(list)
        verified = self._verified(data, delivered_ns, report, alerts)
        # Session then seq order: the tables come out sorted without sorting their rows.
        verified.sort(key=lambda r: (r.session_id.bytes, r.seq))
        headers = self._headers(verified)
        # Every event of the object, parsed at once; each chunk owns a slice of the rows.
        events, spans = _event_table(verified, headers)
        is_statement = pc.is_in(events["type"], pa.array(sorted(_STATEMENT_EVENTS)))
        fresh: dict[str, list[Record]] = defaultdict(list)
        kept: list[pa.Table] = []
        for rec, (start, stop) in zip(verified, spans, strict=True):
            sid = str(rec.session_id)
            stats = _span_stats(events, is_statement, start, stop)
            claim, held = self.index.claim_chunk(_entry(rec, key, *stats))
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
                kept.append(events.slice(start, stop - start))
        now = time.time_ns()
        for sid in report.sessions:
            self._update_session(sid, fresh.get(sid, []), alerts.get(sid, []), key, now)
        new_events = pa.concat_tables(kept) if kept else events.schema.empty_table()
        report.files_written += self._write_tables(key, new_events, _frame_table(fresh))
        return report

    def _verified(
        self, data: bytes, delivered_ns: int, report: ObjectReport, alerts: dict[str, list[str]]
    ) -> list[Record]:
        """The object's records that decode and carry a valid signature of a trusted key,
        each (session, seq, digest) once."""
        records, split_errors = split_records(data)
        report.rejected += [f"bytes at offset {e.offset}: {e.reason}" for e in split_errors]
        out: list[Record] = []
        seen: set[tuple[str, int, bytes]] = set()
        for raw in records:
            report.records += 1
            try:
                rec = decode_record(raw, events=False)
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
            out.append(rec)
        return out

    def _headers(self, records: list[Record]) -> dict[str, dict[str, Any]]:
        """Each session's header: from its chunk 0 here, else from the index."""
        headers: dict[str, dict[str, Any]] = {}
        for rec in records:
            if rec.seq == 0:
                headers[str(rec.session_id)] = rec.meta["session"]
        for sid in {str(r.session_id) for r in records} - headers.keys():
            known = self.index.get_session(sid)
            headers[sid] = (known.header if known else None) or {}
        return headers

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
    ) -> None:
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

    def _write_session(self, record: SessionRecord) -> None:
        day = _day(record.started_ns or record.last_seen_ns or time.time_ns())
        row = session_row(record)
        self.curated.put(f"sessions/dt={day}/{record.session_id}.parquet",
                         _parquet("sessions", [row]))  # fmt: skip

    # -- events and frames --------------------------------------------------------------------

    def _write_tables(self, key: str, events: pa.Table, frames: pa.Table) -> list[str]:
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


def _entry(rec: Record, key: str, statements: int, first_ns: int, last_ns: int) -> ChunkEntry:
    c2s = sum(n for n, d in zip(rec.frame_len, rec.frame_dir, strict=True) if d == 0)
    frame_first = rec.frame_ts[0] if rec.frame_ts else rec.sealed_ns
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
        first_ns=min(first_ns, frame_first),
        last_ns=max(last_ns, rec.frame_ts[-1] if rec.frame_ts else 0),
    )


def _span_stats(
    events: pa.Table, is_statement: pa.ChunkedArray, start: int, stop: int
) -> tuple[int, int, int]:
    """(statements, first ts, last ts) of one chunk's rows of the events table."""
    if stop <= start:
        return 0, 2**63 - 1, 0
    bounds = pc.min_max(events["ts_ns"].slice(start, stop - start))
    count = pc.sum(is_statement.slice(start, stop - start)).as_py() or 0
    return count, bounds["min"].as_py(), bounds["max"].as_py()


_EVENT_JSON = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)
# The fields of an event the table derives columns from; anything else stays in `event` only.
_EVENT_FIELDS = pa.schema([
    ("ts", pa.int64()), ("dir", pa.string()), ("type", pa.string()),
    ("attrs", pa.struct([(name, pa.string()) for name in
                         ("sql", "command", "tag", "sqlstate", "rule", "result")]
                        + [("rows", pa.int64()), ("duration_ns", pa.int64())])),
])  # fmt: skip


def _event_ndjson(rec: Record) -> tuple[bytes, int]:
    """A chunk's events as newline-delimited JSON, and how many there are.

    When the meta has the reference writer's layout (decode_record(events=False) kept the
    events' bytes), they are cut out of the bytes without being parsed here."""
    if rec.events_json is not None:
        section = rec.events_json
        if not section:
            return b"", 0
        return section.replace(b",\n", b"\n"), section.count(b"\n") + 1
    events = rec.meta["events"]
    return b"\n".join(_EVENT_JSON.encode(ev).encode() for ev in events), len(events)


def _event_table(
    records: list[Record], headers: dict[str, dict[str, Any]]
) -> tuple[pa.Table, list[tuple[int, int]]]:
    """All events of the records, parsed in bulk by Arrow's JSON reader, and each record's
    span of rows."""
    parts: list[bytes] = []
    spans: list[tuple[int, int]] = []
    context: dict[str, list[Any]] = {k: [] for k in ("session_id", "seq", "subject", "target",
                                                       "protocol")}  # fmt: skip
    rows = 0
    for rec in records:
        ndjson, count = _event_ndjson(rec)
        spans.append((rows, rows + count))
        rows += count
        if not count:
            continue
        parts.append(ndjson)
        sid = str(rec.session_id)
        header = headers.get(sid) or {}
        for name, value in (("session_id", sid), ("seq", rec.seq),
                            ("subject", header.get("identity", {}).get("subject")),
                            ("target", header.get("target")),
                            ("protocol", header.get("protocol"))):  # fmt: skip
            context[name] += [value] * count
    schema = arrow_schema("events")
    if not rows:
        return schema.empty_table(), spans
    text = b"\n".join(parts)
    try:
        parsed = pa_json.read_json(
            io.BytesIO(text),
            read_options=pa_json.ReadOptions(use_threads=False, block_size=4 << 20),
            parse_options=pa_json.ParseOptions(
                explicit_schema=_EVENT_FIELDS, unexpected_field_behavior="ignore"
            ),
        )
    except pa.ArrowInvalid:  # a field of an unexpected type somewhere: go event by event
        parsed = pa.Table.from_pylist([_coerce(json.loads(line)) for line in text.split(b"\n")],
                                      schema=_EVENT_FIELDS)  # fmt: skip
    if parsed.num_rows != rows:
        raise TapeFormatError(f"{parsed.num_rows} events parsed where {rows} were sealed")
    attrs = parsed["attrs"]

    def attr(name: str) -> pa.ChunkedArray:
        return pc.struct_field(attrs, name)

    ts_ns = parsed["ts"]
    whole = pc.split_pattern(pa.array([text.decode("utf-8")]), "\n")
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
        "event": pc.list_flatten(whole),
    }
    return pa.table([columns[f.name] for f in schema], schema=schema), spans


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
    """Split rows (already in session, seq, time order) by the UTC day of ts_ns."""
    if not table.num_rows:
        return []
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


# Columns with few distinct values; dictionary-encoding SQL text or whole events only costs time.
_DICTIONARY = ["session_id", "direction", "type", "subject", "target", "protocol", "outcome",
               "status", "issuer", "gateway", "end_reason"]  # fmt: skip


def _write_parquet(data: pa.Table) -> bytes:
    buf = io.BytesIO()
    columns = [c for c in _DICTIONARY if c in data.column_names]
    pq.write_table(data, buf, compression="zstd", use_dictionary=columns)
    return buf.getvalue()


_DAY_NS = 86_400 * 1_000_000_000


def _day(ns: int) -> str:
    return _day_name(ns // _DAY_NS)


@functools.lru_cache(maxsize=64)
def _day_name(day_index: int) -> str:
    return time.strftime("%Y-%m-%d", time.gmtime(day_index * 86_400))

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
import itertools
import operator
import time
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
from nacl.signing import VerifyKey

from tapegate.archive import ChunkEntry, Claim, Index, LeafEntry, ObjectStore, SessionRecord
from tapegate.log.leaf import Leaf, LeafError, decode_leaf
from tapegate.schema import STATEMENT_EVENTS
from tapegate.tables import (
    by_day,
    day_of,
    event_table,
    frame_table,
    session_parquet,
    session_row,
    write_parquet,
)
from tapegate.tape import Record, TapeFormatError, decode_record, split_records
from tapegate.tape.chain import ChunkLink, Fault, check_chain
from tapegate.tape.codec import LEAF_MAGIC
from tapegate.tape.seal import check_signature

DEFAULT_SKEW_NS = 5 * 60 * 1_000_000_000  # a chunk sealed this long after delivery is flagged
DEFAULT_GRACE_NS = 15 * 60 * 1_000_000_000  # open and silent this long: truncated
OPEN_ROW_REFRESH_NS = 60 * 1_000_000_000


@dataclass
class ObjectReport:
    key: str
    records: int = 0
    new: int = 0
    duplicates: int = 0
    conflicts: int = 0
    rejected: list[str] = field(default_factory=list)  # undecodable bytes, bad signatures...
    sessions: set[str] = field(default_factory=set)
    leaves: int = 0  # log leaves held for the sequencer (new ones; duplicates not counted)
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
        leaves: list[Leaf] = []
        verified = self._verified(data, delivered_ns, report, alerts, leaves)
        for leaf in leaves:
            report.leaves += self.index.claim_leaf(_leaf_entry(leaf, key))
        # Session then seq order: the tables come out sorted without sorting their rows.
        verified.sort(key=lambda r: (r.session_id.bytes, r.seq))
        # Each session's record is read from the index once per object.
        known = {sid: self.index.get_session(sid) or SessionRecord(sid) for sid in report.sessions}
        headers = _headers(verified, known)
        # Every event of the object, parsed at once; each chunk owns a slice of the rows.
        events, spans = event_table(verified, headers)
        is_statement = pc.is_in(events["type"], pa.array(sorted(STATEMENT_EVENTS)))
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
            self._update_session(known[sid], fresh.get(sid, []), alerts.get(sid, []), key, now)
        new_events = pa.concat_tables(kept) if kept else events.schema.empty_table()
        report.files_written += self._write_tables(key, new_events, frame_table(fresh))
        return report

    def _verified(
        self,
        data: bytes,
        delivered_ns: int,
        report: ObjectReport,
        alerts: dict[str, list[str]],
        leaves: list[Leaf],
    ) -> list[Record]:
        """The object's chunks that decode and carry a valid signature of a trusted key, each
        (session, seq, digest) once; its log leaves that do go to `leaves`."""
        records, split_errors = split_records(data)
        report.rejected += [f"bytes at offset {e.offset}: {e.reason}" for e in split_errors]
        out: list[Record] = []
        seen: set[tuple[str, int, bytes]] = set()
        for raw in records:
            report.records += 1
            if raw[:4] == LEAF_MAGIC:
                self._leaf(raw, report, leaves)
                continue
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

    def _leaf(self, raw: bytes, report: ObjectReport, leaves: list[Leaf]) -> None:
        try:
            leaf = decode_leaf(raw)
        except LeafError as exc:
            report.rejected.append(f"undecodable leaf: {exc}")
            return
        if not leaf.check(self.trusted):
            report.rejected.append(
                f"leaf {leaf.instance} #{leaf.counter}: bad signature or unknown signing key"
            )
            return
        leaves.append(leaf)

    def sweep(self, now_ns: int | None = None) -> list[str]:
        """Mark sessions that stayed open past the grace period as truncated."""
        now = time.time_ns() if now_ns is None else now_ns
        changed = []
        for record in self.index.sessions(status="open"):
            if record.last_seen_ns and now - record.last_seen_ns >= self.grace_ns:
                record.status = "truncated"
                record.problems = _chain_problems(self.index.chunks(record.session_id))[0]
                record.table_status, record.table_written_ns = record.status, now
                self.index.put_session(record)
                self._write_session(record)
                changed.append(record.session_id)
        return changed

    # -- sessions -------------------------------------------------------------------------

    def _update_session(
        self, record: SessionRecord, fresh: list[Record], alerts: list[str], key: str, now_ns: int
    ) -> None:
        sid = record.session_id
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
        due = _table_due(record, now_ns)
        if due:
            record.table_status, record.table_written_ns = record.status, now_ns
        self.index.put_session(record)
        if due:
            self._write_session(record)

    def _write_session(self, record: SessionRecord) -> None:
        day = day_of(record.started_ns or record.last_seen_ns or time.time_ns())
        row = session_row(record)
        self.curated.put(f"sessions/dt={day}/{record.session_id}.parquet",
                         session_parquet(row))  # fmt: skip

    # -- events and frames --------------------------------------------------------------------

    def _write_tables(self, key: str, events: pa.Table, frames: pa.Table) -> list[str]:
        # One file per delivered object and day: processing the object again rewrites the same
        # file with the same rows instead of adding a copy.
        object_id = hashlib.sha256(key.encode()).hexdigest()[:20]
        written = []
        for name, table in (("events", events), ("frames", frames)):
            for day, part in by_day(table):
                path = f"{name}/dt={day}/{object_id}.parquet"
                self.curated.put(path, write_parquet(part))
                written.append(path)
        return written


def _headers(records: list[Record], known: dict[str, SessionRecord]) -> dict[str, dict[str, Any]]:
    """Each session's header: from its chunk 0 in this object, else as the index knows it."""
    headers = {sid: record.header or {} for sid, record in known.items()}
    for rec in records:
        if rec.seq == 0:
            headers[str(rec.session_id)] = rec.meta["session"]
    return headers


def _table_due(record: SessionRecord, now_ns: int) -> bool:
    """Whether the sessions table needs this session's row (again).

    The index is the live view; the table is for SQL over settled sessions. A row is written
    when a session settles (closed, truncated, tampered) or its status changes, and while it
    stays open, once it has been open a minute and then at most once a minute, so that a busy
    session is not rewritten for every object."""
    if record.status != "open":
        return record.status != record.table_status
    since = record.table_written_ns or record.started_ns or record.last_seen_ns
    return now_ns - since >= OPEN_ROW_REFRESH_NS


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
    """(findings, complete, head digest) of a session's claimed chunks, by the tape's rules."""
    chain = check_chain(
        ChunkLink(e.seq, bytes.fromhex(e.digest), bytes.fromhex(e.prev_digest), e.final)
        for e in entries
    )
    # Gaps first, then links: the order the index's problem lists have always had.
    faults = sorted(chain.faults, key=lambda f: f.kind is not Fault.MISSING)
    problems = [
        (f"missing seq {f.seq}" if f.seq == f.last else f"missing seq {f.seq}-{f.last}")
        if f.kind is Fault.MISSING
        else f"broken_link at seq {f.seq}"
        for f in faults
    ]
    if chain.after_final:
        problems.append(f"chunks after the final chunk {chain.final_seq}")
    if chain.final_seq is None:
        problems.append("no final chunk yet")
    head = chain.head_digest.hex() if chain.head_digest is not None else None
    return problems, chain.complete, head


def _leaf_entry(leaf: Leaf, key: str) -> LeafEntry:
    return LeafEntry(
        instance=str(leaf.instance),
        counter=leaf.counter,
        digest=leaf.digest.hex(),
        sealed_ns=leaf.sealed_ns,
        kind=leaf.kind,
        session_id=leaf.session_id,
        object_key=key,
        raw=leaf.raw,
    )


def _entry(rec: Record, key: str, statements: int, first_ns: int, last_ns: int) -> ChunkEntry:
    c2s = sum(itertools.compress(rec.frame_len, map(operator.not_, rec.frame_dir)))
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

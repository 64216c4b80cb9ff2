"""The archive's tables built from sealed chunks: events and frames per delivered object, one row
per session, written as Parquet. Columns come from tapegate/schema.py; rows are built column-wise
with Arrow (events parsed in bulk by its JSON reader), not one Python dict at a time.
"""

from __future__ import annotations

import functools
import io
import json
import time
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pa_json
import pyarrow.parquet as pq

from tapegate.archive import SessionRecord
from tapegate.schema import arrow_schema
from tapegate.tape import Record, TapeFormatError

_EVENT_JSON = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)
# The fields of an event the table derives columns from; anything else stays in `event` only.
_EVENT_FIELDS = pa.schema([
    ("ts", pa.int64()), ("dir", pa.string()), ("type", pa.string()),
    ("attrs", pa.struct([(name, pa.string()) for name in
                         ("sql", "command", "tool", "tag", "sqlstate", "rule", "result",
                          "outcome")]
                        + [("rows", pa.int64()), ("duration_ns", pa.int64())])),
])  # fmt: skip


# Event types whose attributes the columns carry (text, outcome, rows, duration): the bulk of a
# busy session's events, not repeated whole in the `event` column.
_COVERED = pa.array(["query", "result", "execute", "parse"])


def _event_ndjson(rec: Record) -> tuple[bytes, int]:
    """A chunk's events as newline-delimited JSON, and how many there are.

    When the meta has the reference writer's layout (decode_record(events=False) kept the
    events' bytes), they are cut out of the bytes without being parsed here."""
    if rec.events_json is not None:
        section = rec.events_json
        if not section:
            return b"", 0
        # Same length in and out, which CPython replaces in place in one copy; the JSON reader
        # takes the space that is left at the end of each line.
        return section.replace(b",\n", b" \n"), section.count(b"\n") + 1
    events = rec.meta["events"]
    return b"\n".join(_EVENT_JSON.encode(ev).encode() for ev in events), len(events)


def event_table(
    records: list[Record], headers: dict[str, dict[str, Any]]
) -> tuple[pa.Table, list[tuple[int, int]]]:
    """All events of the records, parsed in bulk by Arrow's JSON reader, and each record's
    span of rows."""
    parts: list[bytes] = []
    spans: list[tuple[int, int]] = []
    # Per chunk: its values for the columns every one of its events shares, and how many.
    context: dict[str, list[Any]] = {n: [] for n in ("session_id", "seq", "subject", "target",
                                                     "protocol")}  # fmt: skip
    counts: list[int] = []
    rows = 0
    for rec in records:
        ndjson, count = _event_ndjson(rec)
        spans.append((rows, rows + count))
        rows += count
        if not count:
            continue
        parts.append(ndjson)
        counts.append(count)
        sid = str(rec.session_id)
        header = headers.get(sid) or {}
        context["session_id"].append(sid)
        context["seq"].append(rec.seq)
        context["subject"].append(header.get("identity", {}).get("subject"))
        context["target"].append(header.get("target"))
        context["protocol"].append(header.get("protocol"))
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

    owner = _owners(counts)
    ts_ns = parsed["ts"]
    # The whole event only where the columns do not already carry what it says.
    detail = pc.invert(pc.is_in(parsed["type"], _COVERED))
    if pc.any(detail).as_py():
        whole = pc.list_flatten(pc.split_pattern(pa.array([text.decode("utf-8")]), "\n"))
        event = pc.if_else(detail, whole, pa.scalar(None, pa.string()))
    else:
        event = pa.nulls(rows, pa.string())
    columns = {
        "session_id": pc.take(pa.array(context["session_id"], pa.string()), owner),
        "seq": pc.take(pa.array(context["seq"], pa.int64()), owner),
        "ts": pc.divide(ts_ns, 1_000_000).cast(schema.field("ts").type),
        "ts_ns": ts_ns,
        "direction": parsed["dir"],
        "type": parsed["type"],
        "text": pc.coalesce(attr("sql"), attr("command"), attr("tool")),  # MCP: the tool
        "subject": pc.take(pa.array(context["subject"], pa.string()), owner),
        "target": pc.take(pa.array(context["target"], pa.string()), owner),
        "protocol": pc.take(pa.array(context["protocol"], pa.string()), owner),
        "outcome": pc.coalesce(
            attr("tag"), attr("sqlstate"), attr("rule"), attr("result"), attr("outcome")
        ),
        "rows": attr("rows"),
        "duration_ms": pc.divide(attr("duration_ns").cast(pa.float64()), 1e6),
        "event": event,
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


def frame_table(fresh: dict[str, list[Record]]) -> pa.Table:
    sids: list[str] = []
    seqs: list[int] = []
    counts: list[int] = []
    ts: list[int] = []
    dirs: list[int] = []
    lens: list[int] = []
    streams: list[int] = []
    for sid, recs in fresh.items():
        for rec in recs:
            count = len(rec.frame_ts)
            sids.append(sid)
            seqs.append(rec.seq)
            counts.append(count)
            ts += rec.frame_ts
            dirs += rec.frame_dir
            lens += rec.frame_len
            streams += rec.frame_stream
    schema = arrow_schema("frames")
    ts_ns = pa.array(ts, pa.int64())
    direction = pc.if_else(pc.equal(pa.array(dirs, pa.int8()), 0), "c2s", "s2c")
    stream = pc.if_else(pc.equal(pa.array(streams, pa.int8()), 0), "data", "stderr")
    owner = _owners(counts)
    columns = [pc.take(pa.array(sids, pa.string()), owner),
               pc.take(pa.array(seqs, pa.int64()), owner),
               pc.divide(ts_ns, 1_000_000).cast(schema.field("ts").type), ts_ns,
               direction, pa.array(lens, pa.int64()), stream]  # fmt: skip
    return pa.table(columns, schema=schema)


def _owners(counts: list[int]) -> pa.Array:
    """Row → index of the chunk it came from, for rows laid out chunk after chunk."""
    parts = [pa.repeat(pa.scalar(i, pa.int32()), n) for i, n in enumerate(counts) if n]
    return pa.concat_arrays(parts) if parts else pa.array([], pa.int32())


def by_day(table: pa.Table) -> list[tuple[str, pa.Table]]:
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


def session_parquet(row: dict[str, Any]) -> bytes:
    """One session's row of the sessions table, as its own Parquet file (rewritten on update).

    ZSTD costs a fixed ~17 µs per column chunk (a compression context each), more than a row of
    a few bytes per column can save, so only the free-text column is compressed here."""
    data = pa.Table.from_pylist([row], schema=arrow_schema("sessions"))
    compression = {name: "none" for name in data.column_names} | {"problems": "zstd"}
    return write_parquet(data, compression=compression, use_dictionary=False)


# Columns with few distinct values; dictionary-encoding SQL text or whole events only costs time.
_DICTIONARY = ["session_id", "direction", "stream", "type", "subject", "target", "protocol",
               "outcome", "status", "issuer", "gateway", "end_reason"]  # fmt: skip


# Min/max statistics where queries filter (Athena skips row groups with them); computing them for
# SQL text costs time and saves nothing.
_STATISTICS = ["session_id", "seq", "ts", "ts_ns", "type", "subject", "target", "started_at",
               "status"]  # fmt: skip


def write_parquet(
    data: pa.Table,
    compression: str | dict[str, str] = "zstd",
    use_dictionary: bool | None = None,
) -> bytes:
    buf = io.BytesIO()
    columns = [c for c in _DICTIONARY if c in data.column_names]
    stats = [c for c in _STATISTICS if c in data.column_names]
    pq.write_table(data, buf, compression=compression,
                   use_dictionary=columns if use_dictionary is None else use_dictionary,
                   write_statistics=stats)  # fmt: skip
    return buf.getvalue()


_DAY_NS = 86_400 * 1_000_000_000


def day_of(ns: int) -> str:
    return _day_name(ns // _DAY_NS)


@functools.lru_cache(maxsize=64)
def _day_name(day_index: int) -> str:
    return time.strftime("%Y-%m-%d", time.gmtime(day_index * 86_400))

"""The one definition of the archive's tables: sessions, events, frames.

pyarrow schemas (what the pipeline writes as Parquet), Glue columns (what Athena reads) and DuckDB
views (what `tapegate query` reads locally) all come from the lists below, so the three cannot
drift apart. Timestamps are milliseconds, UTC: Athena (Trino) fails with SERIALIZATION_ERROR on
nanosecond Parquet timestamps. Tables are partitioned by day (`dt=YYYY-MM-DD` in the path).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date

import pyarrow as pa

TS = pa.timestamp("ms", tz="UTC")


@dataclass(frozen=True)
class Column:
    name: str
    arrow: pa.DataType
    glue: str
    doc: str


SESSIONS = (
    Column("session_id", pa.string(), "string", "UUIDv7 of the session"),
    Column("subject", pa.string(), "string", "the token's sub"),
    Column("issuer", pa.string(), "string", "the token's iss"),
    Column("email", pa.string(), "string", "the token's email, if any"),
    Column("groups", pa.list_(pa.string()), "array<string>", "the token's groups"),
    Column("target", pa.string(), "string", "target name from the gateway config"),
    Column("protocol", pa.string(), "string", "postgres, ssh, http"),
    Column("client_addr", pa.string(), "string", "host:port of the client"),
    Column("gateway", pa.string(), "string", "gateway instance"),
    Column("started_at", TS, "timestamp", "session start"),
    Column("ended_at", TS, "timestamp", "session end, null while open"),
    Column("status", pa.string(), "string", "open | closed | truncated | tampered"),
    Column("end_reason", pa.string(), "string", "client_terminate, refused, ..."),
    Column("verified", pa.bool_(), "boolean", "signatures and chain checked, complete"),
    Column("chunks", pa.int64(), "bigint", "distinct chunks received"),
    Column("bytes_client", pa.int64(), "bigint", "bytes client to server"),
    Column("bytes_server", pa.int64(), "bigint", "bytes server to client"),
    Column("statements", pa.int64(), "bigint", "queries, executes and blocked statements"),
    Column("head_digest", pa.string(), "string", "digest of the last linked chunk (hex)"),
    Column("problems", pa.string(), "string", "verification findings, one per line"),
)

EVENTS = (
    Column("session_id", pa.string(), "string", "UUIDv7 of the session"),
    Column("seq", pa.int64(), "bigint", "chunk the event was sealed in"),
    Column("ts", TS, "timestamp", "when the gateway saw it"),
    Column("ts_ns", pa.int64(), "bigint", "the same, in ns since the epoch"),
    Column("direction", pa.string(), "string", "c2s | s2c | null"),
    Column("type", pa.string(), "string", "query, result, error, blocked, auth, ..."),
    Column("text", pa.string(), "string", "the SQL or command, when there is one"),
    Column("subject", pa.string(), "string", "who (from the session header)"),
    Column("target", pa.string(), "string", "where (from the session header)"),
    Column("protocol", pa.string(), "string", "postgres, ssh, http"),
    Column("outcome", pa.string(), "string", "command tag, SQLSTATE or rule"),
    Column("rows", pa.int64(), "bigint", "rows returned or affected"),
    Column("duration_ms", pa.float64(), "double", "request to completion"),
    Column(
        "event", pa.string(), "string", "the whole event as sealed: ts, dir, type, attrs (JSON)"
    ),
)

FRAMES = (
    Column("session_id", pa.string(), "string", "UUIDv7 of the session"),
    Column("seq", pa.int64(), "bigint", "chunk the frame was sealed in"),
    Column("ts", TS, "timestamp", "when the gateway read the bytes"),
    Column("ts_ns", pa.int64(), "bigint", "the same, in ns since the epoch"),
    Column("direction", pa.string(), "string", "c2s | s2c"),
    Column("length", pa.int64(), "bigint", "bytes (the bytes themselves stay sealed)"),
    Column("stream", pa.string(), "string", "data | stderr (an SSH channel's extended data)"),
)

# The event types the `statements` column counts (the pipeline and `tapegate show` alike).
STATEMENT_EVENTS = frozenset({"query", "execute", "blocked"})

TABLES: dict[str, tuple[Column, ...]] = {"sessions": SESSIONS, "events": EVENTS, "frames": FRAMES}
PARTITION = "dt"


def arrow_schema(table: str) -> pa.Schema:
    return pa.schema([pa.field(c.name, c.arrow) for c in TABLES[table]])


def glue_columns(table: str) -> list[dict[str, str]]:
    return [{"Name": c.name, "Type": c.glue, "Comment": c.doc} for c in TABLES[table]]


def one_day_sql(table: str, day: str) -> str:
    """`SELECT *` of one day of a table, for an export. Both values end up as literals in the SQL
    (UNLOAD and COPY take no parameters), so only a known table and a real date get through."""
    if table not in TABLES:
        raise ValueError(f"no table {table!r}")
    day = date.fromisoformat(day).isoformat()
    return f"SELECT * FROM {table} WHERE {PARTITION} = '{day}'"


def duckdb_view_sql(table: str, root: str) -> str:
    """A view over every Parquet file of a table, with `dt` from the hive-style path. `dt` is a
    string, as in the Glue tables, so the same SQL compares it the same way on both engines."""
    columns = ", ".join(c.name for c in TABLES[table])
    pattern = f"{root.rstrip('/')}/{table}/*/*.parquet"
    return (
        f"CREATE OR REPLACE VIEW {table} AS SELECT {columns}, {PARTITION} "
        f"FROM read_parquet('{pattern}', hive_partitioning = true, "
        f"hive_types = {{'{PARTITION}': VARCHAR}}, union_by_name = true)"
    )

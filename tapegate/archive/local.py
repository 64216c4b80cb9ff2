"""The embedded archive: a folder for objects, SQLite for the index, DuckDB for SQL."""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from tapegate.archive import ChunkEntry, HeldChunk, Index, LeafEntry, SessionRecord
from tapegate.schema import TABLES, arrow_schema, duckdb_view_sql, one_day_sql


class LocalObjectStore:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def put(self, key: str, data: bytes) -> None:
        """Write a whole file or nothing: a reader (DuckDB globbing `*.parquet`) sees the old
        file or the new one, never half of one."""
        path = self.root / key
        path.parent.mkdir(parents=True, exist_ok=True)
        # A temp name of its own per writer: with one shared name, two writers of the same key
        # renamed each other's temp file away (FileNotFoundError).
        tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}.tmp")
        try:
            tmp.write_bytes(data)
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    def get(self, key: str) -> bytes:
        return (self.root / key).read_bytes()

    def list(self, prefix: str = "") -> list[str]:
        base = self.root / prefix if prefix else self.root
        if not base.exists():
            return []
        return sorted(
            str(p.relative_to(self.root))
            for p in base.rglob("*")
            if p.is_file() and not p.name.startswith(".")
        )


_SCHEMA = """
CREATE TABLE IF NOT EXISTS chunks (
    session_id TEXT NOT NULL, seq INTEGER NOT NULL, digest TEXT NOT NULL,
    prev_digest TEXT NOT NULL, final INTEGER NOT NULL, sealed_ns INTEGER NOT NULL,
    object_key TEXT NOT NULL, bytes_c2s INTEGER NOT NULL, bytes_s2c INTEGER NOT NULL,
    statements INTEGER NOT NULL, first_ns INTEGER NOT NULL, last_ns INTEGER NOT NULL,
    PRIMARY KEY (session_id, seq)
);
CREATE TABLE IF NOT EXISTS sessions (
    session_id TEXT PRIMARY KEY, subject TEXT, target TEXT, status TEXT,
    started_ns INTEGER, record TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS sessions_by_subject ON sessions (subject, started_ns);
CREATE INDEX IF NOT EXISTS sessions_by_target ON sessions (target, started_ns);
CREATE TABLE IF NOT EXISTS objects (key TEXT PRIMARY KEY, processed_ns INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS leaves (
    instance TEXT NOT NULL, counter INTEGER NOT NULL, digest TEXT NOT NULL,
    sealed_ns INTEGER NOT NULL, kind TEXT NOT NULL, session_id TEXT, object_key TEXT NOT NULL,
    raw BLOB NOT NULL, log_index INTEGER, UNIQUE (instance, counter, digest)
);
CREATE INDEX IF NOT EXISTS leaves_pending ON leaves (log_index) WHERE log_index IS NULL;
CREATE INDEX IF NOT EXISTS leaves_by_session ON leaves (session_id);
"""


BUSY_TIMEOUT_S = 60.0  # how long a write waits for other processes' writes to commit
LOCK_STEP_S = 0.1  # a transaction waiting for the write lock looks at its stop signal this often


class IndexBusy(Exception):
    """The write lock was not had: other processes kept it past the timeout, or the wait was
    abandoned."""


def _set_wal(db: sqlite3.Connection) -> None:
    """WAL mode, waiting for other processes: switching a new file to it needs an exclusive
    lock, and SQLite answers "database is locked" at once there instead of calling the busy
    handler (two `tapegate` commands starting on a fresh data dir failed that way)."""
    deadline = time.monotonic() + BUSY_TIMEOUT_S
    while True:
        try:
            db.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(LOCK_STEP_S / 10)


class SqliteIndex(Index):
    """The session index in one SQLite file, shared by every process on the data dir (the
    gateway's archive loop, each `tapegate` command): WAL lets readers read a committed state
    while one writer writes, and a writer waits its turn (busy timeout) instead of failing.
    Within a process, threads share one connection under a lock."""

    def __init__(self, path: Path) -> None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(
            str(path), timeout=BUSY_TIMEOUT_S, check_same_thread=False, isolation_level=None
        )
        _set_wal(self._db)
        # Commits without an fsync each: the index can always be rebuilt from the delivered
        # objects, which are fsynced, and per-chunk fsyncs were most of the pipeline's time.
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)
        # Reentrant: a transaction holds it across the pipeline's calls, so that another
        # thread's statement waits instead of landing inside this thread's transaction.
        self._lock = threading.RLock()

    @contextlib.contextmanager
    def transaction(self, abandon: threading.Event | None = None) -> Iterator[None]:
        """One atomic write: other processes see all of it or none, and wait while it runs.

        Waiting for the write lock ends with IndexBusy after the busy timeout, or soon after
        `abandon` is set (a stopping gateway must not wait out another process's backlog)."""
        with self._lock:
            self._begin(abandon)
            try:
                yield
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _begin(self, abandon: threading.Event | None) -> None:
        # IMMEDIATE takes the write lock up front, so that what is read inside cannot go stale
        # before the write that depends on it (a deferred one would fail to upgrade instead).
        # SQLite's own wait cannot be interrupted: wait in short steps, looking at `abandon`.
        deadline = time.monotonic() + BUSY_TIMEOUT_S
        self._db.execute(f"PRAGMA busy_timeout = {int(LOCK_STEP_S * 1000)}")
        try:
            while True:
                try:
                    self._db.execute("BEGIN IMMEDIATE")
                    return
                except sqlite3.OperationalError as exc:
                    if exc.sqlite_errorcode & 0xFF != sqlite3.SQLITE_BUSY:  # any BUSY_* kind
                        raise
                    if time.monotonic() >= deadline or (abandon and abandon.is_set()):
                        raise IndexBusy(str(exc)) from exc
        finally:
            self._db.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")

    def _insert_chunk(self, entry: ChunkEntry) -> bool:
        with self._lock:
            cur = self._db.execute(
                "INSERT INTO chunks VALUES (?,?,?,?,?,?,?,?,?,?,?,?) ON CONFLICT DO NOTHING",
                (entry.session_id, entry.seq, entry.digest, entry.prev_digest,
                 int(entry.final), entry.sealed_ns, entry.object_key, entry.bytes_c2s,
                 entry.bytes_s2c, entry.statements, entry.first_ns, entry.last_ns),
            )  # fmt: skip
            return cur.rowcount == 1

    def _held_chunk(self, session_id: str, seq: int) -> HeldChunk:
        with self._lock:
            digest, key = self._db.execute(
                "SELECT digest, object_key FROM chunks WHERE session_id = ? AND seq = ?",
                (session_id, seq),
            ).fetchone()
        return HeldChunk(digest, key)

    def chunks(self, session_id: str) -> list[ChunkEntry]:
        with self._lock:
            rows = self._db.execute(
                "SELECT * FROM chunks WHERE session_id = ? ORDER BY seq", (session_id,)
            ).fetchall()
        return [ChunkEntry(r[0], r[1], r[2], r[3], bool(r[4]), *r[5:]) for r in rows]

    def claim_leaf(self, entry: LeafEntry) -> bool:
        with self._lock:
            cur = self._db.execute(
                "INSERT INTO leaves VALUES (?,?,?,?,?,?,?,?,NULL) ON CONFLICT DO NOTHING",
                (entry.instance, entry.counter, entry.digest, entry.sealed_ns, entry.kind,
                 entry.session_id, entry.object_key, entry.raw),
            )  # fmt: skip
            return cur.rowcount == 1

    def pending_leaves(self, limit: int = 10_000) -> list[LeafEntry]:
        with self._lock:
            rows = self._db.execute(
                "SELECT instance, counter, digest, sealed_ns, kind, session_id, object_key, raw"
                " FROM leaves WHERE log_index IS NULL ORDER BY rowid LIMIT ?",
                (limit,),
            ).fetchall()
        return [LeafEntry(*r[:7], bytes(r[7])) for r in rows]

    def mark_sequenced(self, entries: Sequence[LeafEntry], first_index: int) -> None:
        with self._lock:
            self._db.executemany(
                "UPDATE leaves SET log_index = ? WHERE instance = ? AND counter = ? AND digest = ?",
                [(first_index + i, e.instance, e.counter, e.digest) for i, e in enumerate(entries)],
            )

    def leaf_positions(self, session_id: str) -> list[int]:
        with self._lock:
            rows = self._db.execute(
                "SELECT log_index FROM leaves WHERE session_id = ? AND log_index IS NOT NULL"
                " ORDER BY log_index",
                (session_id,),
            ).fetchall()
        return [r[0] for r in rows]

    def get_session(self, session_id: str) -> SessionRecord | None:
        with self._lock:
            row = self._db.execute(
                "SELECT record FROM sessions WHERE session_id = ?", (session_id,)
            ).fetchone()
        return SessionRecord(**json.loads(row[0])) if row else None

    def put_session(self, record: SessionRecord) -> None:
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO sessions VALUES (?,?,?,?,?,?)",
                (record.session_id, record.subject, record.target, record.status,
                 record.started_ns, json.dumps(asdict(record))),
            )  # fmt: skip

    def sessions(
        self,
        *,
        subject: str | None = None,
        target: str | None = None,
        since_ns: int | None = None,
        status: str | None = None,
    ) -> list[SessionRecord]:
        where, args = [], []
        for column, value in (("subject", subject), ("target", target), ("status", status)):
            if value is not None:
                where.append(f"{column} = ?")
                args.append(value)
        if since_ns is not None:
            where.append("started_ns >= ?")
            args.append(since_ns)
        sql = "SELECT record FROM sessions"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY started_ns, session_id"
        with self._lock:
            rows = self._db.execute(sql, args).fetchall()
        return [SessionRecord(**json.loads(r[0])) for r in rows]

    # -- which delivery objects were processed (the embedded runner's bookkeeping) --

    def processed(self, key: str) -> bool:
        with self._lock:
            return (
                self._db.execute("SELECT 1 FROM objects WHERE key = ?", (key,)).fetchone()
                is not None
            )

    def mark_processed(self, key: str, now_ns: int) -> None:
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO objects VALUES (?, ?)", (key, now_ns))


class DuckDBQuery:
    """SQL over the curated Parquet files, with the same table names Athena has."""

    def __init__(self, curated_root: Path) -> None:
        self.root = Path(curated_root)

    def query(
        self, sql: str, params: Sequence[Any] | None = None
    ) -> tuple[list[str], list[tuple[Any, ...]]]:
        con = self._connect()
        try:
            cur = con.execute(sql, params) if params else con.execute(sql)
            columns = [d[0] for d in cur.description or []]
            return columns, cur.fetchall()
        finally:
            con.close()

    def unload(self, table: str, day: str, destination: Path) -> None:
        """One day of a table into Parquet files under `destination` (Athena's UNLOAD here)."""
        select = one_day_sql(table, day)
        destination.mkdir(parents=True, exist_ok=True)
        con = self._connect()
        try:
            con.execute(
                f"COPY ({select}) "
                f"TO '{destination / 'part-0.parquet'}' (FORMAT PARQUET, COMPRESSION ZSTD)"
            )
        finally:
            con.close()

    def _connect(self) -> Any:
        import duckdb

        con = duckdb.connect(":memory:")
        con.execute("SET TimeZone = 'UTC'")
        for table in TABLES:
            if any((self.root / table).glob("*/*.parquet")):
                con.execute(duckdb_view_sql(table, str(self.root)))
            else:  # no files yet: an empty table of the right shape
                empty = arrow_schema(table).empty_table()
                con.register(f"_{table}_empty", empty)
                con.execute(
                    f"CREATE VIEW {table} AS SELECT *, NULL::VARCHAR AS dt FROM _{table}_empty"
                )
        return con

"""Ports of the archive: where objects live, where sessions are indexed, how SQL is answered.

One small interface each, one adapter per backend (local folder | S3, SQLite | DynamoDB,
DuckDB | Athena). The pipeline and the CLI see only these interfaces. Where the adapters would
otherwise repeat a decision, it lives here and they supply only the storage step (the model is
Powertools' idempotency persistence layers).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Protocol

from tapegate.tape.chain import Copy, second_copy


class Claim(Enum):
    NEW = "new"  # first time this (session, seq) is seen
    AGAIN = "again"  # same digest, same object: the object is being processed again
    DUPLICATE = "duplicate"  # same digest from another object: Firehose delivered it twice
    CONFLICT = "conflict"  # same seq, different digest: tampering, the first copy is kept


@dataclass(frozen=True)
class ChunkEntry:
    """What the index keeps per chunk: enough to check the chain and sum up the session."""

    session_id: str
    seq: int
    digest: str
    prev_digest: str
    final: bool
    sealed_ns: int
    object_key: str
    bytes_c2s: int = 0
    bytes_s2c: int = 0
    statements: int = 0
    first_ns: int = 0
    last_ns: int = 0


@dataclass(frozen=True)
class LeafEntry:
    """A verified log leaf as the index holds it until (and after) the sequencer appends it."""

    instance: str
    counter: int
    digest: str  # hex SHA-256 of the leaf without its signature
    sealed_ns: int
    kind: str
    session_id: str | None
    object_key: str
    raw: bytes  # the signed leaf: what the sequencer appends to the log


@dataclass
class SessionRecord:
    """One row per session, as the index and the sessions table hold it."""

    session_id: str
    header: dict[str, Any] | None = None  # chunk 0's meta.session (without sealed keys)
    end: dict[str, Any] | None = None  # the final chunk's meta.end
    alerts: list[str] = field(default_factory=list)  # tamper and clock findings, kept forever
    status: str = "open"
    verified: bool = False
    chunks: int = 0
    bytes_client: int = 0
    bytes_server: int = 0
    statements: int = 0
    head_digest: str | None = None
    problems: list[str] = field(default_factory=list)
    started_ns: int | None = None
    ended_ns: int | None = None
    last_seen_ns: int = 0
    object_keys: list[str] = field(default_factory=list)
    table_status: str | None = None  # the status last written to the sessions table
    table_written_ns: int = 0

    @property
    def subject(self) -> str | None:
        return (self.header or {}).get("identity", {}).get("subject")

    @property
    def target(self) -> str | None:
        return (self.header or {}).get("target")


class ObjectStore(Protocol):
    def put(self, key: str, data: bytes) -> None: ...

    def get(self, key: str) -> bytes: ...

    def list(self, prefix: str = "") -> list[str]: ...


@dataclass(frozen=True)
class HeldChunk:
    """The copy of a (session, seq) that the index kept: the first one claimed."""

    digest: str
    object_key: str


class Index(ABC):
    """The session index. `claim_chunk` decides here; an adapter supplies the atomic write."""

    def claim_chunk(self, entry: ChunkEntry) -> tuple[Claim, str | None]:
        """Record a verified chunk unless its (session, seq) is known; say which case it was
        and, for a conflict, the digest already held."""
        if self._insert_chunk(entry):
            return Claim.NEW, None
        held = self._held_chunk(entry.session_id, entry.seq)
        if second_copy(held.digest, entry.digest) is Copy.CONFLICT:
            return Claim.CONFLICT, held.digest
        # The same chunk: from the same object it is that object processed again (its rows are
        # rewritten in place); from another it is a second delivery, and adds nothing.
        again = held.object_key == entry.object_key
        return (Claim.AGAIN if again else Claim.DUPLICATE), held.digest

    @abstractmethod
    def _insert_chunk(self, entry: ChunkEntry) -> bool:
        """Write the chunk unless its (session, seq) is held, in one conditional write (never
        read-then-write: two archive workers may claim the same chunk at once); whether it
        was written."""

    @abstractmethod
    def _held_chunk(self, session_id: str, seq: int) -> HeldChunk:
        """The copy held for a (session, seq) that `_insert_chunk` found taken."""

    @abstractmethod
    def chunks(self, session_id: str) -> list[ChunkEntry]: ...

    # -- log leaves: claimed by the pipeline, appended by the sequencer --

    @abstractmethod
    def claim_leaf(self, entry: LeafEntry) -> bool:
        """Hold a verified leaf for the sequencer unless this (instance, counter, digest) is
        held already (at-least-once delivery); whether it was new. Two leaves with one counter
        and different digests are both held: the log keeps both and its verifier names it."""

    @abstractmethod
    def pending_leaves(self, limit: int = 10_000) -> list[LeafEntry]:
        """Leaves not yet in the log, in the order they were claimed."""

    @abstractmethod
    def mark_sequenced(self, entries: Sequence[LeafEntry], first_index: int) -> None:
        """The sequencer appended `entries` at log positions first_index, first_index + 1..."""

    @abstractmethod
    def leaf_positions(self, session_id: str) -> list[int]:
        """Where the sequencer appended a session's leaves (for its evidence bundle)."""

    @abstractmethod
    def get_session(self, session_id: str) -> SessionRecord | None: ...

    @abstractmethod
    def put_session(self, record: SessionRecord) -> None: ...

    @abstractmethod
    def sessions(
        self,
        *,
        subject: str | None = None,
        target: str | None = None,
        since_ns: int | None = None,
        status: str | None = None,
    ) -> list[SessionRecord]: ...


class QueryEngine(Protocol):
    def query(
        self, sql: str, params: Sequence[Any] | None = None
    ) -> tuple[list[str], list[tuple[Any, ...]]]: ...

    def unload(self, table: str, day: str, destination: Any) -> None: ...

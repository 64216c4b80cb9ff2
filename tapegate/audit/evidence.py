"""A session's raw evidence: its sealed records, cut byte for byte from the delivered objects.

The auditor commands (show, replay, verify, export) judge a session from these bytes and the
trusted public keys, never from the index or the Parquet tables. The index is only asked where
to look: the objects it saw the session in. An index that forgot an object can make a session
look incomplete (a missing range), never intact when it is not.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field

from nacl.signing import VerifyKey

from tapegate.archive import Index, ObjectStore
from tapegate.tape import Verdict, split_records, verify_session
from tapegate.tape.codec import MAGIC

# The session id sits at bytes 12-28 of every chunk's fixed header (docs/FORMAT.md): enough to
# pick a session's records out of an object without decoding them.
_SID_OFFSET = 12


class EvidenceError(Exception):
    """The session cannot be found, or its objects cannot be read: one line for the user."""


@dataclass
class Piece:
    """The records of one session found in one delivered object, in delivered order."""

    object_key: str
    object_sha256: str  # of the whole delivered object, so a holder of the archive can match it
    records: list[bytes]


@dataclass
class SessionEvidence:
    session_id: uuid.UUID
    pieces: list[Piece] = field(default_factory=list)
    damage: list[str] = field(default_factory=list)  # bytes in those objects that split failed on

    @property
    def records(self) -> list[bytes]:
        return [r for piece in self.pieces for r in piece.records]

    def verify(self, trusted: Mapping[bytes, VerifyKey]) -> Verdict:
        return verify_session(self.records, trusted, self.session_id)


def parse_session_id(text: str) -> uuid.UUID:
    try:
        return uuid.UUID(text)
    except ValueError:
        raise EvidenceError(
            f"{text!r} is not a session id (a UUID, as `tapegate sessions` lists)"
        ) from None


def gather(session_id: uuid.UUID, index: Index, objects: ObjectStore) -> SessionEvidence:
    """Fetch every object the index saw the session in, and keep the session's records."""
    sid = str(session_id)
    record = index.get_session(sid)
    if record is None:
        raise EvidenceError(f"unknown session {sid}: not in the archive's index")
    keys = list(dict.fromkeys([*record.object_keys, *(c.object_key for c in index.chunks(sid))]))
    evidence = SessionEvidence(session_id)
    sid_bytes = session_id.bytes
    for key in keys:
        try:
            data = objects.get(key)
        except Exception as exc:  # S3 and the filesystem fail in their own ways; say which
            raise EvidenceError(f"cannot read delivered object {key}: {exc}") from None
        found, errors = split_records(data)
        evidence.damage += [
            f"{key}: damaged bytes at offset {e.offset}: {e.reason}" for e in errors
        ]
        # Chunks only: a log leaf holds its gateway instance's id where a chunk has its session's.
        mine = [
            r for r in found if r[:4] == MAGIC and r[_SID_OFFSET : _SID_OFFSET + 16] == sid_bytes
        ]
        if mine:
            evidence.pieces.append(Piece(key, hashlib.sha256(data).hexdigest(), mine))
    return evidence

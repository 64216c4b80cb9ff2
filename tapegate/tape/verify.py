"""Check a session's sealed records with nothing but the trusted public keys.

`verify_session` takes records in any order, duplicates included (Firehose delivers at least
once and does not keep order), and returns a Verdict listing every problem it found. It never
raises for bad input: damaged bytes are a finding, not an exception.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum

from nacl.signing import VerifyKey

from tapegate.tape.codec import ZERO_DIGEST, Record, TapeFormatError, decode_record
from tapegate.tape.seal import check_signature


class ProblemKind(StrEnum):
    UNDECODABLE = "undecodable"  # bytes that are not a record
    UNKNOWN_KEY = "unknown_key"  # signed by a key that is not trusted
    BAD_SIGNATURE = "bad_signature"  # the signature does not match the bytes
    CONFLICT = "conflict"  # same seq, different content: tampering or a forked writer
    BROKEN_LINK = "broken_link"  # prev_digest does not match the previous chunk
    MISSING = "missing"  # a range of seq numbers is absent
    AFTER_FINAL = "after_final"  # chunks beyond the one marked final
    NO_FINAL = "no_final"  # the session is open, or was truncated
    OTHER_SESSION = "other_session"  # a record of another session was mixed in


@dataclass(frozen=True, slots=True)
class Problem:
    kind: ProblemKind
    seq: int | None = None
    detail: str = ""

    def __str__(self) -> str:
        where = f" at seq {self.seq}" if self.seq is not None else ""
        return f"{self.kind.value}{where}: {self.detail}" if self.detail else f"{self.kind}{where}"


@dataclass(frozen=True, slots=True)
class Verdict:
    session_id: uuid.UUID | None
    problems: tuple[Problem, ...]
    chunks: int  # distinct, correctly signed chunks
    final_seq: int | None
    head_digest: bytes | None  # digest of the highest contiguous, linked chunk
    records: tuple[Record, ...] = field(default=(), repr=False)  # the accepted ones, by seq

    @property
    def intact(self) -> bool:
        return not self.problems

    @property
    def status(self) -> str:
        """intact | open (only the final chunk is missing so far) | broken."""
        if not self.problems:
            return "intact"
        if all(p.kind is ProblemKind.NO_FINAL for p in self.problems):
            return "open"
        return "broken"

    def kinds(self) -> set[ProblemKind]:
        return {p.kind for p in self.problems}


def verify_session(
    records: Iterable[bytes],
    trusted: Mapping[bytes, VerifyKey],
    session_id: uuid.UUID | None = None,
) -> Verdict:
    """Verify one session. `trusted` maps key id → Ed25519 public key (several during rotation).

    When `session_id` is None the session is the one named by the first decodable record.
    """
    problems: list[Problem] = []
    by_seq: dict[int, Record] = {}

    for raw in records:
        try:
            rec = decode_record(raw)
        except (TapeFormatError, ValueError, TypeError) as exc:
            problems.append(Problem(ProblemKind.UNDECODABLE, None, str(exc)))
            continue
        if session_id is None:
            session_id = rec.session_id
        if rec.session_id != session_id:
            problems.append(Problem(ProblemKind.OTHER_SESSION, rec.seq, str(rec.session_id)))
            continue
        key = trusted.get(rec.key_id)
        if key is None:
            problems.append(Problem(ProblemKind.UNKNOWN_KEY, rec.seq, f"key id {rec.key_id.hex()}"))
            continue
        digest = rec.digest
        if not check_signature(key, digest, rec.signature):
            problems.append(Problem(ProblemKind.BAD_SIGNATURE, rec.seq))
            continue
        seen = by_seq.get(rec.seq)
        if seen is None:
            by_seq[rec.seq] = rec
        elif seen.raw != rec.raw:
            # Both are validly signed: the first copy is kept, the clash is the finding.
            problems.append(
                Problem(
                    ProblemKind.CONFLICT,
                    rec.seq,
                    f"digests {seen.digest.hex()[:16]} and {digest.hex()[:16]}",
                )
            )

    problems += _check_chain(by_seq)
    ordered = tuple(by_seq[s] for s in sorted(by_seq))
    finals = [r.seq for r in ordered if r.final]
    final_seq = finals[0] if finals else None
    if final_seq is not None:
        for r in ordered:
            if r.seq > final_seq:
                problems.append(
                    Problem(ProblemKind.AFTER_FINAL, r.seq, f"final chunk is seq {final_seq}")
                )
    else:
        last = ordered[-1].seq if ordered else None
        detail = "no chunks verified" if last is None else f"last chunk seen is seq {last}"
        problems.append(Problem(ProblemKind.NO_FINAL, None, detail))

    return Verdict(
        session_id=session_id,
        problems=tuple(problems),
        chunks=len(by_seq),
        final_seq=final_seq,
        head_digest=_head_digest(by_seq),
        records=ordered,
    )


def _check_chain(by_seq: dict[int, Record]) -> list[Problem]:
    problems: list[Problem] = []
    if not by_seq:
        return problems
    expected = 0
    for seq in sorted(by_seq):
        if seq > expected:
            last = seq - 1
            span = f"{expected}" if expected == last else f"{expected}-{last}"
            problems.append(Problem(ProblemKind.MISSING, expected, f"seq {span} absent"))
        rec = by_seq[seq]
        if seq == 0:
            if rec.prev_digest != ZERO_DIGEST:
                problems.append(Problem(ProblemKind.BROKEN_LINK, 0, "chunk 0 must link to zeros"))
        elif seq - 1 in by_seq and rec.prev_digest != by_seq[seq - 1].digest:
            problems.append(
                Problem(ProblemKind.BROKEN_LINK, seq, "prev_digest differs from chunk before")
            )
        expected = seq + 1
    return problems


def _head_digest(by_seq: dict[int, Record]) -> bytes | None:
    head = None
    seq = 0
    while seq in by_seq:
        rec = by_seq[seq]
        if seq and rec.prev_digest != head:
            break
        head = rec.digest
        seq += 1
    return head

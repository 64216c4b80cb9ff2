"""Check a session's sealed records with nothing but the trusted public keys.

`verify_session` takes records in any order, duplicates included (Firehose delivers at least
once and does not keep order), and returns a Verdict listing every problem it found. It never
raises for bad input: damaged bytes are a finding, not an exception.
"""

from __future__ import annotations

import uuid
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum

from nacl.signing import VerifyKey

from tapegate.tape.chain import Chain, Copy, Fault, check_chain, second_copy
from tapegate.tape.codec import Record, TapeFormatError, decode_record
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
    EMPTY = "empty"  # no record at all: nothing to judge, which is not "open"


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

    The verdict does not depend on the order of `records` (docs/FORMAT.md, "Verifying a
    session"): when `session_id` is None the session is the one most decodable records belong
    to (the lowest id on a tie); of two validly signed copies of one seq the one with the lower
    digest is kept; problems come sorted by seq, then kind."""
    problems: list[Problem] = []
    decoded: list[Record] = []
    for raw in records:
        try:
            decoded.append(decode_record(raw))
        except (TapeFormatError, ValueError, TypeError) as exc:
            problems.append(Problem(ProblemKind.UNDECODABLE, None, str(exc)))
    if session_id is None:
        session_id = _main_session(decoded, trusted)
    by_seq: dict[int, Record] = {}
    copies: dict[int, set[bytes]] = defaultdict(set)
    mine = 0
    for rec in decoded:
        if rec.session_id != session_id:
            problems.append(Problem(ProblemKind.OTHER_SESSION, rec.seq, str(rec.session_id)))
            continue
        mine += 1
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
        elif second_copy(seen.digest, digest) is Copy.CONFLICT:
            # Both validly signed: the clash is the finding, and the copy kept is the one with
            # the lower digest, whichever came first, so that the rest of the verdict is too.
            copies[rec.seq] |= {seen.digest, digest}
            if digest < seen.digest:
                by_seq[rec.seq] = rec
    for seq, digests in copies.items():
        held = sorted(digests)
        listed = " and ".join(d.hex()[:16] for d in held)
        problems.append(Problem(ProblemKind.CONFLICT, seq,
                                f"digests {listed}; {held[0].hex()[:16]} kept"))  # fmt: skip
    if not mine and not problems:
        problems.append(Problem(ProblemKind.EMPTY, None, "no record of the session"))
    else:
        chain = check_chain(by_seq.values())
        problems += _chain_problems(chain, max(by_seq, default=None))
    chain = check_chain(by_seq.values())
    return Verdict(
        session_id=session_id,
        problems=tuple(sorted(problems, key=_order)),
        chunks=len(by_seq),
        final_seq=chain.final_seq,
        head_digest=chain.head_digest,
        records=tuple(by_seq[s] for s in sorted(by_seq)),
    )


# Findings are listed by seq, then in the order of docs/FORMAT.md's rules.
_RULES = [ProblemKind.UNDECODABLE, ProblemKind.OTHER_SESSION, ProblemKind.UNKNOWN_KEY,
          ProblemKind.BAD_SIGNATURE, ProblemKind.CONFLICT, ProblemKind.MISSING,
          ProblemKind.BROKEN_LINK, ProblemKind.NO_FINAL, ProblemKind.AFTER_FINAL,
          ProblemKind.EMPTY]  # fmt: skip
_KINDS = {kind: i for i, kind in enumerate(_RULES)}


def _order(problem: Problem) -> tuple[int, int, str]:
    return (-1 if problem.seq is None else problem.seq, _KINDS[problem.kind], problem.detail)


def _main_session(decoded: list[Record], trusted: Mapping[bytes, VerifyKey]) -> uuid.UUID | None:
    """The session carried by the most distinct signed records, else by the most distinct
    decodable ones; the lowest id on a tie (docs/FORMAT.md, rule 2)."""
    # A digest counts as signed when any of its copies carries a valid signature: a copy with
    # a broken one, before or after it, must not change which session is judged.
    signed = {r.digest: r for r in decoded if (key := trusted.get(r.key_id)) is not None
              and check_signature(key, r.digest, r.signature)}  # fmt: skip
    distinct = signed or {rec.digest: rec for rec in decoded}
    counts = Counter(rec.session_id for rec in distinct.values())
    if not counts:
        return None
    return min(counts, key=lambda sid: (-counts[sid], sid.bytes))


def _chain_problems(chain: Chain, last_seq: int | None) -> list[Problem]:
    """The chain rules' findings as the verifier names them."""
    problems = []
    for fault in chain.faults:
        if fault.kind is Fault.MISSING:
            span = f"{fault.seq}" if fault.seq == fault.last else f"{fault.seq}-{fault.last}"
            problems.append(Problem(ProblemKind.MISSING, fault.seq, f"seq {span} absent"))
        elif fault.seq == 0:
            problems.append(Problem(ProblemKind.BROKEN_LINK, 0, "chunk 0 must link to zeros"))
        else:
            problems.append(
                Problem(ProblemKind.BROKEN_LINK, fault.seq, "prev_digest differs from chunk before")
            )
    for seq in chain.after_final:
        problems.append(
            Problem(ProblemKind.AFTER_FINAL, seq, f"final chunk is seq {chain.final_seq}")
        )
    if chain.final_seq is None:
        detail = "no chunks verified" if last_seq is None else f"last chunk seen is seq {last_seq}"
        problems.append(Problem(ProblemKind.NO_FINAL, None, detail))
    return problems

"""The chain rules of a session's chunks (docs/FORMAT.md, "Verifying a session", rules 4-7).

The verifier checks them over decoded records, the archive pipeline over the chunks its index
has claimed; both ask this module, so that a tape is judged the same way offline and in the
archive. Signatures are not checked here: a link is only trusted once its signature is.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

from tapegate.tape.codec import ZERO_DIGEST


class Link(Protocol):
    """What the chain rules read of a chunk: a decoded Record is one."""

    @property
    def seq(self) -> int: ...

    @property
    def digest(self) -> bytes: ...

    @property
    def prev_digest(self) -> bytes: ...

    @property
    def final(self) -> bool: ...


@dataclass(frozen=True, slots=True)
class ChunkLink:
    """A link built from what an index holds (digests as hex there)."""

    seq: int
    digest: bytes
    prev_digest: bytes
    final: bool


class Copy(StrEnum):
    """A second copy of a seq already held."""

    DUPLICATE = "duplicate"  # same digest: delivered again; Firehose delivers at least once
    CONFLICT = "conflict"  # another digest: tampering or a forked writer; the first copy stays


def second_copy(held_digest: bytes | str, digest: bytes | str) -> Copy:
    """Judge a copy of a seq by its digest: the digest covers every byte but the signature,
    and the signature was checked over that digest, so equal digests are the same chunk."""
    return Copy.DUPLICATE if held_digest == digest else Copy.CONFLICT


class Fault(StrEnum):
    MISSING = "missing"  # a range of seqs absent below the highest one seen
    BROKEN_LINK = "broken_link"  # prev_digest is not the digest of the chunk before (or zeros)


@dataclass(frozen=True, slots=True)
class ChainFault:
    kind: Fault
    seq: int  # the first missing seq, or the chunk whose link is broken
    last: int  # the last missing seq (== seq for a broken link)


@dataclass(frozen=True, slots=True)
class Chain:
    """The chain rules' findings over one session's chunks, one copy per seq."""

    faults: tuple[ChainFault, ...]  # in seq order
    final_seq: int | None  # the lowest seq marked final
    after_final: tuple[int, ...]  # seqs beyond the final chunk
    head_digest: bytes | None  # digest of the highest chunk linked without a break from seq 0

    @property
    def complete(self) -> bool:
        """Seqs 0 … final, all linked, and nothing after the final chunk."""
        return self.final_seq is not None and not self.faults and not self.after_final


def check_chain(links: Iterable[Link]) -> Chain:
    """Apply the chain rules to a session's chunks, one per seq (any order)."""
    by_seq = {link.seq: link for link in links}
    faults: list[ChainFault] = []
    expected = 0
    for seq in sorted(by_seq):
        if seq > expected:
            faults.append(ChainFault(Fault.MISSING, expected, seq - 1))
        link = by_seq[seq]
        before = ZERO_DIGEST if seq == 0 else by_seq[seq - 1].digest if seq - 1 in by_seq else None
        if before is not None and link.prev_digest != before:
            faults.append(ChainFault(Fault.BROKEN_LINK, seq, seq))
        expected = seq + 1
    finals = sorted(seq for seq, link in by_seq.items() if link.final)
    final_seq = finals[0] if finals else None
    after = tuple(s for s in sorted(by_seq) if final_seq is not None and s > final_seq)
    return Chain(tuple(faults), final_seq, after, _head_digest(by_seq))


def _head_digest(by_seq: dict[int, Link]) -> bytes | None:
    head = None
    seq = 0
    while seq in by_seq:
        link = by_seq[seq]
        if seq and link.prev_digest != head:
            break
        head = link.digest
        seq += 1
    return head

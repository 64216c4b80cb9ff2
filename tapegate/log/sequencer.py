"""The one writer of the log: append the leaves the pipeline holds, sign a checkpoint.

Runs where one instance at a time is guaranteed: in `tapegate up` inside the embedded
archive's index transaction (SQLite's write lock), on AWS as a scheduled Lambda with reserved
concurrency 1. Each run:

1. reads its own latest checkpoint (the tree's size; none yet: an empty tree);
2. takes the pending leaves in claim order and appends them to the tiles;
3. signs and stores a checkpoint of the new size: `checkpoint`, and a copy under
   `checkpoints/` that is never replaced (every consecutive pair is checked for consistency);
4. marks the leaves sequenced in the index.

A run that dies between 2 and 3 leaves tiles past the signed size, which the next run writes
over; between 3 and 4, the next run appends those leaves again. Either way the signed tree only
grows, and a leaf appended twice is a duplicate, which the verifier ignores (docs/LOG.md).

It refuses to build on a log it did not sign: tiles that do not hash to its latest checkpoint,
or earlier checkpoints without a latest one. (Whoever holds the log key can still sign anything;
that is what anchors and the auditor's kept checkpoints are for.)
"""

from __future__ import annotations

from dataclasses import dataclass

from nacl.signing import SigningKey

from tapegate.archive import Index
from tapegate.log.note import Checkpoint, NoteError, SignedCheckpoint, parse_checkpoint
from tapegate.log.tiles import MAX_ENTRY_BYTES, Store, TileLog

LATEST = "checkpoint"
HISTORY = "checkpoints/"
BATCH = 10_000


@dataclass(frozen=True)
class LogKey:
    """The sequencer's identity: the checkpoints' origin line and signing key (its name is the
    origin, as tlog clients expect)."""

    origin: str
    signer: SigningKey


def read_note(store: Store, key: str) -> bytes | None:
    """A stored note, or None when there is none."""
    try:
        return store.get(key)
    except OSError:  # missing (FileNotFoundError), or a directory in its place: no note
        return None


class Sequencer:
    def __init__(self, index: Index, store: Store, key: LogKey, prefix: str = "") -> None:
        self.index = index
        self.store = store
        self.key = key
        self.prefix = prefix
        self.tiles = TileLog(store, prefix)

    def latest(self) -> SignedCheckpoint | None:
        note = read_note(self.store, self.prefix + LATEST)
        if note is None:
            return None
        trusted = {self.key.origin: self.key.signer.verify_key}
        try:
            return parse_checkpoint(note, trusted)
        except NoteError as exc:  # not ours, or damaged: refuse to build on it
            raise NoteError(f"the log's latest checkpoint does not check out: {exc}") from None

    def run(self, now_ms: int, limit: int = BATCH) -> SignedCheckpoint | None:
        """Append what is pending; the new checkpoint, or None when nothing was pending.

        Raises NoteError rather than build on a log that is not the one it signed: a latest
        checkpoint it cannot verify, tiles that do not hash to it, or no latest checkpoint
        where earlier ones exist (a log removed to be started afresh)."""
        latest = self.latest()
        if latest is None and self.store.list(self.prefix + HISTORY):
            raise NoteError("the log's latest checkpoint is gone while earlier ones exist: "
                            "not starting a new log over an old one")  # fmt: skip
        size = latest.checkpoint.size if latest is not None else 0
        if latest is not None and self.tiles.root(size) != latest.checkpoint.root:
            raise NoteError(f"the log's tiles do not hash to its latest checkpoint ({size} "
                            "leaves): not building on them")  # fmt: skip
        pending = [p for p in self.index.pending_leaves(limit) if len(p.raw) <= MAX_ENTRY_BYTES]
        if not pending:
            return None
        # Claim order, which is delivery order: an instance's counters may arrive out of order
        # (Firehose does not keep it); the verifier checks them as a set, not as a sequence.
        new_size = self.tiles.append(size, [leaf.raw for leaf in pending])
        if latest is not None and now_ms <= latest.checkpoint.time_ms:
            now_ms = latest.checkpoint.time_ms + 1  # checkpoint times only move forward
        checkpoint = Checkpoint(self.key.origin, new_size, self.tiles.root(new_size), now_ms)
        note = checkpoint.sign(self.key.origin, self.key.signer)
        self.store.put(f"{self.prefix}{HISTORY}{now_ms:015d}", note)
        self.store.put(self.prefix + LATEST, note)
        self.index.mark_sequenced(pending, size)
        return SignedCheckpoint(checkpoint, note, (self.key.origin,))

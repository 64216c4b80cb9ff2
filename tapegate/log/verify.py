"""`tapegate log verify`: the log, its checkpoints and the archive, checked against each other.

What it proves, from what an auditor holds (the log's tiles and checkpoints, the evidence
objects, the index, the public keys):
- every checkpoint is signed by a trusted log key, and each one extends the one before
  (RFC 9162 consistency), so the log only grew; two of one size with different roots are a fork;
- the tiles hash to the latest checkpoint's root, so no leaf was changed, removed or reordered;
- every leaf is signed by a trusted gateway key, and each instance's counters run 0, 1, 2, ...
  without a gap or two leaves for one counter; an instance silent for longer than its heartbeat
  tolerance is a suppression window, and one that ended without its stop leaf is named;
- every session with a leaf exists in the evidence objects and its chain verifies there, up to
  the final chunk the close leaf names, unless an `expired` leaf covers it;
- every session in the index has its leaves.

Problems are typed (LogProblemKind) and each names what it is about, as `verify` does for
tapes. docs/LOG.md gives the rules.
"""

from __future__ import annotations

import datetime as dt
import itertools
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from nacl.signing import VerifyKey

from tapegate.archive import Index, ObjectStore
from tapegate.log import merkle
from tapegate.log.anchor import AnchorError, anchored_notes, check_token
from tapegate.log.leaf import Leaf, LeafError, LeafKind, decode_leaf
from tapegate.log.note import ForgedNote, NoteError, SignedCheckpoint, parse_checkpoint
from tapegate.log.sequencer import HISTORY, LATEST, read_note
from tapegate.log.tiles import TileError, TileLog
from tapegate.tape import TapeFormatError, decode_record, split_records
from tapegate.tape.chain import check_chain
from tapegate.tape.codec import MAGIC
from tapegate.tape.seal import check_signature

DEFAULT_HEARTBEAT_SLACK_S = 30  # tolerated beyond twice an instance's heartbeat interval
DEFAULT_LAG_S = 120  # how far the sequencer may trail: newer sessions are not yet required


class LogProblemKind(StrEnum):
    FORGED_CHECKPOINT = "forged_checkpoint"  # no trusted log key signed it
    MALFORMED_CHECKPOINT = "malformed_checkpoint"
    NO_CHECKPOINT = "no_checkpoint"  # sessions are indexed but the log has no checkpoint
    FORK = "fork"  # two checkpoints of one size with different roots
    SHRUNK = "shrunk"  # a later checkpoint has a smaller tree than an earlier one
    INCONSISTENT = "inconsistent"  # a checkpoint's tree is not a prefix of the next one's
    TRUNCATED = "truncated"  # the tiles hold fewer leaves than a checkpoint signed
    ROOT_MISMATCH = "root_mismatch"  # the tiles do not hash to the latest checkpoint's root
    BAD_LEAF = "bad_leaf"  # undecodable, or not signed by a trusted gateway key
    LEAF_CONFLICT = "leaf_conflict"  # two leaves with one instance counter
    COUNTER_GAP = "counter_gap"  # an instance's counters skip
    HEARTBEAT_GAP = "heartbeat_gap"  # an instance said nothing for longer than its tolerance
    UNCLEAN_END = "unclean_end"  # an instance's last leaf is not its stop, and it went silent
    SESSION_MISSING = "session_missing"  # a leaf names a session the archive does not hold
    SESSION_BROKEN = "session_broken"  # its chunks are there but do not verify as the log says
    NOT_IN_LOG = "not_in_log"  # an indexed session without its session_open leaf
    CLOSE_MISSING = "close_missing"  # an indexed, closed session without its session_close
    STALE_LOG = "stale_log"  # the archive moved on and the log did not: the sequencer stopped
    MISSING_INSTANCE = "missing_instance"  # an instance names a predecessor the log lacks
    BAD_TIME = "bad_time"  # a time that cannot be (a session starting after now)
    BAD_TOKEN = "bad_token"  # an anchor's RFC 3161 token is not over that anchor


@dataclass(frozen=True)
class LogProblem:
    kind: LogProblemKind
    detail: str
    session_id: str | None = None
    instance: str | None = None

    def __str__(self) -> str:
        return f"{self.kind}: {self.detail}"


@dataclass
class LogVerdict:
    problems: list[LogProblem] = field(default_factory=list)
    checkpoints: int = 0
    size: int = 0
    latest_ms: int | None = None
    leaves: int = 0
    instances: int = 0
    sessions: int = 0

    @property
    def consistent(self) -> bool:
        return not self.problems


@dataclass(frozen=True)
class LogSources:
    log: ObjectStore  # the tiles and checkpoints
    log_prefix: str
    evidence: ObjectStore  # the delivered objects
    index: Index
    gateway_keys: Mapping[bytes, VerifyKey]  # leaf and chunk signatures
    log_keys: Mapping[str, VerifyKey | Sequence[VerifyKey]]  # checkpoint keys, by key name
    origin: str = ""  # the log's origin: checkpoints of another are not this log's
    anchors: ObjectStore | None = None  # the anchor bucket (or folder), when there is one
    known: Sequence[bytes] = ()  # checkpoints the auditor kept (--since-checkpoint)


def verify_log(
    src: LogSources,
    *,
    now_ns: int,
    since_ns: int | None = None,
    lag_s: int = DEFAULT_LAG_S,
    slack_s: int = DEFAULT_HEARTBEAT_SLACK_S,
) -> LogVerdict:
    verdict = LogVerdict()
    tiles = TileLog(src.log, src.log_prefix)
    checkpoints = _checkpoints(src, verdict, since_ns)
    latest = checkpoints[-1] if checkpoints else None
    if latest is None:
        if src.index.sessions(since_ns=since_ns):
            verdict.problems.append(
                LogProblem(
                    LogProblemKind.NO_CHECKPOINT,
                    "the archive holds sessions but the log has no checkpoint",
                )
            )
        return verdict
    verdict.size, verdict.latest_ms = latest.checkpoint.size, latest.checkpoint.time_ms
    if not _check_growth(checkpoints, tiles, verdict):
        return verdict  # a damaged tree: what its leaves say cannot be taken as said
    leaves = _leaves(tiles, latest, src, verdict)
    if leaves is None:
        return verdict
    by_instance = _instances(leaves, verdict, now_ns, since_ns, slack_s)
    verdict.instances = len(by_instance)
    _check_sessions(leaves, src, verdict, since_ns, now_ns, latest.checkpoint.time_ms, lag_s)
    return verdict


# -- checkpoints ------------------------------------------------------------------------------


def stored_notes(src: LogSources, since_ns: int | None = None) -> list[tuple[str, bytes]]:
    """Every checkpoint note the log and its anchors hold, each once, with where it was. With
    `since_ns`, of the log's history only those signed since then and the one before (their
    names are their times): the rest were checked when they were recent."""
    notes: list[tuple[str, bytes]] = []
    keys = sorted(src.log.list(src.log_prefix + HISTORY))
    if since_ns is not None:
        since = f"{src.log_prefix}{HISTORY}{since_ns // 1_000_000:015d}"
        first = max([i for i, k in enumerate(keys) if k < since], default=0)
        keys = keys[first:]
    for key in keys:
        note = read_note(src.log, key)
        if note is not None:
            notes.append((key, note))
    latest = read_note(src.log, src.log_prefix + LATEST)
    if latest is not None:
        notes.append((src.log_prefix + LATEST, latest))
    if src.anchors is not None:
        notes += [(f"anchor {key}", note) for key, note in anchored_notes(src.anchors, src.origin)]
    notes += [(f"known checkpoint {i + 1}", note) for i, note in enumerate(src.known)]
    seen: set[bytes] = set()
    return [(k, n) for k, n in notes if not (n in seen or seen.add(n))]


def read_checkpoints(
    src: LogSources, since_ns: int | None = None
) -> tuple[list[SignedCheckpoint], list[LogProblem]]:
    """The stored checkpoints that a trusted key signed, oldest first, and a problem for each
    of the others."""
    good: list[SignedCheckpoint] = []
    bad: list[LogProblem] = []
    for key, note in stored_notes(src, since_ns):
        try:
            signed = parse_checkpoint(note, dict(src.log_keys))
            if src.origin and signed.checkpoint.origin != src.origin:
                raise NoteError(f"a checkpoint of another log ({signed.checkpoint.origin[:60]})")
            good.append(signed)
        except ForgedNote as exc:
            bad.append(LogProblem(LogProblemKind.FORGED_CHECKPOINT, f"{key}: {exc}"))
        except NoteError as exc:
            bad.append(LogProblem(LogProblemKind.MALFORMED_CHECKPOINT, f"{key}: {exc}"))
    good.sort(key=lambda c: (c.checkpoint.time_ms, c.checkpoint.size))
    return good, bad


def _checkpoints(
    src: LogSources, verdict: LogVerdict, since_ns: int | None = None
) -> list[SignedCheckpoint]:
    good, bad = read_checkpoints(src, since_ns)
    verdict.problems += bad + _tokens(src)
    verdict.checkpoints = len(good)
    return good


def _tokens(src: LogSources) -> list[LogProblem]:
    """Each anchor's RFC 3161 token, where there is one, must be over that anchor."""
    if src.anchors is None:
        return []
    problems = []
    for key, note in anchored_notes(src.anchors, src.origin):
        token = read_note(src.anchors, key.removesuffix(".note") + ".tsr")
        if token is None:
            continue
        try:
            check_token(token, note)
        except AnchorError as exc:
            problems.append(LogProblem(LogProblemKind.BAD_TOKEN, f"{key}: {exc}"))
    return problems


def _check_growth(checkpoints: list[SignedCheckpoint], tiles: TileLog, verdict: LogVerdict) -> bool:
    """Forks, and the tiles against the latest root; False when the tree is damaged."""
    roots: dict[int, bytes] = {}
    for signed in checkpoints:
        cp = signed.checkpoint
        held = roots.setdefault(cp.size, cp.root)
        if held != cp.root:
            verdict.problems.append(
                LogProblem(
                    LogProblemKind.FORK,
                    f"two checkpoints of size {cp.size} with different "
                    f"roots (one signed {_when(cp.time_ms)})",
                )
            )
    latest = checkpoints[-1].checkpoint
    try:
        nodes = tiles.nodes(latest.size)
        actual = merkle.root(nodes, latest.size)
    except TileError as exc:
        verdict.problems.append(
            LogProblem(
                LogProblemKind.TRUNCATED,
                f"the latest checkpoint signs {latest.size} leaves but "
                f"the tiles do not hold them: {exc}",
            )
        )
        return False
    if actual != latest.root:
        verdict.problems.append(
            LogProblem(
                LogProblemKind.ROOT_MISMATCH,
                f"the tiles do not hash to the root signed for size "
                f"{latest.size}: leaves were changed, removed or "
                "reordered",
            )
        )
        return False
    for older, newer in itertools.pairwise(checkpoints):
        a, b = older.checkpoint, newer.checkpoint
        if b.size < a.size:
            verdict.problems.append(
                LogProblem(
                    LogProblemKind.SHRUNK,
                    f"checkpoint of {_when(b.time_ms)} has {b.size} "
                    f"leaves, the one before it {a.size}",
                )
            )
            continue
        if a.size == b.size:
            continue  # equal roots, or already reported as a fork
        try:
            proof = merkle.consistency_proof(nodes, a.size, b.size)
            merkle.check_consistency(a.size, b.size, a.root, b.root, proof)
        except (merkle.ProofError, TileError) as exc:
            verdict.problems.append(
                LogProblem(
                    LogProblemKind.INCONSISTENT,
                    f"checkpoint of size {a.size} "
                    f"({_when(a.time_ms)}) is not a prefix of the one "
                    f"of size {b.size}: {exc}",
                )
            )
    return True


# -- leaves and instances -----------------------------------------------------------------------


def _leaves(
    tiles: TileLog, latest: SignedCheckpoint, src: LogSources, verdict: LogVerdict
) -> list[Leaf] | None:
    size = latest.checkpoint.size
    try:
        entries = tiles.entries(0, size, size)
    except TileError as exc:
        verdict.problems.append(
            LogProblem(LogProblemKind.TRUNCATED, f"the log's entries cannot be read: {exc}")
        )
        return None
    try:
        hashes = tiles.leaf_hashes(size)
    except TileError as exc:
        verdict.problems.append(LogProblem(LogProblemKind.TRUNCATED, f"the log's tiles: {exc}"))
        return None
    seen: set[bytes] = set()
    out: list[Leaf] = []
    for i, raw in enumerate(entries):
        if merkle.leaf_hash(raw) != hashes[i]:  # the entries are what the tree hashes
            verdict.problems.append(
                LogProblem(
                    LogProblemKind.ROOT_MISMATCH,
                    f"entry {i} is not the leaf the tree holds "
                    "there: leaves were changed or reordered",
                )
            )
            return None  # a damaged log: what its leaves say cannot be taken as said
        try:
            leaf = decode_leaf(raw)
        except LeafError as exc:
            verdict.problems.append(LogProblem(LogProblemKind.BAD_LEAF, f"entry {i}: {exc}"))
            continue
        if not leaf.check(src.gateway_keys):
            verdict.problems.append(
                LogProblem(
                    LogProblemKind.BAD_LEAF,
                    f"entry {i}: not signed by a trusted gateway key",
                    instance=str(leaf.instance),
                )
            )
            continue
        if leaf.digest in seen:  # appended twice (a duplicate delivery, a sequencer retry)
            continue
        seen.add(leaf.digest)
        out.append(leaf)
    verdict.leaves = len(out)
    return out


def _instances(
    leaves: list[Leaf], verdict: LogVerdict, now_ns: int, since_ns: int | None, slack_s: int
) -> dict[str, list[Leaf]]:
    groups: dict[str, list[Leaf]] = defaultdict(list)
    for leaf in leaves:
        groups[str(leaf.instance)].append(leaf)
    for instance, mine in groups.items():
        mine.sort(key=lambda leaf: (leaf.counter, leaf.digest))
        _counters(instance, mine, verdict)
        _silences(instance, mine, verdict, now_ns, since_ns, slack_s)
        first = mine[0]
        previous = first.body.get("previous") if first.counter == 0 else None
        recent = since_ns is None or first.sealed_ns >= since_ns
        if isinstance(previous, str) and previous not in groups and recent:
            verdict.problems.append(LogProblem(
                LogProblemKind.MISSING_INSTANCE,
                f"instance {instance} started {_when_ns(first.sealed_ns)} after instance "
                f"{previous} of the same data dir, which has no leaf in the log",
                instance=previous,
            ))  # fmt: skip
    return groups


def _counters(instance: str, mine: list[Leaf], verdict: LogVerdict) -> None:
    expected = 0
    for prev, leaf in zip([None, *mine], mine, strict=False):
        if prev is not None and prev.counter == leaf.counter:
            verdict.problems.append(
                LogProblem(
                    LogProblemKind.LEAF_CONFLICT,
                    f"instance {instance}: two different leaves with counter {leaf.counter}",
                    instance=instance,
                )
            )
            continue
        if leaf.counter > expected:
            gap = (
                f"{expected}" if leaf.counter - 1 == expected else f"{expected}-{leaf.counter - 1}"
            )
            after = _when_ns(prev.sealed_ns) if prev else "its start"
            verdict.problems.append(
                LogProblem(
                    LogProblemKind.COUNTER_GAP,
                    f"instance {instance}: leaves {gap} are missing "
                    f"(between {after} "
                    f"and {_when_ns(leaf.sealed_ns)})",
                    instance=instance,
                )
            )
        expected = leaf.counter + 1


def _tolerance_ns(leaf: Leaf, slack_s: int) -> int | None:
    interval = leaf.body.get("interval_s") if leaf.kind == LeafKind.HEARTBEAT else None
    return None if not isinstance(interval, int) else (2 * interval + slack_s) * 10**9


def _silences(
    instance: str,
    mine: list[Leaf],
    verdict: LogVerdict,
    now_ns: int,
    since_ns: int | None,
    slack_s: int,
) -> None:
    """Windows in which an instance said nothing for longer than its heartbeats allow."""
    tolerance = next((t for t in map(lambda leaf: _tolerance_ns(leaf, slack_s), mine) if t), None)
    if tolerance is None:
        return  # no heartbeat: nothing promised about silence (its counters still are)
    for prev, leaf in itertools.pairwise(mine):
        gap = leaf.sealed_ns - prev.sealed_ns
        if gap > tolerance and (since_ns is None or leaf.sealed_ns >= since_ns):
            verdict.problems.append(
                LogProblem(
                    LogProblemKind.HEARTBEAT_GAP,
                    f"instance {instance}: nothing between "
                    f"{_when_ns(prev.sealed_ns)} and "
                    f"{_when_ns(leaf.sealed_ns)} ({gap / 1e9:.0f} s; "
                    "heartbeats were due): a suppression window",
                    instance=instance,
                )
            )
    last = mine[-1]
    stopped = last.kind == LeafKind.HEARTBEAT and last.body.get("state") == "stop"
    if not stopped and now_ns - last.sealed_ns > tolerance:
        verdict.problems.append(
            LogProblem(
                LogProblemKind.UNCLEAN_END,
                f"instance {instance}: its last leaf (#{last.counter}) "
                f"is of {_when_ns(last.sealed_ns)} and not its stop: "
                "it crashed, or its last leaves were suppressed",
                instance=instance,
            )
        )


# -- sessions -------------------------------------------------------------------------------


def _check_sessions(
    leaves: list[Leaf],
    src: LogSources,
    verdict: LogVerdict,
    since_ns: int | None,
    now_ns: int,
    covered_ms: int,
    lag_s: int,
) -> None:
    opened: dict[str, Leaf] = {}
    closed: dict[str, Leaf] = {}
    for leaf in leaves:
        sid = leaf.session_id
        if sid is None:
            continue
        if leaf.kind == LeafKind.SESSION_OPEN:
            opened.setdefault(sid, leaf)
        elif leaf.kind == LeafKind.SESSION_CLOSE:
            closed.setdefault(sid, leaf)
        # `expired` is reserved: nothing writes it yet, so none is taken to excuse a missing
        # session (a gateway key alone must not be able to excuse one).
    evidence = _Evidence(src)
    in_scope = [
        sid for sid, leaf in opened.items() if since_ns is None or leaf.sealed_ns >= since_ns
    ]
    for sid in sorted(set(in_scope) | {s for s in closed if s not in opened}):
        verdict.sessions += 1
        problem = _session(sid, opened.get(sid), closed.get(sid), src.index, evidence)
        if problem is not None:
            verdict.problems.append(problem)
    # The other way round: what the index holds must be in the log, once the sequencer caught
    # up; what is newer than that must not be older than the lag allowance.
    lag_ns = lag_s * 1_000_000_000
    horizon_ns = covered_ms * 1_000_000 - lag_ns
    newer = 0
    for record in src.index.sessions(since_ns=since_ns):
        sid = record.session_id
        started = record.started_ns or record.last_seen_ns or 0
        if started > now_ns + lag_ns:
            verdict.problems.append(LogProblem(
                LogProblemKind.BAD_TIME,
                f"session {sid} is indexed as starting {_when_ns(started)}, after now",
                session_id=sid,
            ))  # fmt: skip
            continue
        if sid in opened:
            continue
        if started > horizon_ns:
            newer += 1
            continue
        verdict.problems.append(
            LogProblem(
                LogProblemKind.NOT_IN_LOG,
                f"session {sid} is in the archive but the log has no session_open leaf for it",
                session_id=sid,
            )
        )
    for record in src.index.sessions(since_ns=since_ns, status="closed"):
        sid = record.session_id
        if sid in opened and sid not in closed and (record.ended_ns or 0) <= horizon_ns:
            verdict.problems.append(
                LogProblem(
                    LogProblemKind.CLOSE_MISSING,
                    f"session {sid} closed but the log has no session_close leaf for it",
                    session_id=sid,
                )
            )
    pending = src.index.pending_leaves(1)
    behind = now_ns - covered_ms * 1_000_000 > lag_ns
    if behind and (newer or pending):
        what = f"{newer} newer session(s)" if newer else "leaves waiting to be sequenced"
        verdict.problems.append(LogProblem(
            LogProblemKind.STALE_LOG,
            f"the latest checkpoint is of {_when(covered_ms)} and the archive holds {what}: "
            "the sequencer has stopped, or is being kept from the log",
        ))  # fmt: skip


def _session(
    sid: str, open_leaf: Leaf | None, close_leaf: Leaf | None, index: Index, evidence: _Evidence
) -> LogProblem | None:
    record = index.get_session(sid)
    where = f"(opened {_when_ns(open_leaf.sealed_ns)})" if open_leaf else "(closed in the log)"
    if record is None:
        return LogProblem(
            LogProblemKind.SESSION_MISSING,
            f"session {sid} {where} is in the log but not in the archive: "
            "its tape was deleted or never delivered",
            session_id=sid,
        )
    chunks = evidence.chunks(sid, record.object_keys)
    if not chunks:
        return LogProblem(
            LogProblemKind.SESSION_MISSING,
            f"session {sid} {where} is in the log and the index, but none of its "
            f"chunks are in the evidence objects ({len(record.object_keys)} named)",
            session_id=sid,
        )
    chain = check_chain(chunks.values())
    if close_leaf is None:
        return None  # open, or truncated: its chain so far is what the tape verifier judges
    want_digest = close_leaf.body.get("final_digest")
    want_chunks = close_leaf.body.get("chunks")
    head = chain.head_digest.hex() if chain.head_digest else None
    if not chain.complete or head != want_digest or len(chunks) != want_chunks:
        return LogProblem(
            LogProblemKind.SESSION_BROKEN,
            f"session {sid}: the log says it closed with {want_chunks} chunks "
            f"ending in {str(want_digest)[:16]}; the evidence holds {len(chunks)} "
            f"chunk(s){'' if chain.complete else ', not a complete chain'}, head "
            f"{str(head)[:16]}",
            session_id=sid,
        )
    return None


class _Evidence:
    """The chunks the evidence objects hold, read once per object, signatures checked."""

    def __init__(self, src: LogSources) -> None:
        self.src = src
        self._objects: dict[str, dict[str, dict[int, Any]]] = {}

    def chunks(self, sid: str, keys: Iterable[str]) -> dict[int, Any]:
        found: dict[int, Any] = {}
        for key in keys:
            found.update(self._object(key).get(sid, {}))
        return found

    def _object(self, key: str) -> dict[str, dict[int, Any]]:
        held = self._objects.get(key)
        if held is not None:
            return held
        held = {}
        try:
            data = self.src.evidence.get(key)
        except FileNotFoundError:  # deleted: holds nothing (a failing read is not an answer)
            data = b""
        records, _ = split_records(data)
        for raw in records:
            if raw[:4] != MAGIC:
                continue
            try:
                rec = decode_record(raw, events=False)
            except TapeFormatError:
                continue
            key_ = self.src.gateway_keys.get(rec.key_id)
            if key_ is None or not check_signature(key_, rec.digest, rec.signature):
                continue
            held.setdefault(str(rec.session_id), {}).setdefault(rec.seq, rec)
        self._objects[key] = held
        return held


def _when(ms: int) -> str:
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _when_ns(ns: int) -> str:
    return _when(ns // 1_000_000)


__all__ = ["LogProblem", "LogProblemKind", "LogSources", "LogVerdict", "verify_log"]

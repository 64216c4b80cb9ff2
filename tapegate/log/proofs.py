"""A session's place in the log, carried in an evidence bundle and checked offline.

The bundle holds, beside the session's records (tapegate/audit/bundle.py):

    log/checkpoint      the checkpoint that covers the session's leaves, as the log signed it
    log/proofs.json     its size, each of the session's leaves (the signed record, base64) with
                        its position and RFC 9162 inclusion proof, and consistency proofs from
                        earlier checkpoints (of the 512 most recent sizes) to it
    keys/log.vkey       the log's verifier key (name+hash+key), as `--trust-log` files

`tapegate verify bundle.zip` then shows that the log, as of that checkpoint, says the session
opened and closed, with the final chunk and chunk count the records have. Given the auditor's own
last known checkpoint (`--since-checkpoint FILE`), it also shows that the bundle's checkpoint
extends it: the log the bundle speaks for is the one the auditor already trusted, grown.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping, Sequence
from typing import Any

from nacl.signing import VerifyKey

from tapegate.log import merkle
from tapegate.log.leaf import LeafError, LeafKind, decode_leaf
from tapegate.log.note import (
    NoteError,
    SignedCheckpoint,
    key_list,
    parse_checkpoint,
    verifier_key,
)
from tapegate.log.tiles import TileLog
from tapegate.log.verify import LogSources, read_checkpoints

MAX_CONSISTENCY = 512  # consistency proofs from this many of the latest earlier sizes


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def session_proofs(
    tiles: TileLog,
    covering: SignedCheckpoint,
    positions: Sequence[int],
    earlier: Sequence[SignedCheckpoint],
) -> dict[str, Any]:
    """proofs.json for the leaves at `positions`, in the tree `covering` signed."""
    size = covering.checkpoint.size
    nodes = tiles.nodes(size)
    leaves = []
    for index in sorted(set(p for p in positions if p < size)):
        (entry,) = tiles.entries(index, index + 1, size)
        leaves.append(
            {
                "index": index,
                "entry": _b64(entry),
                "proof": [_b64(h) for h in merkle.inclusion_proof(nodes, index, size)],
            }
        )
    consistency = []
    sizes = {cp.checkpoint.size: cp for cp in earlier if 0 < cp.checkpoint.size < size}
    for old in sorted(sizes)[-MAX_CONSISTENCY:]:
        consistency.append(
            {
                "size": old,
                "root": _b64(sizes[old].checkpoint.root),
                "proof": [_b64(h) for h in merkle.consistency_proof(nodes, old, size)],
            }
        )
    return {"size": size, "leaves": leaves, "consistency": consistency}


def check_session_proofs(
    note: bytes,
    doc: Any,
    session_id: str,
    log_keys: Mapping[str, VerifyKey],
    gateway_keys: Mapping[bytes, VerifyKey],
    head_digest: bytes | None,
    chunks: int,
    since: bytes | None = None,
) -> tuple[SignedCheckpoint | None, list[str]]:
    """Check a bundle's log part; the covering checkpoint and every problem found."""
    try:
        covering = parse_checkpoint(note, dict(log_keys))
    except NoteError as exc:
        return None, [f"log checkpoint: {exc}"]
    cp = covering.checkpoint
    problems: list[str] = []
    try:
        leaves = list(doc["leaves"])
        if int(doc["size"]) != cp.size:
            problems.append("log proofs are for another tree size than the checkpoint")
    except (KeyError, TypeError, ValueError):
        return covering, ["log proofs.json is not a proofs document"]
    kinds: dict[str, dict[str, Any]] = {}
    for item in leaves:
        try:
            entry = base64.b64decode(item["entry"], validate=True)
            proof = [base64.b64decode(h, validate=True) for h in item["proof"]]
            index = int(item["index"])
            merkle.check_inclusion(merkle.leaf_hash(entry), index, cp.size, proof, cp.root)
            leaf = decode_leaf(entry)
        except (KeyError, TypeError, ValueError, merkle.ProofError, LeafError) as exc:
            problems.append(
                f"log leaf {item.get('index') if isinstance(item, dict) else '?'}: "
                f"not in the checkpoint's tree ({exc})"
            )
            continue
        if not leaf.check(gateway_keys):
            problems.append(f"log leaf {index}: not signed by the bundle's gateway keys")
        elif leaf.session_id != session_id:
            problems.append(f"log leaf {index}: is about another session ({leaf.session_id})")
        else:
            kinds[leaf.kind] = leaf.body
    if LeafKind.SESSION_OPEN not in kinds:
        problems.append("the log's session_open leaf for this session is not in the bundle")
    close = kinds.get(LeafKind.SESSION_CLOSE)
    if close is not None:
        head = head_digest.hex() if head_digest else None
        if close.get("final_digest") != head or close.get("chunks") != chunks:
            problems.append(
                f"the log says the session closed with {close.get('chunks')} chunks "
                f"ending in {str(close.get('final_digest'))[:16]}; the records have "
                f"{chunks}, head {str(head)[:16]}"
            )
    if since is not None:
        problems += _check_since(since, covering, doc, log_keys)
    return covering, problems


def _check_since(
    since: bytes, covering: SignedCheckpoint, doc: Any, log_keys: Mapping[str, VerifyKey]
) -> list[str]:
    try:
        known = parse_checkpoint(since, dict(log_keys)).checkpoint
    except NoteError as exc:
        return [f"--since-checkpoint: {exc}"]
    cp = covering.checkpoint
    if known.origin != cp.origin:
        return [f"--since-checkpoint is of another log ({known.origin}, not {cp.origin})"]
    if known.size > cp.size:
        return [
            f"the bundle's checkpoint ({cp.size} leaves) is older than yours "
            f"({known.size}): its consistency with yours cannot be shown from the bundle"
        ]
    if known.size == cp.size:
        return (
            []
            if known.root == cp.root
            else ["your checkpoint and the bundle's have one size and different roots: a fork"]
        )
    for item in doc.get("consistency", []):
        if item.get("size") == known.size:
            try:
                proof = [base64.b64decode(h, validate=True) for h in item["proof"]]
                merkle.check_consistency(known.size, cp.size, known.root, cp.root, proof)
            except (KeyError, TypeError, ValueError, merkle.ProofError) as exc:
                return [f"the bundle's checkpoint does not extend yours: {exc}"]
            return []
    return [f"the bundle has no consistency proof from your checkpoint's size ({known.size})"]


def dumps(doc: dict[str, Any]) -> bytes:
    return (json.dumps(doc, indent=1) + "\n").encode()


def bundle_files(src: LogSources, session_id: str) -> dict[str, bytes]:
    """The log part of a session's evidence bundle (paths → bytes), or nothing when the log
    does not hold the session's leaves yet (an open session, a sequencer behind)."""
    positions = src.index.leaf_positions(session_id)
    good, _ = read_checkpoints(src)
    if not positions or not good or good[-1].checkpoint.size <= max(positions):
        return {}
    covering = good[-1]
    doc = session_proofs(TileLog(src.log, src.log_prefix), covering, positions, good[:-1])
    vkeys = [
        verifier_key(name, key)
        for name, held in src.log_keys.items()
        if name in covering.signers
        for key in key_list(held)
    ]
    return {
        "log/checkpoint": covering.note,
        "log/proofs.json": dumps(doc),
        "keys/log.vkey": ("\n".join(vkeys) + "\n").encode(),
    }

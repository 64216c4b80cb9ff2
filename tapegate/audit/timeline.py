"""A verified session laid out for replay: its events and, with an auditor key, its bytes.

Events are sealed readable (they are what SQL runs over); frame bytes are sealed to the
auditors' X25519 keys. Without a key that opens them, a replay still shows every event and each
frame's time, direction and size, and `payload_note` says why the bytes are missing.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from nacl.public import PrivateKey

from tapegate.tape import Direction, Frame, PayloadError, Record, open_frames, open_session_key
from tapegate.tape.seal import key_id


@dataclass
class Replay:
    session_id: str
    header: dict[str, Any]
    end: dict[str, Any] | None
    events: list[dict[str, Any]]  # as sealed, each with the "seq" of its chunk added
    frames: list[Frame] = field(default_factory=list)  # decrypted, when a key opened them
    frame_sizes: list[tuple[int, Direction, int]] = field(default_factory=list)
    payload_note: str | None = None  # why frames is empty, when it is
    last_seq: int = -1
    session_key: bytes | None = field(default=None, repr=False)  # kept for --follow

    @property
    def protocol(self) -> str:
        return str(self.header.get("protocol", ""))

    @property
    def decrypted(self) -> bool:
        return self.payload_note is None


def auditor_keyring(keys: Iterable[PrivateKey]) -> dict[bytes, PrivateKey]:
    return {key_id(bytes(k.public_key)): k for k in keys}


def open_replay(records: Iterable[Record], auditor_keys: Mapping[bytes, PrivateKey]) -> Replay:
    """`records` are a session's accepted chunks in seq order (Verdict.records)."""
    chunks = list(records)
    if not chunks or chunks[0].seq != 0:
        raise ValueError("the session's chunk 0 is missing: nothing says who or what it was")
    header = {k: v for k, v in chunks[0].meta["session"].items() if k != "auditor_keys"}
    replay = Replay(str(chunks[0].session_id), header, None, [], last_seq=chunks[-1].seq)
    for rec in chunks:
        replay.events += [{**ev, "seq": rec.seq} for ev in rec.meta.get("events", [])]
        replay.frame_sizes += [
            (ts, Direction(d), n)
            for ts, d, n in zip(rec.frame_ts, rec.frame_dir, rec.frame_len, strict=True)
        ]
        if rec.final:
            replay.end = rec.meta.get("end")
    sealed_to = [e.get("key_id", "?") for e in chunks[0].meta["session"].get("auditor_keys", [])]
    if not auditor_keys:
        replay.payload_note = (
            "payloads not shown: no auditor private key (pass --auditor-key "
            "FILE or a Secrets Manager ARN, or set archive.auditor_key)"
        )
        return replay
    session_key = open_session_key(chunks[0], auditor_keys)
    if session_key is None:
        given = ", ".join(k.hex() for k in auditor_keys)
        replay.payload_note = (
            f"payloads not shown: the session key was sealed to auditor "
            f"key(s) {', '.join(sealed_to) or 'none'}, not to {given}"
        )
        return replay
    try:
        for rec in chunks:
            replay.frames += open_frames(rec, session_key)
    except PayloadError as exc:
        replay.frames = []
        replay.payload_note = f"payloads not shown: {exc}"
        return replay
    replay.session_key = session_key
    return replay


def extend(replay: Replay, records: Iterable[Record]) -> tuple[list[dict[str, Any]], list[Frame]]:
    """Add the chunks after replay.last_seq (for --follow); the new events and frames."""
    fresh = [r for r in records if r.seq > replay.last_seq]
    if not fresh:
        return [], []
    events = [{**ev, "seq": r.seq} for r in fresh for ev in r.meta.get("events", [])]
    frames: list[Frame] = []
    if replay.session_key is not None:  # one key for every chunk of the session
        for rec in fresh:
            frames += open_frames(rec, replay.session_key)
    replay.events += events
    replay.frames += frames
    for rec in fresh:
        if rec.final:
            replay.end = rec.meta.get("end")
    replay.last_seq = fresh[-1].seq
    return events, frames

"""Cut a session's frames and events into sealed chunks, by size or by age.

The writer is sans-IO: it is handed timestamps and bytes and hands back sealed records; the
caller decides when to call `tick` and where records go. A record is never larger than
MAX_RECORD_BYTES: oversized frames are split and oversized events are trimmed before they are
accepted.
"""

from __future__ import annotations

import hashlib
import os
import uuid
from collections.abc import Sequence
from typing import Any

from nacl.public import PublicKey
from nacl.signing import SigningKey

from tapegate.tape import codec
from tapegate.tape.model import (
    Direction,
    Event,
    SessionEnd,
    SessionHeader,
    Stream,
    new_session_id,
)
from tapegate.tape.seal import (
    SESSION_KEY_LEN,
    encrypt_in_place,
    key_id,
    seal_session_key,
    sign_digest,
)

DEFAULT_MAX_CHUNK_BYTES = 256 * 1024
DEFAULT_MAX_AGE_NS = 1_000_000_000
# The largest chunk target that still leaves room in a 900 KiB record for events and headers.
MAX_CHUNK_BYTES_LIMIT = 768 * 1024
MAX_EVENT_BYTES = 16 * 1024


def seal_chunk(
    *,
    signer: SigningKey,
    session_key: bytes,
    session_id: uuid.UUID,
    seq: int,
    sealed_ns: int,
    prev_digest: bytes,
    frames: Sequence[tuple[int, int, int, bytes]],
    event_json: list[bytes],
    session: dict[str, Any] | None = None,
    end: dict[str, Any] | None = None,
    version: int = codec.VERSION,
) -> tuple[bytes, bytes]:
    """Encode, encrypt and sign one chunk from (ts_ns, direction, stream, bytes) frames.
    Returns (record, digest)."""
    buf = bytearray(codec.FIXED_LEN)
    for *_, data in frames:
        buf += data
    return seal_buffer(
        buf,
        signer=signer,
        session_key=session_key,
        session_id=session_id,
        seq=seq,
        sealed_ns=sealed_ns,
        prev_digest=prev_digest,
        index=[(ts, d, stream, len(data)) for ts, d, stream, data in frames],
        event_json=event_json,
        session=session,
        end=end,
        version=version,
    )


def seal_buffer(
    buf: bytearray,
    *,
    signer: SigningKey,
    session_key: bytes,
    session_id: uuid.UUID,
    seq: int,
    sealed_ns: int,
    prev_digest: bytes,
    index: list[tuple[int, int, int, int]],
    event_json: list[bytes],
    session: dict[str, Any] | None = None,
    end: dict[str, Any] | None = None,
    version: int = codec.VERSION,
) -> tuple[bytes, bytes]:
    """Seal a chunk whose frame bytes already sit in `buf`, after FIXED_LEN reserved bytes.

    The record is built in `buf` itself (the writer collects frames there as they arrive), so
    the payload is encrypted and hashed where it lies. `buf` is consumed.
    """
    plain_len = len(buf) - codec.FIXED_LEN
    payload_len = plain_len + codec.AEAD_TAG_LEN if index else 0
    meta = codec.encode_meta(event_json, session=session, end=end)
    index_bytes = codec.encode_index(index, version)
    buf[: codec.FIXED_LEN] = codec.encode_fixed(
        session_id=session_id,
        seq=seq,
        sealed_ns=sealed_ns,
        final=end is not None,
        prev_digest=prev_digest,
        key_id=key_id(bytes(signer.verify_key)),
        payload_len=payload_len,
        meta_len=len(meta),
        index_len=len(index_bytes),
        version=version,
    )
    if index:
        buf += bytes(codec.AEAD_TAG_LEN)
        encrypt_in_place(buf, codec.FIXED_LEN, plain_len, session_key, session_id, seq)
    buf += meta
    buf += index_bytes
    digest = hashlib.sha256(buf).digest()
    buf += sign_digest(signer, digest)
    return bytes(buf), digest


def trim_event(obj: dict[str, Any], limit: int = MAX_EVENT_BYTES) -> bytes:
    """Serialise an event, shortening long strings in its attrs if it would exceed `limit`.

    A trimmed event says so (`"trimmed": true`) so no one mistakes it for the full text; the
    bytes themselves are in the sealed frames regardless.
    """
    whole = codec.dump_json(obj)
    if len(whole) <= limit:
        return whole
    cap = limit // 4
    attrs = {k: (v[:cap] if isinstance(v, str) else v) for k, v in obj["attrs"].items()}
    attrs["trimmed"] = True
    encoded = codec.dump_json({**obj, "attrs": attrs})
    if len(encoded) <= limit:
        return encoded
    return codec.dump_json({**obj, "attrs": {"trimmed": True, "original_bytes": len(whole)}})


_BYTES_KEY = {Direction.CLIENT_TO_SERVER: "bytes_c2s", Direction.SERVER_TO_CLIENT: "bytes_s2c"}


class TapeWriter:
    """Accumulates one session and seals it chunk by chunk.

    Every method that accepts data returns the records it sealed as a result (possibly none).
    `close` must be called exactly once and returns the final chunk.
    """

    def __init__(
        self,
        header: SessionHeader,
        signer: SigningKey,
        auditors: Sequence[PublicKey],
        *,
        session_id: uuid.UUID | None = None,
        max_chunk_bytes: int = DEFAULT_MAX_CHUNK_BYTES,
        max_age_ns: int = DEFAULT_MAX_AGE_NS,
        session_key: bytes | None = None,
        version: int = codec.VERSION,
    ) -> None:
        # `version` 1 only reproduces the committed v1 vectors (tests/vectors/generate.py).
        if not auditors:
            raise ValueError("at least one auditor public key is needed to seal payloads")
        if not 1024 <= max_chunk_bytes <= MAX_CHUNK_BYTES_LIMIT:
            raise ValueError(f"max_chunk_bytes must be between 1024 and {MAX_CHUNK_BYTES_LIMIT}")
        self.session_id = session_id or new_session_id(header.started_ns)
        self.header = header
        self._signer = signer
        self._session_key = session_key or os.urandom(SESSION_KEY_LEN)
        self._sealed_keys = seal_session_key(self._session_key, auditors)
        self._max_bytes = max_chunk_bytes
        self._max_age_ns = max_age_ns
        self._version = version
        self._entry_size = codec.INDEX_ENTRIES[version].size
        self._seq = 0
        self._prev = codec.ZERO_DIGEST
        self._index: list[tuple[int, int, int, int]] = []
        self._buf = bytearray(codec.FIXED_LEN)
        self._events: list[bytes] = []
        self._pending_bytes = 0
        self._first_ns: int | None = None
        self._closed = False
        self.totals = {"frames": 0, "events": 0, "bytes_c2s": 0, "bytes_s2c": 0}

    @property
    def seq(self) -> int:
        """The seq the next sealed chunk will carry."""
        return self._seq

    def add_frame(
        self, ts_ns: int, direction: Direction, data: bytes, stream: Stream = Stream.DATA
    ) -> list[bytes]:
        self._check_open()
        size = len(data)
        entry = self._entry_size
        if size <= self._max_bytes:  # one piece: most frames, kept short (one per request)
            out = self._make_room(ts_ns, entry + size)
            self._index.append((ts_ns, int(direction), int(stream), size))
            self._buf += data
            self._pending_bytes += entry + size
            totals = self.totals
            totals["frames"] += 1
            totals[_BYTES_KEY[direction]] += size
            if self._pending_bytes >= self._max_bytes:
                out.append(self._seal(ts_ns))
            return out
        out: list[bytes] = []
        view = memoryview(data)
        step = self._max_bytes
        for start in range(0, len(view), step):
            piece = view[start : start + step]
            out += self._make_room(ts_ns, entry + len(piece))
            self._index.append((ts_ns, int(direction), int(stream), len(piece)))
            self._buf += piece
            self._pending_bytes += entry + len(piece)
            self.totals["frames"] += 1
            key = "bytes_c2s" if direction is Direction.CLIENT_TO_SERVER else "bytes_s2c"
            self.totals[key] += len(piece)
        out += self._cut_if_full(ts_ns)
        return out

    def add_event(self, event: Event) -> list[bytes]:
        self._check_open()
        encoded = trim_event(event.to_json_obj())
        out = self._make_room(event.ts_ns, len(encoded) + 1)
        self._events.append(encoded)
        self._pending_bytes += len(encoded) + 1
        self.totals["events"] += 1
        out += self._cut_if_full(event.ts_ns)
        return out

    def tick(self, now_ns: int) -> list[bytes]:
        """Seal the pending chunk if its oldest item is older than the age bound."""
        if self._closed or self._first_ns is None:
            return []
        if now_ns - self._first_ns >= self._max_age_ns:
            return [self._seal(now_ns)]
        return []

    def flush(self, now_ns: int) -> list[bytes]:
        """Seal whatever is pending now, whatever its size or age."""
        if self._closed or self._first_ns is None:
            return []
        return [self._seal(now_ns)]

    def close(self, now_ns: int, reason: str) -> bytes:
        """Seal the final chunk (with whatever is pending) carrying the end reason and totals."""
        self._check_open()
        end = SessionEnd(
            reason=reason,
            ended_ns=now_ns,
            chunks=self._seq + 1,
            frames=self.totals["frames"],
            events=self.totals["events"],
            bytes_c2s=self.totals["bytes_c2s"],
            bytes_s2c=self.totals["bytes_s2c"],
        )
        record = self._seal(now_ns, end=end.to_json_obj())
        self._closed = True
        return record

    # -- internals --

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError(f"session {self.session_id} is already closed")

    def _make_room(self, ts_ns: int, size: int) -> list[bytes]:
        if self._first_ns is None:
            self._first_ns = ts_ns
            return []
        if self._pending_bytes + size > self._max_bytes:
            record = self._seal(ts_ns)
            self._first_ns = ts_ns
            return [record]
        return []

    def _cut_if_full(self, ts_ns: int) -> list[bytes]:
        if self._pending_bytes >= self._max_bytes:
            return [self._seal(ts_ns)]
        return []

    def _seal(self, now_ns: int, end: dict[str, Any] | None = None) -> bytes:
        session = None
        if self._seq == 0:
            session = {**self.header.to_json_obj(), "auditor_keys": self._sealed_keys}
        record, digest = seal_buffer(
            self._buf,
            signer=self._signer,
            session_key=self._session_key,
            session_id=self.session_id,
            seq=self._seq,
            sealed_ns=now_ns,
            prev_digest=self._prev,
            index=self._index,
            event_json=self._events,
            session=session,
            end=end,
            version=self._version,
        )
        self._seq += 1
        self._prev = digest
        self._index = []
        self._buf = bytearray(codec.FIXED_LEN)
        self._events = []
        self._pending_bytes = 0
        self._first_ns = None
        return record

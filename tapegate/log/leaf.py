"""Log leaves: small signed records a gateway emits beside its chunks (docs/LOG.md).

A leaf travels the same way as a chunk (the same sink, the same delivery objects, the same
first twelve bytes, so one splitter cuts both) and says something about sessions as a whole:
that one opened, that it closed and how it ended, that the gateway was alive. Every leaf of a
gateway instance (one process run) carries the next value of that instance's counter, from 0,
so a leaf that went missing shows as a gap before the sequencer has even seen the rest.

    offset  size  field
    0       4     magic            b"TGLF"
    4       2     version          u16 = 1
    6       2     flags            u16 = 0
    8       4     record_len       u32, the whole record including the signature
    12      16    instance         UUID of the gateway instance
    28      8     counter          u64, 0, 1, 2, ... per instance
    36      8     sealed_ns        u64, unix ns when the leaf was signed
    44      8     key_id           the Ed25519 signing key (as in a chunk)
    52      4     body_len         u32
    56      body_len              body: a UTF-8 JSON object, "kind" naming what it says
            64                    Ed25519 signature of LEAF_CONTEXT || SHA-256(all before it)

The whole record is the log entry: whoever holds the tiles can check each leaf's signature
with the gateway's public key, as they check a chunk's.
"""

from __future__ import annotations

import hashlib
import struct
import uuid
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from nacl.exceptions import BadSignatureError
from nacl.signing import SigningKey, VerifyKey

from tapegate.tape.codec import LEAF_MAGIC, MIN_LEAF_BYTES, SIGNATURE_LEN, dump_json, load_json
from tapegate.tape.model import SessionHeader
from tapegate.tape.seal import key_id

VERSION = 1
FIXED = struct.Struct(">4sHHI16sQQ8sI")
FIXED_LEN = FIXED.size  # 56
MAX_LEAF_BYTES = 0xFFFF  # a log entry's limit (tlog-tiles bundles have 16-bit lengths)
LEAF_CONTEXT = b"tapegate leaf v1\x00"


class LeafKind(StrEnum):
    """What a leaf says. docs/LOG.md lists each one's body."""

    SESSION_OPEN = "session_open"  # before the session's first byte is forwarded
    SESSION_CLOSE = "session_close"  # with the final chunk: its digest, counts, end reason
    HEARTBEAT = "heartbeat"  # the instance is alive: state start | running | stop
    REFUSALS = "refusals"  # refusals folded into a summary instead of one session each
    EXPIRED = "expired"  # retention removed a session's tape, under a named policy


class LeafError(ValueError):
    """A leaf that cannot be decoded."""


@dataclass(frozen=True, slots=True)
class Leaf:
    raw: bytes
    instance: uuid.UUID
    counter: int
    sealed_ns: int
    key_id: bytes
    body: dict[str, Any]
    digest: bytes  # SHA-256 of the record without its signature: what the signature covers

    @property
    def kind(self) -> str:
        return str(self.body.get("kind"))

    @property
    def session_id(self) -> str | None:
        sid = self.body.get("session")
        return sid if isinstance(sid, str) else None

    @property
    def signature(self) -> bytes:
        return self.raw[-SIGNATURE_LEN:]

    def check(self, trusted: dict[bytes, VerifyKey]) -> bool:
        key = trusted.get(self.key_id)
        if key is None:
            return False
        try:
            key.verify(LEAF_CONTEXT + self.digest, self.signature)
        except (BadSignatureError, ValueError):
            return False
        return True


def subject_digest(issuer: str, subject: str) -> str:
    """Who, without saying who: the log is read by more people than the tapes."""
    return hashlib.sha256(f"{issuer}\n{subject}".encode()).hexdigest()


def encode_leaf(
    signer: SigningKey, instance: uuid.UUID, counter: int, sealed_ns: int, body: dict[str, Any]
) -> bytes:
    data = dump_json(body)
    length = FIXED_LEN + len(data) + SIGNATURE_LEN
    if length > MAX_LEAF_BYTES:
        raise LeafError(f"a leaf of {length} bytes is over {MAX_LEAF_BYTES}")
    head = FIXED.pack(
        LEAF_MAGIC,
        VERSION,
        0,
        length,
        instance.bytes,
        counter,
        sealed_ns,
        key_id(bytes(signer.verify_key)),
        len(data),
    )
    unsigned = head + data
    digest = hashlib.sha256(unsigned).digest()
    return unsigned + signer.sign(LEAF_CONTEXT + digest).signature


def decode_leaf(raw: bytes) -> Leaf:
    if len(raw) < MIN_LEAF_BYTES:
        raise LeafError(f"leaf of {len(raw)} bytes is shorter than the minimum")
    if len(raw) > MAX_LEAF_BYTES:
        raise LeafError(f"leaf of {len(raw)} bytes is longer than {MAX_LEAF_BYTES}")
    magic, version, flags, length, inst, counter, sealed_ns, kid, body_len = FIXED.unpack_from(raw)
    if magic != LEAF_MAGIC:
        raise LeafError(f"bad magic {magic!r}")
    if version != VERSION:
        raise LeafError(f"unsupported leaf version {version}")
    if flags:
        raise LeafError(f"unknown flags {flags:#06x}")
    if length != len(raw) or FIXED_LEN + body_len + SIGNATURE_LEN != length:
        raise LeafError("record_len does not match the leaf's parts")
    try:
        body = load_json(raw[FIXED_LEN : FIXED_LEN + body_len])
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:  # nesting: RecursionError
        raise LeafError(f"body is not UTF-8 JSON: {str(exc)[:80]}") from None
    if not isinstance(body, dict) or not isinstance(body.get("kind"), str):
        raise LeafError("body is not an object with a kind")
    raw = bytes(raw)
    return Leaf(
        raw,
        uuid.UUID(bytes=inst),
        counter,
        sealed_ns,
        kid,
        body,
        hashlib.sha256(raw[:-SIGNATURE_LEN]).digest(),
    )


class LeafWriter:
    """One gateway instance's leaves, numbered in the order they are made. Not thread-safe:
    the gateway makes them on its event loop."""

    def __init__(self, signer: SigningKey, gateway: str, instance: uuid.UUID | None = None):
        from tapegate.tape.model import new_session_id

        self.signer = signer
        self.gateway = gateway
        self.instance = instance or new_session_id()
        self.counter = 0

    def _leaf(self, now_ns: int, body: dict[str, Any]) -> bytes:
        raw = encode_leaf(self.signer, self.instance, self.counter, now_ns, body)
        self.counter += 1
        return raw

    def session_open(self, session_id: uuid.UUID, header: SessionHeader, now_ns: int) -> bytes:
        return self._leaf(
            now_ns,
            {
                "kind": LeafKind.SESSION_OPEN.value,
                "session": str(session_id),
                "target": header.target,
                "protocol": header.protocol,
                "subject": subject_digest(header.identity.issuer, header.identity.subject),
                "gateway": self.gateway,
                "started_ns": header.started_ns,
            },
        )

    def session_close(
        self,
        session_id: uuid.UUID,
        final_chunk: bytes,
        chunks: int,
        totals: dict[str, int],
        reason: str,
        now_ns: int,
    ) -> bytes:
        return self._leaf(
            now_ns,
            {
                "kind": LeafKind.SESSION_CLOSE.value,
                "session": str(session_id),
                "final_digest": hashlib.sha256(final_chunk[:-SIGNATURE_LEN]).hexdigest(),
                "chunks": chunks,
                "bytes_c2s": totals.get("bytes_c2s", 0),
                "bytes_s2c": totals.get("bytes_s2c", 0),
                "reason": str(reason),
            },
        )

    def heartbeat(
        self,
        state: str,
        interval_s: int,
        open_sessions: int,
        now_ns: int,
        previous: str | None = None,
    ) -> bytes:
        """`previous`, in the start heartbeat: the instance that ran on this data dir before,
        so that one removed whole (every leaf of it) shows as missing from the chain."""
        body: dict[str, Any] = {
            "kind": LeafKind.HEARTBEAT.value,
            "gateway": self.gateway,
            "state": state,
            "interval_s": interval_s,
            "open_sessions": open_sessions,
        }
        if previous is not None:
            body["previous"] = previous
        return self._leaf(now_ns, body)

    def refusals(self, source: str, count: int, first_ns: int, last_ns: int, now_ns: int) -> bytes:
        return self._leaf(
            now_ns,
            {
                "kind": LeafKind.REFUSALS.value,
                "gateway": self.gateway,
                "source": source,
                "count": count,
                "first_ns": first_ns,
                "last_ns": last_ns,
            },
        )

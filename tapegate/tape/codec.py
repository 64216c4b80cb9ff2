"""The byte layout of one sealed chunk record, and splitting a delivery object into records.

docs/FORMAT.md is the specification; this module is its reference encoder/decoder. It does no
cryptography beyond hashing: sealing and checking signatures live in `seal`.

    offset  size  field
    0       4     magic            b"TGCK"
    4       2     version          u16 = 2 (1 is still read)
    6       2     flags            u16, bit 0 = final chunk
    8       4     record_len       u32, whole record including the signature
    12      16    session_id       UUID bytes
    28      8     seq              u64
    36      8     sealed_ns        u64, unix ns when the chunk was sealed
    44      32    prev_digest      SHA-256 digest of chunk seq-1 (zeros for seq 0)
    76      8     key_id           id of the Ed25519 signing key
    84      4     payload_len      u32
    88      4     meta_len         u32
    92      4     index_len        u32, 14 bytes per frame (13 in version 1)
    96      payload_len           payload: XChaCha20-Poly1305 ciphertext of the frame bytes
            meta_len              meta: UTF-8 JSON object (events, session header, end)
            index_len             frame index: ts_ns u64, direction u8, stream u8, length u32
                                  per frame (version 1 has no stream: every frame is stream 0)
            64                    signature
All integers are big-endian. The payload comes first so that the gateway can encrypt the frame
bytes in place, in the buffer they were collected in, and append the rest.
"""

from __future__ import annotations

import hashlib
import json
import math
import struct
import uuid
from dataclasses import dataclass
from typing import Any

import orjson

MAGIC = b"TGCK"
LEAF_MAGIC = b"TGLF"  # a log leaf (tapegate/log/leaf.py): same first 12 bytes, split alike
VERSION = 2  # what the writer writes: version 2 added the frame's stream (SSH stderr)
VERSIONS = (1, 2)  # what a reader accepts
FLAG_FINAL = 0x0001
KNOWN_FLAGS = FLAG_FINAL

FIXED = struct.Struct(">4sHHI16sQQ32s8sIII")
FIXED_LEN = FIXED.size  # 96
INDEX_ENTRY = struct.Struct(">QBBI")  # ts_ns, direction, stream, length
INDEX_ENTRY_V1 = struct.Struct(">QBI")  # ts_ns, direction, length
INDEX_ENTRIES = {1: INDEX_ENTRY_V1, 2: INDEX_ENTRY}  # by version
STREAMS = (0, 1)  # 0: the data (the only stream outside SSH); 1: SSH stderr (RFC 4254 §5.2)
SIGNATURE_LEN = 64
DIGEST_LEN = 32
ZERO_DIGEST = bytes(DIGEST_LEN)
AEAD_TAG_LEN = 16

MAX_RECORD_BYTES = 900 * 1024  # Firehose takes 1,000 KiB per record; keep a margin.
MIN_RECORD_BYTES = FIXED_LEN + 2 + SIGNATURE_LEN  # the smallest meta is "{}"
MIN_LEAF_BYTES = 56 + 2 + SIGNATURE_LEN  # the smallest leaf body is "{}"
_MIN_BY_MAGIC = {MAGIC: MIN_RECORD_BYTES, LEAF_MAGIC: MIN_LEAF_BYTES}


class TapeFormatError(ValueError):
    """A record that cannot be decoded. The message says what is wrong, and where."""


@dataclass(frozen=True, slots=True)
class FrameRef:
    """A frame as the index describes it: when, which way, which stream, how long. The bytes
    are sealed."""

    ts_ns: int
    direction: int
    length: int
    stream: int = 0


@dataclass(frozen=True, slots=True)
class Record:
    """One decoded (not yet verified) chunk record."""

    raw: bytes
    session_id: uuid.UUID
    seq: int
    sealed_ns: int
    final: bool
    prev_digest: bytes
    key_id: bytes
    meta: dict[str, Any]
    # The frame index as columns (decoded in C by struct.iter_unpack, not frame by frame).
    frame_ts: tuple[int, ...]
    frame_dir: tuple[int, ...]
    frame_len: tuple[int, ...]
    frame_stream: tuple[int, ...]  # all 0 in a version 1 record
    payload_len: int
    meta_len: int
    digest: bytes  # SHA-256 of the body: what the next chunk's prev_digest must equal
    version: int = VERSION
    # With decode_record(events=False) on the reference layout: the events' bytes, unparsed
    # (one event per line, lines joined by ",\n"); meta["events"] is then left empty.
    events_json: bytes | None = None

    @property
    def body(self) -> memoryview:
        """Everything the signature covers: the record without its last 64 bytes."""
        return memoryview(self.raw)[:-SIGNATURE_LEN]

    @property
    def frames(self) -> tuple[FrameRef, ...]:
        return tuple(map(FrameRef, self.frame_ts, self.frame_dir, self.frame_len,
                         self.frame_stream))  # fmt: skip

    @property
    def meta_bytes(self) -> bytes:
        start = FIXED_LEN + self.payload_len
        return self.raw[start : start + self.meta_len]

    @property
    def signature(self) -> bytes:
        return self.raw[-SIGNATURE_LEN:]

    @property
    def payload(self) -> memoryview:
        return memoryview(self.raw)[FIXED_LEN : FIXED_LEN + self.payload_len]

    @property
    def associated_data(self) -> bytes:
        """The bytes the payload's AEAD tag also authenticates: the fixed header."""
        return self.raw[:FIXED_LEN]


def encode_meta(
    event_json: list[bytes],
    session: dict[str, Any] | None = None,
    end: dict[str, Any] | None = None,
) -> bytes:
    """The meta object. Events arrive already serialised (the writer sizes them as they come)."""
    # One event per line: JSON allows the whitespace, and an archive can then cut the events
    # out of the bytes without parsing them one by one. Readers must not rely on it.
    parts = [b'{"events":[\n', b",\n".join(event_json), b"\n]"]
    if session is not None:
        parts += [b',"session":', dump_json(session)]
    if end is not None:
        parts += [b',"end":', dump_json(end)]
    parts.append(b"}")
    return b"".join(parts)


def dump_json(obj: Any) -> bytes:
    """Compact UTF-8 JSON. orjson writes the same bytes as the standard library's compact form
    for what events hold (strings, integers, lists, objects), 16 times faster: two events per
    HTTP request made JSON a tenth of the gateway's time. What orjson refuses (an integer past
    64 bits, a key that is not a string) goes the standard library's way."""
    try:
        # Copied to its own size: orjson's bytes sit in a 4 KiB allocation that a shrinking
        # realloc does not give back, so a chunk's pending events took 30 times their size.
        return bytes(memoryview(orjson.dumps(obj)))
    except TypeError:
        return json.dumps(_strict(obj), separators=(",", ":"), ensure_ascii=False,
                          allow_nan=False).encode()  # fmt: skip


def _strict(value: Any) -> Any:
    """What the standard library would write loosely, made strict: names as strings (each
    once), NaN and the infinities as null. orjson does the same on its own path."""
    if isinstance(value, dict):
        return {str(k): _strict(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_strict(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def load_json(data: bytes) -> Any:
    """Strict JSON as docs/FORMAT.md has it: UTF-8, no name twice in one object, no NaN or
    Infinity (ValueError for either), integers exact at any size."""
    return json.loads(data.decode("utf-8"), object_pairs_hook=_one_each,
                      parse_constant=_no_constant)  # fmt: skip


def _one_each(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        raise ValueError("a name appears twice in one object")
    return obj


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def encode_index(frames: list[tuple[int, int, int, int]], version: int = VERSION) -> bytes:
    """The frame index from (ts_ns, direction, stream, length) entries."""
    if version == 1:
        if any(stream for _, _, stream, _ in frames):
            raise TapeFormatError("format version 1 has no stream: every frame is stream 0")
        pack1 = INDEX_ENTRY_V1.pack
        return b"".join(pack1(ts, direction, length) for ts, direction, _, length in frames)
    pack = INDEX_ENTRY.pack
    return b"".join(pack(ts, direction, stream, length) for ts, direction, stream, length in frames)


def record_length(payload_len: int, meta_len: int, index_len: int) -> int:
    return FIXED_LEN + payload_len + meta_len + index_len + SIGNATURE_LEN


def encode_fixed(
    *,
    session_id: uuid.UUID,
    seq: int,
    sealed_ns: int,
    final: bool,
    prev_digest: bytes,
    key_id: bytes,
    payload_len: int,
    meta_len: int,
    index_len: int,
    version: int = VERSION,
) -> bytes:
    """The 96-byte fixed header (also the AEAD's associated data)."""
    record_len = record_length(payload_len, meta_len, index_len)
    if record_len > MAX_RECORD_BYTES:
        raise TapeFormatError(f"record of {record_len} bytes exceeds {MAX_RECORD_BYTES}")
    return FIXED.pack(
        MAGIC,
        version,
        FLAG_FINAL if final else 0,
        record_len,
        session_id.bytes,
        seq,
        sealed_ns,
        prev_digest,
        key_id,
        payload_len,
        meta_len,
        index_len,
    )


_EVENTS_HEAD = b'{"events":[\n'


def decode_record(raw: bytes, events: bool = True) -> Record:
    """Parse one record. Raises TapeFormatError, never anything else, for bad bytes.

    `events=False` lets a caller that parses events in bulk (the archive pipeline) skip turning
    them into Python objects; it only applies when the meta has the reference layout."""
    if len(raw) < MIN_RECORD_BYTES:
        raise TapeFormatError(f"record of {len(raw)} bytes is shorter than the minimum")
    (
        magic,
        version,
        flags,
        record_len,
        sid,
        seq,
        sealed_ns,
        prev_digest,
        key_id,
        payload_len,
        meta_len,
        index_len,
    ) = FIXED.unpack_from(raw)
    if magic != MAGIC:
        raise TapeFormatError(f"bad magic {magic!r}")
    if version not in VERSIONS:
        raise TapeFormatError(f"unsupported version {version}")
    if flags & ~KNOWN_FLAGS:
        raise TapeFormatError(f"unknown flags {flags:#06x}")
    if record_len != len(raw):
        raise TapeFormatError(f"record_len {record_len} but {len(raw)} bytes given")
    if record_length(payload_len, meta_len, index_len) != record_len:
        raise TapeFormatError("section lengths do not add up to record_len")
    entry = INDEX_ENTRIES[version]
    if index_len % entry.size:
        raise TapeFormatError(f"index_len {index_len} is not a multiple of {entry.size}")
    meta_start = FIXED_LEN + payload_len
    meta_end = meta_start + meta_len
    meta_bytes = raw[meta_start:meta_end]
    events_json = None
    if not events and meta_bytes.startswith(_EVENTS_HEAD):
        close = meta_bytes.rfind(b"\n]")
        if close >= len(_EVENTS_HEAD) - 1:
            events_json = meta_bytes[len(_EVENTS_HEAD) : close]
            meta_bytes = b'{"events":[]' + meta_bytes[close + 2 :]
    try:
        meta = load_json(meta_bytes)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:  # nesting: RecursionError
        if events_json is not None:  # not the layout after all: parse it whole
            return decode_record(raw, events=True)
        raise TapeFormatError(f"meta is not UTF-8 JSON: {exc}") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("events"), list):
        raise TapeFormatError("meta is not an object with an events list")
    final = bool(flags & FLAG_FINAL)
    if final != ("end" in meta):
        raise TapeFormatError("final flag and meta.end disagree")
    if (seq == 0) != ("session" in meta):
        raise TapeFormatError("meta.session must be present in chunk 0 and only there")
    index_end = meta_end + index_len
    entries = list(entry.iter_unpack(raw[meta_end:index_end]))
    ts: tuple[int, ...]
    dirs: tuple[int, ...]
    streams: tuple[int, ...]
    lens: tuple[int, ...]
    if not entries:
        ts = dirs = streams = lens = ()
    elif version == 1:
        ts, dirs, lens = zip(*entries, strict=True)
        streams = (0,) * len(entries)
    else:
        ts, dirs, streams, lens = zip(*entries, strict=True)
        if not set(streams) <= set(STREAMS):
            raise TapeFormatError(f"frame stream {max(streams)} is neither 0 nor 1")
    if dirs and not set(dirs) <= {0, 1}:
        raise TapeFormatError(f"frame direction {max(dirs)} is neither 0 nor 1")
    plain_len = sum(lens)
    expected_payload = plain_len + AEAD_TAG_LEN if entries else 0
    if payload_len != expected_payload:
        raise TapeFormatError(
            f"payload_len {payload_len} does not match {len(entries)} frames of {plain_len} bytes"
        )
    raw = bytes(raw)
    return Record(
        raw=raw,
        session_id=uuid.UUID(bytes=sid),
        seq=seq,
        sealed_ns=sealed_ns,
        final=final,
        prev_digest=prev_digest,
        key_id=key_id,
        meta=meta,
        frame_ts=ts,
        frame_dir=dirs,
        frame_len=lens,
        frame_stream=streams,
        payload_len=payload_len,
        meta_len=meta_len,
        events_json=events_json,
        digest=hashlib.sha256(memoryview(raw)[:-SIGNATURE_LEN]).digest(),
        version=version,
    )


_SECTIONS = struct.Struct(">III")


def _parts_length(data: bytes, pos: int, magic: bytes) -> int:
    """What record_len must be, by the header's section lengths (the caller checked that the
    whole header is there: record_len is at least the smallest record)."""
    if magic == MAGIC:
        payload, meta, index = _SECTIONS.unpack_from(data, pos + 84)
        return record_length(payload, meta, index)
    body = int.from_bytes(data[pos + 52 : pos + 56], "big")  # a leaf: tapegate/log/leaf.py
    return 56 + body + SIGNATURE_LEN


@dataclass(frozen=True, slots=True)
class SplitError:
    offset: int
    reason: str


def split_records(data: bytes) -> tuple[list[bytes], list[SplitError]]:
    """Cut a delivery object (records concatenated with no delimiter, as Firehose writes them).

    Chunks and log leaves share their first twelve bytes (magic, version, flags, record_len),
    so both are cut here; a caller tells them apart by their magic. A damaged length field
    would make every later record unreadable, so after an error the splitter resynchronises at
    the next magic that starts a plausible record. Never raises.
    """
    records: list[bytes] = []
    errors: list[SplitError] = []
    pos, end = 0, len(data)
    while pos < end:
        if end - pos < 12:
            errors.append(SplitError(pos, f"{end - pos} trailing bytes, too short for a record"))
            break
        magic = bytes(data[pos : pos + 4])
        length = int.from_bytes(data[pos + 8 : pos + 12], "big")
        smallest = _MIN_BY_MAGIC.get(magic)
        sized = smallest is not None and smallest <= length <= MAX_RECORD_BYTES
        fits = sized and pos + length <= end
        parts = _parts_length(data, pos, magic) if fits else None
        if fits and parts == length:
            records.append(bytes(data[pos : pos + length]))
            pos += length
            continue
        if smallest is None:
            reason = "no record magic"
        elif fits:
            # A record_len that grew would swallow the records after it: the header's own
            # section lengths must add up to it before anything is taken.
            reason = f"record_len {length} does not match its sections ({parts} bytes)"
        elif sized:
            reason = f"record of {length} bytes runs past the end ({end - pos} left)"
        else:
            reason = f"implausible record length {length}"
        errors.append(SplitError(pos, reason))
        found = [i for i in (data.find(m, pos + 1) for m in _MIN_BY_MAGIC) if i >= 0]
        if not found:
            break
        pos = min(found)
    return records, errors

"""Frames and events go in, sealed records come out, and the same frames and events come back."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st
from nacl.public import PrivateKey
from nacl.signing import SigningKey

from tapegate.tape import (
    MAX_RECORD_BYTES,
    Direction,
    Event,
    PayloadError,
    Stream,
    TapeWriter,
    codec,
    decode_record,
    new_session_id,
    open_frames,
    open_session_key,
    verify_session,
)
from tapegate.tape.seal import key_id
from tapegate.tape.writer import seal_chunk
from tests.tapes import T0, Session, make_header, record_session


def _all_frames(records: list[bytes], session_key: bytes) -> list[tuple[int, Direction, bytes]]:
    decoded = sorted((decode_record(r) for r in records), key=lambda r: r.seq)
    return [(f.ts_ns, f.direction, f.data) for r in decoded for f in open_frames(r, session_key)]


def _auditor_map(*keys: PrivateKey) -> dict[bytes, PrivateKey]:
    return {key_id(bytes(k.public_key)): k for k in keys}


def test_frames_and_events_round_trip(session: Session) -> None:
    assert len(session.records) > 2, "small chunks should have cut the session into several"
    chunk0 = decode_record(session.records[0])
    key = open_session_key(chunk0, _auditor_map(session.auditor))
    assert key is not None
    # Frames may be split across chunks; the byte stream per direction must be identical.
    got = _all_frames(session.records, key)
    for direction in Direction:
        sent = b"".join(d for _, dd, d in session.sent if dd is direction)
        assert b"".join(d for _, dd, d in got if dd is direction) == sent
    events = [e for r in session.records for e in decode_record(r).meta["events"]]
    assert [e["attrs"]["sql"] for e in events] == ["SELECT 0", "SELECT 1", "SELECT 2"]
    assert all(e["dir"] == "c2s" and e["type"] == "query" for e in events)


def test_chunk0_carries_header_and_final_carries_totals(session: Session) -> None:
    first, last = decode_record(session.records[0]), decode_record(session.records[-1])
    assert first.seq == 0 and first.meta["session"]["identity"]["subject"] == "agent-7"
    assert first.meta["session"]["target"] == "appdb"
    assert first.key_id == key_id(bytes(session.signer.verify_key))
    assert last.final and last.meta["end"]["reason"] == "client_terminate"
    totals = last.meta["end"]["totals"]
    assert totals["chunks"] == len(session.records)
    assert totals["events"] == 3
    assert totals["bytes_c2s"] == sum(len(d) for _, dd, d in session.sent if dd == 0)
    assert totals["bytes_s2c"] == sum(len(d) for _, dd, d in session.sent if dd == 1)
    assert [decode_record(r).seq for r in session.records] == list(range(len(session.records)))


def test_payload_unreadable_without_auditor_key(session: Session) -> None:
    chunk0 = decode_record(session.records[0])
    stranger = PrivateKey.generate()
    assert open_session_key(chunk0, _auditor_map(stranger)) is None
    # The plaintext must not appear in the record: it is encrypted, not merely encoded.
    assert b"SELECT 0;" not in b"".join(session.records)
    wrong_key = bytes(32)
    try:
        open_frames(chunk0, wrong_key)
    except PayloadError as exc:
        assert "does not open" in str(exc)
    else:
        raise AssertionError("a wrong session key must not open the payload")


def test_any_of_several_auditors_can_read() -> None:
    signer = SigningKey.generate()
    a, b, c = PrivateKey.generate(), PrivateKey.generate(), PrivateKey.generate()
    writer = TapeWriter(make_header(), signer, [a.public_key, b.public_key])
    writer.add_frame(T0 + 1, Direction.CLIENT_TO_SERVER, b"secret bytes")
    record = decode_record(writer.close(T0 + 2, "client_terminate"))
    for auditor in (a, b):
        key = open_session_key(record, _auditor_map(auditor))
        assert key is not None
        assert open_frames(record, key)[0].data == b"secret bytes"
    assert open_session_key(record, _auditor_map(c)) is None


def test_cut_by_age() -> None:
    writer = TapeWriter(
        make_header(),
        SigningKey.generate(),
        [PrivateKey.generate().public_key],
        max_age_ns=1_000_000,
    )
    assert writer.add_frame(T0, Direction.CLIENT_TO_SERVER, b"a") == []
    assert writer.tick(T0 + 999_999) == []
    sealed = writer.tick(T0 + 1_000_000)
    assert len(sealed) == 1 and decode_record(sealed[0]).seq == 0
    assert writer.tick(T0 + 5_000_000) == [], "nothing pending, nothing to seal"


def test_cut_by_size_and_large_frames_stay_under_record_limit() -> None:
    signer, auditor = SigningKey.generate(), PrivateKey.generate()
    writer = TapeWriter(make_header(), signer, [auditor.public_key])  # default 256 KiB
    big = bytes(range(256)) * 12_000  # ~3 MB in a single read
    records = writer.add_frame(T0, Direction.SERVER_TO_CLIENT, big)
    records.append(writer.close(T0 + 1, "upstream_closed"))
    assert len(records) >= 12
    assert max(len(r) for r in records) <= MAX_RECORD_BYTES
    assert all(len(r) <= 256 * 1024 + 4096 for r in records)
    key = open_session_key(decode_record(records[0]), _auditor_map(auditor))
    assert key is not None
    assert b"".join(d for _, _, d in _all_frames(records, key)) == big
    assert verify_session(records, {key_id(bytes(signer.verify_key)): signer.verify_key}).intact


def test_oversized_event_is_trimmed_and_says_so() -> None:
    writer = TapeWriter(make_header(), SigningKey.generate(), [PrivateKey.generate().public_key])
    writer.add_event(Event(T0, "query", Direction.CLIENT_TO_SERVER, {"sql": "x" * 100_000}))
    record = decode_record(writer.close(T0 + 1, "client_terminate"))
    (event,) = record.meta["events"]
    assert event["attrs"]["trimmed"] is True
    assert 0 < len(event["attrs"]["sql"]) < 100_000


def test_an_event_that_cutting_strings_cannot_shrink_says_its_original_size() -> None:
    from tapegate.tape.writer import trim_event

    whole = {"ts": T0, "dir": None, "type": "bind", "attrs": {"params": list(range(10_000))}}
    event = json.loads(trim_event(whole))
    original = len(json.dumps(whole, separators=(",", ":")))
    assert event["attrs"] == {"trimmed": True, "original_bytes": original}


def test_empty_session_still_has_header_and_final() -> None:
    s = record_session(exchanges=0)
    assert len(s.records) == 1
    rec = decode_record(s.records[0])
    assert rec.seq == 0 and rec.final and "session" in rec.meta and rec.payload_len == 0
    assert verify_session(s.records, s.trusted).intact


def test_closed_writer_refuses_more() -> None:
    s = record_session(exchanges=1)
    try:
        s.writer.add_frame(T0, Direction.CLIENT_TO_SERVER, b"late")
    except RuntimeError as exc:
        assert "already closed" in str(exc)
    else:
        raise AssertionError("a closed writer must not accept frames")


def test_copying_fallback_seals_the_same_bytes(monkeypatch) -> None:
    """Without PyNaCl's cffi module the public wrapper is used; the record must not change."""
    from tapegate.tape import seal

    signer, key = SigningKey.generate(), bytes(range(32))
    sid = new_session_id(T0)
    kwargs = dict(
        signer=signer,
        session_key=key,
        session_id=sid,
        seq=3,
        sealed_ns=T0,
        prev_digest=bytes(32),
        frames=[(T0, 0, 0, b"abc"), (T0 + 1, 1, 1, b"defg")],
        event_json=[],
    )
    fast = seal_chunk(**kwargs)
    monkeypatch.setattr(seal, "_lib", None)
    assert seal_chunk(**kwargs) == fast


_JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)


@given(_JSON_VALUES)
def test_event_json_is_the_standard_librarys_compact_form(value: object) -> None:
    """orjson writes what events hold exactly as json.dumps(compact, ensure_ascii=False) does;
    a value it refuses falls back to the standard library, so either way the bytes agree."""
    try:
        expected = json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()
    except UnicodeEncodeError:  # a lone surrogate: no UTF-8 for it either way
        return
    assert codec.dump_json(value) == expected


def test_event_json_takes_its_own_size_in_memory() -> None:
    """Events wait in memory until their chunk is sealed: each must cost about its length
    (orjson's own result holds a 4 KiB allocation, measured as 30x the RSS)."""
    import tracemalloc

    event = {"ts_ns": 1, "type": "query", "dir": "c2s", "attrs": {"sql": "select 1"}}
    tracemalloc.start()
    try:
        kept = [codec.dump_json(event) for _ in range(2000)]
        used, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert used < 2000 * (len(kept[0]) + 200), used


def _one_chunk(version: int, frames: list[tuple[int, int, int, bytes]]) -> bytes:
    record, _ = seal_chunk(signer=SigningKey.generate(), session_key=bytes(32),
                           session_id=new_session_id(T0), seq=1, sealed_ns=T0,
                           prev_digest=bytes(32), frames=frames, event_json=[],
                           version=version)  # fmt: skip
    return record


def test_streams_round_trip_in_version_2_and_version_1_reads_as_stream_0() -> None:
    frames = [(T0, 1, 0, b"out"), (T0 + 1, 1, 1, b"err"), (T0 + 2, 0, 0, b"in")]
    v2 = decode_record(_one_chunk(2, frames))
    assert (v2.version, v2.frame_stream, v2.frame_dir) == (2, (0, 1, 0), (1, 1, 0))
    opened = open_frames(v2, bytes(32))
    assert [(int(f.stream), f.data) for f in opened] == [(0, b"out"), (1, b"err"), (0, b"in")]
    assert opened[1].stream is Stream.STDERR
    v1 = decode_record(_one_chunk(1, [(t, d, 0, data) for t, d, _, data in frames]))
    assert v1.version == 1 and v1.frame_stream == (0, 0, 0) and len(v1.raw) == len(v2.raw) - 3
    assert [f.data for f in open_frames(v1, bytes(32))] == [b"out", b"err", b"in"]


def test_version_1_cannot_carry_a_stream_and_an_unknown_stream_is_undecodable() -> None:
    with pytest.raises(codec.TapeFormatError, match="version 1 has no stream"):
        _one_chunk(1, [(T0, 1, 1, b"err")])
    raw = bytearray(_one_chunk(2, [(T0, 1, 1, b"err")]))
    raw[-64 - 14 + 9] = 2  # the entry's stream byte (after ts_ns u64 and direction u8)
    with pytest.raises(codec.TapeFormatError, match="frame stream 2"):
        decode_record(bytes(raw))

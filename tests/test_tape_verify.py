"""The verifier finds every kind of damage, and names it."""

from __future__ import annotations

import hashlib
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from nacl.signing import SigningKey

from tapegate.keys import Keyring
from tapegate.tape import ProblemKind, decode_record, split_records, verify_session
from tapegate.tape.codec import SIGNATURE_LEN
from tapegate.tape.seal import key_id, sign_digest
from tests.tapes import Session, record_session


def test_intact_session_verifies(session: Session) -> None:
    verdict = verify_session(session.records, session.trusted)
    assert verdict.intact and verdict.status == "intact"
    assert verdict.chunks == len(session.records)
    assert verdict.final_seq == len(session.records) - 1
    assert verdict.head_digest == decode_record(session.records[-1]).digest


def test_every_single_byte_flip_is_detected() -> None:
    s = record_session(exchanges=2, payload=b"p" * 300, max_chunk_bytes=1024)
    assert len(s.records) >= 2
    stream = b"".join(s.records)
    for i in range(len(stream)):
        damaged = bytearray(stream)
        damaged[i] ^= 0x01
        records, split_errors = split_records(bytes(damaged))
        verdict = verify_session(records, s.trusted, session_id=s.writer.session_id)
        assert split_errors or not verdict.intact, f"flip at byte {i} went unnoticed"


def test_every_bit_of_one_record_matters() -> None:
    s = record_session(exchanges=1, payload=b"")
    record = s.records[0]
    for i in range(len(record)):
        for bit in (0x80, 0x04):
            damaged = bytearray(record)
            damaged[i] ^= bit
            assert not verify_session([bytes(damaged)], s.trusted).intact, (i, bit)


def test_any_order_and_duplicates_are_harmless(session: Session) -> None:
    shuffled = session.records * 3
    random.Random(7).shuffle(shuffled)
    verdict = verify_session(shuffled, session.trusted)
    assert verdict.intact and verdict.chunks == len(session.records)


def test_deleted_middle_chunks_are_a_missing_range() -> None:
    s = record_session(exchanges=6)
    assert len(s.records) >= 4
    verdict = verify_session(s.records[:1] + s.records[3:], s.trusted)
    assert verdict.status == "broken"
    (missing,) = [p for p in verdict.problems if p.kind is ProblemKind.MISSING]
    assert missing.seq == 1 and "1-2" in missing.detail


def test_deleted_first_chunk_is_missing_zero(session: Session) -> None:
    verdict = verify_session(session.records[1:], session.trusted)
    assert any(p.kind is ProblemKind.MISSING and p.seq == 0 for p in verdict.problems)


def test_truncated_session_has_no_final(session: Session) -> None:
    verdict = verify_session(session.records[:-1], session.trusted)
    assert verdict.kinds() == {ProblemKind.NO_FINAL}
    assert verdict.status == "open"


def test_truncated_record_bytes_are_undecodable(session: Session) -> None:
    records = [*session.records[:-1], session.records[-1][:-10]]
    verdict = verify_session(records, session.trusted)
    assert ProblemKind.UNDECODABLE in verdict.kinds()
    assert ProblemKind.NO_FINAL in verdict.kinds()


def test_reordered_chain_is_a_broken_link() -> None:
    """Two chunks swapped in seq (each re-signed by the real key) break the hash chain."""
    s = record_session(exchanges=4)
    a, b = decode_record(s.records[1]), decode_record(s.records[2])
    forged = [_resign(a.raw, s.signer, seq=2), _resign(b.raw, s.signer, seq=1)]
    verdict = verify_session([s.records[0], *forged, *s.records[3:]], s.trusted)
    assert ProblemKind.BROKEN_LINK in verdict.kinds()


def test_same_seq_different_content_is_a_conflict(session: Session) -> None:
    other = record_session(exchanges=3, signer=session.signer)
    rec = decode_record(other.records[1])
    forged = _resign(rec.raw, session.signer, session_id=session.writer.session_id.bytes)
    verdict = verify_session([*session.records, forged], session.trusted)
    conflicts = [p for p in verdict.problems if p.kind is ProblemKind.CONFLICT]
    assert [p.seq for p in conflicts] == [1]
    # The copy with the lower digest is kept, whichever came first: the chain through it is
    # judged (the forged copy does not link to the original chunk 2).
    kept_forged = decode_record(forged).digest < decode_record(session.records[1]).digest
    assert (ProblemKind.BROKEN_LINK in verdict.kinds()) == kept_forged


def test_resigned_with_untrusted_key_is_rejected(session: Session) -> None:
    mallory = SigningKey.generate()
    forged = _resign(session.records[1], mallory)
    verdict = verify_session([session.records[0], forged, *session.records[2:]], session.trusted)
    assert any(p.kind is ProblemKind.UNKNOWN_KEY and p.seq == 1 for p in verdict.problems)
    assert ProblemKind.MISSING in verdict.kinds()


def test_rotation_accepts_any_trusted_key() -> None:
    old, new = SigningKey.generate(), SigningKey.generate()
    s_old, s_new = record_session(signer=old), record_session(signer=new)
    ring = Keyring.of(old.verify_key, new.verify_key)
    assert verify_session(s_old.records, ring).intact
    assert verify_session(s_new.records, ring).intact
    assert not verify_session(s_new.records, Keyring.of(old.verify_key)).intact


def test_records_of_another_session_are_flagged(session: Session) -> None:
    other = record_session(signer=session.signer)
    verdict = verify_session(
        [*session.records, other.records[0]], session.trusted, session.writer.session_id
    )
    assert verdict.kinds() == {ProblemKind.OTHER_SESSION}


def test_nothing_at_all() -> None:
    """No record is not an open session: there is nothing to judge (docs/FORMAT.md)."""
    verdict = verify_session([], Keyring())
    assert verdict.status == "broken" and verdict.chunks == 0 and verdict.session_id is None
    assert verdict.kinds() == {ProblemKind.EMPTY}


def test_the_verdict_does_not_depend_on_the_order_of_the_records(session: Session) -> None:
    """Two validly signed copies of seq 1 (a forked writer): the same verdict, problems and
    kept copy whichever comes first; and without a session id, the session most records
    belong to is judged, not the first one's."""
    fork = _resign(session.records[1], session.signer, seq=1)
    fork = fork[:36] + (int.from_bytes(fork[36:44], "big") + 1).to_bytes(8, "big") + fork[44:]
    fork = _resign(fork, session.signer)
    one = [session.records[0], session.records[1], fork, *session.records[2:]]
    two = [fork, *reversed(session.records)]
    a, b = verify_session(one, session.trusted), verify_session(two, session.trusted)
    assert ProblemKind.CONFLICT in a.kinds()
    assert a.problems == b.problems and a.head_digest == b.head_digest
    other = record_session(signer=session.signer, exchanges=1)
    mixed = [other.records[0], *session.records]
    assert verify_session(mixed, session.trusted).session_id == session.writer.session_id


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=2048))
def test_random_bytes_never_raise(data: bytes) -> None:
    records, _ = split_records(data)
    verdict = verify_session([data, *records], Keyring())
    assert not verdict.intact


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_truncated_and_spliced_streams_never_raise(data: st.DataObject) -> None:
    s = _SMALL
    stream = b"".join(s.records)
    cut = data.draw(st.integers(0, len(stream)))
    junk = data.draw(st.binary(max_size=64))
    records, errors = split_records(stream[:cut] + junk + stream[cut:])
    verdict = verify_session(records, s.trusted, s.writer.session_id)
    if junk:
        assert errors or not verdict.intact


_SMALL = record_session(exchanges=2)


def _resign(
    raw: bytes, signer: SigningKey, *, seq: int | None = None, session_id: bytes | None = None
) -> bytes:
    """Rewrite header fields and sign again: what an attacker with a key could do."""
    body = bytearray(raw[:-SIGNATURE_LEN])
    if session_id is not None:
        body[12:28] = session_id
    if seq is not None:
        body[28:36] = seq.to_bytes(8, "big")
    body[76:84] = key_id(bytes(signer.verify_key))
    return bytes(body) + sign_digest(signer, hashlib.sha256(body).digest())


@pytest.mark.parametrize(
    "meta",
    [
        b'{"events":[],"events":[]}',
        b'{"events":[{"ts":NaN}]}',
        b'{"events":[]' + b',"x":' + b"[" * 5000 + b"]" * 5000 + b"}",
    ],
)
def test_loose_json_in_a_signed_record_is_undecodable(session: Session, meta: bytes) -> None:
    """Duplicate names, NaN and runaway nesting: rejected by the reader, named, never raised."""
    from tapegate.tape.codec import encode_fixed
    from tapegate.tape.seal import sign_digest

    head = encode_fixed(session_id=session.writer.session_id, seq=1, sealed_ns=1, final=False,
                        prev_digest=bytes(32), key_id=key_id(bytes(session.signer.verify_key)),
                        payload_len=0, meta_len=len(meta), index_len=0)  # fmt: skip
    body = head + meta
    record = body + sign_digest(session.signer, hashlib.sha256(body).digest())
    verdict = verify_session([session.records[0], record, *session.records[2:]], session.trusted,
                             session.writer.session_id)  # fmt: skip
    assert ProblemKind.UNDECODABLE in verdict.kinds() and ProblemKind.MISSING in verdict.kinds()


def test_a_broken_copy_does_not_change_which_session_is_judged() -> None:
    """From the second review: a copy with a broken signature, before or after its valid twin,
    once changed the session judged when none is named."""
    signer = SigningKey.generate()
    a, b = record_session(signer=signer), record_session(signer=signer)
    b_records = b.records[: len(a.records)]
    bad = a.records[0][:-1] + bytes([a.records[0][-1] ^ 1])
    ring = Keyring.of(signer.verify_key)
    first = verify_session([bad, *a.records, *b_records], ring)
    last = verify_session([*a.records, *b_records, bad], ring)
    assert first.session_id == last.session_id and first.problems == last.problems

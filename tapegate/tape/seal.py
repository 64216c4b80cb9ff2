"""The cryptography of a chunk: sign and check, encrypt and open payloads, seal session keys.

All primitives come from libsodium through PyNaCl:
- Ed25519 signs SIGN_CONTEXT || SHA-256(body). Signing the digest rather than the body keeps
  sealing to one hashing pass over the bytes (the same digest chains the next chunk).
- XChaCha20-Poly1305-IETF encrypts the frame bytes with a random per-session key; the nonce is
  session_id || seq, unique per chunk, and the associated data is the record up to the payload.
- SealedBox (X25519) seals the session key to each auditor public key, in chunk 0.
"""

from __future__ import annotations

import base64
import hashlib
import uuid
from collections.abc import Iterable, Mapping

from nacl import bindings

try:  # PyNaCl's own cffi binding: lets libsodium encrypt straight into the record buffer.
    from nacl._sodium import ffi as _ffi
    from nacl._sodium import lib as _lib
except ImportError:  # pragma: no cover - a PyNaCl without it takes the copying path
    _ffi = _lib = None
from nacl.exceptions import BadSignatureError, CryptoError
from nacl.public import PrivateKey, PublicKey, SealedBox
from nacl.signing import SigningKey, VerifyKey

from tapegate.tape.codec import Record
from tapegate.tape.model import Direction, Frame, Stream

SIGN_CONTEXT = b"tapegate chunk v1\x00"
SESSION_KEY_LEN = bindings.crypto_aead_xchacha20poly1305_ietf_KEYBYTES  # 32


def key_id(public_key: bytes) -> bytes:
    """8 bytes naming a public key (Ed25519 or X25519): the first bytes of its SHA-256."""
    return hashlib.sha256(bytes(public_key)).digest()[:8]


def sign_digest(signer: SigningKey, digest: bytes) -> bytes:
    return signer.sign(SIGN_CONTEXT + digest).signature


def check_signature(verify_key: VerifyKey, digest: bytes, signature: bytes) -> bool:
    try:
        verify_key.verify(SIGN_CONTEXT + digest, signature)
    except (BadSignatureError, ValueError, TypeError):
        return False
    return True


def nonce_for(session_id: uuid.UUID, seq: int) -> bytes:
    return session_id.bytes + seq.to_bytes(8, "big")


def encrypt_in_place(
    buf: bytearray, offset: int, length: int, session_key: bytes, session_id: uuid.UUID, seq: int
) -> None:
    """Encrypt buf[offset:offset+length] in place; the 16-byte tag overwrites the next 16 bytes.

    The associated data is buf[:offset], the record's fixed header. Sealing is the gateway's hot
    path: encrypting in place, in the buffer the frames were collected in, saves two copies of
    every chunk (bench/bench_tape.py), which PyNaCl's public wrapper cannot do.
    """
    if len(session_key) != SESSION_KEY_LEN:
        raise ValueError("session key must be 32 bytes")
    tag = bindings.crypto_aead_xchacha20poly1305_ietf_ABYTES
    if len(buf) < offset + length + tag:
        raise ValueError("buffer has no room for the authentication tag")
    nonce = nonce_for(session_id, seq)
    if _lib is None:
        buf[offset : offset + length + tag] = bindings.crypto_aead_xchacha20poly1305_ietf_encrypt(
            bytes(buf[offset : offset + length]), bytes(buf[:offset]), nonce, session_key
        )
        return
    with _ffi.from_buffer(buf) as ptr:
        rc = _lib.crypto_aead_xchacha20poly1305_ietf_encrypt(
            ptr + offset,
            _ffi.NULL,
            ptr + offset,
            length,
            ptr,
            offset,
            _ffi.NULL,
            nonce,
            session_key,
        )
    if rc != 0:  # pragma: no cover - libsodium only fails on impossible lengths
        raise CryptoError("encryption failed")


class PayloadError(ValueError):
    """A payload that does not open: wrong key, or bytes changed."""


def decrypt_payload(record: Record, session_key: bytes) -> bytes:
    if record.payload_len == 0:
        return b""
    try:
        return bindings.crypto_aead_xchacha20poly1305_ietf_decrypt(
            bytes(record.payload),
            bytes(record.associated_data),
            nonce_for(record.session_id, record.seq),
            session_key,
        )
    except CryptoError:
        raise PayloadError(
            f"payload of chunk {record.seq} does not open with this session key"
        ) from None


def open_frames(record: Record, session_key: bytes) -> list[Frame]:
    """The record's frames with their bytes, decrypted with the session key."""
    plaintext = decrypt_payload(record, session_key)
    frames, pos = [], 0
    for ref in record.frames:
        data = plaintext[pos : pos + ref.length]
        frames.append(Frame(ref.ts_ns, Direction(ref.direction), data, Stream(ref.stream)))
        pos += ref.length
    return frames


def seal_session_key(session_key: bytes, auditors: Iterable[PublicKey]) -> list[dict[str, str]]:
    """One entry per auditor key: {"key_id": hex, "sealed_key": base64 SealedBox}."""
    return [
        {
            "key_id": key_id(bytes(pk)).hex(),
            "sealed_key": base64.b64encode(SealedBox(pk).encrypt(session_key)).decode(),
        }
        for pk in auditors
    ]


def open_session_key(chunk0: Record, auditor_keys: Mapping[bytes, PrivateKey]) -> bytes | None:
    """The session key, if any of the given auditor private keys (by key id) was sealed to."""
    entries = chunk0.meta.get("session", {}).get("auditor_keys", [])
    for entry in entries:
        try:
            private = auditor_keys.get(bytes.fromhex(entry["key_id"]))
            if private is None:
                continue
            key = SealedBox(private).decrypt(base64.b64decode(entry["sealed_key"]))
        except (CryptoError, KeyError, ValueError, TypeError):
            continue
        if len(key) == SESSION_KEY_LEN:
            return key
    return None

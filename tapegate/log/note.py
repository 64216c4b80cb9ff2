"""Checkpoints as signed notes (C2SP tlog-checkpoint and signed-note), Ed25519 only.

    <origin>\n
    <tree size, decimal>\n
    <root hash, base64>\n
    time <RFC 3339, UTC, milliseconds>\n      an extension line: when the sequencer signed
    \n
    — <key name> <base64(key hash[4] || Ed25519 signature[64])>\n

The signature covers the text up to and including the newline before the blank line. The key
hash is the first 4 bytes of SHA-256(name || "\\n" || 0x01 || public key), as the signed-note
spec defines for Ed25519, so any tlog client can check a tapegate checkpoint given its
verifier key, written `<name>+<key hash, hex>+<base64(0x01 || public key)>`.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hashlib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from nacl.exceptions import BadSignatureError
from nacl.signing import SigningKey, VerifyKey

ED25519 = 0x01
EM_DASH = "\u2014"
_NAME = re.compile(r"^[^\s+]+$")
_SIZE = re.compile(r"^(0|[1-9][0-9]{0,18})\Z", re.ASCII)
_TIME = re.compile(r"^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\.[0-9]{3}Z\Z", re.ASCII)


class NoteError(ValueError):
    """A checkpoint that cannot be parsed, or whose signature does not hold."""


class ForgedNote(NoteError):
    """A well-formed checkpoint that no trusted key signed, or whose signature does not hold."""


def key_hash(name: str, public_key: bytes) -> bytes:
    return hashlib.sha256(name.encode() + b"\n" + bytes([ED25519]) + public_key).digest()[:4]


def verifier_key(name: str, public_key: VerifyKey) -> str:
    raw = bytes(public_key)
    b64 = base64.b64encode(bytes([ED25519]) + raw).decode()
    return f"{name}+{key_hash(name, raw).hex()}+{b64}"


def parse_verifier_key(text: str) -> tuple[str, VerifyKey]:
    try:
        name, hash_hex, b64 = text.strip().split("+", 2)
        raw = base64.b64decode(b64, validate=True)
    except (ValueError, binascii.Error):
        raise NoteError(f"not a verifier key: {text.strip()[:60]!r}") from None
    if len(raw) != 33 or raw[0] != ED25519:
        raise NoteError("verifier key is not an Ed25519 key")
    if key_hash(name, raw[1:]).hex() != hash_hex:
        raise NoteError("verifier key's hash does not match its name and key")
    return name, VerifyKey(raw[1:])


@dataclass(frozen=True)
class Checkpoint:
    origin: str
    size: int
    root: bytes
    time_ms: int

    def text(self) -> bytes:
        stamp = dt.datetime.fromtimestamp(self.time_ms / 1000, dt.UTC)
        when = stamp.strftime("%Y-%m-%dT%H:%M:%S.") + f"{self.time_ms % 1000:03d}Z"
        root = base64.b64encode(self.root).decode()
        return f"{self.origin}\n{self.size}\n{root}\ntime {when}\n".encode()

    def sign(self, name: str, key: SigningKey) -> bytes:
        """The whole note: text, blank line, one signature line."""
        text = self.text()
        blob = key_hash(name, bytes(key.verify_key)) + key.sign(text).signature
        return text + f"\n{EM_DASH} {name} {base64.b64encode(blob).decode()}\n".encode()


@dataclass(frozen=True)
class SignedCheckpoint:
    checkpoint: Checkpoint
    note: bytes  # as stored: what was signed plus its signature lines
    signers: tuple[str, ...]  # the names of the trusted keys whose signature holds


def parse_checkpoint(
    note: bytes, trusted: Mapping[str, VerifyKey | Sequence[VerifyKey]]
) -> SignedCheckpoint:
    """Parse a note and check its signatures against `trusted` (name → key, or the keys of a
    rotation). Raises NoteError when it is malformed, ForgedNote when no trusted key signed
    it."""
    text, sep, sigs = note.partition(b"\n\n")
    if not sep or not sigs.endswith(b"\n"):
        raise NoteError("not a signed note: no blank line before the signatures")
    text += b"\n"
    try:
        lines = text.decode("utf-8").split("\n")[:-1]
    except UnicodeDecodeError:
        raise NoteError("note is not UTF-8") from None
    if len(lines) < 3:
        raise NoteError("a checkpoint has at least three lines")
    origin, size_text, root_text, *extensions = lines
    if not _SIZE.match(size_text):
        raise NoteError(f"tree size {size_text[:30]!r} is not a decimal number")
    root = _b64(root_text, "root hash")
    if len(root) != 32:
        raise NoteError(f"root hash has {len(root)} bytes, not 32")
    times = [line[5:] for line in extensions if line.startswith("time ")]
    if len(times) != 1:
        raise NoteError("a checkpoint has exactly one time line")
    checkpoint = Checkpoint(origin, int(size_text), root, _parse_time(times[0]))
    signers = []
    for line in sigs.decode("utf-8", "replace").split("\n")[:-1]:
        parts = line.split(" ")
        if len(parts) != 3 or parts[0] != EM_DASH or not _NAME.match(parts[1]):
            raise NoteError(f"malformed signature line {line[:60]!r}")
        name = parts[1]
        blob = _b64(parts[2], "signature")
        for key in key_list(trusted.get(name)):
            if len(blob) != 68 or blob[:4] != key_hash(name, bytes(key)):
                continue  # someone else's signature: neither trusted nor an error
            try:
                key.verify(text, blob[4:])
            except BadSignatureError:
                raise ForgedNote(f"signature of {name} does not match the checkpoint") from None
            signers.append(name)
    if not signers:
        raise ForgedNote("no trusted key signed this checkpoint")
    return SignedCheckpoint(checkpoint, note, tuple(signers))


def key_list(held: VerifyKey | Sequence[VerifyKey] | None) -> Sequence[VerifyKey]:
    if held is None:
        return ()
    return (held,) if isinstance(held, VerifyKey) else held


def _b64(text: str, what: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except ValueError:  # binascii.Error, or characters outside ASCII
        raise NoteError(f"{what} is not base64") from None


def _parse_time(text: str) -> int:
    if not _TIME.match(text):
        raise NoteError(f"time {text[:40]!r} is not RFC 3339 UTC with milliseconds")
    try:
        stamp = dt.datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=dt.UTC)
    except ValueError:
        raise NoteError(f"time {text!r} is not a valid date and time") from None
    return _ms(stamp)


def _ms(stamp: dt.datetime) -> int:
    epoch = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
    delta = stamp - epoch
    return (delta.days * 86400 + delta.seconds) * 1000 + delta.microseconds // 1000

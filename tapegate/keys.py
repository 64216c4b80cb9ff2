"""Keys for the embedded default: files in the data dir, created on first use, mode 0600.

    <data_dir>/keys/signing.key     Ed25519 seed of this gateway (hex)         private
    <data_dir>/keys/signing.pub     its public key (hex)
    <data_dir>/keys/auditor.key     X25519 private key of the local auditor    private
    <data_dir>/keys/auditor.pub     its public key (hex)
    <data_dir>/keys/trusted/*.pub   further Ed25519 public keys to accept (rotation)
    <data_dir>/keys/log.key         Ed25519 seed of the local log's sequencer (hex)  private
    <data_dir>/keys/log.pub         its public key (hex)
    <data_dir>/keys/trusted/*.vkey  further log verifier keys (name+hash+key, note.py)

In AWS the signing seed lives in Secrets Manager and the public key in SSM; only the adapters
differ, the key ids and the Keyring do not.
"""

from __future__ import annotations

import os
from pathlib import Path

from nacl.public import PrivateKey, PublicKey
from nacl.signing import SigningKey, VerifyKey

from tapegate.tape.seal import key_id


class KeyFileError(ValueError):
    """A key file that exists but cannot be used."""


def _read_hex(path: Path, size: int) -> bytes:
    text = path.read_text().strip()
    try:
        raw = bytes.fromhex(text)
    except ValueError:
        raise KeyFileError(f"{path}: not hex") from None
    if len(raw) != size:
        raise KeyFileError(f"{path}: expected {size} bytes, found {len(raw)}")
    return raw


def _write_private(path: Path, raw: bytes) -> None:
    """Create a private key file with mode 0600 from the start (no window where it is readable)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(raw.hex() + "\n")


def _write_public(path: Path, raw: bytes) -> None:
    path.write_text(raw.hex() + "\n")


class Keyring(dict[bytes, VerifyKey]):
    """Trusted Ed25519 public keys by key id: what a verifier needs, and nothing else."""

    @classmethod
    def of(cls, *keys: VerifyKey | bytes) -> Keyring:
        ring = cls()
        for key in keys:
            vk = key if isinstance(key, VerifyKey) else VerifyKey(bytes(key))
            ring[key_id(bytes(vk))] = vk
        return ring

    @classmethod
    def from_files(cls, paths: list[Path]) -> Keyring:
        return cls.of(*(VerifyKey(_read_hex(p, 32)) for p in paths))


class LocalKeyStore:
    """The data dir's keys. Each accessor creates its key the first time it is asked for."""

    def __init__(self, data_dir: str | os.PathLike[str]) -> None:
        self.dir = Path(data_dir) / "keys"

    def signing_key(self) -> SigningKey:
        path = self.dir / "signing.key"
        if not path.exists():
            key = SigningKey.generate()
            _write_private(path, bytes(key))
            _write_public(self.dir / "signing.pub", bytes(key.verify_key))
            return key
        return SigningKey(_read_hex(path, 32))

    def auditor_key(self) -> PrivateKey:
        path = self.dir / "auditor.key"
        if not path.exists():
            key = PrivateKey.generate()
            _write_private(path, bytes(key))
            _write_public(self.dir / "auditor.pub", bytes(key.public_key))
            return key
        return PrivateKey(_read_hex(path, 32))

    def auditor_public_keys(self) -> list[PublicKey]:
        self.auditor_key()  # make sure the local auditor exists
        return [PublicKey(_read_hex(self.dir / "auditor.pub", 32))]

    def log_key(self) -> SigningKey:
        """The embedded sequencer's checkpoint key: not the gateway's, so that a leaked
        gateway key cannot sign a log that hides sessions."""
        path = self.dir / "log.key"
        if not path.exists():
            key = SigningKey.generate()
            _write_private(path, bytes(key))
            _write_public(self.dir / "log.pub", bytes(key.verify_key))
            return key
        return SigningKey(_read_hex(path, 32))

    def log_keys(self, origin: str) -> dict[str, VerifyKey]:
        """The log verifier keys by name: the local sequencer's under `origin`, and any
        keys/trusted/*.vkey."""
        from tapegate.log.note import parse_verifier_key

        self.log_key()
        keys = {origin: VerifyKey(_read_hex(self.dir / "log.pub", 32))}
        for path in sorted((self.dir / "trusted").glob("*.vkey")):
            name, key = parse_verifier_key(path.read_text())
            keys[name] = key
        return keys

    def trusted(self) -> Keyring:
        """This gateway's own public key plus any in keys/trusted/ (older or other gateways)."""
        self.signing_key()
        paths = [self.dir / "signing.pub", *sorted((self.dir / "trusted").glob("*.pub"))]
        return Keyring.from_files(paths)


def load_auditor_key(spec: str, region: str | None = None) -> PrivateKey:
    """An auditor's X25519 private key (hex) from a file, or from a Secrets Manager secret when
    `spec` is a secret ARN. Raises KeyFileError with one line saying what is wrong."""
    return PrivateKey(_load_secret_hex(spec, "auditor key", region))


def load_signing_key(spec: str, region: str | None = None) -> SigningKey:
    """A gateway's Ed25519 seed (hex) from a file or a Secrets Manager secret ARN (on AWS the
    stack's key generator writes it there and only the task may read it)."""
    return SigningKey(_load_secret_hex(spec, "signing key", region))


def load_ssh_host_seed(spec: str, region: str | None = None) -> bytes:
    """The gateway's SSH host key as an Ed25519 seed, stored the way the signing key is."""
    return _load_secret_hex(spec, "SSH host key", region)


def _load_secret_hex(spec: str, what: str, region: str | None) -> bytes:
    if spec.startswith("arn:aws:secretsmanager:"):
        try:
            import boto3

            region = region or spec.split(":")[3]
            value = boto3.client("secretsmanager", region_name=region).get_secret_value(
                SecretId=spec
            )["SecretString"]
        except Exception as exc:  # botocore's errors carry the useful message
            raise KeyFileError(f"cannot read {what} secret {spec}: {exc}") from None
        try:
            raw = bytes.fromhex(value.strip())
        except ValueError:
            raise KeyFileError(f"{what} secret {spec}: not hex") from None
        if len(raw) != 32:
            raise KeyFileError(f"{what} secret {spec}: expected 32 bytes, found {len(raw)}")
        return raw
    try:
        return _read_hex(Path(spec), 32)
    except OSError as exc:
        raise KeyFileError(f"cannot read {what} {spec}: {exc.strerror}") from None

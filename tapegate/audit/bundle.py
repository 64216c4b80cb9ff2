"""Evidence bundles: one zip that a third party checks offline with `tapegate verify FILE`.

    manifest.json        what the bundle holds: each file's SHA-256 and size, the source
                         object each records file was cut from (key and SHA-256), the keys
    records/NNN.bin      the session's sealed records as delivered, one file per source object
    keys/<key id>.pub    the trusted Ed25519 public keys (hex), as `--trust` files
    report.txt           the same summary `tapegate show` prints, for people
    log/, keys/log.vkey  the session's place in the session log, when the log holds it
                         (tapegate/log/proofs.py)

What makes a bundle trustworthy is the gateway's signature on every record, not the manifest:
anyone can write a manifest. The manifest's digests catch damage and name the file that changed;
the public key's fingerprint, printed by `tapegate verify`, is what to compare with the one the
gateway published (or pin it with `--trust`).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import json
import struct
import zipfile
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nacl.signing import VerifyKey

from tapegate.audit.evidence import SessionEvidence
from tapegate.keys import Keyring
from tapegate.tape import Verdict, split_records
from tapegate.tape.codec import LEAF_MAGIC
from tapegate.tape.verify import verify_session

FORMAT = "tapegate evidence bundle v1"
MANIFEST = "manifest.json"


# What a damaged zip can raise while being opened or read: a bad CRC or header (BadZipFile), a
# broken deflate stream (zlib.error), a length past the end (EOFError, struct.error), a mangled
# compression method (NotImplementedError), bad JSON or text (ValueError).
_ZIP_ERRORS = (zipfile.BadZipFile, zlib.error, EOFError, OSError, struct.error,
               NotImplementedError, ValueError)  # fmt: skip


class BundleError(Exception):
    """A file that is not a readable bundle at all: one line for the user."""


def write_bundle(
    path: Path,
    evidence: SessionEvidence,
    trusted: Mapping[bytes, VerifyKey],
    verdict: Verdict,
    report: str,
    log_files: Mapping[str, bytes] | None = None,
) -> dict[str, Any]:
    """Write the bundle (to a temporary name first, so a failed export leaves no half file)."""
    files: dict[str, bytes] = {}
    entries: list[dict[str, Any]] = []
    for n, piece in enumerate(evidence.pieces, 1):
        name = f"records/{n:03d}.bin"
        files[name] = b"".join(piece.records)
        entries.append(
            {
                "path": name,
                "records": len(piece.records),
                "source_object": piece.object_key,
                "source_sha256": piece.object_sha256,
            }
        )
    used = {rec.key_id for rec in verdict.records}
    keys = [
        {"key_id": kid.hex(), "public_key": bytes(vk).hex()}
        for kid, vk in trusted.items()
        if kid in used or not used
    ]
    for key in keys:
        name = f"keys/{key['key_id']}.pub"
        files[name] = (key["public_key"] + "\n").encode()
        entries.append({"path": name})
    for name, data in (log_files or {}).items():
        files[name] = data
        entries.append({"path": name})
    files["report.txt"] = report.encode()
    entries.append({"path": "report.txt"})
    for entry in entries:
        data = files[entry["path"]]
        entry |= {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
    manifest = {
        "format": FORMAT,
        "session_id": str(evidence.session_id),
        "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "verdict_at_export": {
            "status": verdict.status,
            "chunks": verdict.chunks,
            "final_seq": verdict.final_seq,
            "head_digest": verdict.head_digest.hex() if verdict.head_digest else None,
            "problems": [str(p) for p in verdict.problems],
        },
        "keys": keys,
        "files": entries,
    }
    tmp = path.with_name(f".{path.name}.tmp")
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr(MANIFEST, json.dumps(manifest, indent=2) + "\n")
        for name, data in files.items():
            # Records are ciphertext, which does not compress: stored as they are, so that the
            # bundle holds the delivered bytes verbatim.
            stored = name.startswith("records/")
            zf.writestr(name, data, zipfile.ZIP_STORED if stored else zipfile.ZIP_DEFLATED)
    tmp.replace(path)
    return manifest


@dataclass
class Bundle:
    session_id: str
    records: list[bytes]
    keys: Keyring
    manifest: dict[str, Any]
    problems: list[str] = field(default_factory=list)  # files changed, missing or unlisted
    log_note: bytes | None = None  # log/checkpoint
    log_proofs: Any = None  # log/proofs.json, parsed
    log_keys: dict[str, VerifyKey] = field(default_factory=dict)  # keys/log.vkey

    def verify(self, trusted: Mapping[bytes, VerifyKey] | None = None) -> Verdict:
        """The records judged with the bundle's keys, or with `trusted` when pinned."""
        import uuid

        try:
            sid = uuid.UUID(self.session_id)
        except ValueError:
            sid = None
        return verify_session(self.records, self.keys if trusted is None else trusted, sid)


def read_bundle(path: Path) -> Bundle:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise BundleError(f"cannot read {path}: {exc.strerror}") from None
    try:
        zf = zipfile.ZipFile(io.BytesIO(data))
        names = set(zf.namelist())
    except _ZIP_ERRORS as exc:
        raise BundleError(
            f"{path} is not a readable zip ({exc}): truncated or not a bundle"
        ) from None
    try:
        manifest = json.loads(zf.read(MANIFEST))
    except KeyError:
        raise BundleError(f"{path} has no {MANIFEST}: not a tapegate evidence bundle") from None
    except _ZIP_ERRORS as exc:
        raise BundleError(f"{path}: {MANIFEST} is damaged ({exc})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise BundleError(f"{path}: {MANIFEST} does not describe a {FORMAT}")
    problems: list[str] = []
    contents: dict[str, bytes] = {}
    listed = [e for e in manifest.get("files", []) if isinstance(e, dict) and "path" in e]
    for entry in listed:
        name = entry["path"]
        if name not in names:
            problems.append(f"missing file {name} (listed in the manifest)")
            continue
        try:
            contents[name] = zf.read(name)
        except _ZIP_ERRORS as exc:  # e.g. a CRC error
            problems.append(f"unreadable file {name}: {exc}")
            continue
        if hashlib.sha256(contents[name]).hexdigest() != entry.get("sha256"):
            problems.append(f"changed file {name}: its SHA-256 differs from the manifest's")
    for name in sorted(names - {MANIFEST} - {e["path"] for e in listed}):
        problems.append(f"unlisted file {name} (not in the manifest)")
    records: list[bytes] = []
    for name in sorted(n for n in contents if n.startswith("records/")):
        found, errors = split_records(contents[name])
        records += [r for r in found if r[:4] != LEAF_MAGIC]  # a tape's records: chunks
        problems += [f"{name}: damaged bytes at offset {e.offset}: {e.reason}" for e in errors]
    keys = Keyring()
    log_keys: dict[str, VerifyKey] = {}
    for name in sorted(n for n in contents if n.startswith("keys/")):
        try:
            if name.endswith(".vkey"):
                log_keys |= read_verifier_keys(contents[name].decode())
            else:
                keys |= Keyring.of(bytes.fromhex(contents[name].decode().strip()))
        except (ValueError, UnicodeDecodeError):
            problems.append(f"{name} is not a hex Ed25519 public key or log verifier key")
    proofs = None
    if "log/proofs.json" in contents:
        try:
            proofs = json.loads(contents["log/proofs.json"])
        except ValueError:
            problems.append("log/proofs.json is not JSON")
    return Bundle(str(manifest.get("session_id")), records, keys, manifest, problems,
                  contents.get("log/checkpoint"), proofs, log_keys)  # fmt: skip


def read_verifier_keys(text: str) -> dict[str, VerifyKey]:
    """Log verifier keys, one per line (raises ValueError for a line that is not one)."""
    from tapegate.log.note import parse_verifier_key

    return dict(parse_verifier_key(line) for line in text.splitlines() if line.strip())

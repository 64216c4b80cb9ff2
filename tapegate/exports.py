"""Compliance exports: one day of the tables, unloaded to a fresh prefix, with a signed manifest.

    <prefix>/dt=<day>/run=<run id>/sessions/...parquet
                                   events/...parquet
                                   manifest.json       files, SHA-256, bytes and rows of each
                                   manifest.sig        Ed25519 signature of manifest.json (hex)

A fresh prefix per run, because Athena's UNLOAD refuses a destination that holds anything, and
because a rerun must never overwrite what an earlier run handed to someone. The manifest is what a
third party checks offline: `verify_export` needs only the files and the export public key.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Callable
from datetime import UTC, date, datetime
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from nacl.exceptions import BadSignatureError
from nacl.signing import SigningKey, VerifyKey

from tapegate.archive import ObjectStore

FORMAT = "tapegate-export/1"
MANIFEST = "manifest.json"
SIGNATURE = "manifest.sig"
TABLES = ("sessions", "events")


class ExportError(RuntimeError):
    pass


def run_prefix(day: date, run_id: str, base: str = "") -> str:
    return f"{base}dt={day.isoformat()}/run={run_id}/"


def export_day(
    day: date,
    *,
    unload: Callable[[str, str, str], None],
    store: ObjectStore,
    signer: SigningKey,
    base: str = "",
    run_id: str | None = None,
    now: datetime | None = None,
) -> dict[str, Any]:
    """Unload `day` of each table under a new prefix of `store`, then write the signed manifest.

    `unload(table, day, prefix)` writes Parquet files under `prefix` of the same store (Athena's
    UNLOAD on AWS, DuckDB's COPY locally)."""
    run_id = run_id or uuid.uuid4().hex
    prefix = run_prefix(day, run_id, base)
    if store.list(prefix):
        raise ExportError(f"{prefix} already holds objects; an export needs a fresh prefix")
    for table in TABLES:
        unload(table, day.isoformat(), f"{prefix}{table}/")
    files = []
    for key in sorted(store.list(prefix)):
        relative = key[len(prefix) :]
        data = store.get(key)
        files.append({
            "path": relative,
            "table": relative.split("/", 1)[0],
            "bytes": len(data),
            "sha256": hashlib.sha256(data).hexdigest(),
            "rows": pq.ParquetFile(pa.BufferReader(data)).metadata.num_rows,
        })  # fmt: skip
    manifest = {
        "format": FORMAT,
        "day": day.isoformat(),
        "run": run_id,
        "created": (now or datetime.now(UTC)).isoformat(timespec="seconds"),
        "tables": {t: sum(f["rows"] for f in files if f["table"] == t) for t in TABLES},
        "files": files,
        "public_key": bytes(signer.verify_key).hex(),
    }
    body = json.dumps(manifest, indent=2, sort_keys=True).encode() + b"\n"
    store.put(prefix + MANIFEST, body)
    store.put(prefix + SIGNATURE, signer.sign(body).signature.hex().encode() + b"\n")
    manifest["prefix"] = prefix
    return manifest


def verify_export(read: Callable[[str], bytes], trusted: bytes | None = None) -> list[str]:
    """Problems with one export run (empty: intact). `read(path)` returns a file of the run by
    its path relative to the run prefix; `trusted` pins the export public key, else the key
    in the manifest is used and the caller must compare its fingerprint."""
    try:
        body, signature = read(MANIFEST), bytes.fromhex(read(SIGNATURE).decode().strip())
        manifest = json.loads(body)
        key = bytes.fromhex(manifest["public_key"])
    except (OSError, KeyError, ValueError) as exc:
        return [f"cannot read the manifest: {exc}"]
    if trusted is not None and key != trusted:
        return ["the manifest is signed by an untrusted key"]
    try:
        VerifyKey(key).verify(body, signature)
    except (BadSignatureError, ValueError):
        return ["the manifest's signature does not match"]
    problems = []
    for entry in manifest.get("files", []):
        try:
            data = read(entry["path"])
        except OSError:
            problems.append(f"{entry['path']}: missing")
            continue
        if hashlib.sha256(data).hexdigest() != entry["sha256"]:
            problems.append(f"{entry['path']}: SHA-256 differs from the manifest")
    return problems

"""Evidence bundles: a good one verifies offline; a flipped byte, a removed record, a swapped key
or a truncated zip is rejected, each with its reason."""

from __future__ import annotations

import hashlib
import json
import uuid
import zipfile
from pathlib import Path

import pytest
from nacl.signing import SigningKey

from tapegate.audit.bundle import write_bundle
from tapegate.audit.evidence import Piece, SessionEvidence
from tapegate.cli import main
from tapegate.tape import decode_record
from tests.tapes import record_session


@pytest.fixture
def bundle(tmp_path: Path) -> Path:
    session = record_session(exchanges=4)
    sid = decode_record(session.records[0]).session_id
    half = len(session.records) // 2
    pieces = [Piece(f"2026/11/24/13/obj-{n}.bin", hashlib.sha256(b"".join(r)).hexdigest(), r)
              for n, r in enumerate((session.records[:half], session.records[half:]))]  # fmt: skip
    evidence = SessionEvidence(uuid.UUID(str(sid)), pieces)
    path = tmp_path / "evidence.zip"
    write_bundle(path, evidence, session.trusted, evidence.verify(session.trusted), "report\n")
    return path


def _rewrite(src: Path, dst: Path, change) -> Path:
    """Copy a zip entry by entry; change(name, data) returns new bytes, or None to drop it."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for item in zin.infolist():
            data = change(item.filename, zin.read(item))
            if data is not None:
                zout.writestr(item.filename, data)
    return dst


def _verify(capsys, *argv: str) -> tuple[int, str]:
    code = main(["verify", *argv])
    return code, capsys.readouterr().out


def test_a_good_bundle_is_intact(bundle: Path, capsys) -> None:
    code, out = _verify(capsys, str(bundle))
    assert code == 0 and "intact" in out
    manifest = json.loads(zipfile.ZipFile(bundle).read("manifest.json"))
    assert [f["source_object"] for f in manifest["files"] if "source_object" in f] == [
        "2026/11/24/13/obj-0.bin", "2026/11/24/13/obj-1.bin"]  # fmt: skip
    assert manifest["verdict_at_export"]["status"] == "intact"


def test_one_flipped_byte(bundle: Path, tmp_path: Path, capsys) -> None:
    def flip(name: str, data: bytes) -> bytes:
        if name == "records/002.bin":
            data = bytearray(data)
            data[150] ^= 0x01
        return bytes(data)

    code, out = _verify(capsys, str(_rewrite(bundle, tmp_path / "flip.zip", flip)))
    assert code == 1
    assert "changed file records/002.bin" in out and "bad_signature" in out


def test_a_removed_record(bundle: Path, tmp_path: Path, capsys) -> None:
    def drop_first(name: str, data: bytes) -> bytes:
        if name != "records/002.bin":
            return data
        length = int.from_bytes(data[8:12], "big")
        return data[length:]

    code, out = _verify(capsys, str(_rewrite(bundle, tmp_path / "removed.zip", drop_first)))
    assert code == 1 and "missing" in out and "changed file records/002.bin" in out


def test_a_removed_record_with_a_matching_manifest_is_still_caught(
    bundle: Path, tmp_path: Path, capsys
) -> None:
    """Whoever edits the records can rewrite the manifest too: the chain is what catches it."""
    with zipfile.ZipFile(bundle) as zf:
        files = {n: zf.read(n) for n in zf.namelist()}
    data = files["records/002.bin"]
    files["records/002.bin"] = data[int.from_bytes(data[8:12], "big") :]
    manifest = json.loads(files["manifest.json"])
    for entry in manifest["files"]:
        entry["sha256"] = hashlib.sha256(files[entry["path"]]).hexdigest()
    files["manifest.json"] = json.dumps(manifest).encode()
    forged = tmp_path / "forged.zip"
    with zipfile.ZipFile(forged, "w") as zf:
        for name, body in files.items():
            zf.writestr(name, body)
    code, out = _verify(capsys, str(forged))
    assert code == 1 and "missing" in out and "changed file" not in out


def test_a_swapped_key(bundle: Path, tmp_path: Path, capsys) -> None:
    other = SigningKey.generate().verify_key

    def swap(name: str, data: bytes) -> bytes:
        return (bytes(other).hex() + "\n").encode() if name.startswith("keys/") else data

    code, out = _verify(capsys, str(_rewrite(bundle, tmp_path / "swapped.zip", swap)))
    assert code == 1 and "unknown_key" in out and "changed file keys/" in out


def test_pinned_key_overrides_the_bundles(bundle: Path, tmp_path: Path, capsys) -> None:
    pub = tmp_path / "someone-else.pub"
    pub.write_text(bytes(SigningKey.generate().verify_key).hex())
    code, out = _verify(capsys, str(bundle), "--trust", str(pub))
    assert code == 1 and "unknown_key" in out and "pinned with --trust" in out


def test_a_truncated_zip(bundle: Path, tmp_path: Path, capsys) -> None:
    cut = tmp_path / "cut.zip"
    cut.write_bytes(bundle.read_bytes()[: bundle.stat().st_size // 2])
    code, out = _verify(capsys, str(cut))
    assert code == 1
    assert "NOT VERIFIED" in out and "not a readable zip" in out and "truncated" in out


def test_not_a_bundle_and_no_such_file(tmp_path: Path, capsys) -> None:
    junk = tmp_path / "junk.zip"
    with zipfile.ZipFile(junk, "w") as zf:
        zf.writestr("hello.txt", "hi")
    code, out = _verify(capsys, str(junk))
    assert code == 1 and "not a tapegate evidence bundle" in out
    assert main(["verify", str(tmp_path / "absent.zip")]) == 2
    assert "no such file" in capsys.readouterr().err


def test_raw_byte_flips_in_the_zip(bundle: Path, tmp_path: Path, capsys) -> None:
    """Flipping bytes of the zip file itself: inside the stored records every flip is rejected;
    anywhere at all, verify answers 0 or 1 and never raises. (A zip has bytes that change
    nothing, such as file times, so not every flip outside the records can fail.)"""
    raw = bundle.read_bytes()
    records = zipfile.ZipFile(bundle).read("records/001.bin")
    start = raw.index(records[:64])
    flipped = tmp_path / "flipped.zip"
    for offset in range(start, start + len(records), 97):
        data = bytearray(raw)
        data[offset] ^= 0x40
        flipped.write_bytes(bytes(data))
        assert main(["verify", str(flipped)]) == 1, offset
    for offset in range(0, len(raw), 13):
        data = bytearray(raw)
        data[offset] ^= 0xFF
        flipped.write_bytes(bytes(data))
        assert main(["verify", str(flipped)]) in (0, 1), offset
    capsys.readouterr()

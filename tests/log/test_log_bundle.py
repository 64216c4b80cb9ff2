"""An evidence bundle carries its session's place in the log, checked offline: the open and close
leaves in a signed checkpoint, and, against the auditor's own last checkpoint, consistency."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

from nacl.signing import SigningKey

from tapegate.cli import main as cli_main
from tapegate.keys import LocalKeyStore
from tapegate.log.note import Checkpoint, verifier_key
from tests.log.fleet import Fleet, a_day


def _export(fleet: Fleet, sid: str, out: Path) -> Path:
    assert cli_main(["export", sid, "-o", str(out), "--config", str(fleet.config_file)]) == 0
    return out


def _rewrite(bundle: Path, out: Path, changes: dict[str, bytes]) -> Path:
    """A copy of the bundle with some files replaced (and the manifest's digests kept in step,
    as a forger would)."""
    import hashlib

    with zipfile.ZipFile(bundle) as src:
        files = {name: src.read(name) for name in src.namelist()}
    files.update(changes)
    manifest = json.loads(files["manifest.json"])
    for entry in manifest["files"]:
        data = files[entry["path"]]
        entry["sha256"], entry["bytes"] = hashlib.sha256(data).hexdigest(), len(data)
    files["manifest.json"] = json.dumps(manifest).encode()
    with zipfile.ZipFile(out, "w") as dst:
        for name, data in files.items():
            dst.writestr(name, data)
    return out


def test_a_bundle_proves_its_session_is_in_the_log(tmp_path: Path, capsys) -> None:
    fleet = Fleet(tmp_path)
    fleet.heartbeat("start")
    fleet.deliver()
    fleet.archive()
    known = tmp_path / "known.checkpoint"  # what the auditor kept from an earlier look
    known.write_bytes((fleet.log_dir / "checkpoint").read_bytes())
    sid = a_day(fleet, sessions=2)[1]
    fleet.archive()
    bundle = _export(fleet, sid, tmp_path / "b.zip")
    with zipfile.ZipFile(bundle) as zf:
        proofs = json.loads(zf.read("log/proofs.json"))
    assert len(proofs["leaves"]) == 2 and proofs["consistency"]  # open and close; and growth
    capsys.readouterr()
    assert cli_main(["verify", str(bundle)]) == 0
    out = capsys.readouterr().out
    assert "session log: its open and close leaves are in tapegate.local/log's checkpoint" in out
    assert cli_main(["verify", str(bundle), "--since-checkpoint", str(known)]) == 0
    assert "which extends --since-checkpoint" in capsys.readouterr().out


def test_a_bundle_whose_log_part_was_forged_fails(tmp_path: Path, capsys) -> None:
    """A forger re-signs the checkpoint with a key of their own and ships its verifier key: the
    bundle agrees with itself, which is why its log key is printed, and why pinning the log's
    key, or checking against the auditor's own checkpoint, catches it."""
    fleet = Fleet(tmp_path)
    fleet.heartbeat("start")
    fleet.deliver()
    fleet.archive()
    known = tmp_path / "known.checkpoint"
    known.write_bytes((fleet.log_dir / "checkpoint").read_bytes())
    sid = a_day(fleet, sessions=1)[0]
    fleet.archive()
    bundle = _export(fleet, sid, tmp_path / "b.zip")
    origin = fleet.config.log.origin
    with zipfile.ZipFile(bundle) as zf:
        proofs = json.loads(zf.read("log/proofs.json"))
    forger = SigningKey.generate()
    fake = Checkpoint(origin, proofs["size"], b"\x09" * 32, 1_800_000_000_000).sign(origin, forger)
    vkey = (verifier_key(origin, forger.verify_key) + "\n").encode()
    forged = _rewrite(
        bundle, tmp_path / "forged.zip", {"log/checkpoint": fake, "keys/log.vkey": vkey}
    )
    capsys.readouterr()
    assert cli_main(["verify", str(forged)]) == 1  # the leaves are not in the forged root
    assert "not in the checkpoint's tree" in capsys.readouterr().out
    real_vkey = tmp_path / "log.vkey"
    real = LocalKeyStore(fleet.config.data_dir).log_keys(origin)[origin]
    real_vkey.write_text(verifier_key(origin, real) + "\n")
    assert cli_main(["verify", str(forged), "--trust-log", str(real_vkey)]) == 1
    assert "no trusted key signed this checkpoint" in capsys.readouterr().out
    assert cli_main(["verify", str(forged), "--since-checkpoint", str(known)]) == 1
    assert "--since-checkpoint: no trusted key signed" in capsys.readouterr().out


def test_a_bundle_from_a_forked_log_fails_against_the_auditors_checkpoint(
    tmp_path: Path, capsys
) -> None:
    fleet = Fleet(tmp_path)
    sid = a_day(fleet, sessions=1)[0]
    fleet.archive()
    bundle = _export(fleet, sid, tmp_path / "b.zip")
    with zipfile.ZipFile(bundle) as zf:
        size = json.loads(zf.read("log/proofs.json"))["size"]
    # The auditor holds a checkpoint of the same size, signed by the log's key, another root:
    # the log showed them one history and the bundle another.
    origin = fleet.config.log.origin
    key = LocalKeyStore(fleet.config.data_dir).log_key()
    other = tmp_path / "other.checkpoint"
    other.write_bytes(Checkpoint(origin, size, b"\x05" * 32, 1_700_000_000_000).sign(origin, key))
    capsys.readouterr()
    assert cli_main(["verify", str(bundle), "--since-checkpoint", str(other)]) == 1
    assert "a fork" in capsys.readouterr().out


def test_a_bundle_with_a_leaf_swapped_for_another_sessions_fails(tmp_path: Path, capsys) -> None:
    fleet = Fleet(tmp_path)
    ids = a_day(fleet, sessions=2)
    fleet.archive()
    mine = _export(fleet, ids[0], tmp_path / "mine.zip")
    theirs = _export(fleet, ids[1], tmp_path / "theirs.zip")
    with zipfile.ZipFile(theirs) as zf:
        their_proofs = zf.read("log/proofs.json")
    swapped = _rewrite(mine, tmp_path / "swapped.zip", {"log/proofs.json": their_proofs})
    capsys.readouterr()
    assert cli_main(["verify", str(swapped)]) == 1
    out = capsys.readouterr().out
    assert f"is about another session ({ids[1]})" in out
    assert "session_open leaf for this session is not in the bundle" in out

"""`tapegate verify` and `tapegate demo`: exit codes and the lines people read."""

from __future__ import annotations

from pathlib import Path

import pytest

from tapegate.cli import main
from tapegate.keys import LocalKeyStore
from tests.tapes import record_session


@pytest.fixture
def delivered(tmp_path: Path) -> Path:
    store = LocalKeyStore(tmp_path / "data")
    s = record_session(signer=store.signing_key())
    path = tmp_path / "delivery.bin"
    path.write_bytes(b"".join(s.records))
    return path


def test_verify_intact_exits_zero(delivered: Path, tmp_path: Path, capsys) -> None:
    assert main(["verify", "--data-dir", str(tmp_path / "data"), str(delivered)]) == 0
    assert "intact" in capsys.readouterr().out


def test_verify_tampered_exits_one_and_names_the_problem(
    delivered: Path, tmp_path: Path, capsys
) -> None:
    data = bytearray(delivered.read_bytes())
    data[-5] ^= 0xFF  # inside the last record's signature
    delivered.write_bytes(bytes(data))
    assert main(["verify", "--data-dir", str(tmp_path / "data"), str(delivered)]) == 1
    out = capsys.readouterr().out
    assert "bad_signature at seq 2" in out and "intact" not in out


def test_verify_with_explicit_untrusted_key_fails(delivered: Path, tmp_path: Path, capsys) -> None:
    other = LocalKeyStore(tmp_path / "other")
    other.signing_key()
    pub = tmp_path / "other" / "keys" / "signing.pub"
    assert main(["verify", "--trust", str(pub), str(delivered)]) == 1
    assert "unknown_key" in capsys.readouterr().out


def test_verify_usage_errors_exit_two(tmp_path: Path, capsys) -> None:
    assert main(["verify", "--data-dir", str(tmp_path), str(tmp_path / "nope.bin")]) == 2
    assert "cannot read" in capsys.readouterr().err
    bad_key = tmp_path / "bad.pub"
    bad_key.write_text("zz")
    assert main(["verify", "--trust", str(bad_key), str(bad_key)]) == 2
    with pytest.raises(SystemExit) as exc:
        main(["verify"])
    assert exc.value.code == 2


def test_verify_garbage_file_exits_one(tmp_path: Path, capsys) -> None:
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"\x00" * 100)
    assert main(["verify", "--data-dir", str(tmp_path), str(junk)]) == 1
    assert "no sealed records" in capsys.readouterr().out


def test_demo_runs_and_catches_the_flip(tmp_path: Path, capsys) -> None:
    assert main(["demo", "--tape-only", "--data-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "intact" in out and "BROKEN" in out and "SELECT id, email" in out


@pytest.mark.slow
def test_full_demo_records_blocks_and_verifies(tmp_path: Path, capsys) -> None:
    assert main(["demo", "--data-dir", str(tmp_path / "demo")]) == 0
    out = capsys.readouterr().out
    assert "statement blocked by tapegate guardrail (kind DROP)" in out
    assert "BLOCKED  DROP TABLE customers;  (guardrail kind DROP)" in out  # tapegate replay
    assert "ada@example.com" in out.split("tapegate replay")[1]  # rows decrypted in the replay
    assert "bundle evidence.zip" in out and "changed file records/001.bin" in out
    assert "intact" in out and "BROKEN" in out
    assert "still_there" in out
    assert "demo-agent  appdb" in out and "closed  True" in out  # tapegate sessions
    assert "blocked  kind DROP" in out  # tapegate query
    # Step 8: the log verifies untouched, then names the SSH session removed whole.
    step8 = out.split("8. The session log")[1]
    assert step8.count("consistent") == 1 and "INCONSISTENT — 1 problem(s)" in step8
    assert "session_missing: session " in step8 and "the missing session is named" in step8

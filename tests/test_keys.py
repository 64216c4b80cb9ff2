"""Local keys: created once, private files 0600, ids stable, several trusted at once."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from nacl.signing import SigningKey

from tapegate.keys import KeyFileError, LocalKeyStore
from tapegate.tape import key_id


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_keys_created_on_first_use_with_private_modes(tmp_path: Path) -> None:
    store = LocalKeyStore(tmp_path)
    signer = store.signing_key()
    auditor = store.auditor_key()
    assert _mode(tmp_path / "keys" / "signing.key") == 0o600
    assert _mode(tmp_path / "keys" / "auditor.key") == 0o600
    assert _mode(tmp_path / "keys") == 0o700
    # Second use loads the same keys rather than making new ones.
    again = LocalKeyStore(tmp_path)
    assert bytes(again.signing_key()) == bytes(signer)
    assert bytes(again.auditor_key()) == bytes(auditor)
    assert [bytes(k) for k in again.auditor_public_keys()] == [bytes(auditor.public_key)]


def test_trusted_includes_rotated_keys(tmp_path: Path) -> None:
    store = LocalKeyStore(tmp_path)
    current = store.signing_key()
    retired = SigningKey.generate()
    (tmp_path / "keys" / "trusted").mkdir()
    (tmp_path / "keys" / "trusted" / "2025.pub").write_text(bytes(retired.verify_key).hex())
    ring = store.trusted()
    assert set(ring) == {key_id(bytes(current.verify_key)), key_id(bytes(retired.verify_key))}


def test_key_id_is_first_eight_bytes_of_sha256() -> None:
    assert key_id(bytes(32)).hex() == "66687aadf862bd77"


def test_damaged_key_file_is_a_clear_error(tmp_path: Path) -> None:
    store = LocalKeyStore(tmp_path)
    store.signing_key()
    (tmp_path / "keys" / "signing.key").write_text("not hex at all")
    with pytest.raises(KeyFileError, match=r"signing\.key: not hex"):
        store.signing_key()

"""The protocol registry is the one list: the runtime's listeners, the contract suite and the
config all follow it, and each entry's target keys are the ones its targets accept."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway_task.server.registry import LISTENERS
from tapegate.config import ConfigError, parse_config
from tapegate.config.targets import COMMON_KEYS
from tapegate.protocols.registry import PROTOCOLS, formats
from tests.contract.conftest import PROTOCOLS as CONTRACT_PEERS


def test_every_protocol_has_a_listener_and_a_contract_peer() -> None:
    assert set(LISTENERS) == set(PROTOCOLS)
    assert set(PROTOCOLS) <= set(CONTRACT_PEERS)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_a_targets_keys_are_its_protocols(protocol: str, tmp_path: Path) -> None:
    # A key another protocol has is refused by name: the schema is the entry's, not a union.
    others = (
        set().union(*(p.target.keys for p in PROTOCOLS.values())) - PROTOCOLS[protocol].target.keys
    )
    assert others, "the protocols differ in what their targets say"
    for key in sorted(others):
        raw = {"data_dir": str(tmp_path), "targets": [
            {"name": "t", "protocol": protocol, "upstream": "127.0.0.1:1", "allow_groups": ["g"],
             key: "x"}]}  # fmt: skip
        with pytest.raises(ConfigError) as refused:
            parse_config(raw)
        assert f"targets[0].{key}" in str(refused.value) and key not in COMMON_KEYS


def test_replay_formats_come_from_the_entries() -> None:
    assert formats() == ["cast", "har"]
    assert {n for p in PROTOCOLS.values() for n in p.formats} == {"cast", "har"}

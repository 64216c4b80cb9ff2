"""The small pieces every config section is checked with; errors name the key and the reason."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any


class ConfigError(ValueError):
    """A config that cannot be used. str() is `<key>: <reason>`."""

    def __init__(self, key: str, reason: str) -> None:
        super().__init__(f"{key}: {reason}")
        self.key = key
        self.reason = reason


@dataclass(frozen=True)
class Address:
    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"


def as_mapping(raw: Any, key: str) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise ConfigError(key, "must be a mapping")
    return raw


def check_only(m: dict[str, Any], key: str, allowed: set[str]) -> None:
    for k in m:
        if k not in allowed:
            raise ConfigError(f"{key}.{k}" if key != "config" else str(k), "unknown key")


def as_str(raw: Any, key: str) -> str:
    if not isinstance(raw, str) or not raw:
        raise ConfigError(key, "must be a non-empty string")
    return raw


def as_int(raw: Any, key: str, lo: int, hi: int) -> int:
    if isinstance(raw, bool) or not isinstance(raw, int) or not lo <= raw <= hi:
        raise ConfigError(key, f"must be a whole number from {lo} to {hi}")
    return raw


def as_path(raw: Any, key: str, base_dir: Path) -> Path:
    p = Path(as_str(raw, key)).expanduser()
    return p if p.is_absolute() else base_dir / p


def as_address(raw: Any, key: str) -> Address:
    text = as_str(raw, key)
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(key, f"expected HOST:PORT, got {text!r}")
    return Address(host.strip("[]"), int(port))

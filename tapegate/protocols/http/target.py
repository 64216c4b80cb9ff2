"""An HTTP target: the API's base URL and the header the gateway's credential travels in."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from tapegate.config.checks import Address, ConfigError, as_mapping, as_str, check_only
from tapegate.config.targets import Target, opt_path, opt_str

KEYS = frozenset({"inject_header", "upstream_ca_file"})


@dataclass(frozen=True)
class InjectHeader:
    """The header an HTTP target's credential travels in, e.g. X-Api-Key or Authorization."""

    name: str
    value_env: str | None = None
    value_file: Path | None = None
    secret_arn: str | None = None
    prefix: str = ""  # "Bearer " for a bearer token


@dataclass(frozen=True, kw_only=True)
class HttpTarget(Target):
    upstream_url: str  # the API base, e.g. https://api.internal:9000/v1
    inject_header: InjectHeader
    upstream_ca_file: Path | None = None

    @property
    def upstream_https(self) -> bool:
        return self.upstream_url.startswith("https://")

    @property
    def upstream_base_path(self) -> str:
        return urlsplit(self.upstream_url).path.rstrip("/")


def build(m: dict[str, Any], key: str, base_dir: Path, common: dict[str, Any]) -> HttpTarget:
    url = as_str(m["upstream"], f"{key}.upstream")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"{key}.upstream", f"expected an http:// or https:// URL, got {url!r}")
    if parts.query or parts.fragment or parts.username:
        raise ConfigError(f"{key}.upstream", "a base URL without user, query or fragment")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        raise ConfigError(f"{key}.upstream", f"bad port in {url!r}") from None
    if "inject_header" not in m:
        raise ConfigError(f"{key}.inject_header", "is required: the credential the gateway adds")
    return HttpTarget(
        upstream=Address(parts.hostname, port),
        upstream_url=url,
        inject_header=_inject_header(m["inject_header"], f"{key}.inject_header", base_dir),
        upstream_ca_file=opt_path(m, "upstream_ca_file", key, base_dir),
        **common,
    )


def _inject_header(raw: Any, key: str, base_dir: Path) -> InjectHeader:
    m = as_mapping(raw, key)
    check_only(m, key, {"name", "value_env", "value_file", "secret_arn", "prefix"})
    if "name" not in m:
        raise ConfigError(f"{key}.name", "is required")
    name = as_str(m["name"], f"{key}.name")
    if not re.fullmatch(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+", name):
        raise ConfigError(f"{key}.name", f"{name!r} is not an HTTP header name")
    sources = [s for s in ("value_env", "value_file", "secret_arn") if s in m]
    if len(sources) != 1:
        raise ConfigError(key, "give exactly one of value_env, value_file, secret_arn")
    prefix = m.get("prefix", "")
    if not isinstance(prefix, str):
        raise ConfigError(f"{key}.prefix", 'must be a string, e.g. "Bearer "')
    return InjectHeader(
        name=name,
        value_env=opt_str(m, "value_env", key),
        value_file=opt_path(m, "value_file", key, base_dir),
        secret_arn=opt_str(m, "secret_arn", key),
        prefix=prefix,
    )

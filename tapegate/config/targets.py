"""`targets:` in tapegate.yaml: what every target has, checked before anything listens.

A target names one upstream (a PostgreSQL database, an SSH host, an HTTP API), the groups that may
use it, where the gateway's credential for it comes from, and its guardrails. The credential is
named here by its source (an environment variable, a file, a Secrets Manager ARN), never by value.
Each protocol's model and the keys it adds are its own (`tapegate/protocols/<name>/target.py`);
this module has the common part and the checks they share.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tapegate.config.checks import (
    Address,
    ConfigError,
    as_mapping,
    as_path,
    as_str,
    check_only,
)

# Keys every target has; each protocol's entry (tapegate/protocols/registry.py) adds its own.
COMMON_KEYS = frozenset({"name", "protocol", "upstream", "allow_groups"})


@dataclass(frozen=True)
class GuardRule:
    """Deny a statement by kind (its leading keywords, e.g. DROP, ALTER ROLE) or by regex.

    For SSH targets only regex rules exist; they match exec command lines.
    """

    kind: str | None = None
    regex: re.Pattern[str] | None = None

    def describe(self) -> str:
        return f"kind {self.kind}" if self.kind else f"regex {self.regex.pattern!r}"  # type: ignore[union-attr]


@dataclass(frozen=True, kw_only=True)
class Target:
    """What every target has; each protocol's model adds its own (one model per protocol)."""

    name: str
    protocol: str
    upstream: Address
    allow_groups: tuple[str, ...] = ()
    deny: tuple[GuardRule, ...] = ()


def parse_target(raw: Any, key: str, base_dir: Path) -> Target:
    """One `targets:` entry, as its protocol's model; every key checked."""
    # The protocols' models build on this module: their registry is imported when first used.
    from tapegate.protocols.registry import PROTOCOLS

    m = as_mapping(raw, key)
    for required in ("name", "protocol"):
        if required not in m:
            raise ConfigError(f"{key}.{required}", "is required")
    name = as_str(m["name"], f"{key}.name")
    if not re.fullmatch(r"[A-Za-z0-9_.-]{1,63}", name):
        raise ConfigError(f"{key}.name", "use letters, digits, '_', '.', '-' (at most 63)")
    protocol = as_str(m["protocol"], f"{key}.protocol")
    if protocol not in PROTOCOLS:
        raise ConfigError(f"{key}.protocol", f"must be one of {', '.join(PROTOCOLS)}")
    schema = PROTOCOLS[protocol].target
    check_only(m, key, COMMON_KEYS | schema.keys)
    if "upstream" not in m and not schema.upstream_optional:  # else its model says what instead
        raise ConfigError(f"{key}.upstream", "is required")
    groups = m.get("allow_groups", [])
    if not isinstance(groups, list) or not all(isinstance(g, str) for g in groups) or not groups:
        raise ConfigError(f"{key}.allow_groups", "must be a non-empty list of group names")
    common: dict[str, Any] = {"name": name, "protocol": protocol, "allow_groups": tuple(groups)}
    return schema.build(m, key, base_dir, common)


def login_credential(
    m: dict[str, Any], key: str, base_dir: Path, sources: tuple[str, ...]
) -> dict[str, Any]:
    """A host login's user and where its secret comes from (exactly one of `sources`)."""
    if "username" not in m:
        raise ConfigError(f"{key}.username", "is required")
    given = [s for s in sources if s in m]
    if len(given) != 1:
        raise ConfigError(key, f"give exactly one of {', '.join(sources)}")
    return {
        "username": as_str(m["username"], f"{key}.username"),
        "password_env": opt_str(m, "password_env", key),
        "password_file": opt_path(m, "password_file", key, base_dir),
        "secret_arn": opt_str(m, "secret_arn", key),
    }


def guardrails(raw: Any, key: str, protocol: str) -> tuple[GuardRule, ...]:
    m = as_mapping(raw, key)
    check_only(m, key, {"deny", "deny_function_call"} if protocol == "postgres" else {"deny"})
    rules = m.get("deny", [])
    if not isinstance(rules, list):
        raise ConfigError(f"{key}.deny", "must be a list of {kind: ...} or {regex: ...}")
    out: list[GuardRule] = []
    for i, rule in enumerate(rules):
        rk = f"{key}.deny[{i}]"
        r = as_mapping(rule, rk)
        check_only(r, rk, {"kind", "regex"})
        if len(r) != 1:
            raise ConfigError(rk, "give exactly one of kind or regex")
        if "kind" in r:
            if protocol != "postgres":
                raise ConfigError(f"{rk}.kind", "kinds are SQL keywords; use regex for commands")
            kind = " ".join(as_str(r["kind"], f"{rk}.kind").upper().split())
            if not re.fullmatch(r"[A-Z_]+( [A-Z_]+){0,2}", kind):
                raise ConfigError(
                    f"{rk}.kind", "one to three SQL keywords, e.g. DROP, ALTER ROLE or SET ROLE"
                )
            out.append(GuardRule(kind=kind))
        else:
            pattern = as_str(r["regex"], f"{rk}.regex")
            try:
                out.append(GuardRule(regex=re.compile(pattern)))
            except re.error as exc:
                raise ConfigError(f"{rk}.regex", f"invalid regular expression: {exc}") from None
    return tuple(out)


def names(raw: Any, key: str) -> tuple[str, ...]:
    if not isinstance(raw, list) or not all(isinstance(x, str) and x for x in raw):
        raise ConfigError(key, "must be a list of names or globs, e.g. [LANG, LC_*]")
    return tuple(raw)


def flag(m: dict[str, Any], name: str, key: str) -> bool:
    value = m.get(name, False)
    if not isinstance(value, bool):
        raise ConfigError(f"{key}.{name}", "must be true or false")
    return value


def opt_str(m: dict[str, Any], name: str, key: str) -> str | None:
    return as_str(m[name], f"{key}.{name}") if name in m else None


def opt_path(m: dict[str, Any], name: str, key: str, base_dir: Path) -> Path | None:
    return as_path(m[name], f"{key}.{name}", base_dir) if name in m else None

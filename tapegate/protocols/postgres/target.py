"""A PostgreSQL target: the database, the gateway's login to it, how its TLS is checked."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tapegate.config.checks import ConfigError, as_address, as_mapping, as_str
from tapegate.config.targets import Target, flag, guardrails, login_credential, opt_path

KEYS = frozenset({"database", "username", "password_env", "password_file", "secret_arn",
                  "guardrails", "upstream_tls", "upstream_ca_file",
                  "allow_insecure_auth"})  # fmt: skip
CREDENTIALS = ("password_env", "password_file", "secret_arn")


@dataclass(frozen=True, kw_only=True)
class PostgresTarget(Target):
    database: str
    username: str
    password_env: str | None = None
    password_file: Path | None = None
    secret_arn: str | None = None
    upstream_tls: str = "require"  # disable | prefer | require | verify-full
    upstream_ca_file: Path | None = None
    allow_insecure_auth: bool = False  # md5 / cleartext passwords to the upstream
    deny_function_call: bool = False  # guardrails: fast-path FunctionCall messages


def build(m: dict[str, Any], key: str, base_dir: Path, common: dict[str, Any]) -> PostgresTarget:
    upstream_tls = as_str(m.get("upstream_tls", "require"), f"{key}.upstream_tls")
    if upstream_tls not in ("disable", "prefer", "require", "verify-full"):
        raise ConfigError(f"{key}.upstream_tls", "must be disable, prefer, require or verify-full")
    rules = as_mapping(m.get("guardrails", {}), f"{key}.guardrails")
    return PostgresTarget(
        upstream=as_address(m["upstream"], f"{key}.upstream"),
        database=as_str(m.get("database", common["name"]), f"{key}.database"),
        upstream_tls=upstream_tls,
        upstream_ca_file=opt_path(m, "upstream_ca_file", key, base_dir),
        allow_insecure_auth=flag(m, "allow_insecure_auth", key),
        deny=guardrails(rules, f"{key}.guardrails", "postgres"),
        deny_function_call=flag(rules, "deny_function_call", f"{key}.guardrails"),
        **login_credential(m, key, base_dir, CREDENTIALS),
        **common,
    )

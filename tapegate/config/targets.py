"""`targets:` in tapegate.yaml: what each protocol's target needs, checked before anything listens.

A target names one upstream (a PostgreSQL database, an SSH host, an HTTP API), the groups that may
use it, where the gateway's credential for it comes from, and its guardrails. The credential is
named here by its source (an environment variable, a file, a Secrets Manager ARN), never by value.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from tapegate.config.checks import (
    Address,
    ConfigError,
    as_address,
    as_mapping,
    as_path,
    as_str,
    check_only,
)

PROTOCOLS = ("postgres", "ssh", "http")
# `known_hosts:` holds either a path or the lines themselves: a line is HOSTS KEYTYPE KEY.
_KNOWN_HOSTS_LINE = re.compile(r"(^|\n)\s*(@\S+\s+)?\S+\s+(ssh-|ecdsa-|sk-)\S+\s+\S+")

# Keys every target has, then what each protocol adds.
_COMMON = {"name", "protocol", "upstream", "allow_groups"}
_ALLOWED = {
    "postgres": {"database", "username", "password_env", "password_file", "secret_arn",
                 "guardrails", "upstream_tls", "upstream_ca_file", "allow_insecure_auth"},
    "ssh": {"username", "private_key_file", "password_env", "password_file", "secret_arn",
            "known_hosts", "guardrails", "allow_port_forwarding", "allow_env"},
    "http": {"inject_header", "upstream_ca_file"},
}  # fmt: skip
_CREDENTIALS = {
    "postgres": ("password_env", "password_file", "secret_arn"),
    "ssh": ("private_key_file", "password_env", "password_file", "secret_arn"),
}


@dataclass(frozen=True)
class GuardRule:
    """Deny a statement by kind (its leading keywords, e.g. DROP, ALTER ROLE) or by regex.

    For SSH targets only regex rules exist; they match exec command lines.
    """

    kind: str | None = None
    regex: re.Pattern[str] | None = None

    def describe(self) -> str:
        return f"kind {self.kind}" if self.kind else f"regex {self.regex.pattern!r}"  # type: ignore[union-attr]


@dataclass(frozen=True)
class InjectHeader:
    """The header an HTTP target's credential travels in, e.g. X-Api-Key or Authorization."""

    name: str
    value_env: str | None = None
    value_file: Path | None = None
    secret_arn: str | None = None
    prefix: str = ""  # "Bearer " for a bearer token


@dataclass(frozen=True, kw_only=True)
class Target:
    """What every target has; each protocol's model adds its own (one model per protocol)."""

    name: str
    protocol: str
    upstream: Address
    allow_groups: tuple[str, ...] = ()
    deny: tuple[GuardRule, ...] = ()


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


@dataclass(frozen=True, kw_only=True)
class SshTarget(Target):
    username: str
    private_key_file: Path | None = None
    password_env: str | None = None
    password_file: Path | None = None
    secret_arn: str | None = None
    known_hosts: Path | None = None
    known_hosts_lines: str | None = None  # the lines themselves, where no file can be (Fargate)
    allow_port_forwarding: bool = False
    # The `env` requests passed to the target (names or globs): Debian's sshd default.
    allow_env: tuple[str, ...] = ("LANG", "LC_*")


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


def parse_target(raw: Any, key: str, base_dir: Path) -> Target:
    m = as_mapping(raw, key)
    for required in ("name", "protocol", "upstream"):
        if required not in m:
            raise ConfigError(f"{key}.{required}", "is required")
    name = as_str(m["name"], f"{key}.name")
    if not re.fullmatch(r"[A-Za-z0-9_.-]{1,63}", name):
        raise ConfigError(f"{key}.name", "use letters, digits, '_', '.', '-' (at most 63)")
    protocol = as_str(m["protocol"], f"{key}.protocol")
    if protocol not in PROTOCOLS:
        raise ConfigError(f"{key}.protocol", f"must be one of {', '.join(PROTOCOLS)}")
    check_only(m, key, _COMMON | _ALLOWED[protocol])
    groups = m.get("allow_groups", [])
    if not isinstance(groups, list) or not all(isinstance(g, str) for g in groups) or not groups:
        raise ConfigError(f"{key}.allow_groups", "must be a non-empty list of group names")
    common: dict[str, Any] = {"name": name, "protocol": protocol, "allow_groups": tuple(groups)}
    if protocol == "http":
        return _http(m, key, base_dir, common)
    if "username" not in m:
        raise ConfigError(f"{key}.username", "is required")
    sources = [s for s in _CREDENTIALS[protocol] if s in m]
    if len(sources) != 1:
        raise ConfigError(key, f"give exactly one of {', '.join(_CREDENTIALS[protocol])}")
    common |= {
        "upstream": as_address(m["upstream"], f"{key}.upstream"),
        "username": as_str(m["username"], f"{key}.username"),
        "password_env": _opt_str(m, "password_env", key),
        "password_file": _opt_path(m, "password_file", key, base_dir),
        "secret_arn": _opt_str(m, "secret_arn", key),
        "deny": _guardrails(m.get("guardrails", {}), f"{key}.guardrails", protocol),
    }
    guardrails = as_mapping(m.get("guardrails", {}), f"{key}.guardrails")
    if protocol == "ssh":
        return _ssh(m, key, base_dir, common)
    upstream_tls = as_str(m.get("upstream_tls", "require"), f"{key}.upstream_tls")
    if upstream_tls not in ("disable", "prefer", "require", "verify-full"):
        raise ConfigError(f"{key}.upstream_tls", "must be disable, prefer, require or verify-full")
    return PostgresTarget(
        database=as_str(m.get("database", name), f"{key}.database"),
        upstream_tls=upstream_tls,
        upstream_ca_file=_opt_path(m, "upstream_ca_file", key, base_dir),
        allow_insecure_auth=_flag(m, "allow_insecure_auth", key),
        deny_function_call=_flag(guardrails, "deny_function_call", f"{key}.guardrails"),
        **common,
    )


def is_known_hosts_lines(value: str) -> bool:
    """Whether a `known_hosts:` value holds known_hosts lines rather than a path to a file."""
    return _KNOWN_HOSTS_LINE.search(value) is not None


def _ssh(m: dict[str, Any], key: str, base_dir: Path, common: dict[str, Any]) -> SshTarget:
    if "known_hosts" not in m:
        raise ConfigError(
            f"{key}.known_hosts",
            "is required: the gateway checks the target's host key and never trusts on first use "
            "(ssh-keyscan -p PORT HOST > known_hosts, then check the fingerprint)",
        )
    forwarding = m.get("allow_port_forwarding", False)
    if not isinstance(forwarding, bool):
        raise ConfigError(f"{key}.allow_port_forwarding", "must be true or false")
    known = as_str(m["known_hosts"], f"{key}.known_hosts")
    lines = known if is_known_hosts_lines(known) else None
    if lines is not None:
        for n, line in enumerate(lines.splitlines(), 1):
            if line.strip() and not line.lstrip().startswith("#") and len(line.split()) < 3:
                raise ConfigError(f"{key}.known_hosts", f"line {n} is not 'HOSTS KEYTYPE KEY'")
    return SshTarget(
        private_key_file=_opt_path(m, "private_key_file", key, base_dir),
        known_hosts=None if lines else as_path(known, f"{key}.known_hosts", base_dir),
        known_hosts_lines=lines,
        allow_port_forwarding=forwarding,
        allow_env=_names(m.get("allow_env", ["LANG", "LC_*"]), f"{key}.allow_env"),
        **common,
    )


def _http(m: dict[str, Any], key: str, base_dir: Path, common: dict[str, Any]) -> HttpTarget:
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
        upstream_ca_file=_opt_path(m, "upstream_ca_file", key, base_dir),
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
        value_env=_opt_str(m, "value_env", key),
        value_file=_opt_path(m, "value_file", key, base_dir),
        secret_arn=_opt_str(m, "secret_arn", key),
        prefix=prefix,
    )


def _guardrails(raw: Any, key: str, protocol: str) -> tuple[GuardRule, ...]:
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


def _names(raw: Any, key: str) -> tuple[str, ...]:
    if not isinstance(raw, list) or not all(isinstance(x, str) and x for x in raw):
        raise ConfigError(key, "must be a list of names or globs, e.g. [LANG, LC_*]")
    return tuple(raw)


def _flag(m: dict[str, Any], name: str, key: str) -> bool:
    value = m.get(name, False)
    if not isinstance(value, bool):
        raise ConfigError(f"{key}.{name}", "must be true or false")
    return value


def _opt_str(m: dict[str, Any], name: str, key: str) -> str | None:
    return as_str(m[name], f"{key}.{name}") if name in m else None


def _opt_path(m: dict[str, Any], name: str, key: str, base_dir: Path) -> Path | None:
    return as_path(m[name], f"{key}.{name}", base_dir) if name in m else None

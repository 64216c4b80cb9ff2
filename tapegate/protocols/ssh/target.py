"""An SSH target: the host, the gateway's login to it, its host key, what channels may do."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tapegate.config.checks import ConfigError, as_address, as_path, as_str
from tapegate.config.targets import Target, guardrails, login_credential, names, opt_path

KEYS = frozenset({"username", "private_key_file", "password_env", "password_file", "secret_arn",
                  "known_hosts", "guardrails", "allow_port_forwarding", "allow_env"})  # fmt: skip
CREDENTIALS = ("private_key_file", "password_env", "password_file", "secret_arn")
# `known_hosts:` holds either a path or the lines themselves: a line is HOSTS KEYTYPE KEY.
_KNOWN_HOSTS_LINE = re.compile(r"(^|\n)\s*(@\S+\s+)?\S+\s+(ssh-|ecdsa-|sk-)\S+\s+\S+")


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


def is_known_hosts_lines(value: str) -> bool:
    """Whether a `known_hosts:` value holds known_hosts lines rather than a path to a file."""
    return _KNOWN_HOSTS_LINE.search(value) is not None


def build(m: dict[str, Any], key: str, base_dir: Path, common: dict[str, Any]) -> SshTarget:
    login = login_credential(m, key, base_dir, CREDENTIALS)
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
        upstream=as_address(m["upstream"], f"{key}.upstream"),
        deny=guardrails(m.get("guardrails", {}), f"{key}.guardrails", "ssh"),
        private_key_file=opt_path(m, "private_key_file", key, base_dir),
        known_hosts=None if lines else as_path(known, f"{key}.known_hosts", base_dir),
        known_hosts_lines=lines,
        allow_port_forwarding=forwarding,
        allow_env=names(m.get("allow_env", ["LANG", "LC_*"]), f"{key}.allow_env"),
        **login,
        **common,
    )

"""Who may reach which target, and which statements a target never sees."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from gateway_task.protocols.postgres.relay import Guard
from gateway_task.protocols.postgres.sql import matches_kind
from tapegate.config import Config, Target
from tapegate.tape import Identity


@dataclass(frozen=True)
class Refusal:
    """Why a client may not proceed. `code` is the SQLSTATE a PostgreSQL client will see."""

    code: str
    message: str
    hint: str | None = None


def find_target(config: Config, name: str | None, protocol: str) -> Target | Refusal:
    target = config.targets.get(name or "")
    if target is None or target.protocol != protocol:
        known = ", ".join(t.name for t in config.targets.values() if t.protocol == protocol)
        return Refusal(
            "3D000",
            f"unknown target {name!r}: put a target name from the gateway config in the "
            "database field",
            f"targets for {protocol} here: {known or 'none configured'}",
        )
    return target


def admit(target: Target, identity: Identity) -> Refusal | None:
    """The target's allow_groups must meet the token's groups."""
    if set(target.allow_groups) & set(identity.groups):
        return None
    have = ", ".join(identity.groups) or "none"
    return Refusal(
        "42501",
        f"{identity.subject} may not use target {target.name!r}: it admits groups "
        f"{', '.join(target.allow_groups)}; the token carries {have}",
        "Ask your identity provider's admin for one of those groups, or use another target.",
    )


def guard_for(target: Target) -> Guard:
    """A guard for the relay: the description of the first deny rule a statement meets."""
    rules = target.deny

    def guard(sql: str, kinds: list[str]) -> str | None:
        for rule in rules:
            if rule.kind is not None and matches_kind(kinds, rule.kind):
                return rule.describe()
            if rule.regex is not None and rule.regex.search(sql):
                return rule.describe()
        return None

    return guard


def command_guard(target: Target) -> Callable[[str], str | None]:
    """For SSH exec requests: the description of the first deny regex the command line meets."""
    rules = [rule for rule in target.deny if rule.regex is not None]

    def guard(command: str) -> str | None:
        for rule in rules:
            if rule.regex is not None and rule.regex.search(command):
                return rule.describe()
        return None

    return guard

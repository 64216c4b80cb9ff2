"""Which statements and commands a target never sees (who may reach it is admission's:
tapegate/proxy/admission.py)."""

from __future__ import annotations

import fnmatch
from collections.abc import Callable

from tapegate.config import Target
from tapegate.protocols.postgres.relay import Guard
from tapegate.protocols.postgres.sql import matches_kind


def guard_for(target: Target) -> Guard:
    """A guard for the relay: the description of the first deny rule a statement meets."""
    rules = target.deny

    def guard(sql: str, kinds: list[str] | None) -> str | None:
        if kinds is None:  # the parser could not name the statements: fail closed
            return "unchecked" if rules else None
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


def env_allowed(name: str, allowed: tuple[str, ...]) -> bool:
    """Whether an SSH `env` request's variable is passed on: a target's allow_env names it."""
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in allowed)

"""Admission, the same for every protocol, sans-IO.

One login (a PostgreSQL startup, an SSH authentication, an HTTP request) is admitted by the
same steps in the same order: TLS → target → token → groups → archive → credential. The steps
that need the outside world are commands the caller's driver carries out and answers: verify
this token, is the archive healthy, fetch this target's credential. A protocol supplies only its
words (how its clients name a target and ask for TLS) and maps a `Refusal` to its own error.

    steps = admit(config, Login("postgres", tls=True, target="appdb", token=password), words)
    outcome = await run_admission(gw, steps)  # the driver: gateway_task/server/admission.py

The same generator runs under a transcript test (events in, commands out) with no I/O at all.
"""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from tapegate.config import Config, Target
from tapegate.tape import Identity


class RefusalKind(StrEnum):
    TLS_REQUIRED = "tls_required"
    UNKNOWN_TARGET = "unknown_target"
    NO_TOKEN = "no_token"
    BAD_TOKEN = "bad_token"
    GROUPS = "groups"
    ARCHIVE_FAILING = "archive_failing"
    NO_CREDENTIAL = "no_credential"


@dataclass(frozen=True)
class Words:
    """How a protocol's clients name a target and turn TLS on: the refusals' hints."""

    target_field: str  # "the database field", "the SSH username", "the first path segment"
    tls_hint: str  # "connect with sslmode=require (or verify-full)"
    token_field: str = "as the password"  # where the token goes


@dataclass(frozen=True)
class Login:
    protocol: str
    tls: bool
    target: str | None  # the name the client gave
    token: str | None  # None: the client sent none (HTTP without Authorization)
    needs_tls: bool = True  # False where the transport is encrypted anyway (SSH)
    credential: bool = True  # fetch the target's credential as the last step


@dataclass(frozen=True)
class Refusal:
    kind: RefusalKind
    message: str
    hint: str | None = None
    identity: Identity | None = None  # set when the token was good and policy said no
    target: Target | None = None


@dataclass(frozen=True)
class Admitted:
    target: Target
    identity: Identity
    credential: Any = None


# -- commands (yielded) and their answers (sent back) ----------------------------------------


@dataclass(frozen=True)
class VerifyToken:
    """Answer: the Identity, or a TokenRejected."""

    token: str


@dataclass(frozen=True)
class TokenRejected:
    reason: str


@dataclass(frozen=True)
class CheckArchive:
    """Answer: None when the archive can record, else why not."""


@dataclass(frozen=True)
class FetchCredential:
    """Answer: the credential, or a CredentialMissing."""

    target: Target


@dataclass(frozen=True)
class CredentialMissing:
    reason: str


Command = VerifyToken | CheckArchive | FetchCredential
Steps = Generator[Command, Any, Admitted | Refusal]

FRESH_TOKEN_HINT = (
    "Fetch a fresh token from your identity provider (locally: tapegate token --sub NAME "
    "--group GROUP) and use it as the password."
)


def precheck(config: Config, login: Login, words: Words) -> Refusal | Target:
    """The steps before the token: TLS, then the target. A protocol that has to ask for the
    token (PostgreSQL's password message) runs these first, so it never asks in clear text."""
    if login.needs_tls and not login.tls and config.tls.mode == "required":
        return Refusal(
            RefusalKind.TLS_REQUIRED,
            f"this gateway requires TLS: {words.tls_hint}",
            "Your token travels as the password, so the gateway never takes it in clear text.",
        )
    target = config.targets.get(login.target or "")
    if target is None or target.protocol != login.protocol:
        known = [t.name for t in config.targets.values() if t.protocol == login.protocol]
        return Refusal(
            RefusalKind.UNKNOWN_TARGET,
            f"unknown target {login.target!r}: {words.target_field} names the target",
            f"targets for {login.protocol} here: {', '.join(known) or 'none configured'}",
        )
    return target


def admit(config: Config, login: Login, words: Words) -> Steps:
    target = precheck(config, login, words)
    if isinstance(target, Refusal):
        return target
    if login.token is None:
        return Refusal(RefusalKind.NO_TOKEN, f"send your OIDC token {words.token_field}",
                       target=target)  # fmt: skip
    verified = yield VerifyToken(login.token)
    if isinstance(verified, TokenRejected):
        return Refusal(RefusalKind.BAD_TOKEN, f"authentication failed: {verified.reason}",
                       FRESH_TOKEN_HINT, target=target)  # fmt: skip
    identity: Identity = verified
    if not set(target.allow_groups) & set(identity.groups):
        have = ", ".join(identity.groups) or "none"
        return Refusal(
            RefusalKind.GROUPS,
            f"{identity.subject} may not use target {target.name!r}: it admits groups "
            f"{', '.join(target.allow_groups)}; the token carries {have}",
            "Ask your identity provider's admin for one of those groups, or use another target.",
            identity,
            target,
        )
    failing = yield CheckArchive()
    if failing is not None:
        return Refusal(RefusalKind.ARCHIVE_FAILING,
                       "tapegate cannot record sessions now (the archive is failing), so this "
                       "one is refused: nothing runs unrecorded", failing, identity,
                       target)  # fmt: skip
    credential = None
    if login.credential:
        credential = yield FetchCredential(target)
        if isinstance(credential, CredentialMissing):
            return Refusal(RefusalKind.NO_CREDENTIAL,
                           f"the gateway has no usable credential for target {target.name!r}",
                           None, identity, target)  # fmt: skip
    return Admitted(target, identity, credential)


def auth_attrs(outcome: Admitted | Refusal, method: str, **extra: Any) -> dict[str, Any]:
    """The one shape of the `auth` event, for every protocol (protocol extras added)."""
    if isinstance(outcome, Admitted):
        who = outcome.identity
        return {"result": "ok", "method": method, "subject": who.subject,
                "groups": list(who.groups), **extra}  # fmt: skip
    attrs: dict[str, Any] = {"result": "refused", "method": method, "refusal": outcome.kind,
                             "reason": outcome.message, **extra}  # fmt: skip
    if outcome.identity is not None:
        attrs["subject"] = outcome.identity.subject
    return attrs

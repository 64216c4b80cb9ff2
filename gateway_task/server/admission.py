"""Admission's I/O: connection limits every listener applies at accept, and the driver that
carries out the sans-IO admission steps (tapegate/proxy/admission.py) for every protocol.

A connection takes a slot when it is accepted. Until it is admitted (its token verified and its
policy passed) it is *pre-auth*: it counts against `limits.max_preauth` and, per source address,
`limits.max_preauth_per_source`, and it must be admitted by its deadline, `preauth_deadline_s`
after the accept — an absolute time that trickled bytes do not push back. Every open connection
counts against `limits.max_connections`. Over a limit, the listener refuses the connection with
its protocol's error and the refusal is counted (`connections_refused_limit`).

This keeps a flood of idle or slow sockets from exhausting file descriptors before anyone has
authenticated, so admitted sessions and new logins keep being served.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from gateway_task.identity import TokenError
from gateway_task.metrics import GatewayMetrics
from gateway_task.secrets import CredentialError
from gateway_task.server.refusals import source_key
from tapegate.config import LimitsConfig, Target
from tapegate.protocols.mcp.target import McpTarget
from tapegate.proxy.admission import (
    Admitted,
    CheckArchive,
    CredentialMissing,
    FetchCredential,
    Refusal,
    Steps,
    TokenRejected,
    VerifyToken,
)
from tapegate.tape import Identity

if TYPE_CHECKING:
    from gateway_task.server.gateway import Gateway

log = logging.getLogger("tapegate.gateway")


class Slot:
    """One accepted connection's place; release it (idempotently) when the connection ends."""

    def __init__(self, admission: Admission, source: str, deadline: float) -> None:
        self._admission = admission
        self.source = source
        self.deadline = deadline  # time.monotonic() by which it must be admitted
        self.preauth = True
        self.released = False

    @property
    def remaining_s(self) -> float:
        return max(0.0, self.deadline - time.monotonic())

    def admitted(self) -> None:
        """Authenticated: leave the pre-auth counts (the deadline no longer applies)."""
        if self.preauth and not self.released:
            self.preauth = False
            self._admission._leave_preauth(self.source)

    def release(self) -> None:
        if self.released:
            return
        self.released = True
        if self.preauth:
            self._admission._leave_preauth(self.source)
        self._admission.open -= 1


class Admission:
    def __init__(self, limits: LimitsConfig, metrics: GatewayMetrics | None = None) -> None:
        self.limits = limits
        self.metrics = metrics
        self.open = 0
        self.preauth = 0
        self.preauth_by_source: Counter[str] = Counter()

    def arrive(self, source: str) -> Slot | str:
        """A slot for a connection just accepted from `source` (an IP address), or why not.
        Per source means per IPv6 /64, as for refusals: one host can pick from all of it."""
        source = source_key(source)
        limits = self.limits
        refusal = None
        if self.open >= limits.max_connections:
            refusal = f"too many connections (limits.max_connections {limits.max_connections})"
        elif self.preauth >= limits.max_preauth:
            refusal = ("too many connections waiting to log in "
                       f"(limits.max_preauth {limits.max_preauth})")  # fmt: skip
        elif self.preauth_by_source[source] >= limits.max_preauth_per_source:
            cap = limits.max_preauth_per_source
            refusal = ("too many connections waiting to log in from this address "
                       f"(limits.max_preauth_per_source {cap})")  # fmt: skip
        if refusal is not None:
            if self.metrics is not None:
                self.metrics.inc("connections_refused_limit")
            return refusal
        self.open += 1
        self.preauth += 1
        self.preauth_by_source[source] += 1
        return Slot(self, source, time.monotonic() + limits.preauth_deadline_s)

    def _leave_preauth(self, source: str) -> None:
        self.preauth -= 1
        self.preauth_by_source[source] -= 1
        if self.preauth_by_source[source] <= 0:
            del self.preauth_by_source[source]


async def run_admission(
    gw: Gateway, steps: Steps, verify: Callable[[str], Awaitable[Identity]] | None = None
) -> Admitted | Refusal:
    """Carry out admission's commands (tapegate/proxy/admission.py) for any protocol. `verify`
    replaces the verifier (HTTP remembers a kept-alive connection's token until its exp)."""
    answer: object = None
    check = verify or gw.verifier.verify
    try:
        while True:
            command = steps.send(answer)
            if isinstance(command, VerifyToken):
                try:
                    answer = await check(command.token)
                except TokenError as exc:
                    answer = TokenRejected(str(exc))
            elif isinstance(command, CheckArchive):
                answer = gw.sink.failure
            elif isinstance(command, FetchCredential):
                answer = await _credential(gw, command.target)
            else:  # pragma: no cover - a new command without its executor
                raise TypeError(f"admission asked for {command!r}")
    except StopIteration as done:
        return done.value  # type: ignore[no-any-return]


async def _credential(gw: Gateway, target: Target) -> object:
    try:
        if target.protocol == "postgres":
            return await gw.credentials.password(target)
        if target.protocol == "ssh":
            return await gw.credentials.ssh(target)
        if isinstance(target, McpTarget) and target.stdio:
            return await gw.credentials.env(target)  # its server's environment
        return await gw.credentials.header(target)
    except CredentialError as exc:
        log.error("target %s: %s", target.name, exc)  # names the source, never the value
        return CredentialMissing(str(exc))

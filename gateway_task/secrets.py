"""Where target credentials come from: an environment variable, a file, or Secrets Manager.

Sessions ask `Credentials` (one per gateway): lookups run on a thread, so a file read or a
Secrets Manager call never stalls the event loop; a value is cached for CACHE_TTL_S, so a busy
HTTP target does not call Secrets Manager per request, and a rotated secret is picked up within
that time; concurrent lookups of one credential share one fetch; one Secrets Manager client
serves the whole process. A credential is never logged, recorded, or shown to the client, and
a failed lookup is not cached.
"""

from __future__ import annotations

import asyncio
import functools
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from tapegate.config import Target
from tapegate.protocols.http.target import HttpTarget, InjectHeader
from tapegate.protocols.mcp.target import McpTarget
from tapegate.protocols.postgres.target import PostgresTarget
from tapegate.protocols.ssh.target import SshTarget

CACHE_TTL_S = 300.0
T = TypeVar("T")


class Credentials:
    def __init__(self, ttl_s: float = CACHE_TTL_S, clock: Callable[[], float] = time.monotonic):
        self.ttl_s = ttl_s
        self._clock = clock
        self._cache: dict[tuple[str, str], tuple[float, Any]] = {}
        self._inflight: dict[tuple[str, str], asyncio.Future[Any]] = {}

    async def password(self, target: PostgresTarget | SshTarget) -> str:
        return await self._get(("password", target.name), lambda: target_password(target))

    async def ssh(self, target: SshTarget) -> SshCredential:
        return await self._get(("ssh", target.name), lambda: ssh_credential(target))

    async def header(self, target: HttpTarget) -> str:
        inject = target.inject_header
        assert inject is not None
        return await self._get(("header", target.name), lambda: header_value(inject))

    async def env(self, target: McpTarget) -> dict[str, str]:
        return await self._get(("env", target.name), lambda: stdio_env(target))

    def forget(self, target: Target) -> None:
        """Drop a target's cached credentials (the target refused one: it may have rotated)."""
        for key in [k for k in self._cache if k[1] == target.name]:
            del self._cache[key]

    async def _get(self, key: tuple[str, str], fetch: Callable[[], T]) -> T:
        cached = self._cache.get(key)
        if cached is not None and self._clock() < cached[0]:
            return cached[1]  # type: ignore[no-any-return]
        task = self._inflight.get(key)
        if task is None:
            # The fetch is a task of its own: a caller that gives up (its login deadline)
            # cancels only its wait, never the lookup others share.
            task = asyncio.ensure_future(asyncio.to_thread(fetch))
            self._inflight[key] = task
            task.add_done_callback(lambda t: self._fetched(key, t))
        return await asyncio.shield(task)  # type: ignore[no-any-return]

    def _fetched(self, key: tuple[str, str], task: asyncio.Future[Any]) -> None:
        self._inflight.pop(key, None)
        if not task.cancelled() and task.exception() is None:
            self._cache[key] = (self._clock() + self.ttl_s, task.result())


class CredentialError(Exception):
    """The credential could not be fetched. The message names the source, never the value."""


@dataclass(frozen=True)
class SshCredential:
    """Exactly one of the two is set. The key is the OpenSSH/PEM text of a private key."""

    private_key: str | None = None
    password: str | None = None


def target_password(target: PostgresTarget | SshTarget) -> str:
    value = _fetch(target.password_env, target.password_file, target.secret_arn, "password")
    if value is None:
        raise CredentialError(f"target {target.name} has no credential source")
    return value


def ssh_credential(target: SshTarget) -> SshCredential:
    if target.private_key_file is not None:
        return SshCredential(private_key=_read(target.private_key_file))
    if target.secret_arn:
        # A secret holds {"private_key": ...} or {"password": ...}, or the bare key or password.
        text = _secrets_manager(target.secret_arn)
        doc = _json_object(text)
        if doc is not None:
            if isinstance(doc.get("private_key"), str):
                return SshCredential(private_key=doc["private_key"])
            if isinstance(doc.get("password"), str):
                return SshCredential(password=doc["password"])
            raise CredentialError(
                f"secret {target.secret_arn} is JSON without a private_key or password field"
            )
        if text.lstrip().startswith("-----BEGIN"):
            return SshCredential(private_key=text)
        return SshCredential(password=text)
    return SshCredential(password=target_password(target))


def header_value(inject: InjectHeader) -> str:
    value = _fetch(inject.value_env, inject.value_file, inject.secret_arn, "value")
    if value is None:
        raise CredentialError(f"header {inject.name} has no credential source")
    if "\r" in value or "\n" in value:
        raise CredentialError(f"the value for header {inject.name} holds a line break")
    return inject.prefix + value


def stdio_env(target: McpTarget) -> dict[str, str]:
    """A stdio MCP server's `env`: plain values, and credentials fetched from their sources."""
    out = {}
    for var in target.env:
        value = var.value
        if value is None:
            value = _fetch(var.value_env, var.value_file, var.secret_arn, "value")
        if value is None or "\0" in value:
            raise CredentialError(f"env {var.name} of target {target.name} has no usable value")
        out[var.name] = value
    return out


def _fetch(env: str | None, file: Path | None, arn: str | None, field: str) -> str | None:
    if env:
        value = os.environ.get(env)
        if value is None:
            raise CredentialError(f"environment variable {env} is not set")
        return value
    if file:
        return _read(file).rstrip("\n")
    if arn:
        text = _secrets_manager(arn)
        # A JSON secret (the RDS convention) holds the value under "password" (or "value").
        doc = _json_object(text)
        if doc is None:
            return text
        for name in (field, "password"):
            if isinstance(doc.get(name), str):
                return doc[name]
        raise CredentialError(f"secret {arn} is JSON without a {field} field")
    return None


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError as exc:
        raise CredentialError(f"cannot read {path}: {exc.strerror}") from None


def _json_object(text: str) -> dict[str, object] | None:
    try:
        doc = json.loads(text)
    except ValueError:
        return None
    return doc if isinstance(doc, dict) else None


def _secrets_manager(arn: str) -> str:
    try:
        from botocore.exceptions import BotoCoreError, ClientError
    except ImportError:
        raise CredentialError("secret_arn needs boto3: pip install 'tapegate[aws]'") from None
    try:
        return _secrets_client().get_secret_value(SecretId=arn)["SecretString"]
    except (BotoCoreError, ClientError) as exc:
        raise CredentialError(f"cannot read secret {arn}: {type(exc).__name__}") from None


@functools.cache
def _secrets_client() -> Any:
    """One Secrets Manager client for the process (a client per call costs ~19 MB and 100 ms)."""
    import boto3

    return boto3.client("secretsmanager")

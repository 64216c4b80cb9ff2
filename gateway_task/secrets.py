"""Where target credentials come from: an environment variable, a file, or Secrets Manager.

A credential is fetched when a session needs it and held only as long as the login (or, for HTTP,
the request) takes. It is never logged, recorded, or shown to the client.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from tapegate.config import InjectHeader, Target


class CredentialError(Exception):
    """The credential could not be fetched. The message names the source, never the value."""


@dataclass(frozen=True)
class SshCredential:
    """Exactly one of the two is set. The key is the OpenSSH/PEM text of a private key."""

    private_key: str | None = None
    password: str | None = None


def target_password(target: Target) -> str:
    value = _fetch(target.password_env, target.password_file, target.secret_arn, "password")
    if value is None:
        raise CredentialError(f"target {target.name} has no credential source")
    return value


def ssh_credential(target: Target) -> SshCredential:
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
        import boto3
        from botocore.exceptions import BotoCoreError, ClientError
    except ImportError:
        raise CredentialError("secret_arn needs boto3: pip install 'tapegate[aws]'") from None
    try:
        return boto3.client("secretsmanager").get_secret_value(SecretId=arn)["SecretString"]
    except (BotoCoreError, ClientError) as exc:
        raise CredentialError(f"cannot read secret {arn}: {type(exc).__name__}") from None

"""Where target credentials come from: an environment variable, a file, or Secrets Manager.

A credential is fetched when a session needs it and held only as long as the login takes. It is
never logged, recorded, or shown to the client.
"""

from __future__ import annotations

import json
import os

from tapegate.config import Target


class CredentialError(Exception):
    """The credential could not be fetched. The message names the source, never the value."""


def target_password(target: Target) -> str:
    if target.password_env:
        value = os.environ.get(target.password_env)
        if value is None:
            raise CredentialError(f"environment variable {target.password_env} is not set")
        return value
    if target.password_file:
        try:
            return target.password_file.read_text().rstrip("\n")
        except OSError as exc:
            raise CredentialError(f"cannot read {target.password_file}: {exc.strerror}") from None
    if target.secret_arn:
        return _secrets_manager(target.secret_arn)
    raise CredentialError(f"target {target.name} has no credential source")


def _secrets_manager(arn: str) -> str:
    try:
        import boto3
        from botocore.exceptions import BotoCoreError, ClientError
    except ImportError:
        raise CredentialError("secret_arn needs boto3: pip install 'tapegate[aws]'") from None
    try:
        value = boto3.client("secretsmanager").get_secret_value(SecretId=arn)["SecretString"]
    except (BotoCoreError, ClientError) as exc:
        raise CredentialError(f"cannot read secret {arn}: {type(exc).__name__}") from None
    # A JSON secret (the RDS convention) holds the password under "password".
    try:
        doc = json.loads(value)
    except ValueError:
        return value
    if isinstance(doc, dict) and isinstance(doc.get("password"), str):
        return doc["password"]
    raise CredentialError(f"secret {arn} is JSON without a password field")

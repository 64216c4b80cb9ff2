"""Custom resource (CDK Provider framework): an Ed25519 key pair made inside the account.

Create: a new seed into the secret, its public key (hex) into the SSM parameter; the public key
    is also reported in OpenSSH's form, for the SSH host key.
Update with a new Generation: a new seed; the parameter becomes "new,old,..." so chunks signed
    by the old key still verify (the verifier trusts every key listed; the first is current).
Update otherwise: nothing changes; the current public key is reported again.
Delete: nothing is removed. The parameter is how evidence is checked after the stack is gone,
    and the secret is deleted with its CloudFormation resource.
"""

from __future__ import annotations

import base64
import struct
from typing import Any

import boto3
from aws_lambda_powertools import Logger
from nacl.signing import SigningKey

logger = Logger(service="tapegate-keygen")


def rotated(current: str | None, new_public: str) -> str:
    """The parameter value after adding a new key in front of the ones already trusted."""
    keys = [k for k in (current or "").split(",") if k.strip() and k.strip() != new_public]
    return ",".join([new_public, *keys])


def on_event(event: dict[str, Any], context: Any) -> dict[str, Any]:
    request = event["RequestType"]
    props = event["ResourceProperties"]
    name = props["ParameterName"]
    if request == "Delete":
        return {"PhysicalResourceId": event["PhysicalResourceId"]}
    ssm = boto3.client("ssm")
    current = _parameter(ssm, name)
    old_generation = event.get("OldResourceProperties", {}).get("Generation")
    if request == "Update" and current and old_generation == props["Generation"]:
        public = current.split(",")[0]
    else:
        seed = SigningKey.generate()
        public = bytes(seed.verify_key).hex()
        boto3.client("secretsmanager").put_secret_value(
            SecretId=props["SecretArn"], SecretString=bytes(seed).hex()
        )
        ssm.put_parameter(Name=name, Value=rotated(current, public), Type="String",
                          Overwrite=True)  # fmt: skip
        logger.info("new key pair", parameter=name, public_key=public, request=request)
    return {"PhysicalResourceId": name,
            "Data": {"PublicKey": public, "OpenSshPublicKey": openssh_public(public)}}  # fmt: skip


def openssh_public(public_hex: str) -> str:
    """The Ed25519 public key as OpenSSH writes it (`ssh-ed25519 AAAA...`): for a host key, the
    line clients put in known_hosts after the host name."""
    kind = b"ssh-ed25519"
    raw = bytes.fromhex(public_hex)
    blob = struct.pack(">I", len(kind)) + kind + struct.pack(">I", len(raw)) + raw
    return f"ssh-ed25519 {base64.b64encode(blob).decode()}"


def _parameter(ssm: Any, name: str) -> str | None:
    try:
        return ssm.get_parameter(Name=name)["Parameter"]["Value"]
    except ssm.exceptions.ParameterNotFound:
        return None

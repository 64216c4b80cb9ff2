"""The deploy-time key generator (custom resource) under moto: the seed lands only in the secret,
the public key in the parameter, and a rotation keeps older public keys trusted."""

from __future__ import annotations

import boto3
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from moto import mock_aws
from nacl.signing import SigningKey

from lambdas.keygen.handler import on_event, rotated

PARAM = "/tapegate/gateway-public-keys"


@pytest.fixture
def aws(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-1")
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.setenv(name, "testing")
    with mock_aws():
        arn = boto3.client("secretsmanager").create_secret(Name="seed", SecretString="-")["ARN"]
        yield arn


def event(kind: str, arn: str, generation: str = "1", old: str | None = None) -> dict:
    e = {
        "RequestType": kind,
        "PhysicalResourceId": PARAM,
        "ResourceProperties": {"SecretArn": arn, "ParameterName": PARAM, "Generation": generation},
    }
    if old is not None:
        e["OldResourceProperties"] = {**e["ResourceProperties"], "Generation": old}
    return e  # fmt: skip


def seed_and_param(arn: str) -> tuple[SigningKey, str]:
    seed = boto3.client("secretsmanager").get_secret_value(SecretId=arn)["SecretString"]
    param = boto3.client("ssm").get_parameter(Name=PARAM)["Parameter"]["Value"]
    return SigningKey(bytes.fromhex(seed)), param


def test_create_puts_the_seed_in_the_secret_and_the_public_key_in_the_parameter(aws) -> None:
    result = on_event(event("Create", aws), None)
    key, param = seed_and_param(aws)
    public = bytes(key.verify_key).hex()
    openssh = Ed25519PublicKey.from_public_bytes(bytes(key.verify_key)).public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    data = {"PublicKey": public, "OpenSshPublicKey": openssh.decode()}
    assert result == {"PhysicalResourceId": PARAM, "Data": data}
    assert param == public
    assert key.encode().hex() not in str(result), "the seed never goes back to CloudFormation"


def test_an_update_keeps_the_key_and_a_new_generation_rotates(aws) -> None:
    first = on_event(event("Create", aws), None)["Data"]["PublicKey"]
    same = on_event(event("Update", aws, "1", old="1"), None)["Data"]["PublicKey"]
    assert same == first and seed_and_param(aws)[1] == first
    second = on_event(event("Update", aws, "2", old="1"), None)["Data"]["PublicKey"]
    key, param = seed_and_param(aws)
    assert second != first and bytes(key.verify_key).hex() == second
    assert param == f"{second},{first}", "chunks signed before the rotation still verify"
    assert on_event(event("Delete", aws), None) == {"PhysicalResourceId": PARAM}
    assert seed_and_param(aws)[1] == param, "deleting the stack keeps the public keys"


def test_rotated_never_lists_a_key_twice() -> None:
    assert rotated(None, "b") == "b"
    assert rotated("a", "b") == "b,a"
    assert rotated("b,a", "b") == "b,a"

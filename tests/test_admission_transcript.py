"""Admission as a transcript: the same steps, in the same order, for every protocol."""

from __future__ import annotations

import pytest

from tapegate.config import parse_config
from tapegate.proxy.admission import (
    Admitted,
    CheckArchive,
    CredentialMissing,
    FetchCredential,
    Login,
    Refusal,
    RefusalKind,
    TokenRejected,
    VerifyToken,
    Words,
    admit,
    auth_attrs,
)
from tapegate.proxy.testing import transcript
from tapegate.tape import Identity

WORDS = Words("the name", "turn TLS on", "as the password")
TARGETS = {
    "postgres": {"upstream": "127.0.0.1:5432", "database": "app", "username": "u",
                 "password_env": "X"},
    "ssh": {"upstream": "127.0.0.1:22", "username": "u", "password_env": "X",
            "known_hosts": "[127.0.0.1]:22 ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFakeKeyForTests"},
    "http": {"upstream": "http://127.0.0.1:80", "inject_header": {"name": "X-Key",
                                                                  "value_env": "X"}},
}  # fmt: skip
AGENT = Identity(issuer="https://issuer.example", subject="agent-7", groups=("agents",))


def _config(protocol: str, tls: str = "required") -> object:
    target = {"name": "t", "protocol": protocol, "allow_groups": ["agents"], **TARGETS[protocol]}
    return parse_config({"tls": tls, "targets": [target]})


HAPPY = {VerifyToken: AGENT, CheckArchive: None, FetchCredential: "s3cret"}


@pytest.mark.parametrize("protocol", ["postgres", "ssh", "http"])
def test_the_steps_and_their_order(protocol: str) -> None:
    login = Login(protocol, tls=True, target="t", token="tok")
    commands, outcome = transcript(admit(_config(protocol), login, WORDS), HAPPY)
    assert [type(c) for c in commands] == [VerifyToken, CheckArchive, FetchCredential]
    assert commands[0] == VerifyToken("tok")
    assert isinstance(outcome, Admitted) and outcome.credential == "s3cret"
    assert auth_attrs(outcome, "oidc", tls=True) == {
        "result": "ok",
        "method": "oidc",
        "subject": "agent-7",
        "groups": ["agents"],
        "tls": True,
    }


@pytest.mark.parametrize(
    ("login", "answers", "kind", "asked"),
    [
        (Login("postgres", tls=False, target="t", token="tok"), HAPPY,
         RefusalKind.TLS_REQUIRED, []),
        (Login("postgres", tls=True, target="nope", token="tok"), HAPPY,
         RefusalKind.UNKNOWN_TARGET, []),
        (Login("postgres", tls=True, target="t", token="bad"),
         {**HAPPY, VerifyToken: TokenRejected("the token has expired")},
         RefusalKind.BAD_TOKEN, [VerifyToken]),
        (Login("postgres", tls=True, target="t", token="tok"),
         {**HAPPY, VerifyToken: Identity(issuer="i", subject="s", groups=("other",))},
         RefusalKind.GROUPS, [VerifyToken]),
        (Login("postgres", tls=True, target="t", token="tok"),
         {**HAPPY, CheckArchive: "disk full"}, RefusalKind.ARCHIVE_FAILING,
         [VerifyToken, CheckArchive]),
        (Login("postgres", tls=True, target="t", token="tok"),
         {**HAPPY, FetchCredential: CredentialMissing("X is not set")},
         RefusalKind.NO_CREDENTIAL, [VerifyToken, CheckArchive, FetchCredential]),
    ],
)  # fmt: skip
def test_each_refusal_stops_at_its_step(
    login: Login, answers: dict, kind: RefusalKind, asked: list[type]
) -> None:
    config = _config(login.protocol if login.target == "t" else "postgres")
    commands, outcome = transcript(admit(config, login, WORDS), answers)
    assert isinstance(outcome, Refusal) and outcome.kind == kind, outcome
    assert [type(c) for c in commands] == asked, "nothing is asked after the refusing step"
    attrs = auth_attrs(outcome, "oidc")
    assert attrs["result"] == "refused" and attrs["refusal"] == kind


def test_a_missing_token_is_refused_before_anything_is_verified() -> None:
    login = Login("http", tls=True, target="t", token=None)
    commands, outcome = transcript(admit(_config("http"), login, WORDS), HAPPY)
    assert commands == [] and outcome.kind == RefusalKind.NO_TOKEN


def test_ssh_needs_no_tls_flag_and_a_plain_gateway_admits_plain_clients() -> None:
    ssh = Login("ssh", tls=False, target="t", token="tok", needs_tls=False)
    _, outcome = transcript(admit(_config("ssh"), ssh, WORDS), HAPPY)
    assert isinstance(outcome, Admitted)
    plain = Login("postgres", tls=False, target="t", token="tok")
    _, outcome = transcript(admit(_config("postgres", tls="optional"), plain, WORDS), HAPPY)
    assert isinstance(outcome, Admitted)

"""OIDC token verification against an in-memory issuer (discovery + JWKS served by a fake fetch)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from joserfc import jwt
from joserfc.jwk import ECKey, OKPKey, RSAKey

from gateway_task.identity import IssuerUnavailable, OidcVerifier, TokenError
from tapegate.config import IdentityConfig

ISSUER = "https://idp.example"
CONFIG = IdentityConfig(issuer=ISSUER, audience="tapegate", groups_claim="roles")


class FakeIssuer:
    def __init__(self) -> None:
        self.keys: list[Any] = []
        self.fetches: list[str] = []
        self.down = False

    def add(self, key: Any) -> Any:
        self.keys.append(key)
        return key

    async def fetch(self, url: str) -> dict[str, Any]:
        self.fetches.append(url)
        if self.down:
            raise OSError("connection refused")
        if url.endswith("/.well-known/openid-configuration"):
            return {"issuer": ISSUER, "jwks_uri": f"{ISSUER}/keys"}
        return {"keys": [k.as_dict(private=False) for k in self.keys]}


def _token(key: Any, alg: str, **claims: Any) -> str:
    now = int(time.time())
    body = {"iss": ISSUER, "aud": "tapegate", "sub": "u1", "exp": now + 60, "iat": now,
            "roles": ["agents", "dba"], "email": "u1@example.com", "jti": "t-1",
            **claims}  # fmt: skip
    return jwt.encode({"alg": alg, "kid": key.kid}, body, key, algorithms=[alg])


def _verify(verifier: OidcVerifier, token: str):
    return asyncio.run(verifier.verify(token))


@pytest.mark.parametrize(
    ("make_key", "alg"),
    [
        (lambda: RSAKey.generate_key(2048, parameters={"kid": "rsa"}), "RS256"),
        (lambda: ECKey.generate_key("P-256", parameters={"kid": "ec"}), "ES256"),
        (lambda: OKPKey.generate_key("Ed25519", parameters={"kid": "ed"}), "EdDSA"),
    ],
)
def test_accepted_algorithms(make_key: Any, alg: str) -> None:
    issuer = FakeIssuer()
    key = issuer.add(make_key())
    identity = _verify(OidcVerifier(CONFIG, fetch=issuer.fetch), _token(key, alg))
    assert identity.subject == "u1" and identity.groups == ("agents", "dba")
    assert identity.email == "u1@example.com" and identity.token_id == "t-1"


def test_unknown_kid_refreshes_once_then_rotation_works() -> None:
    issuer = FakeIssuer()
    old = issuer.add(ECKey.generate_key("P-256", parameters={"kid": "old"}))
    clock = [1000.0]
    verifier = OidcVerifier(CONFIG, fetch=issuer.fetch, clock=lambda: clock[0])
    assert asyncio.run(verifier.verify(_token(old, "ES256", exp=4000, iat=1000))).subject == "u1"
    assert len(issuer.fetches) == 2
    new = issuer.add(ECKey.generate_key("P-256", parameters={"kid": "new"}))
    clock[0] += 60  # past the refresh interval
    assert asyncio.run(verifier.verify(_token(new, "ES256", exp=4000, iat=1000))).subject == "u1"
    assert len(issuer.fetches) == 4
    # A token with an unknown kid right after a refresh does not trigger another fetch.
    stray = ECKey.generate_key("P-256", parameters={"kid": "stray"})
    with pytest.raises(TokenError, match="unknown key id 'stray'"):
        asyncio.run(verifier.verify(_token(stray, "ES256", exp=4000, iat=1000)))
    assert len(issuer.fetches) == 4


def test_issuer_down_is_a_clear_error_and_cached_keys_survive() -> None:
    issuer = FakeIssuer()
    key = issuer.add(ECKey.generate_key("P-256", parameters={"kid": "k"}))
    issuer.down = True
    verifier = OidcVerifier(CONFIG, fetch=issuer.fetch)
    with pytest.raises(IssuerUnavailable, match="cannot reach the identity issuer"):
        _verify(verifier, _token(key, "ES256"))
    issuer.down = False
    verifier._fetched_at = float("-inf")
    assert _verify(verifier, _token(key, "ES256")).subject == "u1"
    issuer.down = True
    assert _verify(verifier, _token(key, "ES256")).subject == "u1"


def test_missing_claims_and_leeway() -> None:
    issuer = FakeIssuer()
    key = issuer.add(ECKey.generate_key("P-256", parameters={"kid": "k"}))
    verifier = OidcVerifier(CONFIG, fetch=issuer.fetch)
    now = int(time.time())
    # Expired 10 s ago is within the 30 s leeway; 60 s ago is not.
    assert _verify(verifier, _token(key, "ES256", exp=now - 10)).subject == "u1"
    with pytest.raises(TokenError, match="expired"):
        _verify(verifier, _token(key, "ES256", exp=now - 60))
    with pytest.raises(TokenError, match="audience"):
        _verify(verifier, _token(key, "ES256", aud=["other"]))
    token = jwt.encode({"alg": "ES256", "kid": "k"}, {"iss": ISSUER, "aud": "tapegate",
                       "exp": now + 60}, key, algorithms=["ES256"])  # fmt: skip
    with pytest.raises(TokenError, match="sub"):
        _verify(verifier, token)


def test_a_token_living_longer_than_the_limit_is_refused() -> None:
    """identity.max_token_lifetime (default 24 h) bounds exp - iat, or exp - now without iat."""
    issuer = FakeIssuer()
    key = issuer.add(ECKey.generate_key("P-256", parameters={"kid": "k"}))
    verifier = OidcVerifier(CONFIG, fetch=issuer.fetch)
    now = int(time.time())
    assert _verify(verifier, _token(key, "ES256", iat=now, exp=now + 23 * 3600)).subject == "u1"
    with pytest.raises(TokenError, match=r"exceeds the gateway's identity\.max_token_lifetime"):
        _verify(verifier, _token(key, "ES256", iat=now, exp=now + 30 * 86400))
    # No iat: what is left of it counts.
    token = jwt.encode({"alg": "ES256", "kid": "k"}, {"iss": ISSUER, "aud": "tapegate",
                       "sub": "u1", "exp": now + 2 * 86400}, key, algorithms=["ES256"])  # fmt: skip
    with pytest.raises(TokenError, match="max_token_lifetime"):
        _verify(verifier, token)
    short = OidcVerifier(IdentityConfig(issuer=ISSUER, max_token_lifetime_s=600),
                         fetch=issuer.fetch)  # fmt: skip
    with pytest.raises(TokenError, match=r"lifetime 1 h exceeds .*\(10 min\)"):
        _verify(short, _token(key, "ES256", iat=now, exp=now + 3600))


def test_a_verified_token_is_remembered_but_never_past_its_exp() -> None:
    issuer = FakeIssuer()
    key = issuer.add(OKPKey.generate_key("Ed25519", parameters={"kid": "ed"}))
    now = int(time.time())
    clock = [float(now)]
    verifier = OidcVerifier(IdentityConfig(issuer=ISSUER, audience="tapegate", leeway_s=0),
                            fetch=issuer.fetch, clock=lambda: clock[0])  # fmt: skip
    token = _token(key, "EdDSA", exp=now + 30)
    checked = []
    real = verifier._verify

    async def counting(t: str) -> Any:
        checked.append(t)
        return await real(t)

    verifier._verify = counting  # type: ignore[method-assign]
    assert _verify(verifier, token).subject == "u1"
    assert _verify(verifier, token).subject == "u1"
    assert len(checked) == 1  # the second answered from memory
    clock[0] = now + 31  # past exp: refused, however recently it was verified
    with pytest.raises(TokenError, match="expired"):
        _verify(verifier, token)

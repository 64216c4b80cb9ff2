"""Tokens that must be refused, for every protocol's refusal tests."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time

from joserfc import jwt
from joserfc.jwk import ECKey

from gateway_task.dev_issuer import DevIssuerKey
from tests.gateway_harness import RunningGateway


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def claims_for(gw: RunningGateway, **over: object) -> dict[str, object]:
    now = int(time.time())
    claims: dict[str, object] = {
        "iss": gw.config.identity.issuer_url, "aud": "tapegate", "sub": "mallory",
        "iat": now, "nbf": now, "exp": now + 600, "groups": ["agents"],
    }  # fmt: skip
    claims.update(over)
    return {k: v for k, v in claims.items() if v is not None}


def signed_token(gw: RunningGateway, claims: dict[str, object], key: ECKey | None = None) -> str:
    key = key or DevIssuerKey(gw.config.data_dir).load()
    return jwt.encode({"alg": "ES256", "kid": key.kid}, claims, key, algorithms=["ES256"])


def bad_tokens(gw: RunningGateway) -> dict[str, tuple[str, str]]:
    """name → (token, a phrase the error message must contain)"""
    now = int(time.time())
    dev_key = DevIssuerKey(gw.config.data_dir).load()
    valid = signed_token(gw, claims_for(gw))
    head, _payload, sig = valid.split(".")
    forged_payload = _b64(json.dumps(claims_for(gw, sub="admin", groups=["dba"])).encode())
    public_pem = json.dumps(dev_key.as_dict(private=False)).encode()
    hs_head = _b64(json.dumps({"alg": "HS256", "kid": dev_key.kid}).encode())
    hs_body = _b64(json.dumps(claims_for(gw)).encode())
    hs_sig = _b64(hmac.new(public_pem, f"{hs_head}.{hs_body}".encode(), hashlib.sha256).digest())
    none_head = _b64(json.dumps({"alg": "none", "kid": dev_key.kid}).encode())
    stranger = ECKey.import_key(ECKey.generate_key("P-256").as_dict(private=True), {"kid": "nope"})
    return {
        "expired": (signed_token(gw, claims_for(gw, iat=now - 7200, nbf=now - 7200,
                                                exp=now - 3600)), "expired"),
        "not_yet_valid": (signed_token(gw, claims_for(gw, nbf=now + 3600)), "not yet valid"),
        "wrong_issuer": (signed_token(gw, claims_for(gw, iss="http://evil.example")), "issuer"),
        "wrong_audience": (signed_token(gw, claims_for(gw, aud="someone-else")), "audience"),
        "unknown_kid": (signed_token(gw, claims_for(gw), stranger), "unknown key id"),
        "alg_none": (f"{none_head}.{hs_body}.", "'none' is not accepted"),
        "hs256_public_key": (f"{hs_head}.{hs_body}.{hs_sig}", "'HS256' is not accepted"),
        "tampered": (f"{head}.{forged_payload}.{sig}", "signature does not verify"),
        "garbage": ("hunter2", "not a JWT"),
    }  # fmt: skip

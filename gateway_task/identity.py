"""Who is calling: verify an OIDC access or ID token against the configured issuer.

Discovery (`/.well-known/openid-configuration`) names the JWKS; keys are cached and fetched again
when a token names a `kid` the cache does not know (at most once per REFRESH_INTERVAL_S, so
garbage tokens cannot make the gateway hammer the issuer). Only asymmetric algorithms are
accepted — never `none`, never an HMAC, whose "secret" would be the issuer's public key.

A verified token is remembered (by its SHA-256) for VERIFIED_TTL_S, never past its `exp`: clients
that open a connection per request (MCP clients do) would otherwise pay a signature check each.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
import urllib.request
import warnings
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any

from joserfc import jws, jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet

from tapegate.config import IdentityConfig
from tapegate.tape import Identity

ALLOWED_ALGORITHMS = ("RS256", "ES256", "EdDSA", "Ed25519")
REFRESH_INTERVAL_S = 30.0
FETCH_TIMEOUT_S = 5.0
MAX_TOKEN_BYTES = 16 * 1024
VERIFIED_TTL_S = 60.0  # bounds how long a key the issuer withdrew still admits its tokens
VERIFIED_MAX = 4096

Fetch = Callable[[str], Awaitable[dict[str, Any]]]


class TokenError(Exception):
    """A token that does not prove who is calling. The message is safe to show the caller."""


class IssuerUnavailable(TokenError):
    """The issuer's discovery document or keys could not be fetched."""


async def fetch_json(url: str) -> dict[str, Any]:
    def get() -> dict[str, Any]:
        req = urllib.request.Request(url, headers={"Accept": "application/json"})
        with urllib.request.urlopen(req, timeout=FETCH_TIMEOUT_S) as resp:
            doc = json.loads(resp.read(1 << 20))
        if not isinstance(doc, dict):
            raise ValueError("not a JSON object")
        return doc

    return await asyncio.to_thread(get)


class OidcVerifier:
    def __init__(
        self,
        config: IdentityConfig,
        fetch: Fetch = fetch_json,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.issuer = config.issuer_url
        self.audience = config.audience
        self.groups_claim = config.groups_claim
        self.leeway = config.leeway_s
        self.max_lifetime = config.max_token_lifetime_s
        self._fetch = fetch
        self._clock = clock
        self._keys: KeySet | None = None
        self._fetched_at = float("-inf")
        self._lock = asyncio.Lock()
        self._verified: OrderedDict[bytes, tuple[float, Identity]] = OrderedDict()

    async def verify(self, token: str) -> Identity:
        if not token or len(token) > MAX_TOKEN_BYTES:
            raise TokenError("no token given: send your OIDC token")
        digest = hashlib.sha256(token.encode()).digest()
        now = self._clock()
        seen = self._verified.get(digest)
        if seen is not None:
            until, identity = seen
            if now < until and (identity.expires_at or 0) + self.leeway > now:
                return identity
            del self._verified[digest]
        identity = await self._verify(token)
        self._verified[digest] = (now + VERIFIED_TTL_S, identity)
        if len(self._verified) > VERIFIED_MAX:
            self._verified.popitem(last=False)
        return identity

    async def _verify(self, token: str) -> Identity:
        try:
            header = jws.extract_compact(token.encode()).headers()
        except (JoseError, ValueError, UnicodeError):
            raise TokenError("the token is not a JWT: send your OIDC token") from None
        alg = header.get("alg")
        if alg not in ALLOWED_ALGORITHMS:
            raise TokenError(f"token algorithm {alg!r} is not accepted")
        kid = header.get("kid")
        keys = await self._key_set(kid)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # joserfc flags "EdDSA" as deprecated
                decoded = jwt.decode(token, keys, algorithms=list(ALLOWED_ALGORITHMS))
        except JoseError as exc:
            raise TokenError(f"token signature does not verify ({exc.error})") from None
        claims = decoded.claims
        registry = jwt.JWTClaimsRegistry(
            now=lambda: int(self._clock()),
            leeway=self.leeway,
            iss={"essential": True, "value": self.issuer},
            aud={"essential": True, "value": self.audience},
            exp={"essential": True},
            sub={"essential": True},
        )
        try:
            registry.validate(claims)
        except JoseError as exc:
            raise TokenError(_claim_message(exc, claims, self)) from None
        self._check_lifetime(claims)
        return Identity(
            issuer=str(claims["iss"]),
            subject=str(claims["sub"]),
            email=claims.get("email") if isinstance(claims.get("email"), str) else None,
            groups=_groups(claims.get(self.groups_claim)),
            token_id=str(claims["jti"]) if "jti" in claims else None,
            expires_at=int(claims["exp"]),
        )

    def _check_lifetime(self, claims: dict[str, Any]) -> None:
        """exp - iat (exp - now without iat) may not exceed identity.max_token_lifetime."""
        exp = claims["exp"]
        iat = claims.get("iat")
        start = iat if isinstance(iat, int | float) and not isinstance(iat, bool) else self._clock()
        lifetime = float(exp) - float(start)
        if lifetime > self.max_lifetime:
            raise TokenError(
                f"token lifetime {_span(lifetime)} exceeds the gateway's "
                f"identity.max_token_lifetime ({_span(self.max_lifetime)}): ask your issuer "
                "for a shorter-lived token"
            )

    async def _key_set(self, kid: str | None) -> KeySet:
        async with self._lock:
            known = self._keys is not None and (kid is None or _has_kid(self._keys, kid))
            # Without any keys yet (issuer down at start), retry sooner than the usual interval.
            interval = REFRESH_INTERVAL_S if self._keys is not None else 1.0
            if not known and self._clock() - self._fetched_at >= interval:
                await self._refresh()
            if self._keys is None:
                raise IssuerUnavailable(
                    f"cannot reach the identity issuer {self.issuer}; try again shortly"
                )
            if kid is not None and not _has_kid(self._keys, kid):
                raise TokenError(f"token is signed by unknown key id {kid!r}")
            return self._keys

    async def _refresh(self) -> None:
        self._fetched_at = self._clock()
        try:
            discovery = await self._fetch(f"{self.issuer}/.well-known/openid-configuration")
            if discovery.get("issuer", "").rstrip("/") != self.issuer:
                raise ValueError(f"discovery names issuer {discovery.get('issuer')!r}")
            jwks = await self._fetch(str(discovery["jwks_uri"]))
            self._keys = KeySet.import_key_set(jwks)  # type: ignore[arg-type]
        except Exception as exc:  # any failure: keep the keys we had, if any
            logging.getLogger("tapegate.identity").warning(
                "JWKS refresh from %s failed: %s", self.issuer, type(exc).__name__
            )


def _has_kid(keys: KeySet, kid: str) -> bool:
    return any(k.kid == kid for k in keys.keys)


def _groups(raw: Any) -> tuple[str, ...]:
    if isinstance(raw, str):
        return tuple(raw.split())
    if isinstance(raw, list):
        return tuple(str(g) for g in raw)
    return ()


def _span(seconds: float) -> str:
    if seconds >= 3600:
        return f"{seconds / 3600:.3g} h"
    return f"{seconds / 60:.3g} min" if seconds >= 60 else f"{seconds:.0f} s"


def _claim_message(exc: JoseError, claims: dict[str, Any], v: OidcVerifier) -> str:
    text = getattr(exc, "description", None) or str(exc)
    name = getattr(exc, "claim", None)
    if name == "iss":
        return f"token issuer {claims.get('iss')!r} is not the configured issuer {v.issuer!r}"
    if name == "aud":
        return f"token audience {claims.get('aud')!r} does not include {v.audience!r}"
    return f"token rejected: {text}"

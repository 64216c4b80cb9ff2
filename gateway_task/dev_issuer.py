"""The embedded dev issuer: a real OIDC issuer on loopback for local use and tests.

It serves a discovery document and a JWKS over HTTP, and `tapegate token` mints ES256 tokens with
its key (kept in the data dir, mode 0600). The gateway verifies these tokens like any other
issuer's, through discovery and the JWKS: there is no bypass.
"""

from __future__ import annotations

import json
import os
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from joserfc import jwt
from joserfc.jwk import ECKey

from tapegate.config import Address, IdentityConfig


class DevIssuerKey:
    def __init__(self, data_dir: Path) -> None:
        self.path = Path(data_dir) / "keys" / "dev-issuer.jwk"

    def load(self) -> ECKey:
        if not self.path.exists():
            key = ECKey.generate_key("P-256", private=True)
            key = ECKey.import_key(key.as_dict(private=True), {"kid": key.thumbprint()})
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as fh:
                json.dump(key.as_dict(private=True), fh)
            return key
        return ECKey.import_key(json.loads(self.path.read_text()))

    def jwks(self) -> dict[str, object]:
        key = self.load()
        public = key.as_dict(private=False)
        return {"keys": [{**public, "use": "sig", "alg": "ES256"}]}


def mint_token(
    data_dir: Path,
    identity: IdentityConfig,
    subject: str,
    groups: list[str],
    ttl_s: int = 3600,
    email: str | None = None,
    now: float | None = None,
) -> str:
    key = DevIssuerKey(data_dir).load()
    issued = int(time.time() if now is None else now)
    claims: dict[str, object] = {
        "iss": identity.issuer_url,
        "aud": identity.audience,
        "sub": subject,
        "iat": issued,
        "nbf": issued,
        "exp": issued + ttl_s,
        "jti": str(uuid.uuid4()),
        identity.groups_claim: groups,
    }
    if email:
        claims["email"] = email
    return jwt.encode({"alg": "ES256", "kid": key.kid}, claims, key, algorithms=["ES256"])


class DevIssuerServer:
    """Serves discovery and JWKS on a loopback port, from a thread (stdlib http.server)."""

    def __init__(self, data_dir: Path, listen: Address) -> None:
        jwks = json.dumps(DevIssuerKey(data_dir).jwks()).encode()
        issuer = f"http://{listen}"
        discovery = json.dumps(
            {
                "issuer": issuer,
                "jwks_uri": f"{issuer}/jwks.json",
                "id_token_signing_alg_values_supported": ["ES256"],
                "subject_types_supported": ["public"],
                "response_types_supported": ["id_token"],
            }
        ).encode()
        routes = {"/.well-known/openid-configuration": discovery, "/jwks.json": jwks}

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                body = routes.get(self.path)
                self.send_response(200 if body else 404)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body or b"")))
                self.end_headers()
                self.wfile.write(body or b"")

            def log_message(self, format: str, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer((listen.host, listen.port), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

"""The gateway's own login to the upstream server, as a sans-IO state machine.

Feed it what the server says; send what it returns; stop when `done` (or on LoginError). It
speaks SCRAM-SHA-256 through scramp — with channel binding (SCRAM-SHA-256-PLUS,
tls-server-end-point) when the connection is TLS, so that a machine in the middle holding its own
certificate cannot complete the login — and md5 or cleartext only where the target allows
insecure auth: those hand the password (or a replayable hash of it) to whoever answers at the
upstream's address. It collects what the client will need afterwards: ParameterStatus values,
the upstream's BackendKeyData (kept for cancels) and the status of the first ReadyForQuery.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

from scramp import ScramClient, ScramException
from scramp.core import CBindData

from tapegate.protocols.postgres import messages as m

# Startup parameters that name who and what the client connects to: the gateway decides these.
_NOT_PASSED_ON = frozenset({"user", "database", "replication", "application_name"})


class LoginError(Exception):
    """The upstream refused or broke the login. `fields` holds its ErrorResponse, if any."""

    def __init__(self, text: str, fields: dict[str, str] | None = None) -> None:
        super().__init__(text)
        self.fields = fields or {}


@dataclass
class UpstreamLogin:
    user: str
    database: str
    password: str
    application_name: str = "tapegate"
    # The client's own startup parameters (client_encoding, DateStyle, options, ...), passed on
    # so that nothing about the session changes; user and database are the target's.
    client_params: dict[str, str] = field(default_factory=dict)
    params: dict[str, str] = field(default_factory=dict)  # ParameterStatus, in arrival order
    backend_key: tuple[int, int] | None = None
    status: bytes = b"I"
    done: bool = False
    method: str | None = None
    allow_insecure_auth: bool = False  # the target's: md5 and cleartext passwords
    server_cert: bytes | None = None  # the upstream's certificate (DER) when TLS is on

    def __post_init__(self) -> None:
        self._reader = m.MessageReader(max_bytes=1 << 20)
        self._scram: ScramClient | None = None
        self._proven = False  # the server proved it knows the password (SCRAM's server-final)

    def startup(self) -> bytes:
        params = {
            k: v
            for k, v in self.client_params.items()
            if k not in _NOT_PASSED_ON and not k.startswith("_pq_.")
        }
        params["user"] = self.user
        params["database"] = self.database
        params["application_name"] = self.application_name
        return m.StartupMessage(params).encode()

    def receive(self, data: bytes) -> bytes:
        """Consume server bytes; return bytes to send back (possibly empty)."""
        self._reader.feed(data)
        out = bytearray()
        for tag, body, _ in self._reader.messages():
            if self.done:
                raise LoginError("upstream sent data after ReadyForQuery during login")
            out += self._on_message(tag, body)
        return bytes(out)

    def _on_message(self, tag: int, body: bytes) -> bytes:
        if tag == ord("R"):
            code, rest = m.decode_auth(body)
            return self._on_auth(code, rest)
        if tag == ord("E"):
            fields = m.decode_fields(body)
            raise LoginError(fields.get("M", "upstream refused the login"), fields)
        if tag == ord("S"):
            name, value = m.decode_parameter_status(body)
            self.params[name] = value
        elif tag == ord("K"):
            self.backend_key = m.decode_backend_key_data(body)
        elif tag == ord("Z"):
            self.status = body[:1] or b"I"
            self.done = True
        elif tag == ord("v"):
            pass  # NegotiateProtocolVersion: the server speaks an older minor; 3.0 is fine
        elif tag != ord("N"):
            raise LoginError(f"unexpected message {chr(tag)!r} from upstream during login")
        return b""

    def _on_auth(self, code: int, rest: bytes) -> bytes:
        if code == m.AUTH_OK:
            # Like libpq's "server did not complete authentication": an AuthenticationOk
            # before SCRAM's server-final proves nothing, and anyone answering at the upstream's
            # address (with its own certificate) could send it and take every statement.
            if self._scram is not None and not self._proven:
                raise LoginError("the upstream said the login succeeded before completing SCRAM")
            if self.method is None:
                if not self.allow_insecure_auth:
                    raise LoginError(
                        "the upstream accepted the login without a password (trust): it proved "
                        "nothing, so an impostor at its address could do the same (use "
                        "scram-sha-256, or set allow_insecure_auth: true on the target)"
                    )
                self.method = "trust"
            return b""
        if code in (m.AUTH_CLEARTEXT, m.AUTH_MD5) and not self.allow_insecure_auth:
            what = "a cleartext password" if code == m.AUTH_CLEARTEXT else "an md5 password hash"
            raise LoginError(
                f"the upstream asks for {what}, which tapegate does not send: anyone answering "
                "at the upstream's address could read or replay it (use scram-sha-256, or set "
                "allow_insecure_auth: true on the target)"
            )
        if code == m.AUTH_CLEARTEXT:
            self.method = "cleartext"
            return m.password_message(self.password.encode())
        if code == m.AUTH_MD5:
            self.method = "md5"
            inner = hashlib.md5((self.password + self.user).encode()).hexdigest()
            outer = hashlib.md5(inner.encode() + rest[:4]).hexdigest()
            return m.password_message(b"md5" + outer.encode())
        if code == m.AUTH_SASL:
            offered = [x.decode("utf-8", "replace") for x in rest.split(b"\0") if x]
            usable = [x for x in ("SCRAM-SHA-256-PLUS", "SCRAM-SHA-256") if x in offered]
            if not usable:
                raise LoginError(f"upstream offers no supported SASL mechanism: {offered}")
            binding = None
            if self.server_cert is not None:
                # Also without -PLUS on offer: the client then says it could bind, so a server
                # that can (and sees its offer stripped by someone) refuses.
                try:
                    cert_hash = bytes(CBindData.from_der(self.server_cert))
                except ScramException as exc:  # e.g. an Ed25519 certificate: no hash defined
                    raise LoginError(f"cannot bind to the upstream's certificate: {exc}") from None
                binding = ("tls-server-end-point", cert_hash)
            elif usable == ["SCRAM-SHA-256-PLUS"]:
                raise LoginError("upstream offers only SCRAM-SHA-256-PLUS, which needs TLS")
            try:
                self._scram = ScramClient(usable, self.user, self.password, channel_binding=binding)
            except ScramException as exc:
                raise LoginError(f"SCRAM setup failed: {exc}") from None
            name = self._scram.mechanism_name
            self.method = name.lower()
            return m.sasl_initial_response(name, self._scram.get_client_first().encode())
        if code == m.AUTH_SASL_CONTINUE and self._scram is not None:
            try:
                self._scram.set_server_first(rest.decode())
                return m.sasl_response(self._scram.get_client_final().encode())
            except ScramException as exc:
                raise LoginError(f"SCRAM exchange failed: {exc}") from None
        if code == m.AUTH_SASL_FINAL and self._scram is not None:
            try:
                self._scram.set_server_final(rest.decode())
            except ScramException as exc:
                raise LoginError(f"upstream failed SCRAM server verification: {exc}") from None
            self._proven = True
            return b""
        raise LoginError(f"upstream asks for an unsupported authentication method ({code})")

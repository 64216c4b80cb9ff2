"""One HTTP request/response through the gateway, without I/O: routing, header rewriting, events.

`wire` reads and frames HTTP/1.1 on both sides; this module decides what is forwarded and what is
recorded. The client's `Authorization` (its OIDC token) is never forwarded, and the credential
the gateway adds is redacted from everything recorded.
"""

from __future__ import annotations

import base64
import functools
import json
from dataclasses import dataclass, field
from urllib.parse import unquote

# RFC 9110 §7.6.1: these describe one hop and are not forwarded. Content-Length and
# Transfer-Encoding are not forwarded either: `wire` writes the gateway's own framing.
HOP_BY_HOP = frozenset(
    {b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer", b"upgrade",
     b"proxy-authenticate", b"proxy-authorization"}
)  # fmt: skip
# Recorded as "[redacted]" in events (frames keep the client's cookies: they are encrypted).
ALWAYS_REDACTED = frozenset(
    {b"authorization", b"proxy-authorization", b"cookie", b"set-cookie", b"x-api-key"}
)
REDACTED = "[redacted]"

Headers = list[tuple[bytes, bytes]]


def strip_access_token(path: str) -> str:
    """The path without an `access_token` query parameter (RFC 6750 §2.3): a bearer token in
    a URL is never forwarded (the target's credential is the gateway's) nor recorded."""
    base, sep, query = path.partition("?")
    if not sep:
        return path
    kept = [p for p in query.split("&")
            if unquote(p.partition("=")[0]).lower() != "access_token"]  # fmt: skip
    return base + ("?" + "&".join(kept) if kept else "")


class Masker:
    """The credentials, each replaced by as many `*` in what the target sends back (an upstream
    that echoes its key would show it to the agent and to the recording). Holds back only a
    tail that could be the start of one, so a stream is not delayed otherwise. One credential
    for an HTTP target; a stdio MCP server's may be several (its `env`)."""

    MIN_BYTES = 8  # a shorter credential would mask ordinary text (and guesses fast anyway)

    def __init__(self, *secrets: bytes) -> None:
        # Each also as JSON writes it (a PEM key's newlines, a quote, non-ASCII as \uXXXX), and
        # the longest first: a credential holding another is masked whole.
        forms = [f for s in secrets for f in (s, *_json_forms(s))]
        self._masks = [_Mask(f) for f in sorted(dict.fromkeys(forms), key=len, reverse=True)
                       if len(f) >= self.MIN_BYTES]  # fmt: skip

    @property
    def masked(self) -> int:
        """Occurrences replaced."""
        return sum(m.masked for m in self._masks)

    def header(self, value: bytes) -> bytes:
        for mask in self._masks:
            value = mask.header(value)
        return value

    def feed(self, data: bytes) -> bytes:
        for mask in self._masks:
            data = mask.feed(data)
        return data

    def flush(self) -> bytes:
        data = b""
        for mask in self._masks:  # what one held back, the next still reads
            data = mask.feed(data) + mask.flush()
        return data


@functools.lru_cache(maxsize=256)  # per credential, not per request: a Masker is per exchange
def _json_forms(secret: bytes) -> tuple[bytes, ...]:
    """How a JSON writer may spell the secret inside a string (escapes), when not as is."""
    try:
        text = secret.decode("utf-8")
    except UnicodeDecodeError:
        return ()
    forms = {json.dumps(text)[1:-1].encode(), json.dumps(text, ensure_ascii=False)[1:-1].encode()}
    forms.discard(secret)
    return tuple(sorted(forms))


class _Mask:
    def __init__(self, secret: bytes) -> None:
        self.secret = secret
        self.stars = b"*" * len(secret)
        self.masked = 0
        self._held = b""

    def header(self, value: bytes) -> bytes:
        if self.secret not in value:
            return value
        self.masked += value.count(self.secret)
        return value.replace(self.secret, self.stars)

    def feed(self, data: bytes) -> bytes:
        buf = self._held + data
        if self.secret in buf:
            self.masked += buf.count(self.secret)
            buf = buf.replace(self.secret, self.stars)
        keep = _partial_tail(buf, self.secret)
        self._held = buf[len(buf) - keep :] if keep else b""
        return buf[: len(buf) - keep]

    def flush(self) -> bytes:
        held, self._held = self._held, b""
        return held


def _partial_tail(buf: bytes, secret: bytes) -> int:
    """The length of the longest end of `buf` that is a proper start of `secret`."""
    first = secret[:1]
    at = buf.find(first, max(0, len(buf) - len(secret) + 1))
    while at != -1:  # only where the credential's first byte is: the earliest is the longest
        if secret.startswith(buf[at:]):
            return len(buf) - at
        at = buf.find(first, at + 1)
    return 0


def bearer_token(headers: Headers) -> str | None:
    for name, value in headers:
        if name == b"authorization":
            scheme, _, token = value.decode("latin-1").partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip()
            return None
    return None


def wants_websocket(headers: Headers) -> bool:
    upgrade = header(headers, b"upgrade")
    connection = header(headers, b"connection")
    return (
        upgrade is not None
        and upgrade.lower() == b"websocket"
        and connection is not None
        and b"upgrade" in [t.strip().lower() for t in connection.split(b",")]
    )


def upstream_request_headers(
    headers: Headers, upstream_host: bytes, credential: tuple[bytes, bytes], client_addr: str
) -> Headers:
    """The client's headers as the upstream sees them: token out, credential in, Host rewritten."""
    websocket = wants_websocket(headers)
    cred_name = credential[0].lower()
    out: Headers = [(b"host", upstream_host)]
    forwarded_for = client_addr.rsplit(":", 1)[0].encode()
    for name, value in headers:
        # X_Api_Key is X-Api-Key to servers that map headers to variables (CGI, WSGI, Rack):
        # a client's copy under either spelling must not reach them beside the credential.
        if name.replace(b"_", b"-") in (b"host", b"authorization", b"expect", cred_name):
            continue  # Expect: the gateway answers 100-continue itself
        if websocket and name == b"sec-websocket-extensions":
            continue  # no compression: the recorded frames stay readable
        if name == b"x-forwarded-for":
            forwarded_for = value + b", " + forwarded_for
            continue
        if name in HOP_BY_HOP and not (websocket and name in (b"upgrade", b"connection")):
            continue
        out.append((name, value))
    out.append((b"x-forwarded-for", forwarded_for))
    if credential[0]:  # an MCP stdio server has none: its credentials are its environment
        out.append(credential)
    return out


def client_response_headers(headers: Headers, websocket: bool = False) -> Headers:
    return [
        (n, v)
        for n, v in headers
        if n not in HOP_BY_HOP or (websocket and n in (b"upgrade", b"connection"))
    ]


def recorded_headers(headers: Headers, also_redact: bytes = b"") -> list[list[str]]:
    secret = {also_redact.lower()} | ALWAYS_REDACTED
    return [
        [n.decode("latin-1"), REDACTED if n in secret else v.decode("latin-1")] for n, v in headers
    ]


@dataclass
class Body:
    """A message body as recorded: its first `cap` bytes and its total length."""

    cap: int
    length: int = 0
    _kept: bytearray = field(default_factory=bytearray)

    def add(self, data: bytes) -> None:
        self.length += len(data)
        room = self.cap - len(self._kept)
        if room > 0:
            self._kept += data[:room]

    def attrs(self, content_type: str) -> dict[str, object]:
        out: dict[str, object] = {"body_length": self.length, "content_type": content_type}
        if not self.length:
            return out
        kept = bytes(self._kept)
        try:
            out["body"] = kept.decode("utf-8")
        except UnicodeDecodeError:
            out["body"] = base64.b64encode(kept).decode()
            out["body_encoding"] = "base64"
        if len(kept) < self.length:
            out["body_truncated"] = True
        return out


def identity_encoded(headers: Headers) -> bool:
    """Whether a body is sent as is (no Content-Encoding): only then can it be masked."""
    value = header(headers, b"content-encoding")
    return value is None or value.strip().lower() in (b"", b"identity")


def content_type(headers: Headers) -> str:
    value = header(headers, b"content-type")
    return value.decode("latin-1") if value is not None else ""


def http_version(version: bytes) -> str:
    return "HTTP/" + version.decode("ascii", errors="replace")


def header(headers: Headers, name: bytes) -> bytes | None:
    """The first value of a header (names are lowercase)."""
    for n, v in headers:
        if n == name:
            return v
    return None

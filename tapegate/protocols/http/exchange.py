"""One HTTP request/response through the gateway, without I/O: routing, header rewriting, events.

`wire` reads and frames HTTP/1.1 on both sides; this module decides what is forwarded and what is
recorded. The client's `Authorization` (its OIDC token) is never forwarded, and the credential
the gateway adds is redacted from everything recorded.
"""

from __future__ import annotations

import base64
import re
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


@dataclass(frozen=True)
class Route:
    target: str
    path: str  # what follows the target segment, with the query: "/v1/items?x=1"


class PathEscape(ValueError):
    """The request path leaves its target once dot segments are resolved."""


# What some servers treat as a path separator besides "/": a backslash, and either encoded.
_SEPARATORS = re.compile(r"/|\\|%2[fF]|%5[cC]")
_DOT = re.compile(r"%2[eE]")


def route(request_target: bytes) -> Route | None:
    """`/api/v1/items?x=1` → Route("api", "/v1/items?x=1"). None for `*` or absolute forms.

    Dot segments are resolved first (RFC 3986 §5.2.4), also where the dots are percent-encoded
    or the separators are backslashes or encoded slashes, as an upstream may read them: a path
    that climbs out of its target raises PathEscape. One that stays inside is forwarded
    resolved (its separators then all "/"). Readings that only some servers make (see
    `_escapes_when_read_widely`) are checked too, but not rewritten."""
    text = request_target.decode("ascii", errors="replace")  # llhttp let only ASCII through
    if not text.startswith("/"):
        return None
    path, sep, query = text.partition("?")
    if "." not in path and "\\" not in path and "%" not in path:  # nothing to resolve
        name, _, rest = path[1:].partition("/")
        return Route(name, "/" + rest + sep + query) if name else None
    segments = _SEPARATORS.split(path)[1:]
    resolved = "/" + "/".join(_resolve(segments))  # raises first: the plain reading climbs
    if _escapes_when_read_widely(path):
        raise PathEscape("the request path leaves its target (as some servers decode it)")
    if any(_DOT.sub(".", seg) in (".", "..") for seg in segments):
        path = resolved
    name, _, rest = path[1:].partition("/")
    if not name:
        return None
    return Route(name, "/" + rest + (sep + query))


def _resolve(segments: list[str]) -> list[str]:
    out: list[str] = []
    for i, seg in enumerate(segments):
        dots = _DOT.sub(".", seg)
        last = i == len(segments) - 1
        if dots == ".":
            if last:
                out.append("")
        elif dots == "..":
            if len(out) <= 1:  # would pop the target segment itself, or go above the root
                raise PathEscape("the request path leaves its target (a '..' segment)")
            out.pop()
            if last:
                out.append("")
        else:
            out.append(seg)
    return out


# What servers decode beyond RFC 3986 once: %XX again (a path decoded twice, `%252e`), IIS's
# `%u002e`, and overlong UTF-8 (`%c0%ae`, which lenient decoders read as "."). Tomcat and
# Spring also read `..;jsessionid=1` as `..` (a path parameter).
_ESCAPE = re.compile(rb"%([0-9a-fA-F]{2})|%[uU]([0-9a-fA-F]{4})")
_OVERLONG = re.compile(
    rb"[\xc0\xc1][\x80-\xbf]|\xe0[\x80-\x9f][\x80-\xbf]|\xf0[\x80-\x8f][\x80-\xbf]{2}"
)
_WIDE_SEPARATORS = re.compile(rb"[/\\]")
_DECODINGS = 4  # a path still changing after this many decodings is refused unread


def _escapes_when_read_widely(path: str) -> bool:
    """Whether the path climbs out of its target when decoded as the most lenient servers do:
    repeatedly, with `%u` escapes and overlong UTF-8, and with `;params` cut from segments.
    Such a path is refused rather than resolved: no reading is the upstream's for sure."""
    raw = path.encode("ascii")
    for _ in range(_DECODINGS):
        decoded = _OVERLONG.sub(_shortest, _ESCAPE.sub(_unescape, raw))
        if decoded == raw:
            break
        raw = decoded
    else:
        raise PathEscape(
            f"the request path leaves its target or hides it: encoded over {_DECODINGS} times"
        )
    depth = 0
    for seg in _WIDE_SEPARATORS.split(raw)[2:]:  # "", the target, then the rest
        seg = seg.partition(b";")[0]
        if seg == b"..":
            depth -= 1
            if depth < 0:
                return True
        elif seg not in (b"", b"."):
            depth += 1
    return False


def _unescape(m: re.Match[bytes]) -> bytes:
    if m[1] is not None:
        return bytes((int(m[1], 16),))
    return chr(int(m[2], 16)).encode("utf-8", "surrogatepass")


def _shortest(m: re.Match[bytes]) -> bytes:
    """An overlong UTF-8 sequence for an ASCII character → that character; others as they are."""
    seq = m[0]
    value = seq[0] & 0x7F >> len(seq)  # 2 bytes: 5 bits of the lead; 3: 4; 4: 3
    for byte in seq[1:]:
        value = value << 6 | byte & 0x3F
    return bytes((value,)) if value < 0x80 else seq


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
    """The credential, replaced by as many `*` in what the target sends back (an upstream that
    echoes its key would show it to the agent and to the recording). Holds back only a tail
    that could be the start of the credential, so a stream is not delayed otherwise."""

    MIN_BYTES = 8  # a shorter credential would mask ordinary text (and guesses fast anyway)

    def __init__(self, secret: bytes) -> None:
        self.secret = secret if len(secret) >= self.MIN_BYTES else b""
        self.stars = b"*" * len(self.secret)
        self.masked = 0  # occurrences replaced
        self._held = b""

    def header(self, value: bytes) -> bytes:
        if not self.secret or self.secret not in value:
            return value
        self.masked += value.count(self.secret)
        return value.replace(self.secret, self.stars)

    def feed(self, data: bytes) -> bytes:
        if not self.secret:
            return data
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

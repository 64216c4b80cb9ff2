"""The answers the gateway gives in its own name: refusals and errors, as HTTP responses."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from http import HTTPStatus

from tapegate.protocols.http import wire
from tapegate.proxy.admission import Refusal, RefusalKind, Words
from tapegate.vocab import EndReason

Headers = list[tuple[bytes, bytes]]

HTTP_WORDS = Words(
    "the first path segment",
    "use https:// (the token you just sent in clear text may have been seen on the way: "
    "fetch a new one)",
    "as Authorization: Bearer <token>",
)
# What an HTTP client gets for each of admission's refusals.
STATUSES = {
    RefusalKind.TLS_REQUIRED: 403, RefusalKind.UNKNOWN_TARGET: 404, RefusalKind.NO_TOKEN: 401,
    RefusalKind.BAD_TOKEN: 401, RefusalKind.GROUPS: 403, RefusalKind.ARCHIVE_FAILING: 503,
    RefusalKind.NO_CREDENTIAL: 502,
}  # fmt: skip
TITLES = {400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "unknown_target",
          408: "request_timeout", 413: "payload_too_large", 431: "headers_too_large",
          502: "bad_gateway", 503: "unavailable", 504: "gateway_timeout"}  # fmt: skip
UNRECORDABLE = "tapegate cannot record this session, so it is closed: nothing runs unrecorded"
# What a request still waiting for its answer is told when the gateway ends its session.
ENDINGS = {
    EndReason.RECORDING_FAILED: (503, UNRECORDABLE),
    EndReason.TOKEN_EXPIRED: (401, "your OIDC token has expired: send a fresh one"),
}
SHUTTING_DOWN = (503, "tapegate is shutting down: retry on another gateway")


@dataclass
class Refused:
    """A request the gateway answers itself, before anything reaches the target."""

    status: int
    message: str
    headers: Headers = field(default_factory=list)
    kind: str = "protocol"

    @classmethod
    def of(cls, refusal: Refusal) -> Refused:
        message, headers = refusal.message, []
        if refusal.kind == RefusalKind.UNKNOWN_TARGET and refusal.hint:
            message = f"{message} ({refusal.hint})"
        if refusal.kind == RefusalKind.NO_TOKEN:
            headers = [(b"www-authenticate", b'Bearer realm="tapegate"')]
        elif refusal.kind == RefusalKind.BAD_TOKEN:
            why = refusal.message.removeprefix("authentication failed: ").replace('"', "'")
            challenge = f'Bearer realm="tapegate", error="invalid_token", error_description="{why}"'
            headers = [(b"www-authenticate", challenge.encode())]
        return cls(STATUSES[refusal.kind], message, headers, refusal.kind)


def error_response(status: int, message: str, headers: Headers | None = None) -> bytes:
    """A JSON error the client can read; the connection closes after it."""
    body = json.dumps({"error": TITLES.get(status, "error"), "message": message}).encode()
    head = [(b"content-type", b"application/json"), (b"connection", b"close"), *(headers or [])]
    reason = HTTPStatus(status).phrase.encode()
    return wire.response_head(status, reason, head, wire.Body(length=len(body))) + body


def ending(reason: EndReason) -> tuple[int, str]:
    return ENDINGS.get(reason, SHUTTING_DOWN)

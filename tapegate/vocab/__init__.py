"""The tape's vocabulary: why a session ended (here) and every event type (`events`).

The final chunk's `end.reason` is one of these; tables, replay and the docs read them from here.
docs/FORMAT.md's table of reasons is generated from `END_REASONS` (`end_reason_table`), and a
test keeps the two the same, so a reason cannot be added without its line there. A StrEnum, so a
reason is written to the tape as its plain value.
"""

from __future__ import annotations

from enum import StrEnum

from tapegate.vocab.events import EVENT_TYPES, TRIM_ATTRS, EventSpec, EventType, event_type_list

__all__ = ["END_REASONS", "EVENT_TYPES", "TRIM_ATTRS", "EndReason", "EventSpec", "EventType",
           "end_reason_table", "event_type_list"]  # fmt: skip


class EndReason(StrEnum):
    CLIENT_TERMINATE = "client_terminate"
    CLIENT_CLOSED = "client_closed"
    CLOSED = "closed"
    UPSTREAM_CLOSED = "upstream_closed"
    UPSTREAM_UNAVAILABLE = "upstream_unavailable"
    CONNECTION_LOST = "connection_lost"
    TARGET_CHANGED = "target_changed"
    BLOCKED = "blocked"
    REFUSED = "refused"
    GATEWAY_SHUTDOWN = "gateway_shutdown"
    RECORDING_FAILED = "recording_failed"
    TOKEN_EXPIRED = "token_expired"
    IDLE_TIMEOUT = "idle_timeout"
    PROTOCOL_ERROR = "protocol_error"
    PROCESS_LIFETIME = "process_lifetime"
    ERROR = "error"


# Why each reason is given: the one description, which docs/FORMAT.md shows.
END_REASONS: dict[EndReason, str] = {
    EndReason.CLIENT_TERMINATE: "the client said goodbye (PostgreSQL Terminate)",
    EndReason.CLIENT_CLOSED: "the client's connection or channel closed",
    EndReason.CLOSED: "the target closed the channel (SSH, after the command's exit)",
    EndReason.UPSTREAM_CLOSED: "the target closed the connection",
    EndReason.UPSTREAM_UNAVAILABLE: "the gateway could not reach the target or log in to it",
    EndReason.CONNECTION_LOST: "a socket broke mid-session",
    EndReason.TARGET_CHANGED: "HTTP: the next request on the connection went to another target "
    "or subject",
    EndReason.BLOCKED: "a guardrail denied the SSH exec request or the PostgreSQL startup's "
    "settings",
    EndReason.REFUSED: "admission refused the login or request (also a refusal summary's reason)",
    EndReason.GATEWAY_SHUTDOWN: "the gateway stopped",
    EndReason.RECORDING_FAILED: "the archive could not take the recording (the session failed "
    "closed)",
    EndReason.TOKEN_EXPIRED: "the token's `exp` passed and `identity.on_token_expiry` is `end`",
    EndReason.IDLE_TIMEOUT: "no byte either way for `limits.idle_timeout_s`",
    EndReason.PROTOCOL_ERROR: "the client broke its protocol",
    EndReason.PROCESS_LIFETIME: "MCP stdio: the server process reached its `process_lifetime_s`",
    EndReason.ERROR: "anything else (a gateway bug, logged with its traceback)",
}


def end_reason_table(indent: str = "  ") -> str:
    """docs/FORMAT.md's table of end reasons, as Markdown."""
    rows = ["| reason | the session ended because |", "|---|---|"]
    rows += [f"| `{reason.value}` | {why} |" for reason, why in END_REASONS.items()]
    return "\n".join(indent + row for row in rows) + "\n"

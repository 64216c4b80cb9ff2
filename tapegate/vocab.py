"""The tape's vocabulary that more than one protocol shares: why a session ended.

The final chunk's `end.reason` is one of these (docs/FORMAT.md lists them); tables, replay and
the docs read them from here. A StrEnum, so a reason is written to the tape as its plain value.
"""

from __future__ import annotations

from enum import StrEnum


class EndReason(StrEnum):
    CLIENT_TERMINATE = "client_terminate"  # the client said goodbye (PostgreSQL Terminate)
    CLIENT_CLOSED = "client_closed"  # the client's connection or channel closed
    CLOSED = "closed"  # the target closed the channel (SSH: after the command's exit)
    UPSTREAM_CLOSED = "upstream_closed"  # the target closed the connection
    UPSTREAM_UNAVAILABLE = "upstream_unavailable"  # the gateway could not reach or log in
    CONNECTION_LOST = "connection_lost"  # a socket broke mid-session
    TARGET_CHANGED = "target_changed"  # HTTP: the next request on the connection went elsewhere
    BLOCKED = "blocked"  # a guardrail denied the SSH exec request or a PostgreSQL startup
    REFUSED = "refused"  # admission refused the login or request
    GATEWAY_SHUTDOWN = "gateway_shutdown"  # the gateway stopped (SIGTERM)
    RECORDING_FAILED = "recording_failed"  # the archive could not take the recording
    TOKEN_EXPIRED = "token_expired"  # identity.on_token_expiry: end, and the token's exp passed
    IDLE_TIMEOUT = "idle_timeout"  # limits.idle_timeout_s passed without a byte either way
    PROTOCOL_ERROR = "protocol_error"  # the client broke its protocol
    PROCESS_LIFETIME = "process_lifetime"  # MCP stdio: its server's process_lifetime_s passed
    ERROR = "error"  # anything else (a bug): logged with its traceback

"""What an exchange handler asks its owner (`Ask`), and the answers it gets back.

A handler that runs a whole connection (HTTP) meets the outside world only through these: the
owner (`gateway_task/server/http.py`) admits, connects, opens and closes tape sessions and
records refusals, and hands the handler the answer. Under a transcript test the same questions
are answered by a table.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tapegate.config import Target
from tapegate.proxy.admission import Admitted, Login
from tapegate.tape import Event, Identity
from tapegate.vocab import EndReason


@dataclass(frozen=True)
class Admit:
    """Run admission for this login. Answer: `Admitted` or `Refusal`."""

    login: Login


@dataclass(frozen=True)
class OpenSession:
    """Open a tape session for this admitted caller (the recorder is the driver's from now
    on). Answer: None; a failing archive raises `RecordingUnavailable` instead."""

    admitted: Admitted
    started_ns: int
    # Where a protocol's session outlives connections (MCP): which one this is. The owner
    # joins the open tape of the same subject, target and boundary, or opens one. Answer: that
    # tape's protocol state (MCP's `Ledger`), or None.
    boundary: str | None = None


@dataclass(frozen=True)
class NameSession:
    """The open tape session has learnt its boundary (an MCP `initialize` answered with its
    `Mcp-Session-Id`): later connections naming it join it. Answer: None."""

    boundary: str


@dataclass(frozen=True)
class CloseSession:
    """Leave the open tape session with this reason: it is sealed, unless it outlives the
    connection (MCP) and `final` is not set (a DELETE ended the MCP session). Answer: None."""

    reason: EndReason
    final: bool = False


@dataclass(frozen=True)
class Connect:
    """Open a connection to the target (replacing any). Answer: None, or `ConnectFailed`."""

    target: Target


@dataclass(frozen=True)
class ConnectFailed:
    status: int  # what an HTTP client is answered: 502 unreachable, 504 no answer in time
    message: str


@dataclass(frozen=True)
class RecordRefusal:
    """Record a refused request (folded into a summary in a flood). Answer: None."""

    identity: Identity | None  # set when the token was good and policy said no
    target: str
    attrs: dict[str, Any]
    started_ns: int | None = None
    first: Event | None = None

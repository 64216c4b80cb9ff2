"""The relay phase of a session, sans-IO: what a protocol handler tells the driver to do.

After admission a session is two byte streams, the client's and the target's. A protocol's
relay handler is fed what arrives on either side and answers with commands; the driver
(`gateway_task/server/driver.py`) executes them in order, for every protocol alike, and owns
everything the handler must not know: sockets, flow control, the clock, the recorder and the
acked commit.

Recording is the driver's, by one rule: the tape is the client's wire. Every byte received from
the client is a client→server frame before the handler sees it; every byte sent to the client
(`ToClient`, whether the target's or the gateway's own) is a server→client frame before it is
written. `ToServer` bytes were recorded as they arrived and are held back, in `durability:
acked`, until the sink holds the chunk they are in. Handlers add meaning with `Record`.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Protocol

from tapegate.tape import Event
from tapegate.vocab import EndReason


class Side(Enum):
    CLIENT = "client"
    SERVER = "server"


@dataclass(frozen=True, slots=True)
class ToServer:
    """Bytes for the target: forwarded once recorded (acked: once the sink holds them)."""

    data: bytes


@dataclass(frozen=True, slots=True)
class ToClient:
    """Bytes for the client: recorded, then written."""

    data: bytes


@dataclass(frozen=True, slots=True)
class Record:
    """Events that say what the bytes meant."""

    events: list[Event]


@dataclass(frozen=True, slots=True)
class CloseWrite:
    """Half-close towards one side (it will read no more from us); the other may go on."""

    side: Side


@dataclass(frozen=True, slots=True)
class End:
    """The session is over. Commands before it are carried out first."""

    reason: EndReason


Command = ToServer | ToClient | Record | CloseWrite | End


class RelayHandler(Protocol):
    """One protocol's relay phase. No method may block or raise: a broken peer is a command."""

    def client_data(self, data: bytes, ts: int) -> list[Command]: ...

    def server_data(self, data: bytes, ts: int) -> list[Command]: ...

    def closed(self, side: Side) -> list[Command]:
        """`side` sent EOF (or closed cleanly). The answer ends the session or half-closes."""
        ...

    def heavy(self, data: bytes) -> bool:
        """True when handling `data` from the client may take long enough to stall others
        (a statement of many megabytes to name): the driver then calls `client_data` on a
        thread and feeds nothing else to the handler meanwhile."""
        ...

    def farewell(self, reason: EndReason, why: str) -> bytes | None:
        """What to tell the client when the gateway ends the session for `reason` (`why` is
        the detail: the sink's failure, say), or None when nothing can be said now (in the
        middle of a message the protocol has no way to say it)."""
        ...

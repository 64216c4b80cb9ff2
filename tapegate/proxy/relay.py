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

A handler whose tape is not the client's wire byte for byte (HTTP: the client's head carries its
token, the tape keeps the head as forwarded, credential redacted) says `records_arrivals = False`
and gives each `ToServer` what to record as `shown`.

Handlers that run a whole connection rather than one relay phase (HTTP: request by request,
admitted one by one, upstream connections opened and dropped) are `ExchangeHandler`s: they also
`Ask` their owner (admit this request, open the upstream, open or close a tape session; the
answer comes back through `answer`), arm a `Timer` (their `wake` is called when it fires), and
`Pause`/`Resume` reading a side.
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
    """Bytes for the target: forwarded once recorded (acked: once the sink holds them).
    `shown`: what the tape keeps of them (recorded here even when arrivals are recorded: bytes
    that arrived before the handler recorded arrivals); None: the bytes themselves, recorded
    here only when arrivals are not."""

    data: bytes
    shown: bytes | None = None


@dataclass(frozen=True, slots=True)
class ToClient:
    """Bytes for the client: recorded (unless there is no session to record them in, a
    refusal's answer say: `record=False`), then written."""

    data: bytes
    record: bool = True


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


@dataclass(frozen=True, slots=True)
class Ask:
    """A question for the handler's owner (admit, connect, open a session): the driver asks
    it, holding the lane that asked, and gives the handler the answer (`answer`)."""

    question: object


@dataclass(frozen=True, slots=True)
class Timer:
    """Call `wake` once the driver's clock passes `at` (None: no timer). One per handler: a
    new one replaces the last."""

    at: float | None


@dataclass(frozen=True, slots=True)
class Wake:
    """Call `wake` on the client's lane once this lane's commands are done (a pipelined
    request can go on after its predecessor's answer has ended on the target's lane)."""


@dataclass(frozen=True, slots=True)
class Pause:
    """Stop reading `side` until `Resume`: the handler has no use for more of it now."""

    side: Side


@dataclass(frozen=True, slots=True)
class Resume:
    side: Side


@dataclass(frozen=True, slots=True)
class Disconnect:
    """Close the target's connection but not the session (HTTP: the next request opens a new
    one); what it still sends is not read."""


Command = (
    ToServer | ToClient | Record | CloseWrite | End | Ask | Timer | Wake | Pause | Resume
    | Disconnect
)  # fmt: skip


class RelayHandler(Protocol):
    """One protocol's relay phase. No method may block or raise: a broken peer is a command."""

    # Whether every byte from the client is a client→server frame as it arrives (else the
    # handler says what to record with `ToServer.shown`).
    records_arrivals: bool

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


class ExchangeHandler(RelayHandler, Protocol):
    """A handler for a whole connection (see the module's docstring). Its target side may be
    absent: `closed(Side.SERVER)` then means the target's connection ended, not the session."""

    def answer(self, question: object, answer: object) -> list[Command]:
        """The owner's answer to an `Ask`."""
        ...

    def wake(self) -> list[Command]:
        """Its `Timer` fired, or a `Wake` came due: the handler checks its own deadlines."""
        ...

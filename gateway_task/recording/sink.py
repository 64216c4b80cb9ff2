"""Where sealed chunks go: one small interface, one adapter per backend (folder, Firehose)."""

from __future__ import annotations

import asyncio
from concurrent.futures import Future
from typing import Protocol


class SinkError(Exception):
    """The sink cannot take records now. Sessions must stop forwarding (fail closed)."""


class Sink(Protocol):
    @property
    def failure(self) -> str | None:
        """Why the sink is failing, or None while it is healthy."""

    @property
    def over_memory(self) -> bool:
        """More unacknowledged bytes are held in memory than the sink allows: slow down."""

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        """Signal failures and room on this loop (the gateway's), from the sink's threads."""

    def failed(self) -> asyncio.Future[str]:
        """A future on the bound loop, done (with the reason) once the sink is failing."""

    async def room(self) -> None:
        """Return once the memory held is under the cap again (asyncio backpressure)."""

    def put(
        self, records: list[bytes], urgent: bool = False, ack: bool = False
    ) -> Future[None] | None:
        """Accept sealed records (kept for retry even while failing); raise SinkError while the
        sink is failing, so that the session stops forwarding. With `ack` (or `urgent`), return
        a future that is set once the sink holds these records durably; `urgent` also hands
        them to delivery now instead of waiting for the batch to fill or age."""

    def tick(self, now_ns: int) -> None:
        """Called periodically (the gateway: every 100 ms): flush by age, run the watchdog."""

    def flush(self, timeout: float = 30.0) -> bool:
        """Deliver everything accepted so far; False if that could not be done in time.
        Blocks: call it from a thread, never from the event loop."""

    def close(self) -> int:
        """Flush and release resources; return the bytes that could not be delivered."""

"""Where sealed chunks go: one small interface, one adapter per backend."""

from __future__ import annotations

from concurrent.futures import Future
from typing import Protocol


class SinkError(Exception):
    """The sink cannot take records now. Sessions must stop forwarding (fail closed)."""


class Sink(Protocol):
    @property
    def failure(self) -> str | None:
        """Why the sink is failing, or None while it is healthy."""

    def put(self, records: list[bytes], urgent: bool = False) -> Future[None] | None:
        """Accept sealed records (kept for retry even while failing); raise SinkError while the
        sink is failing, so that the session stops forwarding. With `urgent`, deliver now and
        return a future that is set once the sink holds the records durably."""

    def tick(self, now_ns: int) -> None:
        """Called periodically: flush by age, retry after a failure."""

    def flush(self, timeout: float = 30.0) -> bool:
        """Deliver everything accepted so far; False if that could not be done in time."""

    def close(self) -> int:
        """Flush and release resources; return the bytes that could not be delivered."""

"""Reads with a deadline, at the cost of a float store per read.

`asyncio.timeout()` arms and cancels a timer for every read, and cancels the task when it
fires; on a kept-alive HTTP connection that was a tenth of the gateway's time per request.
A `Deadline` keeps one timer per connection and re-arms it only when it fires early, so a read
that finishes in time costs nothing extra. When a deadline passes, the waiting stream is ended
(`feed_eof`) instead of the task being cancelled: the read returns and raises TimeoutError, and
no cancellation can land on a later await. A stream that timed out is not read again: the
connection closes after a timeout.
"""

from __future__ import annotations

import asyncio
import math


class Deadline:
    def __init__(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._timer: asyncio.TimerHandle | None = None
        self._at = math.inf
        self._reader: asyncio.StreamReader | None = None
        self.expired = False

    async def read(self, reader: asyncio.StreamReader, size: int, at: float | None) -> bytes:
        """`reader.read(size)`, or TimeoutError once the loop's clock passes `at` (None: no
        deadline)."""
        if at is None:
            return await reader.read(size)
        self._at, self._reader = at, reader
        timer = self._timer
        if timer is None or at < timer.when():
            if timer is not None:
                timer.cancel()
            self._timer = self._loop.call_at(at, self._check)
        try:
            data = await reader.read(size)
        finally:
            self._reader = None
        if self.expired:
            raise TimeoutError
        return data

    def now(self) -> float:
        """The loop's clock (asyncio.get_running_loop() costs a getpid() call on 3.11)."""
        return self._loop.time()

    def _check(self) -> None:
        self._timer = None
        if self._reader is None:
            return  # no read waiting: the next one arms its own timer
        if self._loop.time() >= self._at:
            self.expired = True
            self._reader.feed_eof()  # wakes the read; it raises TimeoutError
        else:
            self._timer = self._loop.call_at(self._at, self._check)

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

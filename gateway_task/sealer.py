"""The one thread that turns recorded frames and events into sealed chunks for the sink.

Sealing a chunk (XChaCha20-Poly1305, SHA-256, Ed25519) and encoding events cost as much CPU as
relaying the bytes did; libsodium and hashlib release the GIL while they work, so doing it here
lets a second core seal while the event loop relays (bench/RESULTS.md has the difference).

Operations run in the order sessions record them, so each session's chunks chain in sequence and
reach the sink in order. One that seals nothing (adding a frame or an event to a chunk is a copy)
runs at once on the event loop while the thread has nothing queued: for chatty traffic a thread
only adds hand-offs and contention for the GIL (pgbench through the gateway lost a fifth of its
TPS that way). One that seals a chunk is queued, handed over every HAND_OVER_S or
HAND_OVER_BYTES, whichever comes first, and everything after it waits in the queue, in order,
until the thread is idle again. The loop waits for the thread when
more than MAX_BACKLOG_BYTES are queued, so a fast relay cannot outrun sealing and grow memory
without bound. The sink's `put` and `tick` are called by one thread at a time, never both.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

log = logging.getLogger("tapegate.gateway")

HAND_OVER_S = 0.005
HAND_OVER_BYTES = 1 << 20
MAX_BACKLOG_BYTES = 32 << 20

Operation = Callable[[], None]


class Sealer:
    def __init__(self, max_backlog_bytes: int = MAX_BACKLOG_BYTES) -> None:
        self.max_backlog_bytes = max_backlog_bytes
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tapegate-seal")
        self._queued: list[tuple[Operation, int]] = []
        self._handover: asyncio.TimerHandle | None = None
        self._unhanded_bytes = 0
        self._handed: deque[Future[None]] = deque()  # batches the thread may not have run yet
        # Queued bytes, counted on the loop; sealed ones, on the thread: each is written by one
        # thread only, so their difference is the backlog without a lock.
        self._queued_bytes = 0
        self._sealed_bytes = 0

    def run(self, op: Operation, size: int = 0, seals: bool = False) -> None:
        """Run an operation after every one queued before it: here and now when it seals
        nothing and nothing is queued, else on the sealing thread."""
        if not seals and not self._queued and not self._busy():
            self._run_one(op)
            return
        self._queued.append((op, size))
        self._queued_bytes += size
        self._unhanded_bytes += size
        if self._unhanded_bytes >= HAND_OVER_BYTES:
            self.hand_over()
        elif self._handover is None:
            self._handover = asyncio.get_running_loop().call_later(HAND_OVER_S, self.hand_over)
        if self._queued_bytes - self._sealed_bytes > self.max_backlog_bytes:
            self.hand_over()
            while self._handed and self._queued_bytes - self._sealed_bytes > self.max_backlog_bytes:
                self._handed.popleft().result()  # the oldest batch: a short wait, not a drain

    def hand_over(self) -> None:
        if self._handover is not None:
            self._handover.cancel()
            self._handover = None
        self._unhanded_bytes = 0
        if self._queued:
            ops, self._queued = self._queued, []
            self._handed.append(self._pool.submit(self._run_all, ops))

    async def drain(self) -> None:
        """Wait, without blocking the loop, until everything queued so far has run."""
        self.hand_over()
        if self._handed:
            await asyncio.wrap_future(self._handed[-1])

    def close(self) -> None:
        self.hand_over()
        self._pool.shutdown(wait=True)

    def _busy(self) -> bool:
        while self._handed and self._handed[0].done():
            self._handed.popleft()
        return bool(self._handed)

    def _run_all(self, ops: list[tuple[Operation, int]]) -> None:
        for op, size in ops:
            self._run_one(op)
            self._sealed_bytes += size

    def _run_one(self, op: Operation) -> None:
        try:
            op()
        except Exception:  # an operation reports its own failures; this is a bug
            log.exception("sealing operation failed")

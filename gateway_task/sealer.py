"""The one thread that turns recorded frames and events into sealed chunks for the sink.

Sealing a chunk (XChaCha20-Poly1305, SHA-256, Ed25519) and encoding events cost as much CPU as
relaying the bytes did; libsodium and hashlib release the GIL while they work, so doing it here
lets a second core seal while the event loop relays (bench/RESULTS.md has the difference).

Operations are queued on the event loop in the order sessions record them and run here in that
order, so each session's chunks still chain in sequence and reach the sink in order. The queue
is handed over once per loop iteration, not once per operation. The loop waits for this thread
when more than MAX_BACKLOG_BYTES of frames are queued, so a fast relay cannot outrun sealing and
grow memory without bound. Only this thread calls the sink's `put` and `tick`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

log = logging.getLogger("tapegate.gateway")

MAX_BACKLOG_BYTES = 32 << 20

Operation = Callable[[], None]


class Sealer:
    def __init__(self, max_backlog_bytes: int = MAX_BACKLOG_BYTES) -> None:
        self.max_backlog_bytes = max_backlog_bytes
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tapegate-seal")
        self._queued: list[tuple[Operation, int]] = []
        self._handover_scheduled = False
        self._last: Future[None] | None = None
        # Written by one thread each, so the difference is the backlog without a lock.
        self._queued_bytes = 0
        self._sealed_bytes = 0

    def run(self, op: Operation, size: int = 0) -> None:
        """Queue an operation; it runs on the sealing thread after every one queued before it."""
        self._queued.append((op, size))
        self._queued_bytes += size
        if not self._handover_scheduled:
            self._handover_scheduled = True
            try:
                asyncio.get_running_loop().call_soon(self.hand_over)
            except RuntimeError:  # no loop (a tool or a test): run it now
                self.hand_over()
                self.wait()
        if self._queued_bytes - self._sealed_bytes > self.max_backlog_bytes:
            self.hand_over()
            self.wait()

    def hand_over(self) -> None:
        self._handover_scheduled = False
        if self._queued:
            ops, self._queued = self._queued, []
            self._last = self._pool.submit(self._run_all, ops)

    def wait(self) -> None:
        """Block until everything handed over has run."""
        if self._last is not None:
            self._last.result()

    async def drain(self) -> None:
        """Wait, without blocking the loop, until everything queued so far has run."""
        self.hand_over()
        if self._last is not None:
            await asyncio.wrap_future(self._last)

    def close(self) -> None:
        self.hand_over()
        self._pool.shutdown(wait=True)

    def _run_all(self, ops: list[tuple[Operation, int]]) -> None:
        for op, size in ops:
            try:
                op()
            except Exception:  # an operation reports its own failures; this is a bug
                log.exception("sealing operation failed")
            self._sealed_bytes += size

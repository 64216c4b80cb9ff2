"""What both sinks share: records accepted on the event loop, delivered in batches by threads.

- `put` runs on the event loop and never blocks: it appends to the open batch and hands a batch
  to delivery when it is full, old, or urgent.
- Memory is bounded: the bytes accepted and not yet held durably are counted, and above
  `max_memory_bytes` the sink says so (`over_memory`) and `room()` makes sessions wait on the
  loop (asyncio backpressure, nothing blocks the loop). A subclass with a disk spool moves
  batches there first.
- Delivery threads are supervised: a worker that raises is restarted with its batch back at the
  head of the queue; one that keeps raising turns the sink failing for good (the gateway then
  reports not-ready and refuses sessions), so a sink never dies silently.
- Acknowledgements (`ack=True`) are concurrent futures set once the batch is held durably. A
  future a waiting session gave up on (cancelled) is never completed later.
- Failure and room are signalled to the bound event loop with `call_soon_threadsafe`, so a
  session awaiting a commit wakes up on a failure without polling.

A subclass implements `_deliver(batch)` (hold the batch durably, then call `_held`, or keep
retrying; return without holding it only when `_closing`) and may add workers of its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass, field

from gateway_task.recording.sink import SinkError

log = logging.getLogger("tapegate.sink")

DEFAULT_MAX_MEMORY_BYTES = 64 << 20
# A worker that raises this many times within CRASH_WINDOW_S is not restarted again.
MAX_CRASHES = 5
CRASH_WINDOW_S = 60.0
# A batch handed to delivery and not held after this long means a hung worker (a blocked
# fsync, a network call that never returns): the sink reports failing, so the gateway turns
# not-ready and sessions stop, instead of waiting for room forever.
STALL_S = 60.0


@dataclass
class Batch:
    records: list[bytes]
    size: int
    acks: list[Future[None]] = field(default_factory=list)
    handed: float = field(default_factory=time.monotonic)


def settle(ack: Future[None], error: BaseException | None = None) -> None:
    """Complete an acknowledgement unless the session waiting for it gave up (cancelled it)."""
    if ack.done():
        return
    with contextlib.suppress(InvalidStateError):  # cancelled between the check and the set
        if error is None:
            ack.set_result(None)
        else:
            ack.set_exception(error)


def joined(parts: list[Future[None]]) -> Future[None]:
    """One future for several batches' acks: set once all are (a put can fill a batch and
    start the next: its records are held only when both are)."""
    whole: Future[None] = Future()
    left = [len(parts)]
    lock = threading.Lock()

    def one_done(part: Future[None]) -> None:
        if part.cancelled():
            return
        error = part.exception()
        with lock:
            left[0] -= 1
            last = left[0] == 0
        if error is not None:
            settle(whole, error)
        elif last:
            settle(whole)

    def cancel_parts(f: Future[None]) -> None:
        if f.cancelled():
            for part in parts:
                part.cancel()

    whole.add_done_callback(cancel_parts)
    for part in parts:
        part.add_done_callback(one_done)
    return whole


class BatchingSink:
    worker_names: tuple[str, ...] = ("tapegate-sink",)

    def __init__(
        self,
        *,
        flush_ms: int,
        max_records: int,
        max_bytes: int,
        max_memory_bytes: int = DEFAULT_MAX_MEMORY_BYTES,
    ) -> None:
        self.flush_ns = flush_ms * 1_000_000
        self.max_records = max_records
        self.max_bytes = max_bytes
        self.max_memory_bytes = max_memory_bytes
        self._batch: list[bytes] = []
        self._batch_bytes = 0
        self._oldest_ns: int | None = None
        self._acks: list[Future[None]] = []
        self._queue: deque[Batch] = deque()
        self._inflight: dict[str, Batch] = {}  # worker name → the batch it is delivering
        self._memory = 0  # bytes accepted and not yet held durably
        self._cond = threading.Condition()
        self._failure: str | None = None
        self._sticky: str | None = None  # a failure nothing will clear (a worker keeps crashing)
        self._watch: str | None = None  # the watchdog's finding at the last tick
        self._closing = False
        self._threads: dict[str, threading.Thread] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._failed_fut: asyncio.Future[str] | None = None
        self._room_evt: asyncio.Event | None = None
        self._signalled = (False, False)  # (failing, over memory) as last told to the loop
        self.stats: dict[str, float] = {
            "records_sent": 0, "bytes_sent": 0, "calls": 0, "failed_entries": 0, "retries": 0,
            "ack_seconds_sum": 0.0, "ack_count": 0, "ack_seconds_max": 0.0,
            "worker_restarts": 0, "memory_bytes_max": 0,
        }  # fmt: skip

    # -- the event loop's side ----------------------------------------------------------------

    @property
    def failure(self) -> str | None:
        # Read for every frame: only fields here. The watchdog's checks run in tick().
        return self._sticky or self._failure or self._watch

    def _watchdog(self) -> str | None:
        """What only time shows: a batch not held for STALL_S (a hung worker), or a worker
        thread gone (cannot happen while supervision works; never report healthy if it does)."""
        if self._closing:
            return None
        stalled = self._stalled_s()
        if stalled is not None:
            return f"the sink has not delivered a batch in {stalled:.0f} s (a hung disk or link?)"
        dead = [n for n, t in list(self._threads.items()) if not t.is_alive()]
        return f"the sink's worker {dead[0]} stopped" if dead else None

    def _stalled_s(self) -> float | None:
        """How long the oldest batch handed over has waited, when that is over STALL_S."""
        try:
            oldest: float | None = self._queue[0].handed
        except IndexError:  # empty, or emptied by a worker just now
            oldest = None
        for batch in list(self._inflight.values()):
            oldest = batch.handed if oldest is None else min(oldest, batch.handed)
        if oldest is None:
            return None
        waited = time.monotonic() - oldest
        return waited if waited > STALL_S else None

    @property
    def over_memory(self) -> bool:
        return self._memory > self.max_memory_bytes

    @property
    def memory_bytes(self) -> int:
        return self._memory

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._failed_fut = loop.create_future()
        self._room_evt = asyncio.Event()
        self._room_evt.set()
        self._signalled = (False, False)
        self._sync_signals()

    def failed(self) -> asyncio.Future[str]:
        assert self._failed_fut is not None, "bind() the sink to the gateway's loop first"
        self._sync_signals()
        return self._failed_fut

    async def room(self) -> None:
        while self.over_memory and self.failure is None:
            if self._room_evt is None:
                return
            self._room_evt.clear()
            self._sync_signals()
            await self._room_evt.wait()

    def put(
        self, records: list[bytes], urgent: bool = False, ack: bool = False
    ) -> Future[None] | None:
        """Keep the records (even while failing: they are retried, never dropped), then say
        whether the sink is healthy: a SinkError tells the session to stop forwarding."""
        want = bool(records) and (urgent or ack)
        parts: list[Future[None]] = []  # one ack per batch these records land in
        mine = False  # some of these records are in the open batch
        for record in records:
            full = len(self._batch) >= self.max_records
            if self._batch and (full or self._batch_bytes + len(record) > self.max_bytes):
                if want and mine:
                    parts.append(Future())
                    self._acks.append(parts[-1])
                self._hand_off()
                mine = False
            mine = True
            if self._oldest_ns is None:
                self._oldest_ns = time.monotonic_ns()
            self._batch.append(record)
            self._batch_bytes += len(record)
            self._memory += len(record)
        if self._memory > self.stats["memory_bytes_max"]:
            self.stats["memory_bytes_max"] = self._memory
        if want and mine:
            parts.append(Future())
            self._acks.append(parts[-1])
        future = parts[0] if len(parts) == 1 else joined(parts) if parts else None
        if urgent:
            self._hand_off()
        failure = self.failure
        if failure is not None:
            raise SinkError(failure)
        return future

    def hand_off_now(self) -> None:
        """Send the open batch without waiting for it to fill or age (a commit with nothing
        new to seal still needs what it shipped earlier to go now)."""
        self._hand_off()

    def tick(self, now_ns: int | None = None) -> None:
        """Hand over the batch once its oldest record is `flush_ms` old."""
        now = time.monotonic_ns() if now_ns is None else now_ns
        if self._batch and now - (self._oldest_ns or now) >= self.flush_ns:
            self._hand_off()
        self._watch = self._watchdog()
        self._notify()  # a stall is noticed by time, not by an event

    def flush(self, timeout: float = 30.0) -> bool:
        """Deliver everything accepted so far; False if failing or not done within timeout."""
        self._hand_off()
        deadline = time.monotonic() + timeout
        with self._cond:
            # A failing sink may recover within the time given; one that was given up on
            # (a worker that keeps crashing) cannot.
            while self._busy() and self._sticky is None and time.monotonic() < deadline:
                self._cond.wait(timeout=max(0.0, min(1.0, deadline - time.monotonic())))
            return not self._busy()

    def close(self) -> int:
        """Flush and stop the workers. Returns the bytes that could not be delivered."""
        self.flush()
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        for thread in list(self._threads.values()):
            thread.join(timeout=10)
        self._threads.clear()
        with self._cond:
            self._closing = False
            return self._memory

    # -- for subclasses -----------------------------------------------------------------------

    def _busy(self) -> bool:
        """Anything accepted and not yet held (called with the lock held)."""
        return bool(self._queue or self._inflight)

    def _start(self) -> None:
        """Start (or restart) the supervised workers; call with the lock held."""
        if self._sticky is not None:
            return  # given up on: the gateway stays not-ready rather than flapping
        for name in self.worker_names:
            thread = self._threads.get(name)
            if thread is None or not thread.is_alive():
                work = self._work_target(name)
                thread = threading.Thread(
                    target=self._supervised, args=(name, work), name=name, daemon=True
                )
                self._threads[name] = thread
                thread.start()

    def _work_target(self, name: str) -> Callable[[], None]:
        """What worker `name` runs; the default takes batches from the queue."""
        return lambda: self._deliver_queue(name)

    def _deliver_queue(self, name: str) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._closing:
                    self._cond.wait(timeout=1.0)
                if not self._queue:
                    return
                batch = self._queue.popleft()
                self._inflight[name] = batch
            self._deliver(batch)
            with self._cond:
                if self._inflight.get(name) is batch:  # not held: only when closing
                    del self._inflight[name]
                    self._queue.appendleft(batch)
                    return

    def _deliver(self, batch: Batch) -> None:
        raise NotImplementedError

    def _supervised(self, name: str, work: Callable[[], None]) -> None:
        """Run a worker; restart it when it raises, with its batch put back; give up (and fail
        for good, loudly) when it keeps raising."""
        crashes: deque[float] = deque()
        while True:
            try:
                work()
                return
            except Exception as exc:
                now = time.monotonic()
                crashes.append(now)
                while crashes and now - crashes[0] > CRASH_WINDOW_S:
                    crashes.popleft()
                self.stats["worker_restarts"] += 1
                with self._cond:
                    batch = self._inflight.pop(name, None)
                    if batch is not None:
                        self._queue.appendleft(batch)  # state intact: the batch is retried
                    self._cond.notify_all()
                if len(crashes) >= MAX_CRASHES:
                    reason = f"the sink's worker {name} keeps failing ({exc!r}); not restarted"
                    log.critical("%s", reason, exc_info=True)
                    self._sticky = reason
                    self._notify()
                    return
                log.error("the sink's worker %s failed (%r); restarting it", name, exc,
                          exc_info=True)  # fmt: skip
                time.sleep(min(1.0, 0.05 * 2 ** len(crashes)))

    def _held(self, batch: Batch) -> None:
        """The batch is held durably (delivered or spooled): count it, ack it, free its memory."""
        with self._cond:
            for name, inflight in list(self._inflight.items()):
                if inflight is batch:
                    del self._inflight[name]
            self._memory -= batch.size
            self._cond.notify_all()
        seconds = time.monotonic() - batch.handed
        self.stats["ack_seconds_sum"] += seconds
        self.stats["ack_count"] += 1
        self.stats["ack_seconds_max"] = max(self.stats["ack_seconds_max"], seconds)
        for ack in batch.acks:
            settle(ack)
        self._notify()

    def _set_failure(self, reason: str | None) -> None:
        if reason != self._failure:
            self._failure = reason
            with self._cond:
                self._cond.notify_all()
            self._notify()

    def _route(self, batch: Batch) -> None:
        """Queue a handed-off batch for delivery; a subclass may send it elsewhere (a spool)."""
        self._queue.append(batch)

    def _hand_off(self) -> None:
        if not self._batch and not self._acks:
            return
        batch = Batch(self._batch, self._batch_bytes, self._acks)
        self._batch, self._batch_bytes, self._oldest_ns, self._acks = [], 0, None, []
        with self._cond:
            self._start()
            self._route(batch)
            self._cond.notify_all()

    # -- signals to the event loop --------------------------------------------------------------

    def _notify(self) -> None:
        """From any thread: tell the loop when failing or room changed (only on a change)."""
        state = (self.failure is not None, self.over_memory)
        waiting = self._room_evt is not None and not self._room_evt.is_set()
        if self._loop is None or (state == self._signalled and not (waiting and not state[1])):
            return
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is waiting
            self._loop.call_soon_threadsafe(self._sync_signals)

    def _sync_signals(self) -> None:
        """On the loop: complete or renew the failure future, set or clear room."""
        if self._failed_fut is None or self._room_evt is None:
            return
        failure = self.failure
        over = self.over_memory
        self._signalled = (failure is not None, over)
        if failure is not None and not self._failed_fut.done():
            self._failed_fut.set_result(failure)
        elif failure is None and self._failed_fut.done():
            self._failed_fut = self._loop.create_future() if self._loop else None
        if not over or failure is not None:
            self._room_evt.set()  # a failing sink stops sessions through its failure instead

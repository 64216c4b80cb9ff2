"""Record-before-forward for relays driven by callbacks (asyncssh channels).

A stream relay simply awaits `recorder.forwarding()` between recording bytes and writing them.
A callback cannot await, so it hands the write to a gate instead: writes leave in order, each
once the recorder says it may (in `acked`, once the sink holds the chunk; otherwise once the
sink has memory to spare), and the source is paused while any wait, so what is held here stays
within one flow-control window.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable

from gateway_task.recording.recorder import Recorder, RecordingUnavailable


class ForwardGate:
    def __init__(
        self,
        recorder: Recorder,
        *,
        to_target: bool,
        pause: Callable[[], None],
        resume: Callable[[], None],
        failed: Callable[[RecordingUnavailable], None],
    ) -> None:
        self.recorder = recorder
        self.to_target = to_target  # only bytes bound for the target wait for acks
        self._pause, self._resume, self._failed = pause, resume, failed
        self._waiting: deque[Callable[[], None]] = deque()
        self._task: asyncio.Task[None] | None = None

    @property
    def must_wait(self) -> bool:
        return (self.to_target and self.recorder.acked) or self.recorder.sink.over_memory

    def send(self, write: Callable[[], None]) -> None:
        """Run `write` (already recorded) as soon as the recorder allows, after earlier ones."""
        failure = self.recorder.sink.failure
        if failure is not None and self.to_target:  # an EOF, a signal: nothing goes on
            self._waiting.clear()
            self._failed(RecordingUnavailable(failure))
            return
        if not self._waiting and self._task is None and not self.must_wait:
            write()
            return
        self._waiting.append(write)
        if self._task is None:
            self._pause()
            self._task = asyncio.get_running_loop().create_task(self._release())

    @property
    def busy(self) -> bool:
        """Whether writes are waiting (and reading is paused until they are done)."""
        return self._task is not None

    def cancel(self) -> None:
        self._waiting.clear()
        if self._task is not None:
            self._task.cancel()

    async def _release(self) -> None:
        try:
            while self._waiting:
                # A commit covers what was recorded before it began: release just those writes;
                # what arrives while it waits needs the next one.
                covered = len(self._waiting)
                if self.to_target:
                    await self.recorder.forwarding()
                else:
                    await self.recorder.pace()
                for _ in range(covered):
                    self._waiting.popleft()()
        except RecordingUnavailable as exc:
            self._waiting.clear()
            self._failed(exc)
        finally:
            self._task = None
            self._resume()

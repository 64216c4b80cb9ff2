"""Both directions of one session → frames and events → sealed chunks → the sink.

Record first, forward second: the server calls `frame` before it writes bytes on, and `frame`
raises RecordingUnavailable while the sink is failing, so no byte is forwarded unrecorded.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterable

from gateway_task.sinks import Sink, SinkError
from tapegate.tape import Direction, Event, TapeWriter


class RecordingUnavailable(Exception):
    """The session cannot be recorded; it must stop forwarding."""


class Recorder:
    def __init__(self, writer: TapeWriter, sink: Sink) -> None:
        self.writer = writer
        self.sink = sink
        self.closed = False

    @property
    def session_id(self) -> str:
        return str(self.writer.session_id)

    def frame(self, direction: Direction, data: bytes, ts: int) -> None:
        if self.sink.failure is not None:
            raise RecordingUnavailable(self.sink.failure)
        self._ship(self.writer.add_frame(ts, direction, data))

    def events(self, events: Iterable[Event]) -> None:
        for event in events:
            self._ship(self.writer.add_event(event))

    def event(self, event: Event) -> None:
        self._ship(self.writer.add_event(event))

    def tick(self, now_ns: int) -> None:
        if not self.closed:
            self._ship(self.writer.tick(now_ns))

    def close(self, reason: str) -> None:
        """Seal the final chunk. Best effort when the sink is failing: it is kept in its batch."""
        if self.closed:
            return
        self.closed = True
        record = self.writer.close(time.time_ns(), reason)
        # A failing sink still keeps the record for its retry; the session is already closed.
        with contextlib.suppress(SinkError):
            self.sink.put([record])

    def _ship(self, records: list[bytes]) -> None:
        if records:
            try:
                self.sink.put(records)
            except SinkError as exc:
                raise RecordingUnavailable(str(exc)) from None

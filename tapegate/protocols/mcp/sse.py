"""Server-sent events (the WHATWG `text/event-stream` format) as MCP's Streamable HTTP uses them:
read event by event, so each JSON-RPC message can be recorded and, where policy says, rewritten.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

MAX_EVENT_BYTES = 8 * 1024 * 1024  # one event; a larger one is passed on unread


@dataclass(frozen=True, slots=True)
class SseEvent:
    raw: bytes  # the event as it came, with its blank line
    data: str | None  # its `data:` lines joined, when it has any


class SseReader:
    """Bytes in, whole events out. Line ends may be CRLF, LF or CR, as the format allows."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self.overflowed = False  # an event outgrew MAX_EVENT_BYTES: the rest is passed through

    def feed(self, data: bytes) -> list[SseEvent | bytes]:
        """Whole events, or (after an overflow) bytes to pass on as they are."""
        if self.overflowed:
            return [data] if data else []
        self._buf += data
        out: list[SseEvent | bytes] = []
        while True:
            end = _event_end(self._buf)
            if end < 0:
                break
            raw = bytes(self._buf[:end])
            del self._buf[:end]
            out.append(SseEvent(raw, _data(raw)))
        if len(self._buf) > MAX_EVENT_BYTES:
            self.overflowed = True
            out.append(bytes(self._buf))
            self._buf.clear()
        return out

    def flush(self) -> bytes:
        """What is left at the stream's end: an unterminated event, passed on as it is."""
        rest = bytes(self._buf)
        self._buf.clear()
        return rest


# A blank line: a line's end, then an empty line's (each CRLF, CR or LF; atomic, so that one
# CRLF is never read as a CR and an LF).
_BLANK = re.compile(rb"(?>\r\n|\r|\n)(?>\r\n|\r|\n)")


def _event_end(buf: bytearray) -> int:
    """The end of the first event (after its blank line), or -1."""
    if buf[:1] in (b"\r", b"\n"):  # an empty line first: an event of its own
        end = 2 if buf[:2] == b"\r\n" else 1
    else:
        m = _BLANK.search(buf)
        if m is None:
            return -1
        end = m.end()
    if end == len(buf) and buf.endswith(b"\r"):
        return -1  # a CR last may be the start of a CRLF: wait for the next byte
    return end


def _data(raw: bytes) -> str | None:
    lines = raw.replace(b"\r\n", b"\n").replace(b"\r", b"\n").split(b"\n")
    parts = []
    for line in lines:
        if line == b"data" or line.startswith(b"data:"):
            value = line[5:]
            parts.append(value[1:] if value.startswith(b" ") else value)
    if not parts:
        return None
    return b"\n".join(parts).decode("utf-8", errors="replace")


def with_data(event: SseEvent, data: str) -> bytes:
    """The event with its data replaced (its id and event lines kept)."""
    lines = event.raw.replace(b"\r\n", b"\n").replace(b"\r", b"\n").split(b"\n")
    kept = [ln for ln in lines if ln and not (ln == b"data" or ln.startswith(b"data:"))]
    body = [b"data: " + part.encode() for part in data.split("\n")]
    return b"\n".join([*kept, *body]) + b"\n\n"

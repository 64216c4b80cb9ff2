"""Files copied with the legacy scp protocol, from the bytes of an `scp -t|-f` exec, without I/O.

OpenSSH's scp before 9.0 (and `scp -O` after) runs `scp -t PATH` on the target to upload and
`scp -f PATH` to download, then speaks rcp's protocol over the channel: the source sends `C`
(file), `D`/`E` (enter/leave a directory) and `T` (times) lines, each file's bytes after its `C`
line and a NUL after them; the sink answers every line, and every file's end, with NUL (ok),
\\x01 text (an error) or \\x02 text (a fatal error), and the source waits for each answer. Each
file becomes one `scp` event once the sink has answered its end: path (inside the copy), bytes,
SHA-256 of what crossed the gateway, and the sink's answer.
"""

from __future__ import annotations

import hashlib
import re
import shlex
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import PurePosixPath

from tapegate.tape import Event
from tapegate.vocab import EventType

MAX_LINE = 64 * 1024  # longer than any real control line: beyond it the stream is not scp
_FILE_LINE = re.compile(rb"C([0-7]{3,4}) (\d+) ([^\n]+)")
_DIR_LINE = re.compile(rb"D([0-7]{3,4}) \d+ ([^\n]+)")


class ScpParseError(Exception):
    pass


@dataclass
class _File:
    path: str
    mode: str
    size: int
    remaining: int
    digest: hashlib._Hash = field(default_factory=hashlib.sha256)


@dataclass
class _Awaiting:
    """A source message the sink has yet to answer: a line, or a file's end."""

    what: str  # "start", "line", "file" (its C line), "end" (its bytes)
    file: _File | None = None


class ScpObserver:
    def __init__(self, upload: bool, target: str, clock: Callable[[], int]) -> None:
        self.upload = upload
        self.target = target
        self._clock = clock
        self._source = bytearray()  # source bytes not yet parsed
        self._sink = bytearray()
        self._dirs: list[str] = []
        self._file: _File | None = None  # receiving its bytes
        self._end_byte = False  # its bytes are in: one NUL (or an error line) follows
        self._waiting: deque[_Awaiting] = deque([_Awaiting("start")])  # the sink speaks first
        self._held = False  # a C line awaits its answer: its bytes only follow an ok
        self.failed: str | None = None

    @classmethod
    def for_command(cls, command: str, clock: Callable[[], int]) -> ScpObserver | None:
        """An observer when the exec is scp's remote end, else None."""
        try:
            argv = shlex.split(command)
        except ValueError:
            return None
        if not argv or PurePosixPath(argv[0]).name != "scp" or len(argv) < 3:
            return None
        flags = {a for a in argv[1:-1] if a.startswith("-")}
        if "-t" in flags:
            return cls(upload=True, target=argv[-1], clock=clock)
        if "-f" in flags:
            return cls(upload=False, target=argv[-1], clock=clock)
        return None

    def from_client(self, data: bytes) -> list[Event]:
        return self._guard(data, source=self.upload)

    def from_server(self, data: bytes) -> list[Event]:
        return self._guard(data, source=not self.upload)

    def close(self) -> list[Event]:
        """The channel ended: files whose end the sink never answered are reported as they are."""
        events = []
        if self._file is not None:
            events.append(self._event(self._file, "incomplete"))
        for item in self._waiting:
            if item.file is not None:
                events.append(self._event(item.file, "unanswered"))
        self._file, self._waiting = None, deque()
        return events

    # -- parsing ---------------------------------------------------------------------------------

    def _guard(self, data: bytes, source: bool) -> list[Event]:
        if self.failed:
            return []
        try:
            if not source:
                self._sink += data
                return self._parse_sink()
            view = memoryview(data)
            if not self._source:  # a file's bytes are hashed where they lie, not copied first
                view = view[self._take(view) :]
            self._source += view
            return self._parse_source()
        except ScpParseError as exc:
            self.failed = str(exc)  # relaying goes on; the endpoints judge their own bytes
            return [Event(self._clock(), EventType.SCP_PROTOCOL_ERROR, None, {"message": str(exc)})]

    def _parse_source(self) -> list[Event]:
        events: list[Event] = []
        buf = self._source
        while buf and not self._held:
            if self._file is not None and not self._end_byte:
                with memoryview(buf) as view:
                    taken = self._take(view)
                del buf[:taken]
                continue
            if self._file is not None:  # the NUL after a file's bytes, or the source's error
                f, self._file, self._end_byte = self._file, None, False
                if buf[0] == 0:
                    del buf[:1]
                    self._waiting.append(_Awaiting("end", f))
                    continue
                line = self._line(buf)
                if line is None:
                    self._file, self._end_byte = f, True
                    break
                events.append(self._event(f, f"source error: {_text(line[1:])}"))
                self._waiting.append(_Awaiting("line"))  # the sink answers it all the same
                continue
            line = self._line(buf)
            if line is None:
                break
            events += self._source_line(line)
        return events

    def _take(self, view: memoryview) -> int:
        """Hash what `view` holds of the current file's bytes; how many that was."""
        f = self._file
        if f is None or self._end_byte or self._held:
            return 0
        take = min(f.remaining, len(view))
        f.digest.update(view[:take])
        f.remaining -= take
        self._end_byte = f.remaining == 0
        return take

    def _source_line(self, line: bytes) -> list[Event]:
        kind = line[:1]
        if kind == b"C":
            m = _FILE_LINE.fullmatch(line)
            if m is None:
                raise ScpParseError(f"bad file line {line[:80]!r}")
            name = _text(m.group(3))
            path = "/".join([*self._dirs, name])
            size = int(m.group(2))
            self._waiting.append(_Awaiting("file", _File(path, m.group(1).decode(), size, size)))
            self._held = True
        elif kind == b"D":
            m = _DIR_LINE.fullmatch(line)
            if m is None:
                raise ScpParseError(f"bad directory line {line[:80]!r}")
            self._dirs.append(_text(m.group(2)))
            self._waiting.append(_Awaiting("line"))
        elif kind == b"E":
            if self._dirs:
                self._dirs.pop()
            self._waiting.append(_Awaiting("line"))
        elif kind == b"T":
            self._waiting.append(_Awaiting("line"))
        elif kind in (b"\x01", b"\x02"):  # the source could not read something; no answer
            return [Event(self._clock(), EventType.SCP, None, {
                "op": "error", "target": self.target, "result": _text(line[1:])})]  # fmt: skip
        else:
            raise ScpParseError(f"unknown scp message {line[:80]!r}")
        return []

    def _parse_sink(self) -> list[Event]:
        events: list[Event] = []
        buf = self._sink
        while buf:
            if buf[0] == 0:
                answer, ok = "ok", True
                del buf[:1]
            elif buf[0] in (1, 2):
                line = self._line(buf)
                if line is None:
                    break
                answer, ok = _text(line[1:]), False
            else:
                raise ScpParseError(f"unknown scp answer {bytes(buf[:80])!r}")
            if not self._waiting:
                raise ScpParseError("an answer to nothing")
            item = self._waiting.popleft()
            if item.what == "file":  # the answer to a C line: its bytes follow only if ok
                assert item.file is not None
                self._held = False
                if ok:
                    self._file = item.file
                    self._end_byte = item.file.size == 0
                else:
                    events.append(self._event(item.file, answer))
                events += self._parse_source()
            elif item.what == "end":
                assert item.file is not None
                events.append(self._event(item.file, answer))
            elif not ok:  # refused a directory, or failed before the first line
                events.append(Event(self._clock(), EventType.SCP, None, {
                    "op": "error", "target": self.target, "result": answer}))  # fmt: skip
        return events

    @staticmethod
    def _line(buf: bytearray) -> bytes | None:
        end = buf.find(b"\n")
        if end < 0:
            if len(buf) > MAX_LINE:
                raise ScpParseError(f"no line end in {MAX_LINE} bytes")
            return None
        line = bytes(buf[:end])
        del buf[: end + 1]
        return line

    def _event(self, f: _File, result: str) -> Event:
        done = f.size - f.remaining
        attrs: dict[str, object] = {
            "op": "upload" if self.upload else "download",
            "path": f.path,
            "target": self.target,
            "mode": f.mode,
            "bytes": done,
            "sha256": f.digest.hexdigest() if f.remaining == 0 else None,
            "result": result,
        }
        return Event(self._clock(), EventType.SCP, None, attrs)


def _text(raw: bytes) -> str:
    return raw.decode("utf-8", errors="replace")

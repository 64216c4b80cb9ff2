"""SFTP operations from the bytes of an `sftp` subsystem channel, without I/O.

The gateway relays SFTP packets unchanged and watches them on the side (draft-ietf-secsh-filexfer
version 3, what OpenSSH speaks; scp in OpenSSH 9 uses it too). Each file opened, read or written
becomes one `sftp` event when it is closed, with its path, bytes moved and the SHA-256 of the
content that crossed the gateway; removes, renames and directory changes become events when the
server answers them.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Callable
from dataclasses import dataclass, field

from tapegate.tape import Direction, Event
from tapegate.vocab import EventType

C2S, S2C = Direction.CLIENT_TO_SERVER, Direction.SERVER_TO_CLIENT

# Packet types (filexfer v3 §3).
OPEN, CLOSE, READ, WRITE = 3, 4, 5, 6
SETSTAT, FSETSTAT, OPENDIR = 9, 10, 11
REMOVE, MKDIR, RMDIR, RENAME, SYMLINK, EXTENDED = 13, 14, 15, 18, 20, 200
STATUS, HANDLE, DATA = 101, 102, 103
# OPEN flags.
FXF_READ, FXF_WRITE, FXF_APPEND, FXF_CREAT, FXF_TRUNC = 0x1, 0x2, 0x4, 0x8, 0x10

MAX_PACKET = 1 << 20  # larger than any real SFTP packet: beyond it the stream is not SFTP
MAX_REORDER_BYTES = 64 << 20  # read replies held back to hash a file in order

_PATH_OPS = {REMOVE: "remove", MKDIR: "mkdir", RMDIR: "rmdir", SETSTAT: "setstat",
             OPENDIR: "list"}  # fmt: skip


class SftpParseError(Exception):
    pass


@dataclass
class _File:
    path: str
    flags: int
    written: int = 0
    read: int = 0
    next_offset: int = 0
    digest: hashlib._Hash = field(default_factory=hashlib.sha256)
    in_order: bool = True  # False: offsets jumped, the digest is not of the whole content
    held: dict[int, bytes] = field(default_factory=dict)
    held_bytes: int = 0

    def add(self, offset: int, data: bytes) -> None:
        if not self.in_order:
            return
        if offset == self.next_offset:
            self.digest.update(data)
            self.next_offset += len(data)
            while self.next_offset in self.held:
                more = self.held.pop(self.next_offset)
                self.held_bytes -= len(more)
                self.digest.update(more)
                self.next_offset += len(more)
        elif offset > self.next_offset and self.held_bytes + len(data) <= MAX_REORDER_BYTES:
            self.held[offset] = data
            self.held_bytes += len(data)
        else:
            self.in_order = False
            self.held.clear()


class _Stream:
    """Length-prefixed packets out of arbitrary byte chunks."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[bytes]:
        self._buf += data
        out = []
        while len(self._buf) >= 4:
            (length,) = struct.unpack_from(">I", self._buf)
            if length < 1 or length > MAX_PACKET:
                raise SftpParseError(f"packet length {length}")
            if len(self._buf) < 4 + length:
                break
            out.append(bytes(self._buf[4 : 4 + length]))
            del self._buf[: 4 + length]
        return out


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data, self.pos = data, 0

    def u8(self) -> int:
        return self._unpack(">B", 1)

    def u32(self) -> int:
        return self._unpack(">I", 4)

    def u64(self) -> int:
        return self._unpack(">Q", 8)

    def string(self) -> bytes:
        n = self.u32()
        if self.pos + n > len(self.data):
            raise SftpParseError("string runs past the packet")
        value = self.data[self.pos : self.pos + n]
        self.pos += n
        return value

    def _unpack(self, fmt: str, size: int) -> int:
        if self.pos + size > len(self.data):
            raise SftpParseError("packet too short")
        (value,) = struct.unpack_from(fmt, self.data, self.pos)
        self.pos += size
        return value


class SftpObserver:
    def __init__(self, clock: Callable[[], int]) -> None:
        self._clock = clock
        self._up, self._down = _Stream(), _Stream()
        self._pending: dict[int, tuple[int, object]] = {}  # request id → (type, details)
        self._files: dict[bytes, _File] = {}
        self.failed: str | None = None

    def from_client(self, data: bytes) -> list[Event]:
        return self._guard(lambda: [e for p in self._up.feed(data) for e in self._request(p)])

    def from_server(self, data: bytes) -> list[Event]:
        return self._guard(lambda: [e for p in self._down.feed(data) for e in self._reply(p)])

    def close(self) -> list[Event]:
        """The channel ended: files never closed are reported as they stand."""
        events = [self._file_event(f, "unclosed") for f in self._files.values()]
        self._files.clear()
        return events

    def _guard(self, parse: Callable[[], list[Event]]) -> list[Event]:
        if self.failed:
            return []
        try:
            return parse()
        except SftpParseError as exc:
            self.failed = str(exc)  # relaying goes on; the endpoints judge their own bytes
            return [
                Event(self._clock(), EventType.SFTP_PROTOCOL_ERROR, None, {"message": str(exc)})
            ]

    def _request(self, packet: bytes) -> list[Event]:
        r = _Reader(packet)
        kind = r.u8()
        if kind == 1:  # INIT: no request id
            return []
        rid = r.u32()
        if kind == OPEN:
            path = _text(r.string())
            self._pending[rid] = (OPEN, (path, r.u32()))
        elif kind == WRITE:
            handle, offset, data = r.string(), r.u64(), r.string()
            f = self._files.get(handle)
            if f is not None:
                f.written += len(data)
                f.add(offset, data)
        elif kind == READ:
            handle, offset = r.string(), r.u64()
            self._pending[rid] = (READ, (handle, offset))
        elif kind == CLOSE:
            self._pending[rid] = (CLOSE, r.string())
        elif kind in _PATH_OPS:
            self._pending[rid] = (kind, _text(r.string()))
        elif kind in (RENAME, SYMLINK):
            first, second = _text(r.string()), _text(r.string())
            self._pending[rid] = (kind, (first, second))
        elif kind == EXTENDED and r.string() == b"posix-rename@openssh.com":
            first, second = _text(r.string()), _text(r.string())
            self._pending[rid] = (RENAME, (first, second))  # what OpenSSH's sftp rename sends
        return []

    def _reply(self, packet: bytes) -> list[Event]:
        r = _Reader(packet)
        kind = r.u8()
        if kind == 2:  # VERSION
            return []
        rid = r.u32()
        request = self._pending.pop(rid, None)
        if request is None:
            return []
        op, details = request
        if kind == HANDLE and op == OPEN:
            path, flags = details  # type: ignore[misc]
            self._files[r.string()] = _File(path, flags)
            return []
        if kind == DATA and op == READ:
            handle, offset = details  # type: ignore[misc]
            f = self._files.get(handle)
            if f is not None:
                data = r.string()
                f.read += len(data)
                f.add(offset, data)
            return []
        if kind != STATUS:
            return []
        code = r.u32()
        message = _text(r.string()) if r.pos < len(packet) else ""
        result = "ok" if code == 0 else f"error {code}: {message}"
        if op == CLOSE:
            f = self._files.pop(details, None)  # type: ignore[arg-type]
            return [self._file_event(f, result)] if f is not None else []
        if op == READ:
            return []  # EOF (code 1) ends a download; the CLOSE reports it
        now = self._clock()
        if op == OPEN:
            path, flags = details  # type: ignore[misc]
            return [Event(now, EventType.SFTP, None, {"op": "open", "path": path,
                                              "mode": _mode(flags), "result": result})]  # fmt: skip
        if op in (RENAME, SYMLINK):
            first, second = details  # type: ignore[misc]
            name = "rename" if op == RENAME else "symlink"
            return [Event(now, EventType.SFTP, None, {"op": name, "path": first, "to": second,
                                              "result": result})]  # fmt: skip
        if op == OPENDIR and code == 0:
            return [Event(now, EventType.SFTP, None, {"op": "list", "path": details})]
        return [Event(now, EventType.SFTP, None, {"op": _PATH_OPS.get(op, str(op)), "path": details,
                                          "result": result})]  # fmt: skip

    def _file_event(self, f: _File, result: str) -> Event:
        if f.written:
            op, size = "upload", f.written
        elif f.read:
            op, size = "download", f.read
        else:
            op, size = "open", 0
        attrs: dict[str, object] = {"op": op, "path": f.path, "mode": _mode(f.flags),
                                    "bytes": size, "result": result}  # fmt: skip
        if op != "open":
            whole = f.in_order and not f.held and f.next_offset == size
            attrs["sha256"] = f.digest.hexdigest() if whole else None
            if not whole:
                attrs["sha256_note"] = "offsets were not sequential; no digest of the whole file"
        return Event(self._clock(), EventType.SFTP, None, attrs)


def _mode(flags: int) -> str:
    if flags & FXF_WRITE:
        return "append" if flags & FXF_APPEND else "write"
    return "read"


def _text(raw: bytes) -> str:
    return raw.decode("utf-8", errors="replace")

"""A `command:` MCP target's server: one process per tape session, behind a private bridge.

The relay reaches it as it reaches any MCP target, over HTTP, but on a socket pair that only
this process holds (nothing on the host can connect to it around the gateway); the bridge
(`tapegate/protocols/mcp/stdio.py`) turns those requests into the process's stdin and its
stdout into their answers. The process:

- starts with the first request that needs it (a request naming a session it never had is
  answered 404 without one), from `command` with an environment of PATH, HOME, LANG (and
  their kin) and the target's `env`: nothing else of the gateway's (its AWS credentials, its
  keys) is passed on;
- runs in a process group of its own, so that what it starts (`npx` starts node) ends with it;
- is stopped when its tape ends (stdin closed, then SIGTERM to the group, then SIGKILL after
  STOP_GRACE_S), and at the latest after the target's `process_lifetime_s`;
- has its stderr recorded on the tape as `mcp_stderr` events, up to STDERR_CAP bytes;
- ending on its own (a crash) answers what awaited it with an error and ends the tape.

If the gateway itself is killed, each server sees its stdin close: MCP's stdio servers exit
then (the SDKs' do); one that ignores it would be left running.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import itertools
import logging
import os
import secrets
import signal
import socket
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from tapegate.protocols.http import wire
from tapegate.protocols.http.exchange import Masker
from tapegate.protocols.http.wire import END, NEED_DATA
from tapegate.protocols.mcp.stdio import (
    COMMIT_AFTER_S,
    Later,
    Note,
    Output,
    StdioBridge,
    ToProcess,
    ToStream,
)
from tapegate.protocols.mcp.target import McpTarget
from tapegate.tape import Direction, Event
from tapegate.vocab import EndReason, EventType

if TYPE_CHECKING:
    from gateway_task.server.gateway import Gateway

log = logging.getLogger("tapegate.gateway")

S2C = Direction.SERVER_TO_CLIENT
MAX_LINE = 16 * 1024 * 1024  # one stdout message; a longer one ends the process
STDERR_CAP = 1024 * 1024  # recorded per process; the rest is counted, not kept
STOP_GRACE_S = 2.0
MAX_BACKLOG = 8 * 1024 * 1024  # written to its stdin and not read yet: further requests are 503
PASSED_ON = ("PATH", "HOME", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "TMPDIR", "USER", "LOGNAME")
_streams = itertools.count(1)


def environment(target_env: dict[str, str]) -> dict[str, str]:
    env = {k: os.environ[k] for k in PASSED_ON if k in os.environ}
    env.update(target_env)
    return env


class StdioServer:
    """One process and its bridge. `record` puts events on the tape; `gone` is called once,
    when the process has ended on its own or its lifetime is up (not when `stop` ended it)."""

    def __init__(
        self,
        gw: Gateway,
        target: McpTarget,
        env: dict[str, str],
        record: Callable[[list[Event]], None],
        gone: Callable[[EndReason], None],
        may_start: Callable[[], str | None],
    ) -> None:
        self.gw, self.target, self._env = gw, target, env
        self._record, self._gone, self._may_start = record, gone, may_start
        _not_dumpable()
        # What it is given as a credential never reaches the tape, as it never reaches the agent
        # (the relay masks the answers): its stderr and the notes that quote its stdout, too.
        secret = {v.name for v in target.env if v.secret}
        self._secrets = tuple(v.encode() for k, v in env.items() if k in secret)
        self._stderr_mask = Masker(*self._secrets)
        self.bridge = StdioBridge(mint=lambda: secrets.token_urlsafe(24))
        self._links: dict[int, _Link] = {}  # by stream: the connection its answer goes on
        self._proc: asyncio.subprocess.Process | None = None
        self._starting = False
        self._unsent: list[bytes] = []  # lines written before the process started
        self._stopping = False  # its tape ended
        self._expired = False  # its lifetime passed
        self._stderr_bytes = 0
        self._writable = asyncio.Event()  # no connection's answers are backed up
        self._writable.set()
        self._backed_up: set[_Link] = set()
        self._lifetime: asyncio.TimerHandle | None = None

    @property
    def running(self) -> bool:
        """Started (or starting) and not ended: what `max_processes` counts."""
        return self._starting and self.bridge.gone is None and not self._stopping

    def backlog(self) -> int:
        """Bytes written for the process that it has not read yet."""
        proc = self._proc
        if proc is None or proc.stdin is None:
            return sum(map(len, self._unsent))
        return proc.stdin.transport.get_write_buffer_size()  # type: ignore[attr-defined]

    async def connect(self, attach: Callable[[], asyncio.Protocol]) -> None:
        """One more connection from the relay: a socket pair, the bridge on one end."""
        loop = asyncio.get_running_loop()
        mine, theirs = socket.socketpair()
        try:
            await loop.connect_accepted_socket(lambda: _Link(self), sock=mine)
            await loop.create_connection(attach, sock=theirs)
        except BaseException:
            mine.close()
            theirs.close()
            raise

    def stop(self) -> None:
        """The tape has ended: so does the process (and its group)."""
        if self._stopping:
            return
        self._stopping = True
        if self._lifetime is not None:
            self._lifetime.cancel()
        for link in list(self._links.values()):
            link.close()
        if self._proc is not None and self._proc.returncode is None:
            self._note(EventType.MCP_SERVER_STOP, {"reason": "its tape ended"})
        self._terminate()

    def _terminate(self) -> None:
        proc = self._proc
        if proc is None:
            return
        if proc.stdin is not None:
            proc.stdin.close()
        _signal(proc, signal.SIGTERM)
        # The group, whether or not its leader is still there (node under a finished npx).
        asyncio.get_running_loop().call_later(STOP_GRACE_S, _signal, proc, signal.SIGKILL)

    def _too_old(self) -> None:
        """Its lifetime is up: stopped as if it had exited (what awaits it is answered)."""
        self._expired = True
        life = self.target.process_lifetime_s
        self._note(EventType.MCP_SERVER_STOP, {"reason": f"process_lifetime_s ({life:g} s) passed"})
        self._terminate()

    def _note(
        self, kind: str, attrs: dict[str, object], direction: Direction | None = None
    ) -> None:
        self._record([Event(time.time_ns(), kind, direction, attrs)])

    # -- the bridge's outputs ------------------------------------------------------------

    def run(self, outputs: list[Output]) -> None:
        notes: list[Event] = []
        for item in outputs:
            if isinstance(item, ToProcess):
                self._write(item.line)
            elif isinstance(item, ToStream):
                link = self._links.get(item.stream)
                if link is not None:
                    link.answer(item.data, item.end)
                    if item.end:
                        self._links.pop(item.stream, None)
            elif isinstance(item, Later):
                loop = asyncio.get_running_loop()
                loop.call_later(COMMIT_AFTER_S, self._commit, item.stream)
            elif isinstance(item, Note):
                attrs = {k: self._masked(v) for k, v in item.attrs.items()}
                notes.append(Event(time.time_ns(), item.kind, S2C, attrs))
        if notes:
            self._record(notes)

    def _commit(self, stream: int) -> None:
        if stream in self._links:
            self.run(self.bridge.commit(stream))

    def _write(self, line: bytes) -> None:
        proc = self._proc
        if proc is not None and proc.stdin is not None:
            if not proc.stdin.is_closing():
                proc.stdin.write(line)
            return
        self._unsent.append(line)
        if not self._starting:
            refused = self._may_start()
            if refused is not None:
                self._unsent.clear()
                self.run(self.bridge.exited(f"not started: {refused}"))
                self._gone(EndReason.UPSTREAM_UNAVAILABLE)
                return
            self._starting = True
            self.gw.track(self._supervise())

    def _masked(self, value: object) -> object:
        if not self._secrets or not isinstance(value, str):
            return value
        return Masker(*self._secrets).header(value.encode()).decode("utf-8", "replace")

    # -- the process ---------------------------------------------------------------------

    async def _supervise(self) -> None:
        target = self.target
        try:
            proc = await asyncio.create_subprocess_exec(
                *target.command, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE, env=environment(self._env),
                start_new_session=True, limit=MAX_LINE)  # fmt: skip
        except OSError as exc:
            why = f"could not start {target.command[0]!r}: {exc.strerror or exc}"
            self._note(EventType.UPSTREAM_ERROR, {"reason": why})
            self._ended(why)
            return
        self._proc = proc
        assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
        # The environment's names, never its values.
        self._note(EventType.MCP_SERVER_START, {"command": list(target.command), "pid": proc.pid,
                                        "env": sorted(self._env)})  # fmt: skip
        loop = asyncio.get_running_loop()
        self._lifetime = loop.call_later(target.process_lifetime_s, self._too_old)
        for line in self._unsent:
            proc.stdin.write(line)
        self._unsent.clear()
        if self._stopping:  # its tape ended while it started
            self._stopping = False
            self.stop()
        errors = asyncio.ensure_future(self._stderr(proc.stderr))
        reader = asyncio.ensure_future(self._stdout(proc))
        status = await proc.wait()
        # Its leader gone, what it left in its group goes too, once stdout has drained (a
        # child holding stdout open must not keep the calls waiting and the slot taken).
        await asyncio.wait({reader, errors}, timeout=STOP_GRACE_S)
        _signal(proc, signal.SIGKILL)
        for task in (reader, errors):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        why = _status(status)
        if self._expired:
            why = f"its process_lifetime_s ({target.process_lifetime_s:g} s) passed: {why}"
        self._note(EventType.MCP_SERVER_EXIT, {"status": status, "reason": why,
                                       "stopped": self._stopping or self._expired,
                                       "stderr_bytes": self._stderr_bytes})  # fmt: skip
        self._ended(why)

    def _ended(self, why: str) -> None:
        if self._lifetime is not None:
            self._lifetime.cancel()
        self.run(self.bridge.exited(why))
        for link in list(self._links.values()):
            link.close()  # after the answers just written
        if not self._stopping:  # not its tape's end: the tape ends because of it
            reason = EndReason.PROCESS_LIFETIME if self._expired else EndReason.UPSTREAM_CLOSED
            self._gone(reason)

    async def _stdout(self, proc: asyncio.subprocess.Process) -> None:
        assert proc.stdout is not None
        while True:
            await self._writable.wait()  # the relay reads an answer slower than it comes
            try:
                line = await proc.stdout.readuntil(b"\n")
            except asyncio.IncompleteReadError as exc:
                if exc.partial:
                    self.run(self.bridge.line(exc.partial))
                return
            except asyncio.LimitOverrunError:
                self._note(EventType.PROTOCOL_ERROR, {"message": f"MCP stdio: the server wrote a "
                           f"message over {MAX_LINE} bytes: it was stopped"}, S2C)  # fmt: skip
                _signal(proc, signal.SIGKILL)
                return
            self.run(self.bridge.line(line))

    async def _stderr(self, stream: asyncio.StreamReader) -> None:
        try:
            await self._stderr_lines(stream)
        finally:  # what the mask held back, in case it was not a credential's start after all
            if (tail := self._stderr_mask.flush()) and self._stderr_bytes <= STDERR_CAP:
                self._note(EventType.MCP_STDERR, {"text": tail.decode("utf-8", "replace")}, S2C)

    async def _stderr_lines(self, stream: asyncio.StreamReader) -> None:
        while data := await stream.read(65536):
            kept = data[: max(0, STDERR_CAP - self._stderr_bytes)]
            self._stderr_bytes += len(data)
            if kept:
                text = self._stderr_mask.feed(kept)  # a credential split across reads, too
                self._note(EventType.MCP_STDERR, {"text": text.decode("utf-8", "replace")}, S2C)
            if len(kept) < len(data) and self._stderr_bytes - len(data) <= STDERR_CAP:
                if tail := self._stderr_mask.flush():
                    self._note(EventType.MCP_STDERR, {"text": tail.decode("utf-8", "replace")}, S2C)
                cut = f"stderr past {STDERR_CAP} bytes is not kept"
                self._note(EventType.MCP_STDERR, {"text": "", "truncated": cut}, S2C)


class _Link(asyncio.Protocol):
    """The bridge's end of one socket pair: the relay's requests in, one at a time."""

    def __init__(self, server: StdioServer) -> None:
        self.server = server
        self.requests = wire.RequestReader()
        self.transport: asyncio.Transport | None = None
        self.stream: int | None = None  # the request being answered
        self._request: wire.Request | None = None
        self._body = bytearray()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        self.requests.receive(data)
        self._read()

    def eof_received(self) -> bool | None:
        self.requests.receive(b"")
        return None

    def pause_writing(self) -> None:
        self.server._backed_up.add(self)
        self.server._writable.clear()

    def resume_writing(self) -> None:
        self.server._backed_up.discard(self)
        if not self.server._backed_up:
            self.server._writable.set()

    def connection_lost(self, exc: Exception | None) -> None:
        self.resume_writing()
        if self.stream is not None:
            self.server._links.pop(self.stream, None)
            self.server.bridge.closed(self.stream)
            self.stream = None

    def _read(self) -> None:
        while self.stream is None and self.transport is not None:
            try:
                event = self.requests.next_event()
            except wire.HttpError:
                self.close()  # the relay frames its requests itself: not seen in practice
                return
            if event is NEED_DATA:
                return
            if isinstance(event, wire.Request):
                self._request = event
                self._body.clear()
            elif isinstance(event, wire.Data):
                self._body += event.data
            elif event is END and self._request is not None:
                request, self._request = self._request, None
                self.stream = next(_streams)
                self.server._links[self.stream] = self
                bridge, backlog = self.server.bridge, self.server.backlog()
                if backlog > MAX_BACKLOG:  # it does not read what it was sent: none is added
                    why = f"{backlog} bytes it has not read yet"
                    self.server.run(bridge.busy(self.stream, why))
                    continue
                self.server.run(bridge.request(
                    self.stream, request.method, request.headers, bytes(self._body)))  # fmt: skip
            else:  # the relay closed between requests
                self.close()
                return

    def answer(self, data: bytes, end: bool) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        self.transport.write(data)
        if end:
            self.stream = None
            self._read()  # a request the relay sent next (it does not pipeline; cheap to allow)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()  # what was written goes out first


def _signal(proc: asyncio.subprocess.Process, sig: int) -> None:
    """To its group (start_new_session made the process its leader): what it started, too."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, sig)


def _not_dumpable() -> None:
    """Before the first server runs: the gateway's /proc files (its environment, its memory)
    become unreadable to processes of the same user that are not root, so a server cannot read
    the gateway's own credentials there. Linux only; a no-op elsewhere."""
    if sys.platform != "linux":
        return
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(4, 0, 0, 0, 0)  # PR_SET_DUMPABLE, 0


def _status(code: int) -> str:
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit status {code}"

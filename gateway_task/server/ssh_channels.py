"""One SSH channel relayed between the agent and the target, recorded as its own tape session.

A relay holds both ends: the server-side channel the client opened and the client-side channel
the gateway opened upstream. Bytes are recorded, then written on; when one side's window fills,
the other side stops being read (asyncssh's pause/resume), so memory stays bounded whatever the
transfer size. Session channels carry exec, shell (with a PTY) and subsystems; sftp, and the
legacy scp protocol of an `scp -t|-f` exec, are parsed into events. Forward channels carry a
permitted `ssh -L` connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import TYPE_CHECKING, Any

import asyncssh

from gateway_task import policy
from gateway_task.policy import env_allowed
from gateway_task.recording import Recorder, RecordingUnavailable
from gateway_task.recording.gate import ForwardGate
from tapegate.protocols.ssh.scp import ScpObserver
from tapegate.protocols.ssh.sftp import SftpObserver
from tapegate.protocols.ssh.target import SshTarget
from tapegate.tape import Direction, Event, Stream
from tapegate.vocab import EndReason, EventType

if TYPE_CHECKING:
    from gateway_task.server.gateway import Gateway

log = logging.getLogger("tapegate.gateway")

C2S, S2C = Direction.CLIENT_TO_SERVER, Direction.SERVER_TO_CLIENT
CHANNEL_OPEN_TIMEOUT_S = 30.0  # for the target to open the session channel
_END_MESSAGES = {
    EndReason.RECORDING_FAILED:
        "cannot record this session, so it is closed: nothing runs unrecorded",
    EndReason.GATEWAY_SHUTDOWN: "the gateway is shutting down",
    EndReason.TOKEN_EXPIRED: "your OIDC token has expired: log in again with a fresh one",
    EndReason.IDLE_TIMEOUT: "the session was idle too long (limits.idle_timeout_s)",
}  # fmt: skip


class _Relay:
    """What session and forward relays share: recording, flow control, the end."""

    def __init__(self, gw: Gateway, recorder: Recorder) -> None:
        self.gw = gw
        self.recorder = recorder
        self.end_reason: str | None = None
        self.chan: Any = None  # the client's channel
        self.up_chan: Any = None  # the target's channel
        self.bytes_in = self.bytes_out = self.bytes_err = 0
        self._closed = False
        # Bytes leave only through these: to the target once recorded (and, in acked, held by
        # the sink); to the client once the sink has room.
        self.to_target = ForwardGate(
            recorder,
            to_target=True,
            pause=self._pause_client,
            resume=self._resume_client,
            failed=self._unrecordable,
        )
        self.to_client = ForwardGate(
            recorder,
            to_target=False,
            pause=self._pause_upstream,
            resume=self._resume_upstream,
            failed=self._unrecordable,
        )

    @property
    def idle(self) -> bool:
        return False  # a channel is busy until it closes: shutdown waits up to its drain time

    def end(self, reason: EndReason) -> None:
        """Close the channel, telling the client why on its stderr (an exec's or shell's); the
        connection stays, so a new channel with a fresh login can follow."""
        self.end_reason = self.end_reason or reason
        self.to_target.cancel()
        self.to_client.cancel()
        message = _END_MESSAGES.get(reason)
        if message and self.chan is not None and hasattr(self.chan, "write_stderr"):
            farewell = f"tapegate: {message}\r\n".encode()
            if reason != EndReason.RECORDING_FAILED:  # what the client reads is recorded
                with contextlib.suppress(RecordingUnavailable):
                    self.recorder.frame(S2C, farewell, time.time_ns(), Stream.STDERR)
            with contextlib.suppress(Exception):
                self.chan.write_stderr(farewell)
                self.chan.exit(255)
        self.abort()

    def abort(self) -> None:
        for chan in (self.chan, self.up_chan):
            if chan is not None:
                chan.close()

    def _record(self, direction: Direction, data: bytes, stream: Stream = Stream.DATA) -> bool:
        try:
            self.recorder.frame(direction, data, time.time_ns(), stream)
            return True
        except RecordingUnavailable as exc:
            self._unrecordable(exc)
            return False

    def _unrecordable(self, exc: RecordingUnavailable) -> None:
        log.error("ssh session %s: recording unavailable: %s", self.recorder.session_id, exc)
        self.end(EndReason.RECORDING_FAILED)

    def _pause_client(self) -> None:
        if self.chan is not None:
            self.chan.pause_reading()

    def _resume_client(self) -> None:
        if self.chan is not None and not self._closed:
            self.chan.resume_reading()

    def _pause_upstream(self) -> None:
        if self.up_chan is not None:
            self.up_chan.pause_reading()

    def _resume_upstream(self) -> None:
        if self.up_chan is not None and not self._closed:
            self.up_chan.resume_reading()

    def _events(self, events: list[Event]) -> None:
        try:
            self.recorder.events(events)
        except RecordingUnavailable:
            self.end(EndReason.RECORDING_FAILED)

    # flow control: a full window on one side pauses reading on the other
    def client_paused(self) -> None:
        if self.up_chan is not None:
            self.up_chan.pause_reading()

    def client_resumed(self) -> None:
        if self.up_chan is not None:
            self.up_chan.resume_reading()

    def upstream_paused(self) -> None:
        if self.chan is not None:
            self.chan.pause_reading()

    def upstream_resumed(self) -> None:
        if self.chan is not None:
            self.chan.resume_reading()

    def finish(self, reason: str, final: list[Event] | None = None) -> None:
        if self._closed:
            return
        self._closed = True
        self.gw.sessions.discard(self)  # type: ignore[arg-type]
        with contextlib.suppress(RecordingUnavailable):
            self.recorder.events(final or [])
        self.recorder.close(self.end_reason or reason)
        for chan in (self.chan, self.up_chan):
            if chan is not None:
                chan.close()


class SessionRelay(_Relay, asyncssh.SSHServerSession):  # type: ignore[misc]
    def __init__(
        self,
        gw: Gateway,
        recorder: Recorder,
        target: SshTarget,
        upstream: asyncssh.SSHClientConnection,
    ) -> None:
        super().__init__(gw, recorder)
        self.target = target
        self.upstream = upstream
        self.guard = policy.command_guard(target)
        self.cap = gw.config.recording.body_cap
        self.request: tuple[str, str | None] = ("shell", None)
        self.term: tuple[str, tuple[int, int, int, int], dict[int, int]] | None = None
        self.files: SftpObserver | ScpObserver | None = None  # file transfers, as events
        self.stderr = bytearray()
        self.exit_status: int | None = None
        self.exit_signal: tuple[str, bool, str, str] | None = None
        self.blocked = False
        # What the client sent before the upstream channel was open, forwarded once it is.
        self._early: list[bytes] = []
        self._early_eof = False
        self._early_resize: tuple[int, int, int, int] | None = None
        # The environment as it stood at the shell/exec/subsystem request, the only one passed
        # on: asyncssh takes `env` requests after it too (recorded as blocked, never passed on;
        # the upstream channel opens later, after the sink's ack in acked).
        self._started = False
        self._passed_env: dict[str, str] = {}  # allowed and passed on
        self._seen_env: dict[str, str] = {}  # every env request by then, recorded at the start

    # -- the client's requests ----------------------------------------------------------------

    def connection_made(self, chan: asyncssh.SSHServerChannel) -> None:
        self.chan = chan

    def pty_requested(self, term_type: str, term_size: tuple[int, int, int, int],
                      term_modes: dict[int, int]) -> bool:  # fmt: skip
        if self._started:  # RFC 4254 §6.2: before the shell or command; refused, recorded
            self._events([Event(time.time_ns(), EventType.BLOCKED, C2S, {
                "term": term_type, "rule": "pty after the session started"})])  # fmt: skip
            return False
        self.term = (term_type, term_size, term_modes)
        cols, rows = term_size[0], term_size[1]
        self._events([Event(time.time_ns(), EventType.PTY, None,
                            {"term": term_type, "cols": cols, "rows": rows})])  # fmt: skip
        return True

    def shell_requested(self) -> bool:
        self.request = ("shell", None)
        self._start()
        self._events([Event(time.time_ns(), EventType.SHELL, C2S, self._env())])
        return True

    def exec_requested(self, command: str | bytes) -> bool:
        text = command.decode("utf-8", "replace") if isinstance(command, bytes) else command
        rule = self.guard(text)
        now = time.time_ns()
        if rule is not None:
            self.blocked = True
            self._events(
                [Event(now, EventType.BLOCKED, C2S, {"command": text[: self.cap], "rule": rule})]
            )
            return False  # the client sees the exec request fail
        self.request = ("exec", text)
        self.files = ScpObserver.for_command(text, time.time_ns)  # legacy scp (`scp -O`)
        self._start()
        self._events(
            [Event(now, EventType.EXEC, C2S, {"command": text[: self.cap], **self._env()})]
        )
        return True

    def subsystem_requested(self, subsystem: str | bytes) -> bool:
        name = subsystem.decode("utf-8", "replace") if isinstance(subsystem, bytes) else subsystem
        self.request = ("subsystem", name)
        if name == "sftp":
            self.files = SftpObserver(time.time_ns)
        self._start()
        self._events(
            [Event(time.time_ns(), EventType.SUBSYSTEM, C2S, {"name": name, **self._env()})]
        )
        return True

    def _requested_env(self) -> dict[str, str]:
        # The bytes view: asyncssh's str view is a copy made on first use, blind to later ones.
        env = self.chan.get_environment_bytes() if self.chan is not None else {}
        return {bytes(k).decode("utf-8", "replace"): bytes(v).decode("utf-8", "replace")
                for k, v in (env or {}).items()}  # fmt: skip

    def _allowed_env(self) -> dict[str, str]:
        """What is passed to the target: the variables `allow_env` names (globs)."""
        return {k: v for k, v in self._requested_env().items()
                if env_allowed(k, self.target.allow_env)}  # fmt: skip

    def _start(self) -> None:
        """The shell, command or subsystem is asked for: what goes to the target is fixed now."""
        self._started = True
        self._seen_env = self._requested_env()
        self._passed_env = self._allowed_env()
        self._env_events()

    def _late_env_events(self) -> None:
        """`env` requests that came after the start: never passed on, recorded as blocked."""
        now, events = time.time_ns(), []
        for name, value in self._requested_env().items():
            if self._seen_env.get(name) == value:
                continue
            self._seen_env[name] = value
            events.append(Event(now, EventType.BLOCKED, C2S, {
                "name": name[:256], "value": value[: self.cap],
                "rule": "env after the session started"}))  # fmt: skip
        self._events(events)

    def _env(self) -> dict[str, Any]:
        """The environment passed on, for the request's event (sshd accepts LC_* by default,
        and a command can eval it)."""
        env = self._passed_env
        if not env:
            return {}
        return {"env": {k[:256]: v[: self.cap] for k, v in env.items()}}

    def _env_events(self) -> None:
        """One event per `env` request: passed on (`env`) or dropped by allow_env (`blocked`).
        asyncssh has already said yes to each request; a refused one never reaches the target."""
        now = time.time_ns()
        events = []
        for name, value in self._requested_env().items():
            attrs = {"name": name[:256], "value": value[: self.cap]}
            if env_allowed(name, self.target.allow_env):
                events.append(Event(now, EventType.ENV, C2S, attrs))
            else:
                events.append(Event(now, EventType.BLOCKED, C2S, {**attrs, "rule": "allow_env"}))
        self._events(events)

    def session_started(self) -> None:
        self.chan.pause_reading()  # until the upstream channel is open
        asyncio.get_running_loop().create_task(self._open_upstream())

    async def _open_upstream(self) -> None:
        # Paused again here: asyncssh resumes reading after session_started, and what the
        # client sends until the upstream channel is open would pile up in _early.
        self.chan.pause_reading()
        try:
            # acked: the request (an exec's command line) is held by the sink before the
            # target sees it, like any byte.
            await self.recorder.forwarding()
        except RecordingUnavailable as exc:
            self._unrecordable(exc)
            return
        kind, value = self.request
        self._late_env_events()
        kwargs: dict[str, Any] = {"encoding": None, "env": self._passed_env}
        if self.term is not None:
            term_type, size, modes = self.term
            kwargs |= {"request_pty": "force", "term_type": term_type, "term_size": size,
                       "term_modes": modes}  # fmt: skip
        if kind == "exec":
            kwargs["command"] = value
        elif kind == "subsystem":
            kwargs["subsystem"] = value
        try:
            up_chan, _ = await asyncio.wait_for(
                self.upstream.create_session(lambda: _UpstreamSide(self), **kwargs),
                CHANNEL_OPEN_TIMEOUT_S,
            )
        except (asyncssh.ChannelOpenError, asyncssh.Error, OSError, RuntimeError) as exc:
            if self._closed:
                return  # the client left while the channel was opening
            reason = getattr(exc, "reason", None) or str(exc)
            if isinstance(exc, TimeoutError):
                reason = f"no answer in {CHANNEL_OPEN_TIMEOUT_S:g} s"
            self._events(
                [Event(time.time_ns(), EventType.UPSTREAM_ERROR, None, {"reason": reason})]
            )
            said = f"tapegate: target {self.target.name!r} refused the channel: {reason}\r\n"
            if not self._record(S2C, said.encode(), Stream.STDERR):
                return  # ended, failing closed, with its own message
            self.chan.write_stderr(said.encode())
            self.chan.exit(255)
            self.end_reason = "upstream_unavailable"
            return
        self.up_chan = up_chan
        for data in self._early:
            self.to_target.send(lambda data=data: up_chan.write(data))
        if self._early_eof:
            self.to_target.send(up_chan.write_eof)
        self._early = []
        if self._early_resize is not None:
            size, self._early_resize = self._early_resize, None
            self.to_target.send(lambda: up_chan.change_terminal_size(*size))
        if not self.to_target.busy:  # else the gate resumes once the early bytes went on
            self.chan.resume_reading()

    def data_received(self, data: bytes, datatype: int | None) -> None:
        if not self._record(C2S, data):
            return
        self.bytes_in += len(data)
        if self.files is not None:
            self._events(self.files.from_client(data))
        if self.up_chan is None:
            self._early.append(data)
        else:
            self.to_target.send(lambda: self.up_chan.write(data))

    def eof_received(self) -> bool:
        self._events([Event(time.time_ns(), EventType.EOF, C2S, {})])  # the client's input ended
        if self.up_chan is None:
            self._early_eof = True
        else:
            self.to_target.send(self.up_chan.write_eof)
        return True  # half-close: the target's answer may still come

    def break_received(self, msec: int) -> bool:
        self._events([Event(time.time_ns(), EventType.BREAK, C2S, {"ms": msec})])
        if self.up_chan is not None:
            self.to_target.send(lambda: self.up_chan.send_break(msec))
        return True

    def signal_received(self, signal: str) -> None:
        self._events([Event(time.time_ns(), EventType.SIGNAL, C2S, {"name": signal})])
        if self.up_chan is not None:
            self.to_target.send(lambda: self.up_chan.send_signal(signal))

    def terminal_size_changed(self, width: int, height: int, pixwidth: int, pixheight: int) -> None:
        self._events(
            [Event(time.time_ns(), EventType.RESIZE, C2S, {"cols": width, "rows": height})]
        )
        if self.up_chan is None:  # applied once the target's channel is open
            self._early_resize = (width, height, pixwidth, pixheight)
        else:
            self.to_target.send(
                lambda: self.up_chan.change_terminal_size(width, height, pixwidth, pixheight)
            )

    def pause_writing(self) -> None:
        self.client_paused()

    def resume_writing(self) -> None:
        self.client_resumed()

    def connection_lost(self, exc: Exception | None) -> None:
        self.finish("blocked" if self.blocked else "client_closed", self._final_events())

    def finish(self, reason: str, final: list[Event] | None = None) -> None:
        if not self._closed:
            with contextlib.suppress(RecordingUnavailable):
                self._late_env_events()
        super().finish(reason, final)

    # -- the target's side --------------------------------------------------------------------

    def from_upstream(self, data: bytes, datatype: int | None) -> None:
        stderr = datatype == asyncssh.EXTENDED_DATA_STDERR
        if not self._record(S2C, data, Stream.STDERR if stderr else Stream.DATA):
            return
        if stderr:
            self.bytes_err += len(data)
            room = self.cap - len(self.stderr)
            if room > 0:
                self.stderr += data[:room]
        else:
            self.bytes_out += len(data)
            if self.files is not None:
                self._events(self.files.from_server(data))
        self.to_client.send(lambda: self.chan.write(data, datatype))

    def upstream_eof(self) -> None:
        self.to_client.send(self.chan.write_eof)

    def upstream_closed(self) -> None:
        # After any output still waiting for room: the exit status comes last, as it did.
        self.to_client.send(self._exit)

    def _exit(self) -> None:
        if self.exit_signal is not None:
            name, core, msg, lang = self.exit_signal
            self.chan.exit_with_signal(name, core, msg, lang)
        elif self.exit_status is not None:
            self.chan.exit(self.exit_status)
        else:
            self.chan.close()
        self.finish("closed", self._final_events())

    def _final_events(self) -> list[Event]:
        events = self.files.close() if self.files is not None else []
        if self.up_chan is None:
            return events
        attrs: dict[str, Any] = {
            "status": self.exit_status,
            "stdin_bytes": self.bytes_in,
            "stdout_bytes": self.bytes_out,
            "stderr_bytes": self.bytes_err,
        }
        if self.exit_signal is not None:
            attrs["signal"] = self.exit_signal[0]
        if self.stderr:
            attrs["stderr"] = self.stderr.decode("utf-8", "replace")
        events.append(Event(time.time_ns(), EventType.EXIT, S2C, attrs))
        return events


class _UpstreamSide(asyncssh.SSHClientSession):  # type: ignore[misc]
    def __init__(self, relay: SessionRelay) -> None:
        self.relay = relay

    def data_received(self, data: bytes, datatype: int | None) -> None:
        self.relay.from_upstream(data, datatype)

    def eof_received(self) -> bool:
        self.relay.upstream_eof()
        return True

    def exit_status_received(self, status: int) -> None:
        self.relay.exit_status = status

    def exit_signal_received(self, signal: str, core_dumped: bool, msg: str, lang: str) -> None:
        self.relay.exit_signal = (signal, core_dumped, msg, lang)

    def pause_writing(self) -> None:
        self.relay.upstream_paused()

    def resume_writing(self) -> None:
        self.relay.upstream_resumed()

    def connection_lost(self, exc: Exception | None) -> None:
        self.relay.upstream_closed()


class ForwardRelay(_Relay, asyncssh.SSHTCPSession):  # type: ignore[misc]
    """A permitted `ssh -L` connection: a direct-tcpip channel opened the same way upstream."""

    def __init__(
        self,
        gw: Gateway,
        recorder: Recorder,
        upstream: asyncssh.SSHClientConnection,
        attrs: dict[str, Any],
    ) -> None:
        super().__init__(gw, recorder)
        self.upstream = upstream
        self.attrs = attrs

    async def open(self) -> ForwardRelay:
        try:
            await self.recorder.forwarding()  # acked: the forward's request is held first
        except RecordingUnavailable as exc:
            self.finish(EndReason.RECORDING_FAILED)
            raise asyncssh.ChannelOpenError(asyncssh.OPEN_CONNECT_FAILED, str(exc)) from None
        try:
            self.up_chan, _ = await self.upstream.create_connection(
                lambda: _UpstreamTcp(self), self.attrs["dest_host"], self.attrs["dest_port"],
                self.attrs["orig_host"], self.attrs["orig_port"],
            )  # fmt: skip
        except asyncssh.ChannelOpenError as exc:
            self._events(
                [Event(time.time_ns(), EventType.UPSTREAM_ERROR, None, {"reason": exc.reason})]
            )
            self.finish("upstream_unavailable")
            raise
        return self

    def connection_made(self, chan: asyncssh.SSHTCPChannel[bytes]) -> None:
        self.chan = chan

    def data_received(self, data: bytes, datatype: int | None) -> None:
        if self._record(C2S, data):
            self.bytes_in += len(data)
            self.to_target.send(lambda: self.up_chan.write(data))

    def eof_received(self) -> bool:
        self.to_target.send(self.up_chan.write_eof)
        return True

    def pause_writing(self) -> None:
        self.client_paused()

    def resume_writing(self) -> None:
        self.client_resumed()

    def connection_lost(self, exc: Exception | None) -> None:
        self.finish("client_closed", [self._totals()])

    def from_upstream(self, data: bytes) -> None:
        if self._record(S2C, data):
            self.bytes_out += len(data)
            self.to_client.send(lambda: self.chan.write(data))

    def _totals(self) -> Event:
        return Event(time.time_ns(), EventType.FORWARD_CLOSED, None,
                     {"bytes_in": self.bytes_in, "bytes_out": self.bytes_out})  # fmt: skip


class _UpstreamTcp(asyncssh.SSHTCPSession):  # type: ignore[misc]
    def __init__(self, relay: ForwardRelay) -> None:
        self.relay = relay

    def data_received(self, data: bytes, datatype: int | None) -> None:
        self.relay.from_upstream(data)

    def eof_received(self) -> bool:
        if self.relay.chan is not None:
            self.relay.to_client.send(self.relay.chan.write_eof)
        return True

    def pause_writing(self) -> None:
        self.relay.upstream_paused()

    def resume_writing(self) -> None:
        self.relay.upstream_resumed()

    def connection_lost(self, exc: Exception | None) -> None:
        self.relay.finish("closed", [self.relay._totals()])

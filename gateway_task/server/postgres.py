"""One PostgreSQL client connection, from the startup packet to the final chunk.

startup (TLS, GSSENC refusal, cancel) → cleartext password = OIDC token → policy → upstream login
with the target's credential → relay, recorded both ways → final chunk. The wire logic is the
sans-IO code in `protocols/postgres/`; this module does the reading, writing and waiting.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import ssl
import time
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from gateway_task import policy
from gateway_task.recording import Recorder, RecordingUnavailable
from gateway_task.server.admission import run_admission
from gateway_task.server.driver import Handover, Pipe, unread
from gateway_task.tls import upstream_context
from tapegate.protocols.postgres import messages as m
from tapegate.protocols.postgres.handler import PgRelayHandler, unrecordable
from tapegate.protocols.postgres.login import LoginError, UpstreamLogin
from tapegate.protocols.postgres.options import startup_settings
from tapegate.protocols.postgres.relay import Guard, PgRelay, RelayLimits
from tapegate.protocols.postgres.sql import ROLE_SETTINGS, ROLE_SWITCH, SqlText
from tapegate.protocols.postgres.target import PostgresTarget
from tapegate.proxy.admission import (
    Admitted,
    Login,
    Refusal,
    RefusalKind,
    Words,
    admit,
    auth_attrs,
    precheck,
)
from tapegate.tape import Direction, Event, Identity
from tapegate.vocab import EndReason, EventType

if TYPE_CHECKING:
    from gateway_task.server.admission import Slot
    from gateway_task.server.gateway import Gateway

log = logging.getLogger("tapegate.gateway")

C2S, S2C = Direction.CLIENT_TO_SERVER, Direction.SERVER_TO_CLIENT
UPSTREAM_TIMEOUT_S = 10.0


PG_WORDS = Words("the database name (dbname)", "connect with sslmode=require (or verify-full)")
# What a PostgreSQL client sees for each of admission's refusals.
SQLSTATES = {
    RefusalKind.TLS_REQUIRED: "28000", RefusalKind.UNKNOWN_TARGET: "3D000",
    RefusalKind.NO_TOKEN: "28000", RefusalKind.BAD_TOKEN: "28000", RefusalKind.GROUPS: "42501",
    RefusalKind.ARCHIVE_FAILING: "58030", RefusalKind.NO_CREDENTIAL: "08006",
}  # fmt: skip


class _Refused(Exception):
    def __init__(
        self, code: str, message: str, hint: str | None = None, kind: str | None = None
    ) -> None:
        super().__init__(message)
        self.code, self.message, self.hint, self.kind = code, message, hint, kind

    @classmethod
    def of(cls, refusal: Refusal) -> _Refused:
        return cls(SQLSTATES[refusal.kind], refusal.message, refusal.hint, refusal.kind)


@dataclass(eq=False)
class PgSession:
    """One client connection, once it has a recorder."""

    recorder: Recorder
    target: PostgresTarget
    upstream_addr: tuple[str, int]
    upstream_key: tuple[int, int] | None
    relay: PgRelay | None = None
    pipe: Pipe | None = None
    end_reason: str | None = None

    @property
    def idle(self) -> bool:
        return self.relay is None or self.relay.idle

    def end(self, reason: EndReason) -> None:
        self.end_reason = self.end_reason or reason
        if self.pipe is not None:
            self.pipe.end(reason)


class PgConnection:
    def __init__(
        self,
        gw: Gateway,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        slot: Slot | str,
        cancel_keys: dict[tuple[int, int], PgSession],
    ) -> None:
        self.gw = gw
        self.cancel_keys = cancel_keys  # the listener's: a cancel comes on its own connection
        self.slot = slot  # its place under the limits, or why it has none
        self.reader, self.writer = reader, writer
        peer = writer.get_extra_info("peername") or ("?", 0)
        self.client_addr = f"{peer[0]}:{peer[1]}"
        self.tls = False
        self.params: dict[str, str] = {}
        self.started_ns = time.time_ns()
        self.identity: Identity | None = None  # once the token is verified
        self.startup = m.StartupMessage()  # the client's, once read

    async def run(self) -> None:
        if isinstance(self.slot, str):
            # As the postmaster does when it cannot take a connection: at once, before reading.
            await self._send(m.error_response("53300", f"sorry, {self.slot}"))
            return
        try:
            await self._run(self.slot)
        finally:
            self.slot.release()

    async def _run(self, slot: Slot) -> None:
        # One deadline from accept to admission (TLS, startup, token): trickled bytes do not
        # extend it.
        try:
            startup = await asyncio.wait_for(self._startup(), slot.remaining_s)
        except TimeoutError:
            await self._send(self._too_slow())
            return
        except (asyncio.IncompleteReadError, ConnectionError, ssl.SSLError):
            return
        except m.ProtocolError as exc:
            await self._send(m.error_response("08P01", f"protocol violation: {exc}"))
            return
        if startup is None:
            return
        self.params = startup.params
        self.startup = startup
        try:
            admitted = await asyncio.wait_for(self._authenticate(), slot.remaining_s)
        except _Refused as refusal:
            self._record_refusal(refusal)
            await self._send(m.error_response(refusal.code, refusal.message, hint=refusal.hint))
            return
        except TimeoutError:
            await self._send(self._too_slow())
            return
        except (asyncio.IncompleteReadError, ConnectionError):
            return
        slot.admitted()
        await self._session(admitted)

    def _too_slow(self) -> bytes:
        limit = self.gw.config.limits.preauth_deadline_s
        return m.error_response(
            "08P01", f"the login took too long (limits.preauth_deadline_s is {limit} s)"
        )

    # -- startup phase -------------------------------------------------------------------------

    async def _startup(self) -> m.StartupMessage | None:
        while True:
            head = await self.reader.readexactly(4)
            length = int.from_bytes(head, "big")
            if length < 8 or length > m.MAX_STARTUP_BYTES:
                raise m.ProtocolError(f"invalid startup packet length {length}")
            packet = m.decode_startup(await self.reader.readexactly(length - 4))
            if isinstance(packet, m.SSLRequest):
                if self.tls:
                    raise m.ProtocolError("SSLRequest inside TLS")
                if _buffered(self.reader):
                    # They would be read as if they had come through TLS (CVE-2021-23214).
                    raise m.ProtocolError("data sent after SSLRequest, before the TLS handshake")
                self.writer.write(b"S")
                await self.writer.drain()
                await self.writer.start_tls(self.gw.tls)
                self.tls = True
            elif isinstance(packet, m.GSSENCRequest):
                self.writer.write(b"N")
                await self.writer.drain()
            elif isinstance(packet, m.CancelRequest):
                await self._cancel(packet)
                return None
            else:
                return packet

    async def _cancel(self, req: m.CancelRequest) -> None:
        session = self.cancel_keys.get((req.pid, req.secret))
        if session is None or session.upstream_key is None:
            return  # like PostgreSQL: an unknown key gets no answer
        try:
            session.recorder.event(
                Event(time.time_ns(), EventType.CANCEL_REQUEST, C2S, {"from": self.client_addr})
            )
            await session.recorder.forwarding()  # never forwarded unrecorded, as any byte
        except RecordingUnavailable:
            return  # the session itself fails closed; this cancel is not passed on
        host, port = session.upstream_addr
        with contextlib.suppress(OSError, TimeoutError):
            _, w = await asyncio.wait_for(asyncio.open_connection(host, port), UPSTREAM_TIMEOUT_S)
            w.write(m.CancelRequest(*session.upstream_key).encode())
            await w.drain()
            w.close()

    async def _authenticate(self) -> Admitted:
        cfg = self.gw.config
        login = Login("postgres", tls=self.tls, target=self.params.get("database"), token=None)
        early = precheck(cfg, login, PG_WORDS)
        if isinstance(early, Refusal):
            raise _Refused.of(early)
        if self.startup.needs_negotiation:
            options = [k for k in self.params if k.startswith("_pq_.")]
            self.writer.write(m.negotiate_protocol_version(options))
        self.writer.write(m.auth_request(m.AUTH_CLEARTEXT))
        await self.writer.drain()
        head = await self.reader.readexactly(5)
        length = int.from_bytes(head[1:], "big")
        if head[:1] != b"p" or not 5 <= length <= 20_000:
            raise _Refused("08P01", "expected a password message carrying the OIDC token")
        token_bytes = await self.reader.readexactly(length - 4)
        try:
            token = m.decode_password(token_bytes).decode()
        except (m.ProtocolError, UnicodeDecodeError):
            raise _Refused("28000", "the password must be your OIDC token") from None
        try:
            outcome = await run_admission(
                self.gw, admit(cfg, replace(login, token=token), PG_WORDS)
            )
        finally:
            del token, token_bytes
        self.identity = outcome.identity
        if isinstance(outcome, Refusal):
            raise _Refused.of(outcome)
        return outcome

    # -- recording --------------------------------------------------------------------------

    def _new_recorder(self, identity: Identity, target_name: str) -> Recorder:
        recorder = self.gw.open_recorder(
            identity, target_name, "postgres", self.client_addr, self.started_ns
        )
        recorder.event(Event(self.started_ns, EventType.STARTUP, C2S, self._startup_attrs()))
        return recorder

    def _startup_attrs(self) -> dict[str, object]:
        # Every parameter the client sent: the upstream login passes them on (`options` can
        # set any setting, -c role=... included), so the tape must show them all.
        cap = self.gw.config.recording.param_cap
        others = {k: v[:cap] for k, v in self.params.items()
                  if k not in ("user", "database", "application_name")}  # fmt: skip
        settings = {k: v[:cap] for k, v in startup_settings(self.params).items()}
        return {
            "user": self.params.get("user"),
            "database": self.params.get("database"),
            "application_name": self.params.get("application_name"),
            "tls": self.tls,
            "params": others,
            "settings": settings,  # what the server will apply, `options` switches included
        }

    def _record_refusal(self, refusal: _Refused) -> None:
        attrs = {"method": "oidc", "refusal": refusal.kind or "protocol", "reason": refusal.message,
                 "sqlstate": refusal.code, "tls": self.tls}  # fmt: skip
        self.gw.record_refusal(
            self.identity,
            self.params.get("database") or "(none)",
            "postgres",
            self.client_addr,
            attrs,
            started_ns=self.started_ns,
            first=Event(self.started_ns, EventType.STARTUP, C2S, self._startup_attrs()),
        )

    # -- the session ------------------------------------------------------------------------

    async def _session(self, admitted: Admitted) -> None:
        identity, target = admitted.identity, admitted.target
        recorder = self._new_recorder(identity, target.name)
        now = time.time_ns()
        recorder.event(Event(now, EventType.AUTH, None, auth_attrs(admitted, "oidc", tls=self.tls)))
        session = PgSession(recorder, target, (target.upstream.host, target.upstream.port), None)
        self.gw.metrics.inc("sessions_started")
        gw = self.gw
        gw.sessions.add(session)
        up_writer: asyncio.StreamWriter | None = None
        guard = policy.guard_for(target)
        try:
            denied = _startup_denied(guard, self.params)
            if denied is not None:
                # The startup's settings are statements too: `options=-c role=...` is SET ROLE.
                recorder.event(Event(now, EventType.BLOCKED, C2S, {"startup": True, "rule": denied,
                                                           "kinds": ["SET"]}))  # fmt: skip
                await self._send_recorded(recorder, _denied_startup(denied))
                session.end_reason = EndReason.BLOCKED
                return
            # acked: the startup (its parameters go to the target with the login) is held first
            await recorder.forwarding()
            try:
                up_reader, up_writer, login = await asyncio.wait_for(
                    self._upstream(target, admitted.credential), UPSTREAM_TIMEOUT_S
                )
            except _Refused as refusal:
                recorder.event(
                    Event(
                        time.time_ns(), EventType.UPSTREAM_ERROR, None, {"reason": refusal.message}
                    )
                )
                await self._send_recorded(
                    recorder, m.error_response(refusal.code, refusal.message, hint=refusal.hint)
                )
                session.end_reason = "upstream_unavailable"
                return
            recorder.event(Event(time.time_ns(), EventType.UPSTREAM, None, {
                "method": login.method, "tls": login.server_cert is not None,
                "channel_binding": (login.method or "").endswith("-plus")}))  # fmt: skip
            session.upstream_key = login.backend_key
            pid, secret = self._cancel_key(login.backend_key)
            self.cancel_keys[(pid, secret)] = session
            hello = bytearray(m.auth_request(m.AUTH_OK))
            for name, value in login.params.items():
                hello += m.parameter_status(name, value)
            hello += m.backend_key_data(pid, secret)
            hello += m.ready_for_query(login.status)
            recorder.frame(S2C, bytes(hello), time.time_ns())
            self.writer.write(hello)
            await self.writer.drain()
            text = SqlText()  # how the server reads SQL text, from its ParameterStatus
            for name, value in login.params.items():
                text.parameter(name, value)
            relay = PgRelay(
                guard,
                RelayLimits(
                    gw.config.recording.sql_cap,
                    gw.config.recording.param_cap,
                    gw.config.limits.max_message_bytes,
                ),
                text=text,
                deny_function_call=target.deny_function_call,
            )
            session.relay = relay
            session.end_reason = await self._relay(session, relay, up_reader, up_writer)
        except RecordingUnavailable as exc:
            session.end_reason = EndReason.RECORDING_FAILED
            log.error("session %s: recording unavailable: %s", recorder.session_id, exc)
            if session.relay is None or session.relay.at_boundary:  # never inside a message
                await self._send(unrecordable(str(exc)))
        finally:
            gw.sessions.discard(session)
            for key, s in list(self.cancel_keys.items()):
                if s is session:
                    del self.cancel_keys[key]
            if up_writer is not None:
                up_writer.close()
            reason = session.end_reason or "error"
            recorder.close(reason)
            log.info("session %s closed: %s", recorder.session_id, reason)

    def _cancel_key(self, upstream: tuple[int, int] | None) -> tuple[int, int]:
        """The server's own pid (so that pg_backend_pid(), pg_stat_activity and notifications
        agree with what the client was told) and a secret of the gateway's."""
        while True:
            pid = upstream[0] if upstream else secrets.randbelow(2**31 - 1) + 1
            key = (pid, secrets.randbits(32) - 2**31)
            if key not in self.cancel_keys:
                return key

    async def _upstream(
        self, target: PostgresTarget, password: str
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, UpstreamLogin]:
        host, port = target.upstream.host, target.upstream.port
        try:
            reader, writer = await asyncio.open_connection(host, port)
        except OSError as exc:
            raise _Refused(
                "08006",
                f"target {target.name!r} is unreachable from the gateway ({exc.strerror})",
            ) from None
        server_cert: bytes | None = None
        try:
            ctx = upstream_context(target.upstream_tls, target.upstream_ca_file)
            if ctx is not None:
                writer.write(m.SSLRequest().encode())
                await writer.drain()
                answer = await reader.readexactly(1)
                if answer == b"S":
                    if _buffered(reader):  # as read through TLS they would be forged
                        raise LoginError("the upstream sent data before the TLS handshake")
                    server_name = host if target.upstream_tls == "verify-full" else None
                    await writer.start_tls(ctx, server_hostname=server_name)
                    tls = writer.get_extra_info("ssl_object")
                    server_cert = tls.getpeercert(binary_form=True) if tls else None
                elif answer != b"N":
                    raise LoginError(f"the upstream answered SSLRequest with {answer!r}")
                elif target.upstream_tls in ("require", "verify-full"):
                    raise _Refused("08006", f"target {target.name!r} does not offer TLS "
                                   f"(its upstream_tls is {target.upstream_tls})")  # fmt: skip
            login = UpstreamLogin(
                user=target.username,
                database=target.database,
                password=password,
                application_name=self.params.get("application_name") or "tapegate",
                client_params=self.params,
                allow_insecure_auth=target.allow_insecure_auth,
                server_cert=server_cert,
            )
            writer.write(login.startup())
            await writer.drain()
            while not login.done:
                data = await reader.read(65536)
                if not data:
                    raise LoginError("upstream closed the connection during login")
                reply = login.receive(data)
                if reply:
                    writer.write(reply)
                    await writer.drain()
            login.password = ""
            return reader, writer, login
        except LoginError as exc:
            writer.close()
            self.gw.credentials.forget(target)  # refused: it may have been rotated since
            log.error("target %s: upstream login failed: %s", target.name, exc)
            raise _Refused(
                exc.fields.get("C", "08006"),
                f"the gateway could not log in to target {target.name!r}: {exc}",
            ) from None
        except (OSError, asyncio.IncompleteReadError, ssl.SSLError) as exc:
            writer.close()
            raise _Refused(
                "08006", f"target {target.name!r} dropped the connection ({type(exc).__name__})"
            ) from None
        finally:
            del password

    async def _relay(
        self,
        session: PgSession,
        relay: PgRelay,
        up_reader: asyncio.StreamReader,
        up_writer: asyncio.StreamWriter,
    ) -> EndReason:
        """Hand both connections to the driver until the session ends."""
        limits = self.gw.config.limits
        handler = PgRelayHandler(relay, session.target.name, limits.idle_timeout_s)
        pipe = Pipe(
            handler,
            session.recorder,
            Handover.of(self.reader, self.writer),
            Handover.of(up_reader, up_writer),
            client_tls=self.tls,
            failure=lambda: self.gw.sink.failure,
        )
        session.pipe = pipe
        pipe.start()
        if session.end_reason is not None:  # end() came during the upstream login
            pipe.end(EndReason(session.end_reason))
        try:
            return await asyncio.shield(pipe.done)  # cancelled: the pipe still ends itself
        except asyncio.CancelledError:
            pipe.end(EndReason.GATEWAY_SHUTDOWN)
            raise

    async def _send(self, data: bytes) -> None:
        with contextlib.suppress(ConnectionError, RuntimeError, OSError):
            self.writer.write(data)
            await self.writer.drain()

    async def _send_recorded(self, recorder: Recorder, data: bytes) -> None:
        with contextlib.suppress(RecordingUnavailable):
            recorder.frame(S2C, data, time.time_ns())
            await self._send(data)


# -- `tapegate up` ---------------------------------------------------------------------------


def _buffered(reader: asyncio.StreamReader) -> bool:
    return bool(unread(reader))


def _startup_denied(guard: Guard, params: dict[str, str]) -> str | None:
    settings = startup_settings(params)
    if ROLE_SETTINGS & settings.keys():
        text = " ".join(f"{k}={settings[k]}" for k in sorted(ROLE_SETTINGS & settings.keys()))
        return guard(text, [ROLE_SWITCH])
    return None


def _denied_startup(rule: str) -> bytes:
    return m.error_response(
        "42501",
        f"connection blocked by tapegate guardrail ({rule}): the startup parameters switch role",
        hint="Connect without role or session_authorization in the options; the attempt was "
        "recorded.",
    )

"""SSH: the gateway is an SSH server to agents and an SSH client to targets (asyncssh both sides).

The SSH username names the target; the password (or keyboard-interactive answer) is the OIDC
token. After the same token checks and policy as PostgreSQL, the gateway logs in to the target
with the target's key or password, checking the target's host key against its known_hosts. Each
channel the client opens (exec, shell, sftp, a permitted port forward) is relayed to a channel of
the same kind upstream and recorded as its own tape session; `ssh_channels` holds the relays.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

import asyncssh
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gateway_task.recording import Recorder
from gateway_task.secrets import Credentials, SshCredential
from gateway_task.server.admission import run_admission
from gateway_task.server.ssh_channels import ForwardRelay, SessionRelay
from tapegate.config import Address, Config
from tapegate.keys import load_ssh_host_seed
from tapegate.protocols.ssh.target import SshTarget
from tapegate.proxy.admission import Admitted, Login, Refusal, RefusalKind, Words, admit, auth_attrs
from tapegate.tape import Event, Identity
from tapegate.vocab import EventType

if TYPE_CHECKING:
    from gateway_task.server.admission import Slot
    from gateway_task.server.gateway import Gateway

log = logging.getLogger("tapegate.gateway")

UPSTREAM_TIMEOUT_S = 10.0


SSH_WORDS = Words("the SSH username", "")
UNRECORDABLE_CHANNEL = (
    "tapegate cannot record this session, so it is refused: nothing runs unrecorded"
)


class SshListener:
    """The asyncssh acceptor and the client connections it accepted."""

    def __init__(self, acceptor: asyncssh.SSHAcceptor, links: set[SshClientLink]) -> None:
        self._acceptor = acceptor
        self._links = links
        self.sockets = acceptor.sockets

    def close(self) -> None:
        self._acceptor.close()  # stops accepting; open connections stay

    def tick(self, now: float) -> None:
        """Called by the gateway's ticker: a connection whose token has expired is
        disconnected (its channels are ended as sessions; this ends the login itself)."""
        for link in list(self._links):
            link.end_if_expired(now)

    async def close_connections(self) -> None:
        for link in list(self._links):
            link.close()
        await asyncio.sleep(0)


# In 32 KiB packets on one core, asyncssh encrypts AES-GCM at about 6 GB/s, AES-CTR with UMAC-64
# at 3, ChaCha20-Poly1305 (new cipher objects per packet) and AES-CTR with HMAC-SHA2 at 1.5.
# OpenSSH clients take ChaCha20 first when offered, so it is not: they pick AES-CTR with UMAC,
# newer clients of other kinds AES-GCM (paramiko from 3.5), older ones AES-CTR with HMAC.
# Upstream the gateway's own order decides: AES-GCM, and ChaCha20 only for a target that allows
# nothing else.
CIPHERS = ("aes128-gcm@openssh.com", "aes256-gcm@openssh.com", "aes128-ctr", "aes256-ctr")
UPSTREAM_CIPHERS = (*CIPHERS, "chacha20-poly1305@openssh.com")
# Bigger packets and window from clients (OpenSSH allows 256 KiB packets): fewer packets to handle.
CLIENT_MAX_PACKET = 255 * 1024
CLIENT_WINDOW = 8 << 20


async def start_ssh_server(gw: Gateway, listen: Address) -> SshListener:
    # asyncssh logs every connection and channel at INFO; the gateway logs what matters itself.
    logging.getLogger("asyncssh").setLevel(logging.WARNING)
    links: set[SshClientLink] = set()
    acceptor = await asyncssh.create_server(
        lambda: SshClientLink(gw, links),
        listen.host,
        listen.port,
        server_host_keys=[host_key(gw.config)],
        server_version="tapegate",
        encoding=None,
        line_editor=False,
        login_timeout=gw.config.limits.preauth_deadline_s,
        keepalive_interval=60,
        encryption_algs=CIPHERS,
        max_pktsize=CLIENT_MAX_PACKET,
        window=CLIENT_WINDOW,
        # Only what the gateway checks: the token, as a password or keyboard-interactive answer.
        public_key_auth=False,
        gss_host=None,
        host_based_auth=False,
        allow_scp=False,
        agent_forwarding=False,
        x11_forwarding=False,
    )
    return SshListener(acceptor, links)


def host_key(config: Config) -> asyncssh.SSHKey:
    """The gateway's Ed25519 host key, which clients pin: from `keys.ssh_host_key` (one key for
    every task behind a load balancer), else made once and kept in the data dir."""
    if config.keys.ssh_host_key:
        seed = load_ssh_host_seed(config.keys.ssh_host_key, config.sink.region)
        pem = Ed25519PrivateKey.from_private_bytes(seed).private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.OpenSSH,
            serialization.NoEncryption(),
        )
        return asyncssh.import_private_key(pem)
    path = Path(config.data_dir) / "ssh" / "host_ed25519"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        key = asyncssh.generate_private_key("ssh-ed25519", comment="tapegate gateway")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(key.export_private_key())
        path.with_suffix(".pub").write_bytes(key.export_public_key())
    return asyncssh.read_private_key(path)


class SshClientLink(asyncssh.SSHServer):
    """One agent's SSH connection: its login, its upstream connection, its channels."""

    def __init__(self, gw: Gateway, links: set[SshClientLink]) -> None:
        self.gw = gw
        self._links = links
        self.conn: asyncssh.SSHServerConnection | None = None
        self.client_addr = "?:0"
        self.connection_id = uuid.uuid4().hex[:16]
        self.started_ns = time.time_ns()
        self.target: SshTarget | None = None
        self.identity: Identity | None = None
        self.method = ""
        self.upstream: asyncssh.SSHClientConnection | None = None
        self.upstream_error: str | None = None
        self.slot: Slot | None = None

    # -- connection ---------------------------------------------------------------------------

    def connection_made(self, conn: asyncssh.SSHServerConnection) -> None:
        self.conn = conn
        peer = conn.get_extra_info("peername") or ("?", 0)
        self.client_addr = f"{peer[0]}:{peer[1]}"
        self._links.add(self)
        # The pre-auth deadline is asyncssh's login_timeout, which runs from this moment.
        slot = self.gw.admission.arrive(str(peer[0]))
        if isinstance(slot, str):
            log.warning("ssh %s: refused a connection: %s", self.client_addr, slot)
            conn.disconnect(asyncssh.DISC_TOO_MANY_CONNECTIONS, f"tapegate: {slot}")
            return
        self.slot = slot

    def connection_lost(self, exc: Exception | None) -> None:
        if self.slot is not None:
            self.slot.release()
        self._links.discard(self)
        if self.upstream is not None:
            self.upstream.close()

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()

    def end_if_expired(self, now: float) -> None:
        cfg = self.gw.config.identity
        expires_at = self.identity.expires_at if self.identity is not None else None
        if self.conn is None or cfg.on_token_expiry != "end" or expires_at is None:
            return
        if expires_at + cfg.leeway_s < now:
            log.info("ssh %s: token expired, disconnecting", self.client_addr)
            with contextlib.suppress(Exception):
                self.conn.disconnect(asyncssh.DISC_BY_APPLICATION,
                                     "tapegate: your OIDC token has expired")  # fmt: skip
            self.conn = None

    # -- authentication -----------------------------------------------------------------------

    def begin_auth(self, username: str) -> bool:
        return True

    def password_auth_supported(self) -> bool:
        return True

    async def validate_password(self, username: str, password: str) -> bool:
        return await self._login(username, password, "password")

    def kbdint_auth_supported(self) -> bool:
        return True

    def get_kbdint_challenge(
        self, username: str, lang: str, submethods: str
    ) -> tuple[str, str, str, list[tuple[str, bool]]]:
        return "tapegate", "Paste your OIDC token.", "", [("Token: ", False)]

    async def validate_kbdint_response(self, username: str, responses: list[str]) -> bool:
        token = responses[0] if len(responses) == 1 else ""
        return await self._login(username, token, "keyboard-interactive")

    async def _login(self, username: str, token: str, method: str) -> bool:
        login = Login("ssh", tls=True, target=username, token=token, needs_tls=False)
        try:
            outcome = await run_admission(self.gw, admit(self.gw.config, login, SSH_WORDS))
        finally:
            del token, login
        if isinstance(outcome, Refusal):
            reason = outcome.message + (
                f" ({outcome.hint})"
                if outcome.hint and outcome.kind == RefusalKind.UNKNOWN_TARGET
                else ""
            )
            return self._refuse(username, reason, method, outcome.identity, outcome.kind)
        found, identity = outcome.target, outcome.identity
        self.target, self.identity, self.method = found, identity, method
        if self.slot is not None:
            self.slot.admitted()
        # Log in upstream now: a failure is then told when the client opens its first channel.
        try:
            self.upstream = await asyncio.wait_for(
                connect_upstream(found, outcome.credential, self.gw.credentials),
                UPSTREAM_TIMEOUT_S,
            )
        except TimeoutError:
            self.upstream_error = (
                f"target {found.name!r} did not answer in {UPSTREAM_TIMEOUT_S:g} s"
            )
        except UpstreamError as exc:
            self.upstream_error = str(exc)
        if self.upstream_error:
            log.error("ssh %s: %s", self.client_addr, self.upstream_error)
        return True

    def _refuse(
        self, target: str, reason: str, method: str, identity: Identity | None = None,
        kind: str = "protocol",
    ) -> bool:  # fmt: skip
        self.gw.record_refusal(
            identity, target or "(none)", "ssh", self.client_addr,
            {"method": method, "refusal": kind, "reason": reason}, started_ns=self.started_ns,
        )  # fmt: skip
        if self.conn is not None:
            # OpenSSH shows the banner before "Permission denied": the reason, not just a no.
            with contextlib.suppress(Exception):
                self.conn.send_auth_banner(f"tapegate: {reason}\r\n")
        return False

    # -- channels -----------------------------------------------------------------------------

    def _token_expired(self, channel: str) -> bool:
        """`identity.on_token_expiry: end`: no new channel opens on an expired token. The
        refusal is recorded like any other, and the client is told why."""
        cfg = self.gw.config.identity
        expires_at = self.identity.expires_at if self.identity is not None else None
        if cfg.on_token_expiry != "end" or expires_at is None:
            return False
        if expires_at + cfg.leeway_s >= time.time():
            return False
        reason = "your OIDC token has expired: log in again with a fresh one"
        attrs = {"method": self.method, "refusal": RefusalKind.BAD_TOKEN, "reason": reason,
                 "channel": channel}  # fmt: skip
        target = self.target.name if self.target else "(none)"
        self.gw.record_refusal(self.identity, target, "ssh", self.client_addr, attrs)
        raise asyncssh.ChannelOpenError(asyncssh.OPEN_ADMINISTRATIVELY_PROHIBITED, reason)

    def session_requested(self) -> SessionRelay:
        self._token_expired("session")
        recorder = self._channel_recorder("session")
        if self.upstream is None:
            self._fail_channel(recorder)
        assert self.upstream is not None and self.target is not None
        relay = SessionRelay(self.gw, recorder, self.target, self.upstream)
        self.gw.sessions.add(relay)
        return relay

    def connection_requested(
        self, dest_host: str, dest_port: int, orig_host: str, orig_port: int
    ) -> Any:
        attrs = {"kind": "local", "dest_host": dest_host, "dest_port": dest_port,
                 "orig_host": orig_host, "orig_port": orig_port}  # fmt: skip
        return self._forward(attrs)

    def server_requested(self, listen_host: str, listen_port: int) -> bool:
        # Remote forwarding would open a listener on the gateway: never offered.
        attrs = {"kind": "remote", "listen_host": listen_host, "listen_port": listen_port}
        self._refuse_forward(attrs, "remote forwarding is not offered")
        return False

    def _refuse_forward(self, attrs: dict[str, Any], reason: str) -> None:
        """A refused forward is recorded like a refused login, through the refusal ledger: a
        client asking again and again on one connection fills one summary, not the disk."""
        assert self.identity is not None and self.target is not None
        now = time.time_ns()
        self.gw.record_refusal(
            self.identity, self.target.name, "ssh", self.client_addr,
            {"method": self.method, "refusal": "port_forward", "reason": reason,
             "connection": self.connection_id},
            started_ns=now,
            first=Event(now, EventType.PORT_FORWARD, None,
                        {**attrs, "result": "refused", "reason": reason}),
        )  # fmt: skip

    def _forward(self, attrs: dict[str, Any]) -> Any:
        self._token_expired("port_forward")
        assert self.target is not None
        if not self.target.allow_port_forwarding:
            reason = f"port forwarding is not allowed for target {self.target.name!r}"
            self._refuse_forward(attrs, reason)
            raise asyncssh.ChannelOpenError(asyncssh.OPEN_ADMINISTRATIVELY_PROHIBITED, reason)
        recorder = self._channel_recorder("port_forward")
        if self.upstream is None:
            self._fail_channel(recorder)
        assert self.upstream is not None
        recorder.event(
            Event(time.time_ns(), EventType.PORT_FORWARD, None, {**attrs, "result": "allowed"})
        )
        relay = ForwardRelay(self.gw, recorder, self.upstream, attrs)
        self.gw.sessions.add(relay)
        return relay.open()

    def _channel_recorder(self, channel: str) -> Recorder:
        assert self.identity is not None and self.target is not None
        if self.gw.sink.failure is not None:  # fail closed: no channel opens unrecorded
            reason = UNRECORDABLE_CHANNEL
            self.gw.record_refusal(
                self.identity, self.target.name, "ssh", self.client_addr,
                {"method": self.method, "refusal": "archive_failing", "reason": reason,
                 "channel": channel},
            )  # fmt: skip
            raise asyncssh.ChannelOpenError(asyncssh.OPEN_CONNECT_FAILED, reason)
        now = time.time_ns()
        recorder = self.gw.open_recorder(self.identity, self.target.name, "ssh",
                                         self.client_addr, now)  # fmt: skip
        admitted = Admitted(self.target, self.identity)
        recorder.event(Event(now, EventType.AUTH, None, auth_attrs(
            admitted, self.method, connection=self.connection_id, channel=channel)))  # fmt: skip
        self.gw.metrics.inc("sessions_started")
        return recorder

    def _fail_channel(self, recorder: Recorder) -> None:
        reason = self.upstream_error or "no upstream connection"
        recorder.event(Event(time.time_ns(), EventType.UPSTREAM_ERROR, None, {"reason": reason}))
        recorder.close("upstream_unavailable")
        raise asyncssh.ChannelOpenError(asyncssh.OPEN_CONNECT_FAILED, reason)


class UpstreamError(Exception):
    """Why the gateway could not log in to a target. Never holds the credential."""


async def connect_upstream(
    target: SshTarget, cred: SshCredential, credentials: Credentials
) -> asyncssh.SSHClientConnection:
    try:
        keys = [asyncssh.import_private_key(cred.private_key)] if cred.private_key else None
    except (asyncssh.KeyImportError, ValueError):
        raise UpstreamError(f"the private key for target {target.name!r} cannot be read") from None
    try:
        return await asyncssh.connect(
            target.upstream.host,
            target.upstream.port,
            username=target.username,
            client_keys=keys,
            password=cred.password,
            known_hosts=(
                asyncssh.import_known_hosts(target.known_hosts_lines)
                if target.known_hosts_lines
                else str(target.known_hosts)
            ),
            config=None,
            agent_path=None,
            preferred_auth="publickey" if keys else "password,keyboard-interactive",
            encoding=None,
            login_timeout=UPSTREAM_TIMEOUT_S,
            encryption_algs=UPSTREAM_CIPHERS,
        )
    except asyncssh.HostKeyNotVerifiable as exc:
        raise UpstreamError(
            f"target {target.name!r} presented a host key its known_hosts does not list ({exc}): "
            "the gateway does not connect; an operator must check the key and update known_hosts"
        ) from None
    except asyncssh.PermissionDenied:
        credentials.forget(target)  # refused: it may have been rotated since
        raise UpstreamError(f"target {target.name!r} refused the gateway's credential") from None
    except (OSError, asyncssh.Error) as exc:
        why = getattr(exc, "strerror", None) or getattr(exc, "reason", None) or str(exc)
        raise UpstreamError(
            f"target {target.name!r} is unreachable from the gateway ({why})"
        ) from None
    finally:
        del cred

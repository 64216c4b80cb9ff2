"""asyncssh on both sides and nothing else: the ceiling of the stack the SSH gateway is built on.

Accepts any password, opens the same exec or subsystem on the target for each channel and pumps
bytes both ways, with the gateway's ciphers, packet size and window. Nothing is parsed, hashed,
recorded or sealed. bench_ssh_http.py runs scp through it beside the real gateway.

Usage: python bench/plain_relay.py LISTEN_PORT TARGET_HOST TARGET_PORT USER KEY_FILE KNOWN_HOSTS
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

import asyncssh
import uvloop

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gateway_task.server.ssh import CIPHERS, CLIENT_MAX_PACKET, CLIENT_WINDOW


class AnyPassword(asyncssh.SSHServer):
    def __init__(self, connect: Callable[[], Awaitable[asyncssh.SSHClientConnection]]) -> None:
        self.connect = connect

    def begin_auth(self, username: str) -> bool:
        return True

    def password_auth_supported(self) -> bool:
        return True

    def validate_password(self, username: str, password: str) -> bool:
        return True

    def session_requested(self) -> ChannelRelay:
        return ChannelRelay(self.connect)


class ChannelRelay(asyncssh.SSHServerSession[bytes]):
    """One client channel: the same exec or subsystem upstream, bytes pumped both ways with
    flow control (the client is paused while the target's window is full)."""

    def __init__(self, connect: Callable[[], Awaitable[asyncssh.SSHClientConnection]]) -> None:
        self.connect = connect
        self.request: dict[str, str] = {}
        self.pending: list[bytes] = []
        self.chan: asyncssh.SSHServerChannel[bytes] | None = None
        self.up: asyncssh.SSHClientChannel[bytes] | None = None

    def connection_made(self, chan: asyncssh.SSHServerChannel[bytes]) -> None:  # type: ignore[override]
        self.chan = chan

    def exec_requested(self, command: str) -> bool:
        self.request = {"command": command}
        return True

    def subsystem_requested(self, subsystem: str) -> bool:
        self.request = {"subsystem": subsystem}
        return True

    def session_started(self) -> None:
        self.opening = asyncio.ensure_future(self.open_upstream())

    async def open_upstream(self) -> None:
        conn = await self.connect()
        self.up, _ = await conn.create_session(lambda: Upstream(self), encoding=None,
                                               **self.request)  # type: ignore[arg-type]  # fmt: skip
        for data in self.pending:
            self.up.write(data)

    def data_received(self, data: bytes, datatype: int | None) -> None:
        if self.up is None:
            self.pending.append(data)
        else:
            self.up.write(data)

    def eof_received(self) -> bool:
        if self.up is not None:
            self.up.write_eof()
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        if self.up is not None:
            self.up.close()


class Upstream(asyncssh.SSHClientSession[bytes]):
    def __init__(self, relay: ChannelRelay) -> None:
        self.relay = relay

    def data_received(self, data: bytes, datatype: int | None) -> None:
        assert self.relay.chan is not None
        self.relay.chan.write(data, datatype)

    def pause_writing(self) -> None:
        assert self.relay.chan is not None
        self.relay.chan.pause_reading()

    def resume_writing(self) -> None:
        assert self.relay.chan is not None
        self.relay.chan.resume_reading()

    def eof_received(self) -> bool:
        assert self.relay.chan is not None
        self.relay.chan.write_eof()
        return True

    def exit_status_received(self, status: int) -> None:
        assert self.relay.chan is not None
        self.relay.chan.exit(status)


async def main(port: int, host: str, target_port: int, user: str, key: str, known: str) -> None:
    def connect() -> Awaitable[asyncssh.SSHClientConnection]:
        return asyncssh.connect(host, target_port, username=user, client_keys=[key],
                                known_hosts=known, config=None, agent_path=None,
                                encryption_algs=CIPHERS)  # fmt: skip

    host_key = asyncssh.generate_private_key("ssh-ed25519")
    await asyncssh.create_server(
        lambda: AnyPassword(connect), "127.0.0.1", port, server_host_keys=[host_key],
        encoding=None, line_editor=False, encryption_algs=CIPHERS,
        max_pktsize=CLIENT_MAX_PACKET, window=CLIENT_WINDOW, allow_scp=False,
    )  # fmt: skip
    await asyncio.Event().wait()


if __name__ == "__main__":
    port, host, target_port, user, key, known = sys.argv[1:7]
    uvloop.run(main(int(port), host, int(target_port), user, key, known))

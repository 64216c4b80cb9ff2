"""A TCP listener that serves TLS and plain connections on one port, told apart by the first byte.

A TLS ClientHello starts with 0x16 (a handshake record); no HTTP method does. The byte is peeked,
not read, so the TLS handshake (or h11) sees the connection from its start.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
from collections.abc import Callable

from gateway_task.server.admission import Admission, Slot

log = logging.getLogger("tapegate.gateway")

TLS_HANDSHAKE = 0x16

# Called with each connection once its kind is known (True: TLS) and its slot under the limits;
# it starts the session's task, which releases the slot.
Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter, bool, Slot], None]


class SniffingListener:
    def __init__(
        self, host: str, port: int, tls: ssl.SSLContext, handler: Handler, admission: Admission
    ) -> None:
        self._admission = admission
        self._sock = socket.create_server((host, port), reuse_port=False, backlog=1024)
        self._sock.setblocking(False)
        self._tls = tls
        self._handler = handler
        self._accepting: asyncio.Task[None] | None = None
        self._pending: set[asyncio.Task[None]] = set()
        self.sockets = [self._sock]

    def start(self) -> None:
        self._accepting = asyncio.create_task(self._accept_forever())

    def close(self) -> None:
        if self._accepting is not None:
            self._accepting.cancel()
        for task in self._pending:  # still waiting for a first byte: nothing started
            task.cancel()
        self._sock.close()

    async def _accept_forever(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                conn, _ = await loop.sock_accept(self._sock)
            except OSError as exc:  # EMFILE and the like: keep serving the open connections
                log.error("accept failed: %s", exc)
                await asyncio.sleep(0.1)
                continue
            try:
                source = conn.getpeername()[0]
            except OSError:  # gone already (a reset between accept and here)
                conn.close()
                continue
            slot = self._admission.arrive(source)
            if isinstance(slot, str):
                # Over a limit, before TLS: no HTTP answer can reach a TLS client yet, and a
                # handshake per refused socket is what a flood would want. Closed and counted.
                log.warning("http: refused a connection: %s", slot)
                conn.close()
                continue
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            task = asyncio.create_task(self._start(conn, slot))
            self._pending.add(task)
            task.add_done_callback(self._pending.discard)

    async def _start(self, conn: socket.socket, slot: Slot) -> None:
        loop = asyncio.get_running_loop()
        try:
            # The first byte and the TLS handshake count against the slot's pre-auth deadline.
            first = await asyncio.wait_for(_peek(loop, conn), slot.remaining_s)
            if not first:
                conn.close()
                slot.release()
                return
            tls = first[0] == TLS_HANDSHAKE
            reader = asyncio.StreamReader(limit=2**20)
            protocol = asyncio.StreamReaderProtocol(reader)
            handshake = (
                {"ssl": self._tls, "ssl_handshake_timeout": max(0.1, slot.remaining_s)}
                if tls
                else {}
            )
            transport, _ = await loop.connect_accepted_socket(  # type: ignore[type-var]
                lambda: protocol, conn, **handshake
            )
        except (TimeoutError, OSError, ssl.SSLError):
            conn.close()
            slot.release()
            return
        except BaseException:
            conn.close()
            slot.release()
            raise
        writer = asyncio.StreamWriter(transport, protocol, reader, loop)
        self._handler(reader, writer, tls, slot)


async def _peek(loop: asyncio.AbstractEventLoop, conn: socket.socket) -> bytes:
    readable = loop.create_future()
    loop.add_reader(conn.fileno(), lambda: readable.done() or readable.set_result(None))
    try:
        await readable
    finally:
        loop.remove_reader(conn.fileno())
    with contextlib.suppress(BlockingIOError):
        return conn.recv(1, socket.MSG_PEEK)
    return b""

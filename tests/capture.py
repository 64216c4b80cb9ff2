"""A TCP relay between the gateway and a target that the test controls: it counts what reaches
the target (ground truth for "nothing is forwarded before it is recorded", collected outside
the gateway), and it can be stopped, resetting every connection, and started again (an outage).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import threading
from collections.abc import Coroutine
from typing import Any

from tests.pg import free_port


def _reset(transport: asyncio.BaseTransport) -> None:
    """Close with an RST, not a FIN: the peer sees 'connection reset', as when a network drops."""
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()


class _Side(asyncio.Protocol):
    """One side of a proxied connection; bytes go to `peer`, with the peer's flow control."""

    def __init__(self, proxy: TcpProxy) -> None:
        self.proxy = proxy
        self.transport: asyncio.Transport | None = None
        self.peer: _Side | None = None
        self.pending = bytearray()  # what arrived before the peer was connected

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.proxy.transports.add(transport)

    def data_received(self, data: bytes) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.write(data)
        else:
            self.pending += data

    def connection_lost(self, exc: Exception | None) -> None:
        if self.transport is not None:
            self.proxy.transports.discard(self.transport)
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.close()

    def pause_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.resume_reading()


class _Client(_Side):
    """The side the gateway connected: what it sends is what reaches the target, counted."""

    def data_received(self, data: bytes) -> None:
        self.proxy.to_target += len(data)
        super().data_received(data)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        assert self.transport is not None
        self.transport.pause_reading()
        task = asyncio.ensure_future(self._connect_upstream())
        self.proxy.tasks.add(task)
        task.add_done_callback(self.proxy.tasks.discard)

    async def _connect_upstream(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            _, upstream = await loop.create_connection(
                lambda: _Side(self.proxy), *self.proxy.upstream
            )
        except OSError:
            if self.transport is not None:
                _reset(self.transport)
            return
        if self.transport is None or self.transport.is_closing():
            _reset(upstream.transport)  # type: ignore[arg-type]
            return
        upstream.peer, self.peer = self, upstream
        if self.pending:
            upstream.transport.write(bytes(self.pending))  # type: ignore[union-attr]
            self.pending.clear()
        self.transport.resume_reading()


class TcpProxy:
    """127.0.0.1:<port> → upstream. stop() closes the listener and resets every connection, so
    the gateway sees connection refused (new) and reset (open); start() listens again on the
    same port. `to_target` counts the bytes that reached the upstream."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self.port = free_port()
        self.address = ("127.0.0.1", self.port)
        self.to_target = 0
        self.transports: set[asyncio.BaseTransport] = set()
        self.tasks: set[asyncio.Future[None]] = set()
        self._server: asyncio.AbstractServer | None = None
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self.start()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def up(self) -> bool:
        return self._server is not None

    def _run(self, coro: Coroutine[Any, Any, None]) -> None:
        asyncio.run_coroutine_threadsafe(coro, self._loop).result(10)

    def start(self) -> None:
        self._run(self._start())

    async def _start(self) -> None:
        if self._server is None:
            loop = asyncio.get_running_loop()
            self._server = await loop.create_server(
                lambda: _Client(self), "127.0.0.1", self.port, reuse_address=True
            )

    def stop(self) -> None:
        self._run(self._stop())

    async def _stop(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        for task in list(self.tasks):
            task.cancel()
        self.tasks.clear()
        for transport in list(self.transports):
            _reset(transport)
        self.transports.clear()
        await asyncio.sleep(0)

    def close(self) -> None:
        self.stop()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop.close()

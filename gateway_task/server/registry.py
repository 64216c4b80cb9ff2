"""Each protocol's listener, registered in one place: the gateway starts those the config names.

A protocol joins by adding a `Listener` here: where its address is in the config, and how it
starts accepting. Its state lives with its listener (PostgreSQL's cancel keys), not in
`Gateway`. What a protocol decides lives elsewhere: its sans-IO code in tapegate/protocols/,
its target model in tapegate/config/targets.py, its connection in this package.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from tapegate.config import Address, Config

if TYPE_CHECKING:
    from gateway_task.server.gateway import Gateway
    from gateway_task.server.postgres import PgSession


class PostgresListener:
    """The PostgreSQL port, and the cancel keys of its sessions (a CancelRequest arrives on a
    connection of its own and must find the session it cancels)."""

    def __init__(self, gw: Gateway) -> None:
        self.gw = gw
        self.cancel_keys: dict[tuple[int, int], PgSession] = {}
        self.server: asyncio.Server | None = None

    async def start(self, listen: Address) -> PostgresListener:
        self.server = await asyncio.start_server(self._accept, listen.host, listen.port)
        self.sockets = self.server.sockets
        return self

    def close(self) -> None:
        if self.server is not None:
            self.server.close()

    def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        from gateway_task.server.postgres import PgConnection

        peer = writer.get_extra_info("peername") or ("?", 0)
        slot = self.gw.admission.arrive(peer[0])
        connection = PgConnection(self.gw, reader, writer, slot, self.cancel_keys)
        self.gw.track(self.gw.connection(connection.run(), writer))


async def _postgres(gw: Gateway, listen: Address) -> Any:
    return await PostgresListener(gw).start(listen)


async def _http(gw: Gateway, listen: Address, protocol: str = "http") -> Any:
    from gateway_task.server.http import HttpConnection
    from gateway_task.server.listeners import SniffingListener
    from gateway_task.server.mcp_tapes import McpTapes
    from gateway_task.tls import server_context

    tapes = McpTapes(gw) if protocol == "mcp" else None  # MCP sessions outlive connections

    def accept(reader: Any, writer: Any, tls: bool, slot: Any) -> None:
        connection = HttpConnection(gw, reader, writer, tls, slot, protocol, tapes)
        gw.track(gw.connection(connection.run(), writer))

    tls = server_context(gw.config.tls, gw.config.data_dir, alpn=["http/1.1"])
    sniffing = SniffingListener(listen.host, listen.port, tls, accept, gw.admission)
    sniffing.start()
    return sniffing


async def _mcp(gw: Gateway, listen: Address) -> Any:
    return await _http(gw, listen, "mcp")  # MCP's Streamable HTTP, read by the same relay


async def _ssh(gw: Gateway, listen: Address) -> Any:
    from gateway_task.server.ssh import start_ssh_server

    return await start_ssh_server(gw, listen)


@dataclass(frozen=True)
class Listener:
    address: Callable[[Config], Address | None]  # where the config puts it; None: not started
    start: Callable[[Gateway, Address], Awaitable[Any]]  # has .sockets and .close()


LISTENERS: dict[str, Listener] = {
    "postgres": Listener(lambda c: c.listen_postgres, _postgres),
    "http": Listener(lambda c: c.listen_http, _http),
    "ssh": Listener(lambda c: c.listen_ssh, _ssh),
    "mcp": Listener(lambda c: c.listen_mcp, _mcp),
}

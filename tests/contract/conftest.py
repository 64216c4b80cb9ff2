"""The contract suite's protocols: one real gateway and one real client per protocol.

A protocol joins the suite by adding a `Peer` class here and its name to PROTOCOLS. Each peer
opens a session with a token, runs a round trip through it (one that reaches the target), and
says what the client saw when the gateway refused or ended it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import threading
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any

import asyncssh
import httpx
import psycopg
import pytest
from websockets.exceptions import InvalidStatus, WebSocketException
from websockets.sync.client import ClientConnection, connect

from gateway_task.devtools.throwaway_sshd import SshServer
from tests.gateway_harness import RunningGateway, gateway_config
from tests.http.conftest import http_config, upstream, ws_upstream  # noqa: F401  (fixtures)
from tests.http_upstream import HttpUpstream
from tests.mcp.conftest import McpUpstream, mcp_config, mcp_upstream  # noqa: F401  (fixture)
from tests.pg import PgServer
from tests.postgres.conftest import pg  # noqa: F401  (fixture)
from tests.ssh.conftest import ssh_config, sshd  # noqa: F401  (fixture)

PROTOCOLS = ["postgres", "ssh", "http", "websocket", "mcp"]


class Refused(Exception):
    """The gateway refused or ended the session; the text is what the client was told."""


class Peer:
    name: str
    target: str

    def __init__(self, gw: RunningGateway) -> None:
        self.gw = gw

    def open(self, token: str) -> Any:
        """A session (raise Refused with the client's message when it is refused)."""
        raise NotImplementedError

    def round_trip(self, session: Any) -> None:
        """One exchange that reaches the target; Refused when the gateway ended the session."""
        raise NotImplementedError

    def bulk(self, session: Any, data: bytes) -> None:
        """Send `data` as the protocol's bulk payload (no event of its own)."""
        raise NotImplementedError

    def close(self, session: Any) -> None:
        raise NotImplementedError


class PostgresPeer(Peer):
    name, target = "postgres", "appdb"

    def open(self, token: str) -> psycopg.Connection[Any]:
        try:
            return psycopg.connect(self.gw.dsn(token), autocommit=True, connect_timeout=10)
        except psycopg.OperationalError as exc:
            raise Refused(str(exc)) from None

    def round_trip(self, session: psycopg.Connection[Any]) -> None:
        try:
            assert session.execute("SELECT 1").fetchone() == (1,)
        except psycopg.OperationalError as exc:
            raise Refused(str(exc)) from None

    def bulk(self, session: psycopg.Connection[Any], data: bytes) -> None:
        """COPY data: bytes that make no event, in chunks that fill by size."""
        session.execute("CREATE TEMP TABLE IF NOT EXISTS bulk (line text)")
        with session.cursor() as cur, cur.copy("COPY bulk FROM STDIN") as copy:
            copy.write(data)

    def close(self, session: psycopg.Connection[Any]) -> None:
        session.close()


class SshPeer(Peer):
    """asyncssh as the client, on a loop of its own; a round trip is one exec channel."""

    name, target = "ssh", "web1"

    def __init__(self, gw: RunningGateway) -> None:
        super().__init__(gw)
        self.said: dict[int, list[str]] = {}  # what the gateway told each connection
        self.loop = asyncio.new_event_loop()
        threading.Thread(target=self.loop.run_forever, daemon=True).start()

    def _run(self, coro: Coroutine[Any, Any, Any]) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(60)

    def open(self, token: str) -> asyncssh.SSHClientConnection:
        host, port = self.gw.address("ssh")

        banner: list[str] = []

        class Client(asyncssh.SSHClient):  # type: ignore[misc]
            def auth_banner_received(self, msg: str, lang: str) -> None:
                banner.append(msg.strip())  # where the gateway says why (OpenSSH shows it)

            def connection_lost(self, exc: Exception | None) -> None:
                if exc is not None:  # a disconnect's reason, as OpenSSH prints it
                    banner.append(str(exc))

        async def connect() -> asyncssh.SSHClientConnection:
            return await asyncssh.connect(
                host, port, username=self.target, password=token, known_hosts=None,
                config=None, agent_path=None, client_keys=None, preferred_auth="password",
                client_factory=Client)  # fmt: skip

        try:
            conn = self._run(connect())
        except (asyncssh.Error, OSError) as exc:
            raise Refused(" ".join([*banner, str(exc)])) from None
        self.said[id(conn)] = banner
        return conn

    def round_trip(self, session: asyncssh.SSHClientConnection) -> None:
        try:
            done = self._run(session.run("echo ok", check=False))
        except asyncssh.Error as exc:
            raise Refused(" ".join([*self.said.get(id(session), []), str(exc)])) from None
        if done.exit_status != 0 or done.stdout not in (b"ok\n", "ok\n"):
            raise Refused(f"exit {done.exit_status}: {done.stderr!r}")

    def hold(self, session: asyncssh.SSHClientConnection) -> Any:
        """A channel kept open and silent (`sleep 30`): an SSH session the gateway must end."""

        async def start() -> Any:
            return await session.create_process("sleep 30", encoding=None)

        return self._run(start())

    def bulk(self, session: asyncssh.SSHClientConnection, data: bytes) -> None:
        """Channel data: stdin of `wc -c`."""
        done = self._run(session.run("wc -c", input=data, check=False, encoding=None))
        assert int(done.stdout.split()[0]) == len(data), done

    def close(self, session: asyncssh.SSHClientConnection) -> None:
        session.close()
        self._run(session.wait_closed())


class HttpPeer(Peer):
    """httpx on one kept-alive connection; a round trip is one GET through to the API."""

    name, target = "http", "api"

    def open(self, token: str) -> httpx.Client:
        client = httpx.Client(base_url=self.gw.base, timeout=30,  # type: ignore[attr-defined]
                              headers={"Authorization": f"Bearer {token}"})  # fmt: skip
        try:
            self.round_trip(client)
        except Refused:
            client.close()
            raise
        return client

    def round_trip(self, session: httpx.Client) -> None:
        try:
            response = session.get("/api/echo")
        except httpx.HTTPError as exc:
            raise Refused(str(exc)) from None
        if response.status_code != 200:
            raise Refused(f"{response.status_code} {response.text}")

    def bulk(self, session: httpx.Client, data: bytes) -> None:
        """A request body, streamed."""
        response = session.post("/api/echo", content=data)
        assert response.status_code == 200, response.text

    def close(self, session: httpx.Client) -> None:
        session.close()


class WebSocketPeer(Peer):
    """A WebSocket upgraded through the HTTP listener to an echoing server; a round trip is
    one message there and back. What a refused or ended session says is the 4xx's body or the
    close frame's code and reason."""

    name, target = "websocket", "ws"
    CHUNK = 64 * 1024  # the echo server's frames stay under its 1 MiB message limit

    def open(self, token: str) -> ClientConnection:
        url = self.gw.base.replace("http://", "ws://") + "/ws/chat"  # type: ignore[attr-defined]
        try:
            ws = connect(url, additional_headers={"Authorization": f"Bearer {token}"},
                         open_timeout=30, max_size=None)  # fmt: skip
        except InvalidStatus as exc:
            raise Refused(f"{exc.response.status_code} {exc.response.body!r}") from None
        except (WebSocketException, OSError) as exc:  # closed at accept, say
            raise Refused(str(exc)) from None
        self.round_trip(ws)
        return ws

    def round_trip(self, session: ClientConnection) -> None:
        try:
            session.send("ping")
            assert session.recv(timeout=30) == "ping"
        except (WebSocketException, OSError, TimeoutError) as exc:
            raise Refused(f"{exc} {session.close_code} {session.close_reason}") from None

    def bulk(self, session: ClientConnection, data: bytes) -> None:
        parts = [data[i : i + self.CHUNK] for i in range(0, len(data), self.CHUNK)]
        for part in parts:
            session.send(part)
        assert b"".join(session.recv(timeout=30) for _ in parts) == data  # type: ignore[arg-type]

    def close(self, session: ClientConnection) -> None:
        session.close()


MCP_META = {"io.modelcontextprotocol/protocolVersion": "2026-07-28",
            "io.modelcontextprotocol/clientCapabilities": {}}  # fmt: skip


class McpPeer(Peer):
    """httpx on one kept-alive connection speaking MCP 2026-07-28 (stateless JSON-RPC, the
    Mcp-Method/Mcp-Name headers); a round trip is one tools/call the server runs."""

    name, target = "mcp", "tickets"

    def open(self, token: str) -> httpx.Client:
        client = httpx.Client(base_url=self.gw.base, timeout=30, headers={  # type: ignore[attr-defined]
            "Authorization": f"Bearer {token}", "Content-Type": "application/json",
            "Accept": "application/json, text/event-stream",
            "MCP-Protocol-Version": "2026-07-28"})  # fmt: skip
        try:
            self.round_trip(client)
        except Refused:
            client.close()
            raise
        return client

    def _call(self, session: httpx.Client, tool: str, arguments: dict[str, Any]) -> str:
        body = {"jsonrpc": "2.0", "id": 1, "method": "tools/call",
                "params": {"name": tool, "arguments": arguments, "_meta": MCP_META}}  # fmt: skip
        headers = {"Mcp-Method": "tools/call", "Mcp-Name": tool}
        try:
            response = session.post("/mcp/tickets", json=body, headers=headers)
        except httpx.HTTPError as exc:
            raise Refused(str(exc)) from None
        if response.status_code != 200:
            raise Refused(f"{response.status_code} {response.text}")
        answer = response.json()
        if "error" in answer:
            raise Refused(answer["error"]["message"])
        return str(answer["result"]["content"][0]["text"])

    def round_trip(self, session: httpx.Client) -> None:
        assert "printer on fire" in self._call(session, "get_ticket", {"id": 1})

    def bulk(self, session: httpx.Client, data: bytes) -> None:
        """A tool call whose argument is the payload (a request is read whole: it is the bulk)."""
        assert self._call(session, "store", {"data": data.decode()}) == str(len(data))

    def close(self, session: httpx.Client) -> None:
        session.close()


PEERS: dict[str, type[Peer]] = {
    "postgres": PostgresPeer, "ssh": SshPeer, "http": HttpPeer, "websocket": WebSocketPeer,
    "mcp": McpPeer,
}  # fmt: skip


def target_address(protocol: str, request: pytest.FixtureRequest) -> tuple[str, int]:
    if protocol == "postgres":
        pg_server: PgServer = request.getfixturevalue("pg")
        return pg_server.host, pg_server.port
    if protocol == "ssh":
        sshd_server: SshServer = request.getfixturevalue("sshd")
        return sshd_server.host, sshd_server.port
    if protocol == "websocket":
        ws: str = request.getfixturevalue("ws_upstream")
        return "127.0.0.1", int(ws.rsplit(":", 1)[1])
    if protocol == "mcp":
        server: McpUpstream = request.getfixturevalue("mcp_upstream")
        return "127.0.0.1", server.port
    api: HttpUpstream = request.getfixturevalue("upstream")
    return "127.0.0.1", api.port


def contract_config(
    protocol: str,
    data_dir: Path,
    request: pytest.FixtureRequest,
    via: tuple[str, int] | None = None,
    **overrides: Any,
) -> Any:
    """One gateway config for `protocol`, with its real target started (session fixtures);
    `via`: reach the target through this address (a capture relay) instead."""
    if protocol == "postgres":
        pg_server: PgServer = request.getfixturevalue("pg")
        if via is not None:
            pg_server = dataclasses.replace(pg_server, host=via[0], port=via[1])
        return gateway_config(data_dir, pg_server, **overrides)
    if protocol == "ssh":
        sshd_server: SshServer = request.getfixturevalue("sshd")
        if via is not None:  # the same host key, listed under the relay's address
            known = data_dir.parent / "known_hosts_via"
            key = sshd_server.known_hosts.read_text().split(" ", 1)[1]
            known.write_text(f"[{via[0]}]:{via[1]} {key}")
            sshd_server = dataclasses.replace(sshd_server, host=via[0], port=via[1],
                                              known_hosts=known)  # fmt: skip
        return ssh_config(data_dir, sshd_server, **overrides)
    if protocol == "mcp":
        server: McpUpstream = request.getfixturevalue("mcp_upstream")
        url = server.url if via is None else f"http://{via[0]}:{via[1]}/mcp"
        return mcp_config(data_dir, url, max_body_bytes=4 << 20, **overrides)
    api: HttpUpstream = request.getfixturevalue("upstream")
    ws: str = request.getfixturevalue("ws_upstream")
    url = api.url
    if via is not None and protocol == "websocket":
        ws = f"http://{via[0]}:{via[1]}"
    elif via is not None:
        url = f"http://{via[0]}:{via[1]}"
    return http_config(data_dir, url, ws, **overrides)


class ContractGateway:
    """A running gateway for one protocol, its peer, and a way to restart it with overrides."""

    def __init__(self, protocol: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
        self.protocol = protocol
        self.tmp_path = tmp_path
        self.request = request
        self.gw: RunningGateway | None = None

    def start(
        self, sink: Any = None, via: tuple[str, int] | None = None, **overrides: Any
    ) -> tuple[RunningGateway, Peer]:
        """Start the gateway with config `overrides` (top-level keys), maybe a test sink (a
        callable taking the config, so it can write where the config says), maybe reaching
        the target through `via`."""
        config = contract_config(self.protocol, self.tmp_path / "data", self.request, via,
                                 **overrides)  # fmt: skip
        kwargs = {"sink": sink(config)} if sink is not None else {}
        self.gw = RunningGateway(config, **kwargs)
        if self.protocol in ("http", "websocket", "mcp"):
            host, port = self.gw.address("mcp" if self.protocol == "mcp" else "http")
            self.gw.base = f"http://{host}:{port}"  # type: ignore[attr-defined]
        return self.gw, PEERS[self.protocol](self.gw)

    def stop(self) -> None:
        if self.gw is not None:
            self.gw.stop()


@pytest.fixture(params=PROTOCOLS)
def contract(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ContractGateway]:
    running = ContractGateway(request.param, tmp_path, request)
    yield running
    running.stop()

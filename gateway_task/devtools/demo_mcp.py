"""The MCP part of `make demo`: the official SDK's MCPServer as a ticket system behind the gateway,
and the SDK's client as the agent: it lists the tools, makes one allowed call and one denied one.

The SDK comes with the test extras (`make demo` installs them); the gateway itself does not need it.
"""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from gateway_task.devtools.throwaway_pg import free_port

KEY_ENV = "TAPEGATE_DEMO_TICKETS_KEY"
SERVER = r"""
import os, sys
import uvicorn
from mcp.server.mcpserver import MCPServer

srv = MCPServer("tickets")

@srv.tool()
def get_ticket(id: int) -> str:
    '''Read a ticket.'''
    return f"ticket {id}: the printer on floor 3 is on fire (open)"

@srv.tool()
def delete_ticket(id: int) -> str:
    '''Delete a ticket for good.'''
    return "deleted"

app = srv.streamable_http_app()
key = "Bearer " + os.environ["TAPEGATE_DEMO_TICKETS_KEY"]

async def only_the_gateway(scope, receive, send):  # the server takes only its own credential
    if scope["type"] == "http" and dict(scope["headers"]).get(b"authorization") != key.encode():
        await send({"type": "http.response.start", "status": 401, "headers": []})
        await send({"type": "http.response.body", "body": b"bad key"})
        return
    await app(scope, receive, send)

uvicorn.run(only_the_gateway, host="127.0.0.1", port=int(sys.argv[1]), log_level="error")
"""


def start_tickets() -> tuple[subprocess.Popen[bytes], str]:
    os.environ[KEY_ENV] = "demo-" + secrets.token_hex(16)
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-c", SERVER, str(port)])
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            break
        except OSError:
            time.sleep(0.1)
    return proc, f"http://127.0.0.1:{port}/mcp"


def listen_and_target(url: str) -> tuple[dict[str, str], dict[str, Any]]:
    target = {"name": "tickets", "protocol": "mcp", "upstream": url,
              "inject_header": {"name": "Authorization", "prefix": "Bearer ", "value_env": KEY_ENV},
              "allow_groups": ["agents"], "tools": {"deny": ["delete_*"]}}  # fmt: skip
    return {"mcp": f"127.0.0.1:{free_port()}"}, target


async def agent_mcp(address: str, data_dir: Path, token: str) -> None:
    import httpx2
    from mcp import Client
    from mcp.client.streamable_http import streamable_http_client
    from mcp.shared.exceptions import MCPError

    url = f"https://localhost:{address.rsplit(':', 1)[1]}/mcp/tickets"
    print("\n   ...and, as an MCP client (the official SDK), uses the ticket system's tools:")
    print(f"   {url}  (target 'tickets' denies delete_*)")
    headers = {"Authorization": f"Bearer {token}"}
    verify = str(data_dir / "tls" / "gateway.crt")
    async with httpx2.AsyncClient(headers=headers, verify=verify, timeout=30) as http:
        transport = streamable_http_client(url, http_client=http)
        async with Client(transport, mode="legacy", cache=None) as client:  # type: ignore[arg-type]
            tools = await client.list_tools()
            print(f"   | tools/list -> {', '.join(t.name for t in tools.tools)}")
            result = await client.call_tool("get_ticket", {"id": 7})
            print(f"   | tools/call get_ticket(7) -> {result.content[0].text}")  # type: ignore[union-attr]
            try:
                await client.call_tool("delete_ticket", {"id": 7})
                print("   | tools/call delete_ticket(7) -> (unexpected: it ran)")
            except MCPError as exc:
                print(f"   | tools/call delete_ticket(7) -> error {exc.code}: {exc.message}")
    print()

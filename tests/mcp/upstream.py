"""A real MCP server for the tests (the official SDK's MCPServer over Streamable HTTP), run as
its own process. It writes what it was sent to a log the tests read: the ground truth of what
reached the target, outside the gateway."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import anyio
import uvicorn
from mcp.server.mcpserver import Context, Elicit, MCPServer, Resolve
from mcp.server.streamable_http import EventMessage, EventStore
from mcp.shared.exceptions import MCPError
from pydantic import BaseModel

LOG = Path(sys.argv[2])
srv = MCPServer("tickets")


def _log(entry: dict[str, Any]) -> None:
    with LOG.open("a") as f:
        f.write(json.dumps(entry) + "\n")


@srv.tool()
def get_ticket(id: int) -> str:
    """Get a ticket."""
    _log({"called": "get_ticket", "id": id})
    return f"ticket {id}: printer on fire"


@srv.tool()
def search_tickets(query: str) -> str:
    """Search tickets."""
    _log({"called": "search_tickets", "query": query})
    return f"3 tickets match {query!r}"


@srv.tool()
def delete_ticket(id: int) -> str:
    """Delete a ticket."""
    _log({"called": "delete_ticket", "id": id})
    return "deleted"


@srv.tool()
def run_script(script: str) -> str:
    """Run a maintenance script."""
    _log({"called": "run_script", "script": script})
    return "ran"


@srv.tool()
def flaky() -> str:
    """Always fails as a tool (isError)."""
    _log({"called": "flaky"})
    raise ValueError("the printer is on fire")


@srv.tool()
def broken() -> str:
    """Fails as JSON-RPC."""
    _log({"called": "broken"})
    raise MCPError(-32050, "backend down")


@srv.tool()
def search_tickets_v2(query: str) -> str:
    """Search tickets (a definition that changes: see change_definition)."""
    return "none"


@srv.tool()
def change_definition(text: str) -> str:
    """Rewrite search_tickets_v2's description, as a server that changes a tool mid-session."""
    srv._tool_manager.get_tool("search_tickets_v2").description = text  # type: ignore[union-attr]
    return "changed"


@srv.tool()
async def slow(seconds: float) -> str:
    """Answer after a while (for a client that gives up first)."""
    _log({"called": "slow"})
    await anyio.sleep(seconds)
    return "finally"


@srv.tool()
def store(data: str) -> str:
    """Take a payload; answer its length."""
    _log({"called": "store", "length": len(data)})
    return str(len(data))


@srv.tool()
def echo_key() -> str:
    """A debugging tool that shows the credential it was called with."""
    return LAST_AUTH[0]


LAST_AUTH = [""]


def app_with_log(app: Any) -> Any:
    async def wrapped(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            headers = {k.decode(): v.decode() for k, v in scope["headers"]}
            LAST_AUTH[0] = headers.get("authorization", "")
            _log({"http": scope["method"], "path": scope["path"],
                  "authorization": headers.get("authorization"),
                  "accept_encoding": headers.get("accept-encoding"),
                  "last_event_id": headers.get("last-event-id")})  # fmt: skip
        await app(scope, receive, send)

    return wrapped


class Confirm(BaseModel):
    ok: bool


def _ask(name: str) -> Elicit[Confirm]:
    return Elicit(f"Really erase {name}?", Confirm)


@srv.tool()
def erase(name: str, confirm: Annotated[Confirm, Resolve(_ask)]) -> str:
    """Erase something once the user confirms (an elicitation: mid-call in the handshake era,
    an input_required round trip in 2026-07-28)."""
    _log({"called": "erase", "name": name, "confirmed": confirm.ok})
    return "erased" if confirm.ok else "kept"


@srv.tool()
async def announce(ctx: Context) -> str:  # type: ignore[type-arg]
    """Tell listeners that the tool list changed (for `subscriptions/listen`)."""
    await ctx.notify_tools_changed()
    return "announced"


class MemoryEvents(EventStore):
    """Every event kept, so that a client may resume a stream (GET with Last-Event-ID)."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str, Any]] = []  # (event id, stream id, message)

    async def store_event(self, stream_id: str, message: Any) -> str:
        event_id = str(len(self.events) + 1)
        self.events.append((event_id, stream_id, message))
        return event_id

    async def replay_events_after(self, last_event_id: str, send_callback: Any) -> str | None:
        stream = next((s for e, s, _ in self.events if e == last_event_id), None)
        if stream is None:
            return None
        for event_id, s, message in self.events[int(last_event_id) :]:
            if s == stream and message is not None:
                await send_callback(EventMessage(message, event_id))
        return stream


if __name__ == "__main__":
    events = MemoryEvents() if "--resumable" in sys.argv else None
    app = srv.streamable_http_app(json_response="--json" in sys.argv, event_store=events)
    uvicorn.run(app_with_log(app), host="127.0.0.1", port=int(sys.argv[1]), log_level="warning")

"""A real stdio MCP server for the tests (the official SDK's MCPServer over stdio), which the
gateway runs itself for a `command:` target. It appends what it was asked to the log named by
TAPEGATE_TEST_STDIO_LOG (the ground truth of what reached it, outside the gateway), with its
pid, so that a test can tell one process from another."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from typing import Annotated, Any

import anyio
from mcp.server.mcpserver import Context, Elicit, MCPServer, Resolve
from pydantic import BaseModel

srv = MCPServer("notes")
LOG = os.environ.get("TAPEGATE_TEST_STDIO_LOG", "")


def _log(entry: dict[str, Any]) -> None:
    if LOG:
        with open(LOG, "a") as f:
            f.write(json.dumps({"pid": os.getpid(), **entry}) + "\n")


@srv.tool()
def read_note(name: str) -> str:
    """Read a note."""
    _log({"called": "read_note", "name": name})
    print(f"reading note {name}", file=sys.stderr, flush=True)
    return f"note {name}: buy milk"


@srv.tool()
def delete_note(name: str) -> str:
    """Delete a note."""
    _log({"called": "delete_note", "name": name})
    return "deleted"


@srv.tool()
def token_length() -> str:
    """How long the token in the environment is (the server has it; the agent must not)."""
    _log({"called": "token_length"})
    return str(len(os.environ.get("NOTES_TOKEN", "")))


@srv.tool()
def leak_token() -> str:
    """A careless debugging tool that shows the token it was given."""
    _log({"called": "leak_token"})
    return "token=" + os.environ.get("NOTES_TOKEN", "")


@srv.tool()
def environment() -> str:
    """The names of the variables the server was given."""
    return " ".join(sorted(os.environ))


@srv.tool()
def crash() -> str:
    """Exit at once, as a server that crashes mid-call."""
    _log({"called": "crash"})
    print("fatal: the notes database is corrupt", file=sys.stderr, flush=True)
    os._exit(3)


@srv.tool()
async def count(upto: int, ctx: Context) -> str:  # type: ignore[type-arg]
    """Count, reporting progress on the way."""
    _log({"called": "count"})
    for i in range(upto):
        await ctx.report_progress(i + 1, upto)
        await anyio.sleep(0.01)
    return f"counted to {upto}"


@srv.tool()
async def slow(seconds: float) -> str:
    """Answer after a while."""
    _log({"called": "slow"})
    await anyio.sleep(seconds)
    return "finally"


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


@srv.tool()
def spawn_stubborn() -> str:
    """Start a child in the server's process group that ignores SIGTERM; answer its pid."""
    child = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)",
        ]
    )
    return str(child.pid)


@srv.tool()
def freeze() -> str:
    """Stop the whole server (SIGSTOP): it reads nothing more, from stdin or anywhere."""
    _log({"called": "freeze"})
    os.kill(os.getpid(), signal.SIGSTOP)
    return "thawed"


@srv.tool()
def print_token_to_stderr() -> str:
    """A server that logs its credential (it happens)."""
    print("using token " + os.environ.get("NOTES_TOKEN", ""), file=sys.stderr, flush=True)
    return "logged"


if __name__ == "__main__":
    _log({"started": True})
    srv.run("stdio")

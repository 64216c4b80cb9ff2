"""MCP `tools/call` round trips through the gateway vs direct, in one run (bench/RESULTS.md).

One client (the official SDK's `Client`), one call at a time, against the SDK's own MCPServer over
Streamable HTTP: direct, and through `tapegate up` (folder sink, no embedded pipeline, as on
Fargate), in both protocol eras (2026-07-28 stateless JSON answers; 2025-11-25 with a session and
SSE answers). Then the same server over stdio: direct is the SDK's client running it itself
(`stdio_client`), through is a `command:` target the gateway runs. Alternated rounds; the
medians. The latency each call gains through the gateway is the difference of the per-call p50
and p99.

Usage: .venv/bin/python bench/bench_mcp.py [--seconds 5] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx2
import yaml
from mcp import Client
from mcp.client.stdio import StdioServerParameters, stdio_client
from mcp.client.streamable_http import streamable_http_client

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.results import write_section
from gateway_task.dev_issuer import mint_token
from gateway_task.devtools.throwaway_pg import free_port
from tapegate.config import load_config

SERVER = r"""
import sys
import uvicorn
from mcp.server.mcpserver import MCPServer
srv = MCPServer("bench")
@srv.tool()
def get_ticket(id: int) -> str:
    '''Get a ticket.'''
    return f"ticket {id}: printer on fire"
if sys.argv[1] == "stdio":
    srv.run("stdio")
else:
    uvicorn.run(srv.streamable_http_app(), host="127.0.0.1", port=int(sys.argv[1]),
                log_level="error")
"""


def wait_port(port: int) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"nothing listens on {port}")


async def calls(url: str, mode: str, seconds: float, token: str | None) -> list[float]:
    """Each call's duration (s) for `seconds`, after a warm-up; `url` "stdio": the SDK's own
    client runs the server over stdio."""
    if url == "stdio":
        params = StdioServerParameters(command=sys.executable, args=["-c", SERVER, "stdio"])
        async with Client(stdio_client(params), mode=mode, cache=None) as client:  # type: ignore[arg-type]
            return await _timed(client, seconds)
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with httpx2.AsyncClient(headers=headers, timeout=30) as http:
        transport = streamable_http_client(url, http_client=http)
        async with Client(transport, mode=mode, cache=None) as client:  # type: ignore[arg-type]
            return await _timed(client, seconds)


async def _timed(client: Client, seconds: float) -> list[float]:
    for i in range(20):
        await client.call_tool("get_ticket", {"id": i})
    took: list[float] = []
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        t0 = time.perf_counter()
        result = await client.call_tool("get_ticket", {"id": len(took)})
        took.append(time.perf_counter() - t0)
        assert not result.is_error
    return took


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=5)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="tapegate-bench-mcp-"))
    up_port, gw_port = free_port(), free_port()
    upstream = subprocess.Popen([sys.executable, "-c", SERVER, str(up_port)])
    os.environ["BENCH_MCP_KEY"] = "bench-mcp-key"
    raw = {
        "data_dir": str(work / "data"),
        "identity": {"issuer": "dev", "dev_listen": f"127.0.0.1:{free_port()}"},
        "listen": {"mcp": f"127.0.0.1:{gw_port}"},
        "tls": "optional",
        "archive": {"embedded_pipeline": False},
        "targets": [
            {"name": "tickets", "protocol": "mcp", "upstream": f"http://127.0.0.1:{up_port}/mcp",
             "inject_header": {"name": "Authorization", "prefix": "Bearer ",
                               "value_env": "BENCH_MCP_KEY"},
             "allow_groups": ["agents"], "tools": {"deny": ["delete_*"]}},
            {"name": "files", "protocol": "mcp", "command": [sys.executable, "-c", SERVER, "stdio"],
             "allow_groups": ["agents"], "tools": {"deny": ["delete_*"]}},
        ],
    }  # fmt: skip
    cfg_file = work / "tapegate.yaml"
    cfg_file.write_text(yaml.safe_dump(raw))
    config = load_config(cfg_file)
    gw = subprocess.Popen([sys.executable, "-m", "tapegate.cli", "up", "--config", str(cfg_file)],
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    rows = []
    try:
        wait_port(up_port)
        wait_port(gw_port)
        token = mint_token(config.data_dir, config.identity, "bench", ["agents"], 3600)
        direct_url = f"http://127.0.0.1:{up_port}/mcp"
        gw_url = f"http://127.0.0.1:{gw_port}/mcp/tickets"
        stdio_url = f"http://127.0.0.1:{gw_port}/mcp/files"
        for mode, era, there, here in (
            ("auto", "2026-07-28", direct_url, gw_url),
            ("legacy", "2025-11-25", direct_url, gw_url),
            ("auto", "stdio, 2026-07-28", "stdio", stdio_url),
            ("legacy", "stdio, 2025-11-25", "stdio", stdio_url),
        ):
            direct: list[list[float]] = []
            through: list[list[float]] = []
            for _ in range(args.rounds):  # alternated: the machine's drift hits both alike
                direct.append(asyncio.run(calls(there, mode, args.seconds, None)))
                through.append(asyncio.run(calls(here, mode, args.seconds, token)))
            d_rate = statistics.median(len(r) / sum(r) for r in direct)
            t_rate = statistics.median(len(r) / sum(r) for r in through)
            d_all = [x for r in direct for x in r]
            t_all = [x for r in through for x in r]
            added50 = (pct(t_all, 0.5) - pct(d_all, 0.5)) * 1e6
            added99 = (pct(t_all, 0.99) - pct(d_all, 0.99)) * 1e6
            rows.append(f"| {era} | {d_rate:,.0f} | {t_rate:,.0f} | {t_rate / d_rate:.2f} | "
                        f"{added50:+,.0f} µs | {added99:+,.0f} µs |")  # fmt: skip
            print(rows[-1], flush=True)
    finally:
        gw.terminate()
        gw.wait(30)
        upstream.terminate()
        subprocess.run(["rm", "-rf", str(work)])
    body = "\n".join([
        "One SDK client, one `tools/call` at a time, to the SDK's MCPServer (Streamable HTTP; "
        "stdio rows: over stdio, run by the SDK's client directly or by the gateway for a "
        f"`command:` target), {args.rounds} alternated rounds of {args.seconds:g} s; medians.",
        "",
        "| era | direct calls/s | through tapegate calls/s | ratio | added p50 | added p99 |",
        "|---|---|---|---|---|---|",
        *rows,
    ])  # fmt: skip
    write_section("mcp", "MCP tools/call through the gateway vs direct",
                  "python bench/bench_mcp.py", body)  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

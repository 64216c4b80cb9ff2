"""MCP `command:` targets: a stdio server the gateway runs itself (the official SDK's MCPServer
over stdio), one process per tape session, reached by agents over Streamable HTTP with the
official SDK's client in both eras. What reached the server is read from the server's own log
(with its pid); what was recorded, from the archive."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import httpx2
import pytest
import yaml
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from tapegate.config import parse_config
from tests.gateway_harness import RunningGateway
from tests.mcp.flows import (
    INITIALIZE,
    check_listened,
    check_recorded,
    erase_with_confirmation,
    json_rpc_error,
    listen_for_a_change,
    replay,
)
from tests.mcp.test_mcp_sessions import _tapes
from tests.pg import free_port

pytestmark = pytest.mark.slow
ERAS = ["legacy", "auto"]
TOKEN_ENV = "TAPEGATE_TEST_NOTES_TOKEN"
NOTES_TOKEN = "notes-token-" + os.urandom(8).hex()  # generated: the server's own credential
SERVER = str(Path(__file__).with_name("stdio_server.py"))


def stdio_config(data_dir: Path, log: Path, **target: Any) -> Any:
    os.environ[TOKEN_ENV] = NOTES_TOKEN
    raw: dict[str, Any] = {
        "data_dir": str(data_dir),
        "identity": {"issuer": "dev", "dev_listen": f"127.0.0.1:{free_port()}"},
        "listen": {"mcp": "127.0.0.1:0"},
        "tls": "optional",
        "sink": {"flush_ms": 50},
        "recording": {"max_age_ms": 50, "body_cap": 4096},
        "targets": [
            {"name": "notes", "protocol": "mcp", "command": [sys.executable, SERVER],
             "env": {"NOTES_TOKEN": {"value_env": TOKEN_ENV},
                     "TAPEGATE_TEST_STDIO_LOG": str(log)},
             "allow_groups": ["agents"],
             "tools": {"deny": ["delete_*"]},
             "session_idle_s": 0.5, **target},
        ],
    }  # fmt: skip
    return parse_config(raw)


class Stdio(RunningGateway):
    base: str
    log: Path

    def entries(self) -> list[dict[str, Any]]:
        if not self.log.exists():
            return []
        return [json.loads(line) for line in self.log.read_text().splitlines()]

    def calls(self) -> list[dict[str, Any]]:
        return [e for e in self.entries() if "called" in e]


@pytest.fixture
def sgw(tmp_path: Path) -> Iterator[Stdio]:
    log = tmp_path / "stdio.jsonl"
    running = Stdio(stdio_config(tmp_path / "data", log))
    running.log = log
    host, port = running.address("mcp")
    running.base = f"http://{host}:{port}"
    yield running
    running.stop()


def _run(gw: Stdio, mode: str, body: Callable[[Client], Awaitable[Any]]) -> Any:
    async def main() -> Any:
        headers = {"Authorization": f"Bearer {gw.token()}"}
        async with httpx2.AsyncClient(headers=headers, timeout=30) as http:
            transport = streamable_http_client(f"{gw.base}/mcp/notes", http_client=http)
            async with Client(transport, mode=mode, cache=None) as client:
                return await body(client)

    return asyncio.run(main())


@pytest.mark.parametrize("mode", ERAS)
def test_a_stdio_server_is_run_called_and_recorded(sgw: Stdio, mode: str) -> None:
    async def body(client: Client) -> dict[str, Any]:
        tools = await client.list_tools()
        ok = await client.call_tool("read_note", {"name": "groceries"})
        refused = await json_rpc_error(client.call_tool("delete_note", {"name": "groceries"}))
        length = await client.call_tool("token_length", {})
        return {"tools": [t.name for t in tools.tools], "ok": ok, "refused": refused,
                "length": length}  # fmt: skip

    got = _run(sgw, mode, body)
    assert "read_note" in got["tools"] and "delete_note" not in got["tools"]
    assert got["ok"].content[0].text == "note groceries: buy milk"
    assert "not allowed" in got["refused"].error.message
    assert got["length"].content[0].text == str(len(NOTES_TOKEN))  # the server has its env
    calls = sgw.calls()
    assert [c["called"] for c in calls] == ["read_note", "token_length"]  # never delete_note
    assert len({e["pid"] for e in sgw.entries()}) == 1  # one process for the session
    tapes = _tapes(sgw)
    assert len(tapes) == 1
    ((reason, evs),) = tapes.values()
    assert reason == ("client_closed" if mode == "legacy" else "idle_timeout")
    kinds = [e["type"] for e in evs]
    assert "mcp_server_start" in kinds and "mcp_stderr" in kinds
    stderr = "".join(e["attrs"]["text"] for e in evs if e["type"] == "mcp_stderr")
    assert "reading note groceries" in stderr
    outcomes = [(e["attrs"].get("tool"), e["attrs"]["outcome"]) for e in evs
                if e["type"] == "mcp_response" and e["attrs"].get("tool")]  # fmt: skip
    assert outcomes == [("read_note", "ok"), ("delete_note", "blocked"), ("token_length", "ok")]
    assert all(v.intact for v in sgw.verdicts().values())


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # it may be reaped between the two looks: gone, then
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"  # a zombie is gone too
    except (FileNotFoundError, ProcessLookupError):
        return False


def test_each_session_has_its_own_process_which_ends_with_its_tape(sgw: Stdio) -> None:
    async def one(client: Client) -> None:
        await client.call_tool("read_note", {"name": "a"})

    async def two() -> None:
        async def session() -> None:
            headers = {"Authorization": f"Bearer {sgw.token()}"}
            async with httpx2.AsyncClient(headers=headers, timeout=30) as http:
                transport = streamable_http_client(f"{sgw.base}/mcp/notes", http_client=http)
                async with Client(transport, mode="legacy", cache=None) as client:
                    await one(client)

        await asyncio.gather(session(), session())

    asyncio.run(two())
    pids = {e["pid"] for e in sgw.entries() if e.get("started")}
    assert len(pids) == 2  # a process per MCP session
    tapes = _tapes(sgw)
    assert len(tapes) == 2 and {r for r, _ in tapes.values()} == {"client_closed"}
    for _, evs in tapes.values():
        (start,) = [e for e in evs if e["type"] == "mcp_server_start"]
        assert start["attrs"]["pid"] in pids
        assert any(e["type"] == "mcp_server_stop" for e in evs)
    until = time.monotonic() + 10
    while any(_alive(p) for p in pids) and time.monotonic() < until:
        time.sleep(0.05)
    assert not any(_alive(p) for p in pids)  # ground truth: the processes are gone


def test_a_crashing_server_answers_with_an_error_and_ends_its_tape(sgw: Stdio) -> None:
    async def body(client: Client) -> Any:
        await client.call_tool("read_note", {"name": "a"})
        crashed = await json_rpc_error(client.call_tool("crash", {}))
        after = await json_rpc_error(client.call_tool("read_note", {"name": "b"}))
        return crashed, after

    crashed, after = _run(sgw, "legacy", body)
    assert "ended before it answered (exit status 3)" in crashed.error.message
    assert "the MCP server process is gone (exit status 3)" in after.error.message  # not hung
    assert [c["called"] for c in sgw.calls()] == ["read_note", "crash"]
    tapes = _tapes(sgw)
    crashed_tape = [t for t in tapes.values() if any(e["type"] == "mcp_server_exit" for e in t[1])]
    assert len(crashed_tape) == 1
    reason, evs = crashed_tape[0]
    assert reason == "upstream_closed"
    (exit_event,) = [e for e in evs if e["type"] == "mcp_server_exit"]
    assert exit_event["attrs"]["status"] == 3 and not exit_event["attrs"]["stopped"]
    stderr = "".join(e["attrs"]["text"] for e in evs if e["type"] == "mcp_stderr")
    assert "fatal: the notes database is corrupt" in stderr
    (crash_answer,) = [e for e in evs if e["type"] == "mcp_response"
                       and e["attrs"].get("tool") == "crash"]  # fmt: skip
    assert crash_answer["attrs"]["outcome"] == "error"
    assert all(v.intact for v in sgw.verdicts().values())


def test_the_server_gets_its_env_and_nothing_else_and_never_shows_it(sgw: Stdio) -> None:
    os.environ["AWS_SECRET_ACCESS_KEY"] = "gateway-own-" + os.urandom(8).hex()  # not passed on

    async def body(client: Client) -> Any:
        return (await client.call_tool("environment", {}), await client.call_tool("leak_token", {}))

    try:
        names, leaked = _run(sgw, "legacy", body)
    finally:
        del os.environ["AWS_SECRET_ACCESS_KEY"]
    if sys.platform == "linux":  # the gateway (here, in this process) made itself non-dumpable
        import ctypes

        assert ctypes.CDLL(None).prctl(3, 0, 0, 0, 0) == 0  # PR_GET_DUMPABLE
    given = set(names.content[0].text.split())
    assert {"NOTES_TOKEN", "TAPEGATE_TEST_STDIO_LOG", "PATH"} <= given
    assert not given & {"AWS_SECRET_ACCESS_KEY", TOKEN_ENV}  # the gateway's own stay its own
    assert leaked.content[0].text == "token=" + "*" * len(NOTES_TOKEN)  # masked for the agent
    raw = b"".join(sgw.delivered_records())
    assert NOTES_TOKEN.encode() not in raw  # ... and for the archive (records are encrypted:
    frames = b"".join(f.data for sid in sgw.sessions() for f in sgw.frames(sid))
    assert frames and NOTES_TOKEN.encode() not in frames  # the frames, decrypted, too)
    events = json.dumps(sgw.events())
    assert "token=" in events and NOTES_TOKEN not in events


@pytest.mark.parametrize("mode", ERAS)
def test_progress_reaches_the_client_on_the_calls_stream(sgw: Stdio, mode: str) -> None:
    seen: list[float] = []

    async def progress(done: float, total: float | None, message: str | None) -> None:
        seen.append(done)

    async def body(client: Client) -> Any:
        return await client.call_tool("count", {"upto": 5}, progress_callback=progress)

    result = _run(sgw, mode, body)
    assert result.content[0].text == "counted to 5"
    assert seen == [1, 2, 3, 4, 5]
    evs = [e for _, t in _tapes(sgw).values() for e in t]
    notes = [e for e in evs if e["type"] == "mcp_notification"
             and e["attrs"]["method"] == "notifications/progress"]  # fmt: skip
    assert len(notes) == 5


def test_stateless_clients_of_one_run_share_a_process_and_keep_their_ids(sgw: Stdio) -> None:
    async def client(name: str) -> list[str]:
        headers = {"Authorization": f"Bearer {sgw.token()}", "X-Tapegate-Run": "nightly-42"}
        async with httpx2.AsyncClient(headers=headers, timeout=30) as http:
            transport = streamable_http_client(f"{sgw.base}/mcp/notes", http_client=http)
            async with Client(transport, mode="auto", cache=None) as c:
                out = []
                for i in range(3):  # both clients number their calls 1, 2, ...
                    r = await c.call_tool("read_note", {"name": f"{name}{i}"})
                    out.append(r.content[0].text)
                return out

    async def both() -> list[list[str]]:
        return list(await asyncio.gather(client("a"), client("b")))

    a, b = asyncio.run(both())
    assert a == [f"note a{i}: buy milk" for i in range(3)]  # each got its own answers
    assert b == [f"note b{i}: buy milk" for i in range(3)]
    assert len({e["pid"] for e in sgw.entries() if e.get("started")}) == 1  # one run, one process
    assert len(_tapes(sgw)) == 1


def _raw(gw: Stdio, body: bytes, headers: dict[str, str]) -> httpx.Response:
    headers = {"Authorization": f"Bearer {gw.token()}", "Content-Type": "application/json",
               "Accept": "application/json, text/event-stream", **headers}  # fmt: skip
    return httpx.post(f"{gw.base}/mcp/notes", content=body, headers=headers, timeout=30)


def test_a_session_the_gateway_never_started_is_404_and_starts_nothing(sgw: Stdio) -> None:
    call = b'{"jsonrpc":"2.0","id":1,"method":"tools/list"}'
    answer = _raw(sgw, call, {"Mcp-Session-Id": "made-up-session", "MCP-Protocol-Version":
                              "2025-11-25"})  # fmt: skip
    assert answer.status_code == 404
    assert "no such MCP session" in answer.json()["error"]["message"]
    assert sgw.entries() == []  # no process was started for it


def test_limits_on_processes_and_their_lifetime(tmp_path: Path) -> None:
    log = tmp_path / "stdio.jsonl"
    # A lifetime the server's start-up (a second or two of imports on a loaded machine) fits in.
    gw = Stdio(stdio_config(tmp_path / "data", log, max_processes=1, process_lifetime_s=6))
    gw.log = log
    host, port = gw.address("mcp")
    gw.base = f"http://{host}:{port}"
    try:

        async def body(client: Client) -> Any:
            await client.call_tool("read_note", {"name": "a"})
            other = await asyncio.to_thread(_raw, gw, INITIALIZE, {})
            late = await json_rpc_error(client.call_tool("slow", {"seconds": 60}))
            return other, late

        other, late = _run(gw, "legacy", body)
        # refused when its process would start: the call's own JSON-RPC error says why
        assert other.status_code == 200 and "max_processes (1)" in other.json()["error"]["message"]
        assert "its process_lifetime_s (6 s) passed" in late.error.message
        tapes = _tapes(gw)
        reasons = sorted(r for r, _ in tapes.values())
        assert "process_lifetime" in reasons
        evs = [e for r, t in tapes.values() if r == "process_lifetime" for e in t]
        assert any(e["type"] == "mcp_server_stop" and "process_lifetime_s" in e["attrs"]["reason"]
                   for e in evs)  # fmt: skip
    finally:
        gw.stop()


def test_a_command_that_cannot_start_is_a_clear_error(tmp_path: Path) -> None:
    config = stdio_config(tmp_path / "data", tmp_path / "log", command=["/nonexistent/mcp-srv"])
    gw = Stdio(config)
    host, port = gw.address("mcp")
    gw.base = f"http://{host}:{port}"
    try:
        answer = _raw(gw, INITIALIZE, {"Accept": "application/json"})
    finally:
        gw.stop()
    assert answer.status_code == 200  # JSON-RPC says it: the request's own error
    error = answer.json()["error"]
    assert error["code"] == -32003
    assert "could not start '/nonexistent/mcp-srv': No such file or directory" in error["message"]


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ({"upstream": "http://127.0.0.1:1/mcp"}, "exactly one of upstream"),
        ({"command": []}, "a list: the program and its arguments"),
        ({"inject_header": {"name": "X", "value_env": "Y"}}, "a command's credentials"),
        ({"env": {"1BAD": "x"}}, "an environment variable's name"),
        ({"env": {"A": {"value_env": "X", "secret_arn": "arn:x"}}}, "exactly one of"),
        ({"process_lifetime_s": 0}, "seconds, from 1 to 86400"),
    ],
)
def test_bad_command_targets_are_refused_at_load(tmp_path: Path, target: dict[str, Any],
                                                 message: str) -> None:  # fmt: skip
    from tapegate.config import ConfigError

    with pytest.raises(ConfigError, match=message):
        stdio_config(tmp_path, tmp_path / "log", **target)


@pytest.mark.parametrize("mode", ERAS)
def test_a_tool_that_asks_the_user_first(sgw: Stdio, mode: str) -> None:
    answer, asked = erase_with_confirmation(f"{sgw.base}/mcp/notes", sgw.token(), mode)
    assert answer == "erased" and asked == ["Really erase draft?"]
    assert [c for c in sgw.calls() if c["called"] == "erase"][-1]["confirmed"] is True
    check_recorded([e for _, t in _tapes(sgw).values() for e in t], mode)


def test_a_listen_stream_hears_of_a_change(sgw: Stdio) -> None:
    assert listen_for_a_change(f"{sgw.base}/mcp/notes", sgw.token()) == "ToolsListChanged"
    check_listened([e for _, t in _tapes(sgw).values() for e in t])


def test_the_servers_end_when_the_gateway_is_killed(tmp_path: Path) -> None:
    """kill -9 leaves the gateway no time to stop them: each sees its stdin close, and exits."""
    log, port = tmp_path / "stdio.jsonl", free_port()
    raw = {"data_dir": str(tmp_path / "data"),
           "identity": {"issuer": "dev", "dev_listen": f"127.0.0.1:{free_port()}"},
           "listen": {"mcp": f"127.0.0.1:{port}"}, "tls": "optional",
           "targets": [{"name": "notes", "protocol": "mcp", "command": [sys.executable, SERVER],
                        "env": {"TAPEGATE_TEST_STDIO_LOG": str(log)},
                        "allow_groups": ["agents"]}]}  # fmt: skip
    cfg = tmp_path / "tapegate.yaml"
    cfg.write_text(yaml.safe_dump(raw))
    tapegate = [sys.executable, "-m", "tapegate.cli"]
    up = subprocess.Popen([*tapegate, "up", "--config", str(cfg)], text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        assert up.stdout is not None and "ready" in up.stdout.readline()
        token = subprocess.run([*tapegate, "token", "--config", str(cfg), "--sub", "agent-1",
                                "--group", "agents", "--ttl", "5m"], capture_output=True,
                               text=True, check=True).stdout.strip()  # fmt: skip
        answer = httpx.post(f"http://127.0.0.1:{port}/mcp/notes", content=INITIALIZE, timeout=30,
                            headers={"Authorization": f"Bearer {token}",
                                     "Content-Type": "application/json",
                                     "Accept": "application/json"})  # fmt: skip
        assert answer.status_code == 200 and "serverInfo" in answer.text
        (pid,) = [json.loads(line)["pid"] for line in log.read_text().splitlines()]
        assert _alive(pid)
        up.kill()  # SIGKILL
        up.wait(10)
    finally:
        if up.poll() is None:
            up.kill()
    until = time.monotonic() + 20
    while _alive(pid) and time.monotonic() < until:
        time.sleep(0.05)
    assert not _alive(pid)  # ground truth: the process table


def test_what_the_server_started_ends_with_it_even_if_it_ignores_sigterm(sgw: Stdio) -> None:
    async def body(client: Client) -> int:
        child = int((await client.call_tool("spawn_stubborn", {})).content[0].text)  # type: ignore[union-attr]
        assert _alive(child)  # while its session lasts (it ends when the client leaves)
        return child

    child = _run(sgw, "legacy", body)
    _tapes(sgw)  # the session's end (DELETE) stops the server and its group
    until = time.monotonic() + 15
    while _alive(child) and time.monotonic() < until:
        time.sleep(0.05)
    status = Path(f"/proc/{child}/status")
    state = status.read_text()[:300] if status.exists() else "(gone)"
    assert not _alive(child), state  # SIGKILL to the group after the grace, leader gone or not


def test_a_credential_the_server_logs_is_masked_on_the_tape(sgw: Stdio) -> None:
    async def body(client: Client) -> Any:
        return await client.call_tool("print_token_to_stderr", {})

    _run(sgw, "legacy", body)
    evs = [e for _, t in _tapes(sgw).values() for e in t]
    stderr = "".join(e["attrs"]["text"] for e in evs if e["type"] == "mcp_stderr")
    assert "using token " + "*" * len(NOTES_TOKEN) in stderr
    assert NOTES_TOKEN not in json.dumps(evs)


def test_a_process_that_stops_reading_gets_no_more_and_says_it_is_busy(sgw: Stdio) -> None:
    """Its stdin backlog is bounded: past it a request is answered 503, not buffered."""
    import socket

    url = f"{sgw.base}/mcp/notes"
    headers = {"Authorization": f"Bearer {sgw.token()}", "Content-Type": "application/json",
               "Accept": "application/json", "X-Tapegate-Run": "frozen"}  # fmt: skip
    modern = {
        "io.modelcontextprotocol/protocolVersion": "2026-07-28",  # no handshake
        "io.modelcontextprotocol/clientCapabilities": {},
        "io.modelcontextprotocol/clientInfo": {"name": "raw", "version": "1"},
    }
    call = {"jsonrpc": "2.0", "id": 1, "method": "tools/call",
            "params": {"name": "freeze", "arguments": {}, "_meta": modern}}  # fmt: skip
    host, port = sgw.address("mcp")
    head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    held = []
    for i in range(12):  # the freeze, then 11 requests of ~1 MB it never reads
        big = {"name": "read_note", "arguments": {"name": "x" * 1_000_000}, "_meta": modern}
        body = json.dumps(call if i == 0 else {**call, "id": i + 1, "params": big}).encode()
        sock = socket.create_connection((host, port), 10)
        sock.sendall(f"POST /mcp/notes HTTP/1.1\r\nHost: gw\r\n{head}"
                     f"Content-Length: {len(body)}\r\n\r\n".encode() + body)  # fmt: skip
        held.append(sock)  # not read: each awaits an answer that does not come
        until = time.monotonic() + 30  # frozen first: it must read none of what follows
        while i == 0 and not sgw.calls() and time.monotonic() < until:
            time.sleep(0.05)
    small = json.dumps({**call, "id": 99, "params": {
        "name": "read_note", "arguments": {"name": "y"}, "_meta": modern}})  # fmt: skip
    answer, deadline = None, time.monotonic() + 60
    try:
        while time.monotonic() < deadline:  # one that overtakes the big ones is taken, and waits
            with contextlib.suppress(httpx.ReadTimeout):
                answer = httpx.post(url, headers=headers, content=small, timeout=2)
                break
    finally:
        for sock in held:
            sock.close()
    assert answer is not None and answer.status_code == 503, answer and answer.text
    assert "busy" in answer.json()["error"]["message"]
    assert "bytes it has not read yet" in answer.json()["error"]["message"]


def test_replay_shows_the_server_beside_the_calls(
    sgw: Stdio, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    async def body(client: Client) -> None:
        await client.call_tool("read_note", {"name": "groceries"})
        await json_rpc_error(client.call_tool("crash", {}))

    _run(sgw, "legacy", body)
    _tapes(sgw)
    (sid,) = [s for s, evs in sgw.events().items() if any(e["type"] == "mcp_request" for e in evs)]
    text = replay(sgw, sid, capsys, tmp_path)
    assert "server   started pid" in text and "stdio_server.py" in text
    assert "stderr   reading note groceries" in text and "read_note ok" in text
    assert "crash error [-32003]" in text and "server   exited: exit status 3" in text

"""SSH through the gateway to a real OpenSSH server, with real ssh/scp/sftp clients and asyncssh."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import threading
from pathlib import Path
from typing import Any

import asyncssh
import pytest
from asyncssh.packet import String, UInt32

from gateway_task.devtools.throwaway_sshd import SshServer
from tapegate.archive.embedded import LocalArchive
from tapegate.cli import main
from tapegate.tape import Stream, decode_record
from tests.gateway_harness import RunningGateway
from tests.pg import free_port
from tests.ssh.conftest import openssh, ssh_config

pytestmark = pytest.mark.slow


def _sessions(gw: RunningGateway) -> list[tuple[str, list[dict[str, Any]]]]:
    """(session id, events) of every recorded channel, oldest first."""
    return sorted(gw.events().items())


def _of(events: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [e["attrs"] for e in events if e["type"] == kind]


async def _asyncssh(gw: RunningGateway, target: str, token: str, **kw: Any):
    host, port = gw.address("ssh")
    return await asyncssh.connect(host, port, username=target, password=token,
                                  known_hosts=None, config=None, agent_path=None,
                                  client_keys=None, **kw)  # fmt: skip


def test_exec_with_stdin_stdout_stderr_and_exit_status(sgw: RunningGateway) -> None:
    token = sgw.token()
    done = openssh(sgw, "web1", token, "echo out; echo err >&2; exit 7")
    assert (done.returncode, done.stdout, done.stderr) == (7, b"out\n", b"err\n")
    piped = openssh(sgw, "web1", token, "sha256sum", input=b"x" * 5_000_000)
    assert piped.stdout.split()[0].decode() == hashlib.sha256(b"x" * 5_000_000).hexdigest()
    (first, events1), (_, events2) = _sessions(sgw)
    assert _of(events1, "exec") == [{"command": "echo out; echo err >&2; exit 7"}]
    (exit1,) = _of(events1, "exit")
    assert exit1 == {"status": 7, "stdin_bytes": 0, "stdout_bytes": 4, "stderr_bytes": 4,
                     "stderr": "err\n"}  # fmt: skip
    assert _of(events2, "exit")[0]["stdin_bytes"] == 5_000_000
    assert _of(events2, "eof") == [{}], "the end of the piped input is recorded"
    frames = sgw.frames(first)
    assert b"".join(f.data for f in frames if f.direction.short == "s2c") == b"out\nerr\n"
    # Told apart on the tape as the client got them: stdout as data, stderr as stream 1.
    s2c = [f for f in frames if f.direction.short == "s2c"]
    assert b"".join(f.data for f in s2c if f.stream is Stream.DATA) == b"out\n"
    assert b"".join(f.data for f in s2c if f.stream is Stream.STDERR) == b"err\n"
    auth = _of(events1, "auth")[0]
    assert auth["subject"] == "agent-7" and auth["method"] in ("password", "keyboard-interactive")
    assert all(v.intact for v in sgw.verdicts().values())


def test_env_requests_are_recorded_and_allow_env_decides_what_passes(sgw: RunningGateway) -> None:
    """`env` requests carry text a command may eval: each is an event, and only the names
    allow_env lists (default: LANG and LC_*, as Debian's sshd accepts) reach the target."""
    done = openssh(sgw, "web1", sgw.token(), "-o", "SetEnv=LC_TAPE=hello EVIL_CMD=rm",
                   'echo "[$LC_TAPE][$EVIL_CMD]"')  # fmt: skip
    # The target's sshd accepts EVIL_* too: the gateway is what dropped it.
    assert done.stdout == b"[hello][]\n", done.stderr
    ((_, events),) = _sessions(sgw)
    assert _of(events, "env") == [{"name": "LC_TAPE", "value": "hello"}]
    assert _of(events, "blocked") == [{"name": "EVIL_CMD", "value": "rm", "rule": "allow_env"}]
    assert _of(events, "exec")[0]["env"] == {"LC_TAPE": "hello"}


def test_env_sent_after_the_command_never_reaches_the_target(
    sgw: RunningGateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found by review: asyncssh takes `env` (and `pty-req`) requests after an exec too. They
    did not reach the target (asyncssh's str view of the environment is a copy made when the
    gateway first looked), but nothing recorded them either. What is passed on is now fixed at
    the exec request, a later env is recorded as blocked, a later pty-req refused and recorded."""
    make_request = asyncssh.SSHClientChannel._make_request

    async def exec_then_env(self: Any, request: bytes, *args: bytes) -> Any:
        if request != b"exec":
            return await make_request(self, request, *args)
        waiter = self._loop.create_future()
        self._request_waiters.append(waiter)
        self._send_request(request, *args, want_reply=True)
        self._send_request(b"env", String("LC_LATE"), String("late"))  # no waiting for a reply
        self._send_request(b"pty-req", String("xterm"), UInt32(80), UInt32(24), UInt32(0),
                           UInt32(0), String(b"\0"))  # fmt: skip
        return await waiter

    monkeypatch.setattr(asyncssh.SSHClientChannel, "_make_request", exec_then_env)

    async def run() -> str:
        async with await _asyncssh(sgw, "web1", sgw.token()) as conn:
            done = await conn.run('echo "[$LC_EARLY][$LC_LATE][$(tty)]"', env={"LC_EARLY": "early"})
            return str(done.stdout)

    out = asyncio.run(run())
    assert out == "[early][][not a tty]\n", out  # ground truth: the command's own view
    ((_, events),) = _sessions(sgw)
    assert _of(events, "exec")[0]["env"] == {"LC_EARLY": "early"}
    late = [b for b in _of(events, "blocked") if b.get("rule") == "env after the session started"]
    assert late == [{"name": "LC_LATE", "value": "late", "rule": "env after the session started"}]
    assert any(b.get("rule") == "pty after the session started" for b in _of(events, "blocked"))


def test_denied_command_fails_the_exec_and_is_recorded(sgw: RunningGateway) -> None:
    blocked = openssh(sgw, "web1", sgw.token(), "rm -rf /srv/data")
    assert blocked.returncode == 255 and b"exec request failed" in blocked.stderr
    ok = openssh(sgw, "web1", sgw.token(), "echo still here")
    assert ok.stdout == b"still here\n"
    (_, events), _ = _sessions(sgw)
    assert _of(events, "blocked") == [{"command": "rm -rf /srv/data",
                                       "rule": "regex 'rm\\\\s+-rf\\\\s+/'"}]  # fmt: skip
    assert not _of(events, "exec")


def test_pty_shell_with_resize_replays_as_asciicast(
    sgw: RunningGateway, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    async def shell() -> None:
        async with await _asyncssh(sgw, "web1", sgw.token()) as conn:
            proc = await conn.create_process(term_type="xterm", term_size=(100, 30),
                                             encoding=None)  # fmt: skip
            proc.stdin.write(b"stty size\n")
            seen = b""  # the size it started with, answered before the resize (a login shell
            while b"30 100" not in seen:  # may take longer than any fixed wait to start)
                seen += await asyncio.wait_for(proc.stdout.read(4096), 30)
            proc.change_terminal_size(120, 40)
            await asyncio.sleep(0.2)
            proc.stdin.write(b"stty size; exit 0\n")
            await asyncio.wait_for(proc.wait(), 30)

    asyncio.run(shell())
    sgw.wait_closed()
    ((sid, events),) = _sessions(sgw)
    assert _of(events, "pty") == [{"term": "xterm", "cols": 100, "rows": 30}]
    assert _of(events, "resize") == [{"cols": 120, "rows": 40}]
    output = b"".join(f.data for f in sgw.frames(sid) if f.direction.short == "s2c")
    assert b"30 100" in output and b"40 120" in output
    sgw.stop()
    LocalArchive(sgw.config).scan()
    cfg = tmp_path / "cli.yaml"
    cfg.write_text(f"data_dir: {sgw.config.data_dir}\n")
    capsys.readouterr()
    assert main(["replay", sid, "--format", "cast", "--config", str(cfg)]) == 0
    lines = capsys.readouterr().out.splitlines()
    header = json.loads(lines[0])
    assert (header["width"], header["height"]) == (100, 30)
    records = [json.loads(line) for line in lines[1:]]
    assert [r[2] for r in records if r[1] == "r"] == ["120x40"]
    assert "40 120" in "".join(r[2] for r in records if r[1] == "o")


def test_sftp_and_scp_transfers_are_recorded_with_digests(
    sgw: RunningGateway, sshd: SshServer, tmp_path: Path
) -> None:
    local = tmp_path / "upload.bin"
    local.write_bytes(bytes(range(256)) * 8192)  # 2 MiB
    remote = sshd.folder / f"uploaded-{tmp_path.name}.bin"
    token = sgw.token()
    up = openssh(sgw, "web1", token, str(local), f"GW:{remote}", tool="scp")
    assert up.returncode == 0, up.stderr
    assert remote.read_bytes() == local.read_bytes()
    back = tmp_path / "back.bin"
    batch = tmp_path / "batch"
    batch.write_text(f"get {remote} {back}\nrename {remote} {remote}.old\nrm {remote}.old\n")
    got = openssh(sgw, "web1", token, "-b", str(batch), "GW:", tool="sftp")
    assert got.returncode == 0, got.stderr
    assert back.read_bytes() == local.read_bytes() and not remote.exists()
    digest = hashlib.sha256(local.read_bytes()).hexdigest()
    ops = [a for _, events in _sessions(sgw) for a in _of(events, "sftp")]
    upload = next(a for a in ops if a["op"] == "upload")
    download = next(a for a in ops if a["op"] == "download")
    assert (upload["path"], upload["bytes"], upload["sha256"]) == (str(remote), 2 << 20, digest)
    assert (download["path"], download["bytes"], download["sha256"]) == (
        str(remote), 2 << 20, digest)  # fmt: skip
    assert {"op": "rename", "path": str(remote), "to": f"{remote}.old", "result": "ok"} in ops
    assert {"op": "remove", "path": f"{remote}.old", "result": "ok"} in ops


def test_legacy_scp_protocol_is_recorded_per_file(
    sgw: RunningGateway, sshd: SshServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`scp -O` (the default of OpenSSH before 9.0): an exec of `scp -t|-f` carrying rcp's
    protocol; each file becomes an `scp` event with its digest."""
    tree = tmp_path / "tree"
    (tree / "sub").mkdir(parents=True)
    (tree / "a.txt").write_bytes(b"alpha\n" * 1000)
    (tree / "sub" / "b.bin").write_bytes(bytes(range(256)) * 4096)  # 1 MiB
    (tree / "empty").write_bytes(b"")
    dest = sshd.folder / f"legacy-{tmp_path.name}"
    token = sgw.token()
    up = openssh(sgw, "web1", token, "-O", "-r", str(tree), f"GW:{dest}", tool="scp")
    assert up.returncode == 0, up.stderr
    assert (dest / "sub" / "b.bin").read_bytes() == (tree / "sub" / "b.bin").read_bytes()
    back = tmp_path / "back.bin"
    down = openssh(sgw, "web1", token, "-O", f"GW:{dest}/sub/b.bin", str(back), tool="scp")
    assert down.returncode == 0, down.stderr
    refused = openssh(sgw, "web1", token, "-O", str(tree / "a.txt"), "GW:/proc/no/such/dir/a",
                      tool="scp")  # fmt: skip
    assert refused.returncode != 0
    files = [a for _, events in _sessions(sgw) for a in _of(events, "scp")]

    def digest(path: Path) -> str:
        return hashlib.sha256(path.read_bytes()).hexdigest()

    uploads = {a["path"]: a for a in files if a["op"] == "upload" and a["target"] == str(dest)}
    assert set(uploads) == {"tree/a.txt", "tree/sub/b.bin", "tree/empty"}
    for rel in ("a.txt", "sub/b.bin", "empty"):
        got = uploads[f"tree/{rel}"]
        want = tree / rel
        assert (got["bytes"], got["sha256"], got["result"]) == (
            want.stat().st_size, digest(want), "ok")  # fmt: skip
    download = next(a for a in files if a["op"] == "download")
    assert (download["path"], download["target"], download["bytes"], download["sha256"]) == (
        "b.bin", f"{dest}/sub/b.bin", 1 << 20, digest(back))  # fmt: skip
    failed = [a for a in files if a["target"] == "/proc/no/such/dir/a"]
    assert failed and all(a["result"] != "ok" for a in failed), failed
    sid = next(sid for sid, events in _sessions(sgw) if str(dest) in json.dumps(events))
    sgw.stop()
    LocalArchive(sgw.config).scan()
    cfg = tmp_path / "cli.yaml"
    cfg.write_text(f"data_dir: {sgw.config.data_dir}\n")
    capsys.readouterr()
    assert main(["replay", sid, "--config", str(cfg)]) == 0
    text = capsys.readouterr().out
    assert f"scp      upload tree/sub/b.bin (to {dest}) 1048576 B sha256" in text, text


def test_asyncssh_sftp_client_and_keyboard_interactive(
    sgw: RunningGateway, sshd: SshServer
) -> None:
    target = sshd.folder / "via-asyncssh.txt"

    async def run() -> bytes:
        host, port = sgw.address("ssh")
        token = sgw.token()
        connecting = asyncssh.connect(
            host, port, username="web1", known_hosts=None, config=None, agent_path=None,
            client_keys=None, password=None, kbdint_auth=True,
            preferred_auth="keyboard-interactive", client_factory=lambda: _KbdInt(token),
        )  # fmt: skip
        async with connecting as conn, conn.start_sftp_client() as sftp:
            async with sftp.open(str(target), "wb") as fh:
                await fh.write(b"hello over sftp\n")
            async with sftp.open(str(target), "rb") as fh:
                return await fh.read()

    assert asyncio.run(run()) == b"hello over sftp\n"
    events = [e for _, evs in _sessions(sgw) for e in evs]
    assert _of(events, "auth")[0]["method"] == "keyboard-interactive"
    assert _of(events, "subsystem") == [{"name": "sftp"}]
    assert [a["op"] for a in _of(events, "sftp")] == ["upload", "download"]


class _KbdInt(asyncssh.SSHClient):
    def __init__(self, token: str) -> None:
        self.token = token

    def kbdint_auth_requested(self) -> str:
        return ""

    def kbdint_challenge_received(self, name: str, instructions: str, lang: str,
                                  prompts: list[tuple[str, bool]]) -> list[str]:  # fmt: skip
        return [self.token for _ in prompts]


def test_port_forwards_refused_unless_allowed(sgw: RunningGateway, sshd: SshServer) -> None:
    async def forward(target: str) -> bytes:
        async with await _asyncssh(sgw, target, sgw.token()) as conn:
            reader, writer = await conn.open_connection(sshd.host, sshd.port)
            banner = await asyncio.wait_for(reader.readline(), 10)
            writer.close()
            return banner

    with pytest.raises(asyncssh.ChannelOpenError, match="not allowed for target 'web1'"):
        asyncio.run(forward("web1"))
    assert asyncio.run(forward("web1fwd")).startswith(b"SSH-2.0-OpenSSH")
    sgw.wait_closed()
    forwards = [(a["result"], a["dest_port"]) for _, evs in _sessions(sgw)
                for a in _of(evs, "port_forward")]  # fmt: skip
    assert forwards == [("refused", sshd.port), ("allowed", sshd.port)]
    remote = openssh(sgw, "web1fwd", sgw.token(), "-N", "-o", "ExitOnForwardFailure=yes",
                     "-R", "0:127.0.0.1:9", timeout=30)  # fmt: skip
    assert remote.returncode == 255 and b"remote port forwarding failed" in remote.stderr.lower()


def test_an_expired_token_ends_the_command_and_the_connection_with_the_reason(
    sshd: SshServer, tmp_path: Path
) -> None:
    config = ssh_config(tmp_path / "data", sshd, identity={
        "issuer": "dev", "dev_listen": f"127.0.0.1:{free_port()}", "leeway_s": 0})  # fmt: skip
    gw = RunningGateway(config)
    try:
        done = openssh(gw, "web1", gw.token(ttl_s=2), "sleep 20", timeout=30)
    finally:
        gw.stop()
    assert done.returncode == 255, done
    assert b"your OIDC token has expired" in done.stderr, done.stderr
    ends = [decode_record(r).meta["end"]["reason"] for r in gw.delivered_records()
            if decode_record(r).final]  # fmt: skip
    assert "token_expired" in ends, ends


def test_bytes_before_the_target_opens_the_channel_stay_within_a_window(
    sgw: RunningGateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found by review: asyncssh resumed reading right after the session started, so while the
    target was slow to open its channel the client's bytes piled up in the gateway unbounded."""
    create_session = asyncssh.SSHClientConnection.create_session
    opened = threading.Event()  # set by the test: the target's channel may open now

    async def slow_open(self: Any, *args: Any, **kwargs: Any) -> Any:
        to_gateway = self.get_extra_info("peername")[1] == sgw.address("ssh")[1]
        while not to_gateway and not opened.is_set():  # the gateway's connection to the target
            await asyncio.sleep(0.05)
        return await create_session(self, *args, **kwargs)

    monkeypatch.setattr(asyncssh.SSHClientConnection, "create_session", slow_open)
    data = os.urandom(8 << 20)
    held: list[int] = []

    def early_bytes() -> int:
        relays = [s for s in sgw.gateway.sessions if hasattr(s, "_early")]
        return sum(len(b) for s in relays for b in s._early)

    async def run() -> bytes:
        async with await _asyncssh(sgw, "web1", sgw.token()) as conn:
            proc = await conn.create_process("sha256sum", encoding=None)
            proc.stdin.write(data)
            sending = asyncio.ensure_future(proc.stdin.drain())
            steady = 0
            while steady < 10:  # until the gateway has taken all the client could send
                before = early_bytes()
                await asyncio.sleep(0.05)
                steady = steady + 1 if early_bytes() == before else 0
            held.append(early_bytes())
            opened.set()
            await sending
            proc.stdin.write_eof()
            return bytes((await proc.wait()).stdout)

    out = asyncio.run(run())
    assert out.split()[0].decode() == hashlib.sha256(data).hexdigest()  # all of it arrived
    assert held[0] <= (2 << 20) + 65_536, held  # one channel window (asyncssh's 2 MiB) at most

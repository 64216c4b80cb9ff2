"""`tapegate up` as a subprocess, client load with ground truth, and tapes read back.

The gateway runs as a real process (so that kill -9 is a real crash and RSS is its own). Its
output goes to files, not pipes: an unread pipe would block the gateway once it fills.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import yaml

from tapegate.audit.timeline import auditor_keyring, open_replay
from tapegate.keys import LocalKeyStore
from tapegate.tape import Direction, Verdict, decode_record, split_records, verify_session
from tapegate.tape.codec import LEAF_MAGIC
from tests.pg import APP_PASSWORD, PgServer, free_port

# The code under test is the tree these tests live in: `python -m` from its root imports it
# first, whatever else is installed.
REPO = Path(__file__).resolve().parents[2]
TAPEGATE = [sys.executable, "-m", "tapegate.cli"]
PASSWORD_ENV = "TAPEGATE_FAULTS_APPDB_PASSWORD"
# Worker w's ids are ID_BASE + (w + 1) * ID_SPAN + n: always twelve digits, never in the padding.
ID_BASE, ID_SPAN = 10**11, 10**8
ID_RE = re.compile(rb"(?<![0-9])1[0-9]{11}(?![0-9])")
PAD = "tapegate-fault-padding-" * 4  # letters only, so no digit run can look like an id


def write_config(tmp_path: Path, pg: PgServer, **overrides: Any) -> Path:
    """A tapegate.yaml with one PostgreSQL target; `overrides` replace top-level keys."""
    raw: dict[str, Any] = {
        "data_dir": str(tmp_path / "data"),
        # The issuer's port is fixed in the config: a restarted gateway must be the same issuer.
        "identity": {"issuer": "dev", "dev_listen": f"127.0.0.1:{free_port()}"},
        "listen": {"postgres": "127.0.0.1:0", "health": "127.0.0.1:0"},
        "targets": [{"name": "appdb", "protocol": "postgres", "upstream": f"{pg.host}:{pg.port}",
                     "database": "app", "username": "app", "password_env": PASSWORD_ENV,
                     "allow_groups": ["agents"], "upstream_tls": "disable"}],
    }  # fmt: skip
    raw.update(overrides)
    path = tmp_path / "tapegate.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


class GatewayExited(Exception):
    """`tapegate up` exited before it was ready (e.g. a config error); carries its output."""

    def __init__(self, returncode: int, stderr: str) -> None:
        super().__init__(f"tapegate up exited {returncode} before ready:\n{stderr[-4000:]}")
        self.returncode = returncode
        self.stderr = stderr


class GatewayProcess:
    """`tapegate up --config CFG`, started and waited for until it prints its ready line."""

    def __init__(self, config: Path, env: dict[str, str] | None = None, name: str = "up") -> None:
        self.config = config
        self.data_dir = Path(yaml.safe_load(config.read_text())["data_dir"])
        self.out_path = config.parent / f"{name}.stdout"
        self.err_path = config.parent / f"{name}.stderr"
        self.env = {**os.environ, PASSWORD_ENV: APP_PASSWORD, **(env or {})}
        with self.out_path.open("wb") as out, self.err_path.open("wb") as err:
            self.proc = subprocess.Popen([*TAPEGATE, "up", "--config", str(config)], cwd=REPO,
                                         env=self.env, stdout=out, stderr=err)  # fmt: skip
        self.addresses = self._wait_ready(timeout=60)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def _wait_ready(self, timeout: float) -> dict[str, str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in self.out_path.read_text().splitlines():
                if "ready" in line:
                    # "tapegate ready: dev_issuer=http://… postgres=127.0.0.1:N health=… (config…"
                    listed = line.split(":", 1)[1].split("(config:")[0].split()
                    return dict(item.split("=", 1) for item in listed)
            if self.proc.poll() is not None:
                raise GatewayExited(self.proc.returncode, self.stderr())
            time.sleep(0.05)
        self.proc.kill()
        raise TimeoutError(f"tapegate up not ready in {timeout}s:\n{self.stderr()[-4000:]}")

    def address(self, name: str) -> tuple[str, int]:
        host, port = self.addresses[name].rsplit(":", 1)
        return host, int(port)

    def stderr(self) -> str:
        return self.err_path.read_text(errors="replace")

    def rss_bytes(self) -> int | None:
        """VmRSS from /proc; None once the process is gone."""
        try:
            status = Path(f"/proc/{self.pid}/status").read_text()
        except OSError:
            return None
        match = re.search(r"^VmRSS:\s+(\d+) kB", status, re.M)
        return int(match.group(1)) * 1024 if match else None

    def kill9(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def terminate(self, timeout: float = 60) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def ensure_dead(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def token(self, sub: str = "fault-agent", ttl: str = "15m") -> str:
        out = subprocess.run([*TAPEGATE, "token", "--config", str(self.config), "--sub", sub,
                              "--group", "agents", "--ttl", ttl], cwd=REPO, env=self.env,
                             capture_output=True, text=True, check=True)  # fmt: skip
        return out.stdout.strip()

    def dsn(self, token: str, sslmode: str = "require") -> str:
        host, port = self.address("postgres")
        return (f"host={host} port={port} dbname=appdb user=agent password={token} "
                f"sslmode={sslmode} connect_timeout=10")  # fmt: skip

    def get(self, path: str, timeout: float = 5) -> tuple[int, str]:
        """GET on the health port: (status, body)."""
        host, port = self.address("health")
        try:
            with urllib.request.urlopen(f"http://{host}:{port}{path}", timeout=timeout) as resp:
                return resp.status, resp.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()


class RssSampler(threading.Thread):
    """Samples a process's RSS every `interval` s until stopped."""

    def __init__(self, gateway: GatewayProcess, interval: float = 0.5) -> None:
        super().__init__(daemon=True)
        self.gateway = gateway
        self.interval = interval
        self.samples: list[tuple[float, int]] = []  # (monotonic, bytes)
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.is_set():
            rss = self.gateway.rss_bytes()
            if rss is not None:
                self.samples.append((time.monotonic(), rss))
            self._stop_event.wait(self.interval)

    def stop(self) -> None:
        self._stop_event.set()
        self.join(5)

    def peak(self, since: float = 0.0, until: float = float("inf")) -> int:
        return max((b for t, b in self.samples if since <= t <= until), default=0)


# -- client load with ground truth ------------------------------------------------------------


def create_table(pg: PgServer, table: str) -> None:
    with psycopg.connect(pg.dsn(user="app", password=APP_PASSWORD), autocommit=True) as conn:
        conn.execute(f"DROP TABLE IF EXISTS {table}")
        conn.execute(f"CREATE TABLE {table} (id bigint PRIMARY KEY, pad text NOT NULL)")


def ids_in_database(pg: PgServer, table: str, settle_s: float = 20) -> set[int]:
    """The ids the database holds, once no backend of the gateway's role is left: a COPY whose
    connection died is rolled back only when its backend notices."""
    with psycopg.connect(pg.dsn(user="app", password=APP_PASSWORD), autocommit=True) as conn:
        deadline = time.monotonic() + settle_s
        while time.monotonic() < deadline:
            (others,) = conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE usename = 'app' "
                "AND pid <> pg_backend_pid()"
            ).fetchone()  # type: ignore[misc]
            if not others:
                break
            time.sleep(0.1)
        return {row[0] for row in conn.execute(f"SELECT id FROM {table}")}


@dataclass
class Worker:
    """One client session: unique ids by INSERT (one simple Query each) or by COPY FROM STDIN."""

    index: int
    kind: str  # insert | copy
    dsn: str
    table: str
    copy_bytes: int = 32758  # COPY data per batch; see copy_data()
    pause_s: float = 0.0
    after_copy: Callable[[], None] | None = None  # called on this thread when a COPY completes
    completed: list[tuple[int, float]] = field(default_factory=list)  # (id, monotonic when done)
    connected: threading.Event = field(default_factory=threading.Event)
    error: str | None = None
    _next: int = 0

    def next_id(self) -> int:
        self._next += 1
        assert self._next < ID_SPAN
        return ID_BASE + (self.index + 1) * ID_SPAN + self._next

    def run(self, stop: threading.Event, go: threading.Event) -> None:
        try:
            conn = psycopg.connect(self.dsn, autocommit=True)
            conn.execute("SELECT 1")  # a session that has run something, then idles
        except psycopg.Error as exc:
            self.error = f"connect: {_describe(exc)}"
            self.connected.set()
            return
        self.connected.set()
        go.wait()
        try:
            with conn:
                while not stop.is_set():
                    if self.kind == "insert":
                        self._insert(conn)
                    else:
                        self._copy(conn)
                    if self.pause_s:
                        stop.wait(self.pause_s)
        except psycopg.Error as exc:
            self.error = _describe(exc)

    def _insert(self, conn: psycopg.Connection[Any]) -> None:
        new = self.next_id()
        # No parameters: psycopg sends a simple Query, so the id is in the `query` event's text.
        conn.execute(f"INSERT INTO {self.table} (id, pad) VALUES ({new}, '{PAD}')")
        self.completed.append((new, time.monotonic()))

    def copy_data(self) -> tuple[list[int], bytes]:
        """Rows of exactly `copy_bytes` bytes. The default is chosen so that the client's COPY
        messages (CopyData header + data + CopyDone) are exactly 32768 bytes: psycopg sends data
        under 32 KiB as one CopyData at the end, and reads of whole 16 KiB TLS records then fill
        16 KiB chunks exactly, the case where nothing is left pending when CopyDone goes on."""
        row = len(str(ID_BASE)) + len(PAD) + 2  # id, tab, padding, newline
        ids = [self.next_id() for _ in range(self.copy_bytes // row)]
        rows = [f"{i}\t{PAD}\n" for i in ids]
        rows[-1] = rows[-1][:-1] + "x" * (self.copy_bytes - row * len(ids)) + "\n"
        data = "".join(rows).encode()
        assert len(data) == self.copy_bytes
        return ids, data

    def _copy(self, conn: psycopg.Connection[Any]) -> None:
        batch, data = self.copy_data()
        with conn.cursor() as cur, cur.copy(f"COPY {self.table} (id, pad) FROM STDIN") as copy:
            copy.write(data)  # CopyData makes no event: only the frames hold these rows
        done = time.monotonic()
        self.completed += [(i, done) for i in batch]
        if self.after_copy is not None:
            self.after_copy()


def _describe(exc: psycopg.Error) -> str:
    state = getattr(exc, "sqlstate", None)
    return f"{type(exc).__name__}[{state}]: {str(exc).strip()[:200]}"


class Load:
    """Workers on threads. connect() opens every session (each runs one statement, then
    idles); go() starts the load; stop() lets each finish its statement and close cleanly."""

    def __init__(self, workers: list[Worker]) -> None:
        self.workers = workers
        self.stop_event = threading.Event()
        self.go_event = threading.Event()
        self.threads = [
            threading.Thread(target=w.run, args=(self.stop_event, self.go_event), daemon=True)
            for w in workers
        ]

    def connect(self, timeout: float = 30) -> None:
        for t in self.threads:
            t.start()
        deadline = time.monotonic() + timeout
        for w in self.workers:
            w.connected.wait(max(0.0, deadline - time.monotonic()))
        failed = self.errors()
        assert not failed, f"sessions could not start: {failed}"

    def go(self) -> None:
        self.go_event.set()

    def start(self, timeout: float = 30) -> None:
        self.connect(timeout)
        self.go()

    def stop(self, timeout: float = 30) -> None:
        self.stop_event.set()
        self.go_event.set()
        deadline = time.monotonic() + timeout
        for t in self.threads:
            t.join(max(0.0, deadline - time.monotonic()))

    @property
    def statements(self) -> int:
        return sum(len(w.completed) for w in self.workers)

    def completed_before(self, instant: float) -> set[int]:
        return {i for w in self.workers for i, t in w.completed if t < instant}

    def errors(self) -> dict[int, str]:
        return {w.index: w.error for w in self.workers if w.error}

    def kind_of(self, ident: int) -> str:
        return self.workers[(ident - ID_BASE) // ID_SPAN - 1].kind


# -- tapes read back --------------------------------------------------------------------------


@dataclass
class RecordedSession:
    session_id: str
    verdict: Verdict
    events: list[dict[str, Any]]  # of the verified prefix
    c2s: bytes  # client→server bytes of the verified prefix, decrypted
    end_reason: str | None

    @property
    def prefix_verified(self) -> bool:
        """Intact, or open/truncated with everything up to the last chunk seen verified."""
        return self.verdict.status in ("intact", "open")


def delivery_records(delivery_dir: Path) -> tuple[list[bytes], list[str]]:
    """Every record in the folder sink's delivery objects, and any bytes that did not split
    (a crash may leave a partial object: that is a finding, not an error here)."""
    records: list[bytes] = []
    damage: list[str] = []
    for path in sorted(delivery_dir.rglob("*.bin")):
        found, errors = split_records(path.read_bytes())
        records += [r for r in found if r[:4] != LEAF_MAGIC]  # chunks; leaves: the log's
        damage += [f"{path.name}: {e}" for e in errors]
    return records, damage


def read_tapes(records: Iterable[bytes], data_dir: Path) -> dict[str, RecordedSession]:
    """Group records by session, verify each with the data dir's public keys, and open the
    verified prefix (chunks 0..n, linked, no gap) with the data dir's auditor key."""
    keys = LocalKeyStore(data_dir)
    trusted = keys.trusted()
    auditors = auditor_keyring([keys.auditor_key()])
    by_session: dict[str, list[bytes]] = {}
    for raw in records:
        by_session.setdefault(str(decode_record(raw).session_id), []).append(raw)
    out: dict[str, RecordedSession] = {}
    for sid, raws in by_session.items():
        verdict = verify_session(raws, trusted)
        prefix = []
        for rec in verdict.records:
            if rec.seq != len(prefix) or (prefix and rec.prev_digest != prefix[-1].digest):
                break
            prefix.append(rec)
        if not prefix:
            out[sid] = RecordedSession(sid, verdict, [], b"", None)
            continue
        replay = open_replay(prefix, auditors)
        assert replay.decrypted, replay.payload_note
        c2s = b"".join(f.data for f in replay.frames if f.direction is Direction.CLIENT_TO_SERVER)
        end = replay.end.get("reason") if replay.end else None
        out[sid] = RecordedSession(sid, verdict, replay.events, c2s, end)
    return out


def frontend_messages(stream: bytes) -> Iterator[tuple[int, bytes]]:
    """(type, body) of each complete PostgreSQL frontend message in a recorded c2s stream.
    Recording starts after the password message, so the stream starts at a message boundary;
    a truncated tape may end inside one, which is left out."""
    pos = 0
    while len(stream) - pos >= 5:
        length = int.from_bytes(stream[pos + 1 : pos + 5], "big")
        if length < 4 or pos + 1 + length > len(stream):
            return
        yield stream[pos], stream[pos + 5 : pos + 1 + length]
        pos += 1 + length


def ids_in_query_events(sessions: Iterable[RecordedSession]) -> set[int]:
    found: set[int] = set()
    for s in sessions:
        for ev in s.events:
            if ev.get("type") == "query":
                found.update(
                    int(m) for m in ID_RE.findall(str(ev["attrs"].get("sql", "")).encode())
                )
    return found


def ids_in_copy_data(sessions: Iterable[RecordedSession]) -> set[int]:
    """Ids at the start of the COPY rows in the recorded CopyData messages. Rows may be split
    across CopyData messages (psycopg cuts large writes), so each COPY's data is joined first."""
    found: set[int] = set()
    for s in sessions:
        data = bytearray()
        for tag, body in frontend_messages(s.c2s):
            if tag == ord("d"):
                data += body
            elif tag in (ord("c"), ord("f")):
                data += b"\n"
        for line in bytes(data).split(b"\n"):
            head = line.split(b"\t", 1)[0]
            if ID_RE.fullmatch(head):
                found.add(int(head))
    return found


def poll(condition: Callable[[], Any], timeout: float, interval: float = 0.2) -> Any:
    """The first truthy value of condition(), or the last (falsy) one at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(interval)


def dir_bytes(path: Path) -> int:
    """Bytes in the files directly in `path` (a spool), 0 when it does not exist. A file the
    drain removes between the listing and its stat counts as gone."""
    total = 0
    for entry in path.glob("*") if path.exists() else ():
        try:
            if entry.is_file():
                total += entry.stat().st_size
        except FileNotFoundError:
            continue
    return total


def mib(n: float) -> str:
    return f"{n / 2**20:.1f} MiB"


@dataclass
class OutageKill:
    spooled: int  # spool bytes at the kill
    killed_at: float  # time.monotonic() of the kill -9
    drained: bool  # the restarted gateway drained the spool
    rc: int | None  # the restarted gateway's exit status after SIGTERM


def kill_during_outage(
    gateway: GatewayProcess, load: Load, proxy: Any, config: Path, env: dict[str, str],
    spool: Path, *, into_outage_s: float, drain_timeout_s: float, healthy_s: float = 2.0,
) -> OutageKill:  # fmt: skip
    """The load runs `healthy_s` with Firehose up; the proxy stops; `into_outage_s` later the
    gateway gets kill -9; the proxy starts again and `tapegate up` runs again on the same spool
    until it drains (or `drain_timeout_s` passes), then stops with SIGTERM."""
    try:
        load.start()
        time.sleep(healthy_s)
        proxy.stop()
        time.sleep(into_outage_s)
        spooled = dir_bytes(spool)
        killed_at = time.monotonic()
        gateway.kill9()
        load.stop()
    finally:
        gateway.ensure_dead()
    proxy.start()
    restarted = GatewayProcess(config, env=env, name="up-again")
    try:
        drained = bool(poll(lambda: dir_bytes(spool) == 0, timeout=drain_timeout_s))
        rc: int | None = restarted.terminate()
    finally:
        restarted.ensure_dead()
    return OutageKill(spooled, killed_at, drained, rc)

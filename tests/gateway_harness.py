"""Run a real Gateway in a background thread for tests that drive it with real clients."""

from __future__ import annotations

import asyncio
import os
import subprocess
import threading
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

from gateway_task.dev_issuer import mint_token
from gateway_task.server import Gateway
from tapegate.config import Config, parse_config
from tapegate.keys import LocalKeyStore
from tapegate.tape import decode_record, split_records, verify_session
from tapegate.tape.codec import LEAF_MAGIC
from tests.pg import APP_PASSWORD, PgServer, free_port
from tests.vocab_check import assert_registered

PASSWORD_ENV = "TAPEGATE_TEST_APPDB_PASSWORD"


def gateway_config(data_dir: Path, pg: PgServer, **overrides: Any) -> Config:
    os.environ[PASSWORD_ENV] = APP_PASSWORD
    upstream = f"{pg.host}:{pg.port}"
    common = {"protocol": "postgres", "upstream": upstream, "database": "app",
              "password_env": PASSWORD_ENV, "upstream_tls": "disable"}  # fmt: skip
    raw: dict[str, Any] = {
        "data_dir": str(data_dir),
        "identity": {"issuer": "dev", "dev_listen": f"127.0.0.1:{free_port()}"},
        "listen": {"postgres": "127.0.0.1:0"},
        "sink": {"flush_ms": 50},
        "recording": {"max_age_ms": 50},
        "targets": [
            {"name": "appdb", "username": "app", "allow_groups": ["dba", "agents"],
             "guardrails": {"deny": [{"kind": "DROP"}, {"kind": "ALTER ROLE"},
                                     {"regex": "(?i)\\bdelete\\s+from\\s+audit_log"}]},
             **common},
            {"name": "appdb_md5", "username": "app_md5", "allow_groups": ["agents"],
             "allow_insecure_auth": True, **common},
            {"name": "appdb_plain", "username": "app_plain", "allow_groups": ["agents"],
             "allow_insecure_auth": True, **common},
            {"name": "dbadb", "username": "app", "allow_groups": ["dba"], **common},
            {**common, "name": "appdb_tls", "username": "app", "allow_groups": ["agents"],
             "upstream_tls": "verify-full", "upstream_ca_file": str(pg.ca_file)},
            {**common, "name": "downdb", "username": "app", "allow_groups": ["agents"],
             "upstream": f"127.0.0.1:{free_port()}"},
        ],
    }  # fmt: skip
    raw.update(overrides)
    return parse_config(raw)


class RunningGateway:
    def __init__(self, config: Config, **gateway_kwargs: Any) -> None:
        self.config = config
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()
        self.gateway = self.run(self._make(gateway_kwargs))
        self.run(self.gateway.start())
        if "postgres" in self.gateway.addresses:
            self.host, self.port = self.address("postgres")

    def address(self, listener: str) -> tuple[str, int]:
        host, port = self.gateway.addresses[listener].rsplit(":", 1)
        return host, int(port)

    async def _make(self, kwargs: dict[str, Any]) -> Gateway:
        return Gateway(self.config, **kwargs)

    def run(self, coro: Coroutine[Any, Any, Any], timeout: float = 60) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def stop(self, drain_s: float = 1.0) -> None:
        if not self.loop.is_running():
            return
        self.run(self.gateway.stop(drain_s=drain_s))
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)

    def token(self, sub: str = "agent-7", groups: tuple[str, ...] = ("agents",), **kw: Any) -> str:
        return mint_token(self.config.data_dir, self.config.identity, sub, list(groups), **kw)

    def dsn(self, token: str, target: str = "appdb", sslmode: str = "require", **extra: str) -> str:
        parts = {"host": self.host, "port": str(self.port), "dbname": target, "user": "agent",
                 "password": token, "sslmode": sslmode, **extra}  # fmt: skip
        return " ".join(f"{k}={v}" for k, v in parts.items())

    def psql(self, token: str, sql: str, target: str = "appdb", check: bool = True,
             sslmode: str = "require") -> subprocess.CompletedProcess[str]:  # fmt: skip
        env = {**os.environ, "PGPASSWORD": token, "PGSSLMODE": sslmode, "PGCONNECT_TIMEOUT": "10"}
        return subprocess.run(
            ["psql", "-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-h", self.host, "-p",
             str(self.port), "-U", "agent", "-d", target, "-c", sql],
            env=env, capture_output=True, text=True, check=check, timeout=60,
        )  # fmt: skip

    # -- reading what was recorded --

    def wait_closed(self, timeout: float = 10) -> None:
        """Wait until every session has ended (clients closing is asynchronous to the gateway)."""
        deadline = time.monotonic() + timeout
        while self.gateway.sessions and time.monotonic() < deadline:
            time.sleep(0.02)

    def delivered_records(self, wait: bool = True, leaves: bool = False) -> list[bytes]:
        """The chunks delivered so far (with `leaves`, the session log's leaves instead)."""
        if self.loop.is_running():
            if wait:
                self.wait_closed()
            self.run(self._flush())
        records: list[bytes] = []
        for path in sorted(self.config.delivery_dir.rglob("*.bin")):
            found, errors = split_records(path.read_bytes())
            assert not errors, errors
            records += [r for r in found if (r[:4] == LEAF_MAGIC) == leaves]
        if not leaves:  # every test that reads its tapes checks them against the registry
            assert_registered(decode_record(r) for r in records)
        return records

    def leaves(self, wait: bool = True) -> list[Any]:
        """The session log's leaves delivered so far, decoded, in counter order."""
        from tapegate.log.leaf import decode_leaf

        found = [decode_leaf(r) for r in self.delivered_records(wait, leaves=True)]
        return sorted(found, key=lambda leaf: (str(leaf.instance), leaf.counter))

    async def _flush(self) -> None:
        for session in list(self.gateway.sessions):
            session.recorder.tick(2**62)
        await asyncio.to_thread(self.gateway.sink.flush)

    def sessions(self) -> dict[str, list[bytes]]:
        from tapegate.tape import decode_record

        by_session: dict[str, list[bytes]] = {}
        for raw in self.delivered_records():
            by_session.setdefault(str(decode_record(raw).session_id), []).append(raw)
        return by_session

    def verdicts(self) -> dict[str, Any]:
        """Each recorded session's verdict. Never empty: a test that checks verdicts checks
        that something was recorded first (an empty archive would pass `all(v.intact ...)`)."""
        trusted = LocalKeyStore(self.config.data_dir).trusted()
        verdicts = {sid: verify_session(recs, trusted) for sid, recs in self.sessions().items()}
        assert verdicts, "nothing was recorded"
        return verdicts

    def events(self) -> dict[str, list[dict[str, Any]]]:
        """Each session's events (as JSON objects), in order."""
        from tapegate.tape import decode_record

        out: dict[str, list[dict[str, Any]]] = {}
        for sid, records in self.sessions().items():
            recs = sorted((decode_record(r) for r in records), key=lambda r: r.seq)
            out[sid] = [e for r in recs for e in r.meta["events"]]
        return out

    def frames(self, session_id: str) -> list[Any]:
        """A session's frames, decrypted with the data dir's auditor key."""
        from tapegate.tape import decode_record, key_id, open_frames, open_session_key

        recs = sorted((decode_record(r) for r in self.sessions()[session_id]), key=lambda r: r.seq)
        auditor = LocalKeyStore(self.config.data_dir).auditor_key()
        session_key = open_session_key(recs[0], {key_id(bytes(auditor.public_key)): auditor})
        assert session_key is not None
        return [f for r in recs for f in open_frames(r, session_key)]

"""`tapegate up` and `tapegate token` as a person runs them, against a real PostgreSQL."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.pg import APP_PASSWORD, PgServer, free_port

TAPEGATE = [sys.executable, "-m", "tapegate.cli"]


def _config(tmp_path: Path, pg: PgServer) -> Path:
    cfg = {
        "data_dir": str(tmp_path / "data"),
        "identity": {"issuer": "dev", "dev_listen": f"127.0.0.1:{free_port()}"},
        "listen": {"postgres": f"127.0.0.1:{free_port()}"},
        "targets": [{"name": "appdb", "protocol": "postgres", "upstream": f"{pg.host}:{pg.port}",
                     "database": "app", "username": "app", "password_env": "APPDB_PASSWORD",
                     "allow_groups": ["agents"], "upstream_tls": "disable",
                     "guardrails": {"deny": [{"kind": "DROP"}]}}],
    }  # fmt: skip
    path = tmp_path / "tapegate.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.mark.slow
def test_up_token_psql_sigterm(tmp_path: Path, pg: PgServer) -> None:
    cfg = _config(tmp_path, pg)
    env = {**os.environ, "APPDB_PASSWORD": APP_PASSWORD}
    up = subprocess.Popen([*TAPEGATE, "up", "--config", str(cfg)], env=env, text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
    try:
        line = up.stdout.readline()
        assert "ready" in line and "postgres=127.0.0.1:" in line, up.stderr.read()
        port = line.split("postgres=127.0.0.1:")[1].split()[0]
        token = subprocess.run(
            [*TAPEGATE, "token", "--config", str(cfg), "--sub", "agent-1", "--group", "agents",
             "--ttl", "5m"], capture_output=True, text=True, check=True,
        ).stdout  # fmt: skip
        assert token.count("\n") == 1 and token.count(".") == 2, "stdout is the token only"
        psql_env = {**os.environ, "PGPASSWORD": token.strip(), "PGSSLMODE": "require"}
        out = subprocess.run(["psql", "-X", "-A", "-t", "-h", "127.0.0.1", "-p", port, "-U",
                              "agent", "-d", "appdb", "-c", "SELECT 'through the gateway'"],
                             env=psql_env, capture_output=True, text=True, timeout=30)  # fmt: skip
        assert out.stdout.strip() == "through the gateway", out.stderr
        up.send_signal(signal.SIGTERM)
        assert up.wait(timeout=30) == 0
    finally:
        if up.poll() is None:
            up.kill()
    deliveries = sorted((tmp_path / "data" / "deliveries").rglob("*.bin"))
    assert deliveries, "the session was delivered"
    # What the gateway wrote in its data dir is the operator's alone: files 0600, folders 0700.
    made = [p for p in (tmp_path / "data").rglob("*")]
    assert len(made) > len(deliveries)
    exposed = [(str(p), oct(p.stat().st_mode & 0o777)) for p in made
               if p.stat().st_mode & 0o077]  # fmt: skip
    assert not exposed, exposed
    verify = subprocess.run([*TAPEGATE, "verify", "--data-dir", str(tmp_path / "data"),
                             *map(str, deliveries)], capture_output=True, text=True)  # fmt: skip
    assert verify.returncode == 0 and "intact" in verify.stdout, verify.stdout


def test_config_error_is_reported_before_listening(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("listen: {postgres: 'not-an-address'}\n")
    out = subprocess.run([*TAPEGATE, "up", "--config", str(bad)], capture_output=True,
                         text=True, timeout=30)  # fmt: skip
    assert out.returncode == 2
    assert "config error: listen.postgres: expected HOST:PORT" in out.stderr


def test_token_refuses_a_non_dev_issuer(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("identity: {issuer: 'https://idp.example'}\n")
    out = subprocess.run([*TAPEGATE, "token", "--config", str(cfg), "--sub", "x"],
                         capture_output=True, text=True)  # fmt: skip
    assert out.returncode == 2 and "only mints for the embedded dev issuer" in out.stderr
    assert out.stdout == ""


@pytest.mark.slow
def test_gateway_killed_mid_session_leaves_a_verifiable_prefix(
    tmp_path: Path, pg: PgServer
) -> None:
    import json
    import time

    import psycopg

    from tapegate.archive.embedded import LocalArchive
    from tapegate.config import load_config

    cfg = _config(tmp_path, pg)
    raw = yaml.safe_load(cfg.read_text())
    raw.update({"tls": "optional", "recording": {"max_age_ms": 50}, "sink": {"flush_ms": 50}})
    cfg.write_text(yaml.safe_dump(raw))
    env = {**os.environ, "APPDB_PASSWORD": APP_PASSWORD}
    up = subprocess.Popen([*TAPEGATE, "up", "--config", str(cfg)], env=env, text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        line = up.stdout.readline()
        port = line.split("postgres=127.0.0.1:")[1].split()[0]
        token = subprocess.run([*TAPEGATE, "token", "--config", str(cfg), "--sub", "victim",
                                "--group", "agents"], capture_output=True, text=True,
                               check=True).stdout.strip()  # fmt: skip
        conn = psycopg.connect(f"host=127.0.0.1 port={port} dbname=appdb user=a "
                               f"password={token} sslmode=disable", autocommit=True)  # fmt: skip
        for i in range(5):
            conn.execute("SELECT %s::int", (i,))
        time.sleep(1.0)  # sealed by age and written by the sink
        up.send_signal(signal.SIGKILL)
        up.wait(10)
    finally:
        if up.poll() is None:
            up.kill()
    out = subprocess.run([*TAPEGATE, "sessions", "--json", "--config", str(cfg)],
                         capture_output=True, text=True, check=True)  # fmt: skip
    (session,) = json.loads(out.stdout)
    assert session["status"] == "open" and not session["verified"]
    assert session["statements"] == 5
    deliveries = sorted((tmp_path / "data" / "deliveries").rglob("*.bin"))
    verify = subprocess.run([*TAPEGATE, "verify", "--data-dir", str(tmp_path / "data"),
                             *map(str, deliveries)], capture_output=True, text=True)  # fmt: skip
    assert verify.returncode == 1
    problems = [ln.strip() for ln in verify.stdout.splitlines() if ln.strip().startswith("- ")]
    assert problems == [f"- no_final: last chunk seen is seq {session['chunks'] - 1}"], (
        verify.stdout
    )
    # After the grace period the pipeline calls it what it is.
    archive = LocalArchive(load_config(cfg))
    archive.pipeline.sweep(time.time_ns() + archive.pipeline.grace_ns)
    (record,) = archive.index.sessions()
    assert record.status == "truncated" and "no final chunk yet" in record.problems

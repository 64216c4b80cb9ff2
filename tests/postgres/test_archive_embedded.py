"""The embedded path end to end: real sessions through the gateway, indexed and queryable."""

from __future__ import annotations

import json
import time
from pathlib import Path

import psycopg
import pytest
import yaml

from tapegate.archive.embedded import LocalArchive
from tapegate.cli import main
from tests.gateway_harness import RunningGateway, gateway_config
from tests.pg import PgServer


@pytest.fixture
def gw_archive(pg: PgServer, tmp_path: Path):
    config = gateway_config(tmp_path / "data", pg)
    archive = LocalArchive(config)
    running = RunningGateway(config, archive=archive)
    yield running, archive
    running.stop()


def _wait_for(predicate, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "the archive did not catch up in time"
        time.sleep(0.1)


def test_sessions_are_indexed_within_seconds(gw_archive) -> None:
    gw, archive = gw_archive
    with psycopg.connect(gw.dsn(gw.token(sub="ada")), autocommit=True) as conn:
        conn.execute("SELECT 1")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("DROP TABLE nothing")
    started = time.monotonic()
    _wait_for(lambda: [r.status for r in archive.index.sessions(subject="ada")] == ["closed"])
    assert time.monotonic() - started < 5
    (rec,) = archive.index.sessions(subject="ada")
    assert rec.verified and rec.statements == 2 and rec.target == "appdb"
    _, rows = archive.query_engine.query(
        "SELECT type, outcome FROM events WHERE subject = 'ada' AND type = 'blocked'"
    )
    assert rows == [("blocked", "kind DROP")]


def test_cli_sessions_and_query(gw_archive, tmp_path: Path, capsys) -> None:
    gw, _archive = gw_archive
    for who in ("ada", "linus"):
        with psycopg.connect(gw.dsn(gw.token(sub=who))) as conn:
            conn.execute("SELECT %s::text", (who,))
    gw.wait_closed()
    cfg = tmp_path / "cli.yaml"
    cfg.write_text(yaml.safe_dump({"data_dir": str(gw.config.data_dir)}))
    gw.run(_flush(gw))
    assert main(["sessions", "--user", "ada", "--json", "--config", str(cfg)]) == 0
    (session,) = json.loads(capsys.readouterr().out)
    for key in ("session_id", "subject", "groups", "target", "protocol", "client_addr",
                "started_at", "ended_at", "status", "verified", "bytes_client", "bytes_server",
                "statements"):  # fmt: skip
        assert key in session
    assert session["subject"] == "ada" and session["status"] == "closed" and session["verified"]
    assert session["started_at"].endswith("Z")
    assert (
        main(
            [
                "query",
                "SELECT subject, count(*) AS n FROM events WHERE type = 'execute' "
                "GROUP BY subject ORDER BY subject",
                "--json",
                "--config",
                str(cfg),
            ]
        )
        == 0
    )
    assert json.loads(capsys.readouterr().out) == [{"subject": "ada", "n": 1},
                                                   {"subject": "linus", "n": 1}]  # fmt: skip
    assert main(["query", "SELECT nope FROM events", "--config", str(cfg)]) == 2
    assert "query failed" in capsys.readouterr().err


async def _flush(gw: RunningGateway) -> None:
    import asyncio

    await asyncio.to_thread(gw.gateway.sink.flush)

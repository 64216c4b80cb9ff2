"""show, replay, verify and export against the embedded archive, after a real PostgreSQL session
through the gateway with parameters, COPY, an error and a blocked statement."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import psycopg
import pytest
import yaml
from nacl.public import PrivateKey

from tapegate.archive.embedded import LocalArchive
from tapegate.cli import main
from tests.gateway_harness import RunningGateway, gateway_config
from tests.pg import PgServer

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def audited(pg: PgServer, tmp_path_factory: pytest.TempPathFactory):
    """One recorded session, the config that reads its archive, and the session id."""
    tmp = tmp_path_factory.mktemp("audit")
    config = gateway_config(tmp / "data", pg)
    gw = RunningGateway(config, archive=LocalArchive(config))
    try:
        with psycopg.connect(gw.dsn(gw.token(sub="grace")), autocommit=True) as conn:
            conn.execute("CREATE TEMP TABLE audit_t (id int, name text)")
            with conn.cursor() as cur:
                cur.executemany(
                    "INSERT INTO audit_t VALUES (%s, %s)", [(i, f"name-{i}") for i in range(30)]
                )
                cur.execute("SELECT id, name FROM audit_t WHERE id < %s ORDER BY id", (25,))
                assert len(cur.fetchall()) == 25
                with cur.copy(
                    "COPY (SELECT id, name FROM audit_t ORDER BY id LIMIT 3) TO STDOUT"
                ) as cp:
                    copied = [bytes(b) for b in cp]
                assert b"".join(copied).startswith(b"0\tname-0\n")
            with pytest.raises(psycopg.errors.DivisionByZero):
                conn.execute("SELECT 1/0")
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute("DROP TABLE audit_t")
        gw.wait_closed()
    finally:
        gw.stop()
    cfg = tmp / "cli.yaml"
    cfg.write_text(yaml.safe_dump({"data_dir": str(config.data_dir)}))
    archive = LocalArchive(config)
    archive.scan()
    (session,) = archive.index.sessions(subject="grace")
    return cfg, session.session_id, tmp


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_show(audited, capsys) -> None:
    cfg, sid, _ = audited
    code, out, _ = _run(capsys, "show", sid, "--json", "--config", str(cfg))
    assert code == 0
    summary = json.loads(out)
    assert summary["verdict"] == "intact" and summary["identity"]["subject"] == "grace"
    assert summary["blocked"] == 1 and summary["errors"] == 1
    assert summary["end_reason"] == "client_terminate" and summary["bytes_server"] > 0
    code, out, _ = _run(capsys, "show", sid, "--config", str(cfg))
    assert code == 0 and "intact" in out and "grace" in out and "1 blocked" in out


def test_replay_text_shows_statements_rows_copy_errors_and_blocks(audited, capsys) -> None:
    cfg, sid, _ = audited
    code, out, _ = _run(capsys, "replay", sid, "--config", str(cfg))
    assert code == 0
    assert "SELECT id, name FROM audit_t WHERE id < $1 ORDER BY id" in out
    assert "bind     $1=<binary 0019>" in out and "$2='name-29'" in out
    shown = out[out.index("SELECT 25 (25 rows") :]
    assert "19  name-19" in shown and "20  name-20" not in shown  # capped at 20 rows
    assert "5 more row(s) not shown" in out
    assert "0\tname-0" in out and "COPY 3" in out
    assert "ERROR    22012" in out
    assert "BLOCKED  DROP TABLE audit_t" in out
    assert "end: client_terminate" in out


def test_replay_json_lines(audited, capsys) -> None:
    cfg, sid, _ = audited
    code, out, _ = _run(capsys, "replay", sid, "--format", "json", "--max-rows", "2",
                        "--config", str(cfg))  # fmt: skip
    assert code == 0
    events = [json.loads(line) for line in out.splitlines()]
    assert {e["session_id"] for e in events} == {sid}
    results = [e for e in events if e["type"] == "result" and e["attrs"]["tag"] == "SELECT 25"]
    assert results[0]["shown"]["rows"] == [["0", "name-0"], ["1", "name-1"]]
    assert results[0]["shown"]["not_shown"] == 23
    assert any(e["type"] == "blocked" for e in events)


def test_replay_without_the_right_key_shows_events_and_says_why(audited, capsys) -> None:
    cfg, sid, tmp = audited
    stranger = tmp / "stranger.key"
    stranger.write_text(bytes(PrivateKey.generate()).hex())
    code, out, _ = _run(capsys, "replay", sid, "--auditor-key", str(stranger), "--config", str(cfg))
    assert code == 0
    assert "payloads not shown: the session key was sealed to auditor key(s)" in out
    assert "SELECT 25 (25 rows" in out and "0  name-0" not in out and "COPY 3" in out
    code, _, err = _run(capsys, "replay", sid, "--auditor-key", str(tmp / "nope"),
                        "--config", str(cfg))  # fmt: skip
    assert code == 2 and "cannot read auditor key" in err and "Traceback" not in err


def test_replay_formats_that_do_not_fit(audited, capsys) -> None:
    cfg, sid, _ = audited
    code, _, err = _run(capsys, "replay", sid, "--format", "cast", "--config", str(cfg))
    assert code == 2 and "cast is for terminal (ssh) sessions" in err
    code, _, err = _run(capsys, "replay", sid, "--format", "har", "--config", str(cfg))
    assert code == 2 and "har is for HTTP sessions" in err


def test_verify_session_and_unknown_input(audited, capsys) -> None:
    cfg, sid, _ = audited
    code, out, _ = _run(capsys, "verify", sid, "--config", str(cfg))
    assert code == 0 and "intact" in out
    code, _, err = _run(capsys, "verify", "0190a0a0-0000-7000-8000-000000000000",
                        "--config", str(cfg))  # fmt: skip
    assert code == 2 and "unknown session" in err
    code, _, err = _run(capsys, "show", "not-a-session", "--config", str(cfg))
    assert code == 2 and "not a session id" in err


def test_verify_session_reads_the_delivered_objects_not_the_index(audited, capsys) -> None:
    cfg, sid, tmp = audited
    data_dir = Path(yaml.safe_load(cfg.read_text())["data_dir"])
    copy = tmp / "data-copy"
    shutil.copytree(data_dir, copy)
    deliveries = sorted((copy / "deliveries").rglob("*.bin"))
    target = next(p for p in deliveries if bytes.fromhex(sid.replace("-", "")) in p.read_bytes())
    data = bytearray(target.read_bytes())
    data[data.index(bytes.fromhex(sid.replace("-", ""))) + 200] ^= 1  # inside chunk 0
    target.write_bytes(bytes(data))
    other = tmp / "copy.yaml"
    other.write_text(yaml.safe_dump({"data_dir": str(copy)}))
    code, out, _ = _run(capsys, "verify", sid, "--config", str(other))
    assert code == 1 and "bad_signature" in out  # the index still says closed and verified


def test_export_and_verify_the_bundle_elsewhere(audited, capsys, tmp_path: Path) -> None:
    cfg, sid, _ = audited
    bundle = tmp_path / "evidence.zip"
    code, out, _ = _run(capsys, "export", sid, "-o", str(bundle), "--config", str(cfg))
    assert code == 0 and "verdict intact" in out
    with zipfile.ZipFile(bundle) as zf:
        names = zf.namelist()
        assert "manifest.json" in names and "report.txt" in names
        assert any(n.startswith("records/") for n in names)
        assert "grace" in zf.read("report.txt").decode()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    shutil.copy(bundle, elsewhere / "evidence.zip")
    env = {k: v for k, v in os.environ.items() if not k.startswith("TAPEGATE_")}
    result = subprocess.run([sys.executable, "-m", "tapegate.cli", "verify", "evidence.zip"],
                            cwd=elsewhere, env=env, capture_output=True, text=True)  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert "intact" in result.stdout

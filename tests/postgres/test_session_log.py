"""The session log with a real gateway, psql and PostgreSQL: every session's leaves are
shipped, the open leaf is held by the archive before the session's first statement reaches
the database (acked), and `tapegate log verify` finds the archive consistent, then names a
session whose objects were deleted."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import yaml

from tapegate.cli import main as cli_main
from tapegate.log.leaf import LeafKind, decode_leaf
from tapegate.tape import decode_record
from tapegate.tape.codec import LEAF_MAGIC
from tests.gateway_harness import RunningGateway, gateway_config
from tests.pg import PgServer
from tests.sinks import GatedAcks


def _is_open_leaf(raw: bytes) -> bool:
    return raw[:4] == LEAF_MAGIC and decode_leaf(raw).kind == LeafKind.SESSION_OPEN


def test_acked_a_statement_waits_for_its_sessions_open_leaf(pg: PgServer, tmp_path: Path) -> None:
    pg.psql("DROP TABLE IF EXISTS leafgate; CREATE TABLE leafgate (id int);"
            " GRANT ALL ON leafgate TO app")  # fmt: skip
    config = gateway_config(tmp_path / "d", pg, durability="acked")
    sink = GatedAcks(config.delivery_dir, holds=lambda records: any(map(_is_open_leaf, records)))
    gw = RunningGateway(config, sink=sink)
    try:
        done = threading.Event()
        thread = threading.Thread(
            target=lambda: (gw.psql(gw.token(), "INSERT INTO leafgate VALUES (1)"), done.set()),
            daemon=True,
        )
        thread.start()
        assert sink.waiting.wait(10), "the session_open leaf was handed to the sink"
        time.sleep(0.3)
        assert pg.psql("SELECT count(*) FROM leafgate") == "0", "nothing may run before it"
        assert not done.is_set()
        sink.gate.set()
        assert done.wait(10)
        assert pg.psql("SELECT count(*) FROM leafgate") == "1"
    finally:
        sink.gate.set()
        gw.stop()
    leaves = gw.leaves()
    (sid,) = gw.sessions()
    kinds = [(leaf.kind, leaf.session_id) for leaf in leaves]
    assert (LeafKind.SESSION_OPEN, sid) in kinds and (LeafKind.SESSION_CLOSE, sid) in kinds


def test_a_gateways_leaves_and_log_verify(pg: PgServer, tmp_path: Path, capsys) -> None:
    config = gateway_config(tmp_path / "d", pg)
    gw = RunningGateway(config)
    try:
        token = gw.token()
        for i in range(3):
            assert gw.psql(token, f"SELECT {i}").stdout.strip() == str(i)
        gw.psql(gw.token(groups=("nobody",)), "SELECT 1", check=False)  # refused: a session too
    finally:
        gw.stop()
    # Ground truth from the delivered objects: one instance, counters 0.. without a gap, started
    # and stopped, each session opened before its chunk 0 was sealed and closed with its digest.
    leaves = gw.leaves()
    assert {leaf.instance for leaf in leaves} == {gw.gateway.leaves.instance}
    assert [leaf.counter for leaf in leaves] == list(range(len(leaves)))
    assert leaves[0].body["state"] == "start" and leaves[-1].body["state"] == "stop"
    sessions = gw.sessions()
    assert len(sessions) == 4
    for sid, records in sessions.items():
        chunks = sorted((decode_record(r) for r in records), key=lambda r: r.seq)
        (opened,) = [x for x in leaves if x.kind == "session_open" and x.session_id == sid]
        (closed,) = [x for x in leaves if x.kind == "session_close" and x.session_id == sid]
        assert opened.sealed_ns <= chunks[0].sealed_ns
        assert closed.body["final_digest"] == chunks[-1].digest.hex()
        assert closed.body["chunks"] == len(chunks)
    config_file = tmp_path / "tapegate.yaml"
    config_file.write_text(yaml.safe_dump({"data_dir": str(config.data_dir)}))
    assert cli_main(["log", "verify", "--config", str(config_file)]) == 0
    assert capsys.readouterr().out.rstrip().endswith("consistent")
    # An operator deletes every delivery object holding one session's chunks.
    victim = sorted(sessions)[0]
    held = {r for r in sessions[victim]}
    for path in config.delivery_dir.rglob("*.bin"):
        if any(chunk in path.read_bytes() for chunk in held):
            path.unlink()
    assert cli_main(["log", "verify", "--config", str(config_file)]) == 1
    out = capsys.readouterr().out
    assert f"session_missing: session {victim}" in out

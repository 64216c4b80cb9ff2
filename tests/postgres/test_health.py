"""The health port: /healthz, /readyz (503 while the archive fails), /metrics; EMF lines."""

from __future__ import annotations

import json
import shutil
import socket
import time
import urllib.error
import urllib.request
from pathlib import Path

import psycopg

from gateway_task.metrics import GatewayMetrics
from tests.gateway_harness import RunningGateway, gateway_config
from tests.pg import PgServer


def _get(addr: str, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://{addr}{path}", timeout=5) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_health_ready_and_metrics(pg: PgServer, tmp_path: Path) -> None:
    config = gateway_config(tmp_path / "d", pg, listen={"postgres": "127.0.0.1:0",
                                                        "health": "127.0.0.1:0"})  # fmt: skip
    gw = RunningGateway(config)
    try:
        addr = gw.gateway.addresses["health"]
        assert _get(addr, "/healthz") == (200, "ok\n")
        assert _get(addr, "/readyz") == (200, "ready\n")
        with psycopg.connect(gw.dsn(gw.token())) as conn:
            conn.execute("SELECT 1")
        gw.wait_closed()
        gw.run(_flush(gw))
        status, text = _get(addr, "/metrics")
        assert status == 200
        values = {line.split("{")[0]: float(line.rsplit(" ", 1)[1])
                  for line in text.splitlines() if line and not line.startswith("#")}  # fmt: skip
        assert values["tapegate_sessions_started_total"] == 1
        assert values["tapegate_chunks_sealed_total"] >= 1
        # Every record sealed was sent: the chunks, and the session log's leaves beside them.
        sealed = values["tapegate_chunks_sealed_total"] + values["tapegate_log_leaves_total"]
        assert values["tapegate_log_leaves_total"] >= 3  # start, the session's open and close
        assert values["tapegate_sink_records_sent_total"] == sealed
        assert values["tapegate_seal_to_ack_seconds_count"] >= 1
        assert values["tapegate_sessions_active"] == 0
        # The archive fails: the gateway is no longer ready, and says why.
        shutil.rmtree(config.delivery_dir)
        config.delivery_dir.write_text("in the way")
        with psycopg.connect(gw.dsn(gw.token())) as conn:
            conn.execute("SELECT 1")
        deadline = time.monotonic() + 5
        while _get(addr, "/readyz")[0] == 200 and time.monotonic() < deadline:
            time.sleep(0.05)
        status, text = _get(addr, "/readyz")
        assert status == 503 and "archive failing" in text
        assert _get(addr, "/nope")[0] == 404
        with socket.create_connection(tuple(addr.rsplit(":", 1)), 5) as sock:  # type: ignore[arg-type]
            sock.sendall(b"\x00\x01garbage that is not HTTP\r\n\r\n")
            assert sock.recv(100).startswith(b"HTTP/1.1 400")
        config.delivery_dir.unlink()
    finally:
        gw.stop()


async def _flush(gw: RunningGateway) -> None:
    import asyncio

    await asyncio.to_thread(gw.gateway.sink.flush)


def test_emf_lines_carry_counter_deltas() -> None:
    metrics = GatewayMetrics("gw-1")
    metrics.gauges["sessions_active"] = lambda: 3
    metrics.inc("chunks_sealed", 5)
    first = json.loads(metrics.emf(now_ms=1000))
    assert first["_aws"]["CloudWatchMetrics"][0]["Namespace"] == "tapegate"
    assert first["_aws"]["CloudWatchMetrics"][0]["Dimensions"] == [["Gateway"]]
    assert first["Gateway"] == "gw-1" and first["chunks_sealed"] == 5
    assert first["sessions_active"] == 3
    metrics.inc("chunks_sealed", 2)
    assert json.loads(metrics.emf(now_ms=2000))["chunks_sealed"] == 2

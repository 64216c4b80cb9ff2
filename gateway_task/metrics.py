"""Counters and gauges of the gateway: Prometheus text on /metrics, CloudWatch EMF on Fargate.

Counters only go up; gauges are read when rendered. The sinks keep their own counters (`stats`),
which are read here rather than copied, so there is one place each number lives.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

# name → (help, Prometheus type, CloudWatch unit)
_DOCS: dict[str, tuple[str, str, str]] = {
    "sessions_started": ("sessions admitted", "counter", "Count"),
    "sessions_refused": ("connections refused (token, policy, TLS, archive)", "counter", "Count"),
    "sessions_active": ("sessions open now", "gauge", "Count"),
    "chunks_sealed": ("chunks sealed", "counter", "Count"),
    "bytes_sealed": ("bytes of sealed records", "counter", "Bytes"),
    "log_leaves": ("session log leaves signed (opens, closes, heartbeats)", "counter", "Count"),
    "sink_records_sent": ("records the sink delivered", "counter", "Count"),
    "sink_bytes_sent": ("bytes the sink delivered", "counter", "Bytes"),
    "sink_failures": ("failed deliveries (entries or writes)", "counter", "Count"),
    "sink_retries": ("delivery retries", "counter", "Count"),
    "sink_calls": ("delivery calls (PutRecordBatch or object writes)", "counter", "Count"),
    "spool_bytes": ("bytes waiting in the disk spool", "gauge", "Bytes"),
    "sink_failing": ("1 while the sink is failing (sessions fail closed)", "gauge", "Count"),
    "seal_to_ack_seconds_sum": ("total seal-to-acknowledge time", "counter", "Seconds"),
    "seal_to_ack_seconds_count": ("acknowledged batches", "counter", "Count"),
    "seal_to_ack_seconds_max": ("slowest seal-to-acknowledge so far", "gauge", "Seconds"),
}


class GatewayMetrics:
    def __init__(self, gateway_name: str) -> None:
        self.gateway = gateway_name
        self.counters: dict[str, float] = {
            "sessions_started": 0, "sessions_refused": 0, "chunks_sealed": 0, "bytes_sealed": 0,
            "log_leaves": 0,
        }  # fmt: skip
        self.gauges: dict[str, Callable[[], float]] = {}
        self.sources: list[Callable[[], dict[str, float]]] = []
        self._last_emf: dict[str, float] = {}

    def inc(self, name: str, by: float = 1) -> None:
        self.counters[name] = self.counters.get(name, 0) + by

    def snapshot(self) -> dict[str, float]:
        values = dict(self.counters)
        for source in self.sources:
            values.update(source())
        for name, read in self.gauges.items():
            values[name] = read()
        return values

    def prometheus(self) -> str:
        lines = []
        for name, value in sorted(self.snapshot().items()):
            doc, kind, _ = _DOCS.get(name, (name, "gauge", "None"))
            suffix = "_total" if kind == "counter" and not name.endswith(("_sum", "_count")) else ""
            metric = f"tapegate_{name}{suffix}"
            lines += [f"# HELP {metric} {doc}", f"# TYPE {metric} {kind}",
                      f'{metric}{{gateway="{self.gateway}"}} {value:g}']  # fmt: skip
        return "\n".join(lines) + "\n"

    def emf(self, now_ms: int | None = None) -> str:
        """One CloudWatch Embedded Metric Format line: counter deltas since the last line."""
        snap = self.snapshot()
        values: dict[str, Any] = {}
        for name, value in snap.items():
            kind = _DOCS.get(name, ("", "gauge", ""))[1]
            values[name] = value - self._last_emf.get(name, 0) if kind == "counter" else value
        self._last_emf = snap
        doc = {
            "_aws": {
                "Timestamp": now_ms if now_ms is not None else int(time.time() * 1000),
                "CloudWatchMetrics": [
                    {
                        "Namespace": "tapegate",
                        "Dimensions": [["Gateway"]],
                        "Metrics": [
                            {"Name": n, "Unit": _DOCS.get(n, ("", "", "None"))[2]}
                            for n in sorted(values)
                        ],
                    }
                ],
            },
            "Gateway": self.gateway,
            **values,
        }
        return json.dumps(doc, separators=(",", ":"))

"""The health port: /healthz (the process serves), /readyz (it can take sessions: listening and
the archive healthy) and /metrics (Prometheus text). HTTP/1.1 parsed by h11, sans-IO."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

import h11

from gateway_task.metrics import GatewayMetrics

MAX_REQUEST_BYTES = 16 * 1024


class HealthServer:
    def __init__(self, metrics: GatewayMetrics, ready: Callable[[], str | None]) -> None:
        """`ready` returns None when ready, else why not."""
        self.metrics = metrics
        self.ready = ready

    def respond(self, target: str) -> tuple[int, str, bytes]:
        path = target.split("?", 1)[0]
        if path == "/healthz":
            return 200, "text/plain", b"ok\n"
        if path == "/readyz":
            why = self.ready()
            if why is None:
                return 200, "text/plain", b"ready\n"
            return 503, "text/plain", f"not ready: {why}\n".encode()
        if path == "/metrics":
            return 200, "text/plain; version=0.0.4", self.metrics.prometheus().encode()
        return 404, "text/plain", b"not found\n"

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_REQUEST_BYTES)
        try:
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    data = await asyncio.wait_for(reader.read(4096), 10)
                    conn.receive_data(data)
                    if not data:
                        return
                    continue
                if isinstance(event, h11.Request):
                    status, ctype, body = self.respond(event.target.decode("ascii", "replace"))
                    headers = [("content-type", ctype), ("content-length", str(len(body))),
                               ("connection", "close")]  # fmt: skip
                    writer.write(conn.send(h11.Response(status_code=status, headers=headers)))
                    writer.write(conn.send(h11.Data(data=body)))
                    writer.write(conn.send(h11.EndOfMessage()))
                    await writer.drain()
                    return
                if isinstance(event, h11.ConnectionClosed):
                    return
        except (h11.RemoteProtocolError, TimeoutError, ConnectionError):
            with contextlib.suppress(Exception):
                writer.write(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n")
        finally:
            writer.close()

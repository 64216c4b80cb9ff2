"""Listeners, lifecycle and shutdown of the gateway: with the protocol modules, the only I/O.

`Gateway` owns the listeners (PostgreSQL, SSH, HTTP, health), the sink, the ticker that seals
chunks by age, the embedded archive loop and the metrics; each accepted connection is handed to
its protocol's module (`postgres`, `ssh`, `http`). Protocol decisions are made by the sans-IO
code in `protocols/`; this package moves bytes and keeps time.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from collections.abc import Callable, Coroutine
from typing import Any, Protocol

from nacl.public import PublicKey

from gateway_task.health import HealthServer
from gateway_task.identity import OidcVerifier
from gateway_task.metrics import GatewayMetrics
from gateway_task.recording import Recorder, RecordingUnavailable
from gateway_task.recording.local import LocalFolderSink
from gateway_task.recording.sink import Sink, SinkError
from gateway_task.secrets import Credentials
from gateway_task.server.admission import Admission
from gateway_task.server.refusals import RefusalLedger
from gateway_task.server.registry import LISTENERS
from gateway_task.tls import server_context
from tapegate.archive.embedded import LocalArchive
from tapegate.config import Config
from tapegate.keys import LocalKeyStore, load_signing_key
from tapegate.log.leaf import LeafWriter
from tapegate.tape import Event, Identity, SessionHeader, TapeWriter
from tapegate.vocab import EndReason, EventType

log = logging.getLogger("tapegate.gateway")


TICK_S = 0.1
ARCHIVE_SCAN_S = 0.5
EMF_INTERVAL_S = 60.0


class LiveSession(Protocol):
    """What the gateway needs of every protocol's open session (to seal by age, drain, stop)."""

    recorder: Recorder
    end_reason: str | None

    @property
    def idle(self) -> bool: ...

    def end(self, reason: EndReason) -> None:
        """Stop forwarding now (shutdown, a failing archive, an expired token): the session
        tells its client why in its protocol's own terms, and records its end with `reason`."""


class Gateway:
    def __init__(
        self,
        config: Config,
        *,
        sink: Sink | None = None,
        verifier: OidcVerifier | None = None,
        archive: LocalArchive | None = None,
    ) -> None:
        self.config = config
        keys = LocalKeyStore(config.data_dir)
        if config.keys.signing_key:
            self.signer = load_signing_key(config.keys.signing_key, config.sink.region)
        else:
            self.signer = keys.signing_key()
        if config.keys.auditor_public_keys:
            self.auditors = [PublicKey(k) for k in config.keys.auditor_public_keys]
        else:
            self.auditors = keys.auditor_public_keys()
        self.sink: Sink = sink or make_sink(config)
        # This process's leaves of the session log (docs/LOG.md): numbered from 0, signed with
        # the gateway's key, shipped through the sink with the chunks.
        self.leaves = LeafWriter(self.signer, config.gateway_name)
        self._heartbeat_due = 0.0
        self.metrics = GatewayMetrics(config.gateway_name)
        self.metrics.gauges["sessions_active"] = lambda: len(self.sessions)
        self.metrics.gauges["sink_failing"] = lambda: float(self.sink.failure is not None)
        self.metrics.sources.append(self._sink_metrics)
        self.verifier = verifier or OidcVerifier(config.identity)
        self.tls = server_context(config.tls, config.data_dir)
        self.credentials = Credentials()
        self.admission = Admission(config.limits, self.metrics)
        self.refusals = RefusalLedger(config.limits.refusals_per_source,
                                      config.limits.refusal_interval_s)  # fmt: skip
        self.metrics.gauges["connections_open"] = lambda: float(self.admission.open)
        self.metrics.gauges["connections_preauth"] = lambda: float(self.admission.preauth)
        self.sessions: set[LiveSession] = set()
        self.addresses: dict[str, str] = {}
        self._servers: list[Any] = []  # each has close(): asyncio, SniffingListener, asyncssh
        self._listening = False
        self._connections: set[asyncio.Task[None]] = set()
        self._ticker: asyncio.Task[None] | None = None
        self._dev_issuer = None
        self._stopping = False
        self._archiver: asyncio.Task[None] | None = None
        self.archive = archive

    async def start(self) -> None:
        self.sink.bind(asyncio.get_running_loop())
        self._heartbeat("start", previous=self._chain_instance())
        if self.config.identity.is_dev:
            from gateway_task.dev_issuer import DevIssuerServer

            self._dev_issuer = DevIssuerServer(
                self.config.data_dir, self.config.identity.dev_listen
            )
            self._dev_issuer.start()
            self.addresses["dev_issuer"] = self.config.identity.issuer_url
        if self.config.listen_health is not None:
            health = HealthServer(self.metrics, self._not_ready)
            addr = self.config.listen_health
            server = await asyncio.start_server(health.handle, addr.host, addr.port)
            host, port = server.sockets[0].getsockname()[:2]
            self.addresses["health"] = f"{host}:{port}"
            self._servers.append(server)
        for name, listener in LISTENERS.items():  # every protocol's, from one registry
            listen = listener.address(self.config)
            if listen is not None:
                self._listening_on(name, await listener.start(self, listen))
        self._listening = True
        self._ticker = asyncio.create_task(self._tick_forever())
        if self.archive is not None:
            self._archiver = asyncio.create_task(self._archive_forever())

    async def stop(self, drain_s: float = 5.0) -> None:
        """Stop accepting, let busy sessions finish for up to drain_s, close the rest."""
        self._stopping = True
        for server in self._servers:
            server.close()
        deadline = time.monotonic() + drain_s
        while any(not s.idle for s in self.sessions):
            if time.monotonic() >= deadline:
                break
            await asyncio.sleep(0.05)
        for session in list(self.sessions):
            session.end(EndReason.GATEWAY_SHUTDOWN)
        for server in self._servers:
            if hasattr(server, "close_connections"):
                await server.close_connections()
        if self._connections:
            _, unfinished = await asyncio.wait(self._connections, timeout=drain_s + 5)
            for task in unfinished:  # still in startup or login: nothing recorded to close
                task.cancel()
            if unfinished:
                await asyncio.wait(unfinished, timeout=5)
        if self._ticker:
            self._ticker.cancel()
        self._seal_refusal_summaries(everything=True)
        self._heartbeat("stop")
        lost = await asyncio.to_thread(self.sink.close)
        if lost:
            log.error("the archive is failing: %d bytes of sealed records were not delivered", lost)
        if self._archiver is not None:
            self._archiver.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._archiver
            # Cancelling does not stop a scan already running in its thread: stop it after the
            # object in hand. The rest (the last flush included) waits for the next scan, which
            # every `tapegate` command runs first: a backlog must not hold up a shutdown.
            await asyncio.to_thread(self.archive.stop)
        if self._dev_issuer is not None:
            self._dev_issuer.stop()

    def _chain_instance(self) -> str | None:
        """The instance that last ran on this data dir, and this one in its place. On Fargate
        each task starts on an empty disk, so there is no chain to keep: none is claimed."""
        path = self.config.data_dir / "log-instance"
        try:
            previous = path.read_text().strip() or None
        except OSError:
            previous = None
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(f"{self.leaves.instance}\n")
        except OSError as exc:
            log.warning("cannot keep the log's instance chain in %s: %s", path, exc.strerror)
        return previous

    def _not_ready(self) -> str | None:
        if self._stopping:
            return "shutting down"
        if self.sink.failure is not None:
            return f"archive failing: {self.sink.failure}"
        if not self._listening:
            return "not listening yet"
        return None

    # -- recording, shared by the protocol servers ----------------------------------------------

    def open_recorder(
        self, identity: Identity, target: str, protocol: str, client_addr: str, started_ns: int
    ) -> Recorder:
        header = SessionHeader(
            identity=identity,
            target=target,
            protocol=protocol,
            client_addr=client_addr,
            gateway=self.config.gateway_name,
            started_ns=started_ns,
        )
        rec = self.config.recording
        writer = TapeWriter(
            header,
            self.signer,
            self.auditors,
            max_chunk_bytes=rec.max_chunk_bytes,
            max_age_ns=rec.max_age_ms * 1_000_000,
        )
        acked = self.config.durability == "acked"
        recorder = Recorder(writer, self.sink, self.metrics, acked=acked, leaves=self.leaves)
        recorder.open()
        return recorder

    def _heartbeat(self, state: str, previous: str | None = None) -> None:
        """This instance is alive (or starting, or stopping): a leaf the log's verifier expects
        every `log.heartbeat_s`, so that a window with no leaves at all cannot pass unseen."""
        interval = self.config.log.heartbeat_s
        self._heartbeat_due = time.monotonic() + interval
        leaf = self.leaves.heartbeat(state, interval, len(self.sessions), time.time_ns(),
                                     previous)  # fmt: skip
        self.metrics.inc("log_leaves")
        with contextlib.suppress(SinkError):  # kept for the sink's retry all the same
            self.sink.put([leaf])

    def record_refusal(
        self,
        identity: Identity | None,
        target: str,
        protocol: str,
        client_addr: str,
        attrs: dict[str, Any],
        started_ns: int | None = None,
        first: Event | None = None,
    ) -> None:
        """A refused login or request is a session too: one `auth` event, ended "refused";
        past the per-source rate it is folded into that source's summary instead."""
        self.metrics.inc("sessions_refused")
        who = identity or Identity(issuer=self.config.identity.issuer_url, subject="(unverified)")
        now = time.time_ns()
        source = client_addr.rsplit(":", 1)[0]
        if not self.refusals.take(source, now):
            self.metrics.inc("refusals_folded")
            self.refusals.fold(source, now, protocol=protocol, target=target,
                               reason=str(attrs.get("reason", "")),
                               subject=identity.subject if identity else None)  # fmt: skip
            return
        try:
            recorder = self.open_recorder(who, target, protocol, client_addr, started_ns or now)
            if first is not None:
                recorder.event(first)
            recorder.event(Event(now, EventType.AUTH, None, {"result": "refused", **attrs}))
            recorder.close("refused")
        except RecordingUnavailable:
            log.error("could not record a refused %s connection from %s", protocol, client_addr)
        log.info("refused %s %s: %s", protocol, client_addr, attrs.get("reason"))

    def _seal_refusal_summaries(self, everything: bool = False) -> None:
        for summary in self.refusals.due(time.time_ns(), everything):
            who = Identity(issuer=self.config.identity.issuer_url, subject="(refusal summary)")
            protocol = summary.by_protocol.most_common(1)[0][0]
            try:
                recorder = self.open_recorder(who, "(refusals)", protocol,
                                              f"{summary.source}:0", summary.first_ns)  # fmt: skip
                recorder.event(
                    Event(time.time_ns(), EventType.REFUSAL_SUMMARY, None, summary.attrs())
                )
                recorder.close(EndReason.REFUSED)
                with contextlib.suppress(SinkError):
                    self.sink.put([self.leaves.refusals(summary.source, summary.count,
                                                        summary.first_ns, summary.last_ns,
                                                        time.time_ns())])  # fmt: skip
            except RecordingUnavailable:
                log.error("could not record a summary of %d refusals from %s", summary.count,
                          summary.source)  # fmt: skip
            log.warning("folded %d refusals from %s into one summary", summary.count,
                        summary.source)  # fmt: skip

    def _sink_metrics(self) -> dict[str, float]:
        stats = getattr(self.sink, "stats", {})
        names = {"records_sent": "sink_records_sent", "bytes_sent": "sink_bytes_sent",
                 "failed_entries": "sink_failures", "retries": "sink_retries",
                 "calls": "sink_calls", "ack_seconds_sum": "seal_to_ack_seconds_sum",
                 "ack_count": "seal_to_ack_seconds_count",
                 "ack_seconds_max": "seal_to_ack_seconds_max"}  # fmt: skip
        out = {metric: float(stats[key]) for key, metric in names.items() if key in stats}
        if hasattr(self.sink, "spool_bytes"):
            out["spool_bytes"] = float(self.sink.spool_bytes)
        return out

    async def _tick_forever(self) -> None:
        # On Fargate (ECS sets this variable) the metrics go to CloudWatch as EMF log lines.
        emf = bool(os.environ.get("ECS_CONTAINER_METADATA_URI_V4"))
        last_emf = time.monotonic()
        while True:
            await asyncio.sleep(TICK_S)
            if emf and time.monotonic() - last_emf >= EMF_INTERVAL_S:
                print(self.metrics.emf(), flush=True)
                last_emf = time.monotonic()
            now = time.time_ns()
            expired_before = time.time() - self.config.identity.leeway_s
            idle_ns = self.config.limits.idle_timeout_s * 1_000_000_000
            for session in list(self.sessions):
                try:
                    session.recorder.tick(now)
                except RecordingUnavailable:
                    session.end(EndReason.RECORDING_FAILED)
                    continue
                if session.end_reason is not None:
                    continue  # ending already: told once
                if self._expired(session, expired_before):
                    session.end(EndReason.TOKEN_EXPIRED)
                silent_ns = now - session.recorder.last_frame_ns
                if session.end_reason is None and idle_ns and silent_ns > idle_ns:
                    session.end(EndReason.IDLE_TIMEOUT)
            for server in self._servers:  # listeners with connection-level timers (SSH)
                if hasattr(server, "tick"):
                    server.tick(time.time())
            self._seal_refusal_summaries()
            if time.monotonic() >= self._heartbeat_due:
                self._heartbeat("running")
            self.sink.tick(time.monotonic_ns())

    def _expired(self, session: LiveSession, before: float) -> bool:
        """`identity.on_token_expiry: end`: the token's `exp` (+ leeway) has passed."""
        if self.config.identity.on_token_expiry != "end" or session.end_reason is not None:
            return False
        # A session several tokens carried (MCP's, across connections) says its latest exp.
        expires_at = getattr(session, "expires_at", None)
        if expires_at is None:
            expires_at = session.recorder.writer.header.identity.expires_at
        return expires_at is not None and expires_at < before

    async def _archive_forever(self) -> None:
        """The embedded pipeline: index each delivered object within about a second."""
        assert self.archive is not None
        last_sweep = time.monotonic()
        while True:
            await asyncio.sleep(ARCHIVE_SCAN_S)
            try:
                for report in await asyncio.to_thread(self.archive.scan):
                    if report.rejected or report.conflicts:
                        log.warning("archive: %s: %s", report.key, "; ".join(report.rejected[:5]))
                await asyncio.to_thread(self.archive.sequence, self.config.log.sequence_s)
                if time.monotonic() - last_sweep > 60:
                    await asyncio.to_thread(self.archive.sweep)
                    last_sweep = time.monotonic()
            except Exception:  # keep serving; the next scan retries what failed
                log.exception("archive scan failed")

    def _listening_on(self, name: str, server: Any) -> None:
        host, port = server.sockets[0].getsockname()[:2]
        self.addresses[name] = f"{host}:{port}"
        self._servers.append(server)

    def track(self, work: Coroutine[Any, Any, None]) -> None:
        """Run one connection's work as a task that shutdown waits for."""
        task = asyncio.create_task(work)
        self._connections.add(task)
        task.add_done_callback(self._connections.discard)

    async def connection(
        self, work: Coroutine[Any, Any, None], writer: asyncio.StreamWriter
    ) -> None:
        """One client connection's work: a bug in it is logged, and its socket always closed."""
        try:
            await work
        except Exception:  # a bug in one session must not take others down
            log.exception("session failed")
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()


def make_sink(config: Config) -> Sink:
    if config.sink.kind == "firehose":
        import boto3
        from botocore.config import Config as BotoConfig

        from gateway_task.recording.firehose import FirehoseSink

        # The sink retries (and spools) itself: botocore's own retries would only hold a sender
        # thread longer before the outage is noticed, and a dead endpoint must fail in seconds.
        boto = BotoConfig(connect_timeout=3, read_timeout=10, retries={"total_max_attempts": 1})
        client = boto3.client("firehose", region_name=config.sink.region, config=boto)
        return FirehoseSink(
            config.sink.stream or "",
            client,
            config.sink.spool_dir or config.data_dir / "spool",
            flush_ms=config.sink.flush_ms,
            spool_max_bytes=config.sink.spool_max_bytes,
            max_memory_bytes=config.sink.max_memory_bytes,
        )
    return LocalFolderSink(config.delivery_dir, config.sink.flush_bytes, config.sink.flush_ms,
                           config.sink.max_memory_bytes)  # fmt: skip


async def serve(config: Config, ready: Callable[[dict[str, str]], None]) -> None:
    """Run until SIGTERM/SIGINT, then shut down cleanly."""
    # With the folder sink the embedded archive runs here too; with Firehose, the Lambda does.
    embedded = config.sink.kind == "local" and config.archive.embedded_pipeline
    archive = LocalArchive(config) if embedded else None
    gateway = Gateway(config, archive=archive)
    await gateway.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    ready(gateway.addresses)
    await stop.wait()
    await gateway.stop()

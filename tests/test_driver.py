"""The relay driver over real loopback sockets, with a handler that knows no protocol: order
under acked waits, heavy work on a thread, TLS record sizes, farewells, fail-closed, EOFs."""

from __future__ import annotations

import asyncio
import socket
import ssl
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from nacl.public import PrivateKey
from nacl.signing import SigningKey

from gateway_task.recording import Recorder
from gateway_task.recording.local import LocalFolderSink
from gateway_task.server.driver import TLS_RECORD_MAX, Handover, Pipe
from gateway_task.tls import ensure_self_signed
from tapegate.proxy.relay import Command, End, Record, Side, ToClient, ToServer
from tapegate.tape import Direction, Event, TapeWriter
from tapegate.vocab import EndReason
from tests.sinks import GatedWrites
from tests.tapes import make_header

C2S, S2C = Direction.CLIENT_TO_SERVER, Direction.SERVER_TO_CLIENT


class Spy(Recorder):
    """A recorder that also keeps each frame, to check what the driver recorded."""

    frames: list[tuple[Direction, bytes]]
    writer_closed = False

    def frame(self, direction: Direction, data: bytes, ts: int) -> None:
        super().frame(direction, data, ts)
        self.frames.append((direction, bytes(data)))


def _recorder(sink: Any, acked: bool = False) -> Spy:
    writer = TapeWriter(make_header(), SigningKey.generate(), [PrivateKey.generate().public_key])
    recorder = Spy(writer, sink, acked=acked, commit_timeout_s=30)
    recorder.frames = []
    return recorder


def _server_tls(tmp_path: Path) -> ssl.SSLContext:
    cert, key = ensure_self_signed(tmp_path / "tls")
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)
    return ctx


class Echo:
    """Passes bytes both ways; `HEAVY` in client bytes takes a while on a thread."""

    def __init__(self) -> None:
        self.inside = 0  # calls in progress: never more than one
        self.overlapped = False
        self.release = threading.Event()
        self.release.set()

    def _enter(self) -> None:
        self.inside += 1
        self.overlapped |= self.inside > 1

    records_arrivals = True  # the tape is the client's wire

    def heavy(self, data: bytes) -> bool:
        return b"HEAVY" in data

    def client_data(self, data: bytes, ts: int) -> list[Command]:
        self._enter()
        try:
            if b"HEAVY" in data:
                self.release.wait(10)
            return [Record([Event(ts, "said", C2S, {"n": len(data)})]), ToServer(data)]
        finally:
            self.inside -= 1

    def server_data(self, data: bytes, ts: int) -> list[Command]:
        self._enter()
        try:
            return [ToClient(data)]
        finally:
            self.inside -= 1

    def closed(self, side: Side) -> list[Command]:
        return [End(EndReason.CLIENT_CLOSED if side is Side.CLIENT else EndReason.UPSTREAM_CLOSED)]

    def farewell(self, reason: EndReason, why: str) -> bytes | None:
        return f"BYE {reason} {why}".encode()


class Upstream:
    """A TCP server that keeps what it received and answers `PING` with `PONG`."""

    def __init__(self) -> None:
        self.received = bytearray()
        self.writer: asyncio.StreamWriter | None = None

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.writer = writer
        while data := await reader.read(65536):
            self.received += data
            if b"PING" in data:
                writer.write(b"PONG")


async def _session(
    tmp_path: Path,
    scenario: Callable[[Any, Any, Pipe, Upstream], Awaitable[None]],
    *,
    sink: Any = None,
    acked: bool = False,
    handler: Any = None,
    tls: bool = False,
) -> Spy:
    """One client ↔ pipe ↔ upstream session on loopback; runs `scenario` against it."""
    loop = asyncio.get_running_loop()
    sink = sink or LocalFolderSink(tmp_path / "out", flush_ms=10)
    sink.bind(loop)
    recorder = _recorder(sink, acked)
    upstream = Upstream()
    up_server = await asyncio.start_server(upstream.serve, "127.0.0.1", 0)
    up_port = up_server.sockets[0].getsockname()[1]
    pipes: list[Pipe] = []
    ready = asyncio.Event()

    async def accept(reader: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", up_port)
        pipe = Pipe(handler or Echo(), recorder, Handover.of(reader, w),
                    Handover.of(up_reader, up_writer), client_tls=tls,
                    failure=lambda: sink.failure)  # fmt: skip
        pipes.append(pipe)
        pipe.start()
        ready.set()
        await pipe.done
        # The login's stream writer learns of the close too (the gateway awaits it).
        w.close()
        await asyncio.wait_for(w.wait_closed(), 5)
        recorder.writer_closed = True

    server_ctx = _server_tls(tmp_path) if tls else None
    gate = await asyncio.start_server(accept, "127.0.0.1", 0, ssl=server_ctx)
    port = gate.sockets[0].getsockname()[1]
    client_ctx = None
    if tls:
        client_ctx = ssl.create_default_context()
        client_ctx.check_hostname, client_ctx.verify_mode = False, ssl.CERT_NONE
    reader, w = await asyncio.open_connection("127.0.0.1", port, ssl=client_ctx)
    await asyncio.wait_for(ready.wait(), 10)
    try:
        await asyncio.wait_for(scenario(reader, w, pipes[0], upstream), 30)
    finally:
        w.close()
        gate.close()
        up_server.close()
        await asyncio.to_thread(sink.close)
    return recorder


async def _until(check: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.01)


def test_bytes_pass_both_ways_and_are_recorded(tmp_path: Path) -> None:
    async def scenario(reader: Any, writer: Any, pipe: Pipe, upstream: Upstream) -> None:
        writer.write(b"PING")
        assert await reader.readexactly(4) == b"PONG"
        writer.close()
        assert await asyncio.wait_for(pipe.done, 10) == EndReason.CLIENT_CLOSED
        await _until(lambda: pipe.recorder.writer_closed)  # type: ignore[attr-defined]

    recorder = asyncio.run(_session(tmp_path, scenario))
    frames = recorder.frames
    assert (C2S, b"PING") in frames and (S2C, b"PONG") in frames


def test_acked_holds_every_byte_until_the_sink_has_it_and_keeps_the_order(tmp_path: Path) -> None:
    sink = GatedWrites(tmp_path / "out")

    async def scenario(reader: Any, writer: Any, pipe: Pipe, upstream: Upstream) -> None:
        for i in range(20):
            writer.write(f"<{i}>".encode())
            await writer.drain()
            await asyncio.sleep(0.005)
        await asyncio.to_thread(sink.waiting.wait, 10)
        await asyncio.sleep(0.2)
        assert upstream.received == b"", "nothing reaches the target before the sink holds it"
        sink.gate.set()
        expected = b"".join(f"<{i}>".encode() for i in range(20))
        await _until(lambda: bytes(upstream.received) == expected)

    asyncio.run(_session(tmp_path, scenario, sink=sink, acked=True))


def test_heavy_work_runs_on_a_thread_while_the_loop_serves_others(tmp_path: Path) -> None:
    handler = Echo()
    handler.release.clear()

    async def scenario(reader: Any, writer: Any, pipe: Pipe, upstream: Upstream) -> None:
        writer.write(b"HEAVY")
        await writer.drain()
        await _until(lambda: handler.inside == 1)
        ticks = 0
        for _ in range(20):  # the loop is free meanwhile
            await asyncio.sleep(0.005)
            ticks += 1
        assert ticks == 20
        assert upstream.writer is not None
        upstream.writer.write(b"late news")  # arrives while the handler is on the thread
        await asyncio.sleep(0.1)
        handler.release.set()
        assert await reader.readexactly(9) == b"late news"
        await _until(lambda: bytes(upstream.received) == b"HEAVY")
        assert not handler.overlapped, "the handler is never fed while it works on a thread"

    asyncio.run(_session(tmp_path, scenario, handler=handler))


def test_a_recording_failure_ends_with_the_handlers_words_and_forwards_nothing(
    tmp_path: Path,
) -> None:
    sink = LocalFolderSink(tmp_path / "out", flush_ms=10)

    async def scenario(reader: Any, writer: Any, pipe: Pipe, upstream: Upstream) -> None:
        sink._set_failure("disk on fire")  # as its worker does when a write fails
        writer.write(b"DROP TABLE")
        await writer.drain()
        assert await asyncio.wait_for(pipe.done, 10) == EndReason.RECORDING_FAILED
        said = await asyncio.wait_for(reader.read(), 10)
        assert said.startswith(b"BYE recording_failed") and b"disk on fire" in said
        await asyncio.sleep(0.1)
        assert upstream.received == b""

    asyncio.run(_session(tmp_path, scenario, sink=sink))


def test_end_from_outside_says_farewell_then_closes(tmp_path: Path) -> None:
    async def scenario(reader: Any, writer: Any, pipe: Pipe, upstream: Upstream) -> None:
        writer.write(b"PING")
        assert await reader.readexactly(4) == b"PONG"
        pipe.end(EndReason.IDLE_TIMEOUT)
        assert (await asyncio.wait_for(reader.read(), 10)).startswith(b"BYE idle_timeout")
        assert pipe.done.result() == EndReason.IDLE_TIMEOUT

    recorder = asyncio.run(_session(tmp_path, scenario))
    assert any(data.startswith(b"BYE") for _, data in recorder.frames)


def test_a_reader_that_stops_reading_pauses_the_target(tmp_path: Path) -> None:
    async def scenario(reader: Any, writer: Any, pipe: Pipe, upstream: Upstream) -> None:
        writer.write(b"hello")
        await _until(lambda: upstream.writer is not None)
        assert upstream.writer is not None
        transport = upstream.writer.transport
        blob = b"z" * (1 << 20)
        for _ in range(64):  # 64 MiB the client never reads
            upstream.writer.write(blob)
            if transport.get_write_buffer_size() > 16 << 20:
                break
            await asyncio.sleep(0.01)
        # The gateway stopped reading from the target: its bytes pile up on the target's side.
        assert transport.get_write_buffer_size() > 16 << 20

    asyncio.run(_session(tmp_path, scenario))


def test_tls_records_to_the_client_are_at_most_8_kib(tmp_path: Path) -> None:
    """libpq's async API stalls on records above ~8 KiB: read the raw records off the socket."""

    sizes: list[int] = []

    async def run() -> None:
        loop = asyncio.get_running_loop()
        sink = LocalFolderSink(tmp_path / "out", flush_ms=10)
        sink.bind(loop)
        recorder = _recorder(sink)
        upstream = Upstream()
        up_server = await asyncio.start_server(upstream.serve, "127.0.0.1", 0)
        up_port = up_server.sockets[0].getsockname()[1]

        async def accept(reader: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", up_port)
            pipe = Pipe(Echo(), recorder, Handover.of(reader, w),
                        Handover.of(up_reader, up_writer), client_tls=True,
                        failure=lambda: None)  # fmt: skip
            pipe.start()
            await pipe.done

        gate = await asyncio.start_server(accept, "127.0.0.1", 0, ssl=_server_tls(tmp_path))
        port = gate.sockets[0].getsockname()[1]
        payload = await asyncio.to_thread(_raw_tls_fetch, port, upstream, loop, sizes)
        assert payload == b"y" * (256 * 1024)
        gate.close()
        up_server.close()
        await asyncio.to_thread(sink.close)

    asyncio.run(run())
    assert len(sizes) > 30, "the payload came in many records"
    # An application-data record carries at most 8 KiB plus the AEAD tag and padding.
    assert max(sizes) <= TLS_RECORD_MAX + 256, max(sizes)


def _raw_tls_fetch(
    port: int, upstream: Upstream, loop: asyncio.AbstractEventLoop, sizes: list[int]
) -> bytes:
    """A TLS client over memory BIOs, so the record layer is visible: the upstream sends
    256 KiB in one write; returns the plaintext and appends each record's length."""
    ctx = ssl.create_default_context()
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = ctx.wrap_bio(incoming, outgoing)
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    raw = bytearray()
    handshaken = asked = False
    plain = bytearray()
    try:
        while len(plain) < 256 * 1024:
            if not handshaken:
                try:
                    tls.do_handshake()
                    handshaken = True
                    tls.write(b"hello")
                except ssl.SSLWantReadError:
                    pass
            if outgoing.pending:
                sock.sendall(outgoing.read())
            if handshaken and not asked:
                deadline = time.monotonic() + 10
                while upstream.writer is None or not upstream.received:  # "hello" went through
                    assert time.monotonic() < deadline, "the upstream never heard from us"
                    time.sleep(0.01)
                loop.call_soon_threadsafe(upstream.writer.write, b"y" * (256 * 1024))
                asked = True
            data = sock.recv(65536)
            assert data, "the gateway closed the connection"
            raw += data
            while len(raw) >= 5:  # whole records: type, version, length
                length = int.from_bytes(raw[3:5], "big")
                if len(raw) < 5 + length:
                    break
                if handshaken and raw[0] == 23:  # application data
                    sizes.append(length)
                incoming.write(bytes(raw[: 5 + length]))
                del raw[: 5 + length]
            if handshaken:
                try:
                    while True:
                        plain += tls.read(65536)
                except (ssl.SSLWantReadError, ssl.SSLZeroReturnError):
                    pass
    finally:
        sock.close()
    return bytes(plain)


def test_end_from_outside_still_closes_when_the_archive_fails_meanwhile(tmp_path: Path) -> None:
    sink = LocalFolderSink(tmp_path / "out", flush_ms=10)

    async def scenario(reader: Any, writer: Any, pipe: Pipe, upstream: Upstream) -> None:
        writer.write(b"PING")
        assert await reader.readexactly(4) == b"PONG"
        sink._set_failure("disk on fire")  # the farewell can no longer be recorded
        pipe.end(EndReason.GATEWAY_SHUTDOWN)
        assert pipe.done.result() == EndReason.GATEWAY_SHUTDOWN
        assert (await asyncio.wait_for(reader.read(), 10)).startswith(b"BYE gateway_shutdown")

    asyncio.run(_session(tmp_path, scenario, sink=sink))

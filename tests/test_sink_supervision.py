"""Sinks that cannot die silently or eat memory, and commits that cover what a session shipped.

Unit level: the real sinks with their threads, a scripted Firehose client, a real event loop.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from nacl.public import PrivateKey
from nacl.signing import SigningKey

from gateway_task.recording import Recorder, RecordingUnavailable, batching
from gateway_task.recording.batching import Batch
from gateway_task.recording.firehose import FirehoseSink
from gateway_task.recording.local import LocalFolderSink
from gateway_task.recording.sink import SinkError
from tapegate.tape import Direction, TapeWriter, split_records
from tests.sinks import BreakingSink, GatedWrites
from tests.tapes import make_header
from tests.test_firehose_sink import FakeFirehose

C2S = Direction.CLIENT_TO_SERVER


def _delivered(root: Path) -> bytes:
    """Every delivery object's bytes, oldest first (records are concatenated, as Firehose's)."""
    return b"".join(p.read_bytes() for p in sorted(root.rglob("*.bin")))


def _until(check: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def _records(count: int, size: int) -> list[bytes]:
    """Real sealed records (the spool re-reads what it wrote), each about `size` bytes."""
    writer = TapeWriter(make_header(), SigningKey.generate(), [PrivateKey.generate().public_key],
                        max_chunk_bytes=max(size, 1024))  # fmt: skip
    out: list[bytes] = []
    while len(out) < count:
        out += writer.add_frame(time.time_ns(), C2S, bytes([len(out) % 256]) * size)
    return out[:count]


def test_a_worker_that_raises_is_restarted_with_its_batch(tmp_path: Path) -> None:
    sink = BreakingSink(tmp_path / "out", breaks=1)
    ack = sink.put([b"first", b"second"], urgent=True)
    assert ack is not None
    ack.result(timeout=10)
    sink.put([b"third"])
    assert sink.flush(timeout=10)
    assert sink.failure is None
    assert sink.stats["worker_restarts"] == 1
    assert _delivered(tmp_path / "out") == b"firstsecondthird"
    assert sink.close() == 0


def test_a_worker_that_keeps_raising_fails_the_sink_for_good(tmp_path: Path) -> None:
    sink = BreakingSink(tmp_path / "out", breaks=10**6)
    sink.put([b"kept"], urgent=True)
    assert _until(lambda: sink.failure is not None), "the sink must not stay healthy"
    assert "keeps failing" in (sink.failure or "")
    with pytest.raises(SinkError, match="keeps failing"):
        sink.put([b"refused"])
    assert not _delivered(tmp_path / "out")
    assert sink.close() == len(b"kept") + len(b"refused"), "what was kept is reported lost"


def test_a_cancelled_ack_is_never_completed_and_the_worker_lives_on(tmp_path: Path) -> None:
    sink = GatedWrites(tmp_path / "out")
    ack = sink.put([b"waited-for"], urgent=True)
    assert ack is not None
    assert ack.cancel(), "a commit that gave up cancels its ack"
    sink.gate.set()
    assert sink.flush(timeout=10)
    later = sink.put([b"later"], urgent=True)
    assert later is not None
    later.result(timeout=10)
    assert sink.failure is None and sink.stats["worker_restarts"] == 0
    assert _delivered(tmp_path / "out") == b"waited-forlater"
    sink.close()


class DeniedFirehose(FakeFirehose):
    """Answers every call as Firehose does for a role without permission."""

    def put_record_batch(self, DeliveryStreamName: str, Records: list[dict[str, Any]]) -> dict:
        with self.lock:
            self.calls.append(len(Records))
        error = Exception("An error occurred (AccessDeniedException) when calling PutRecordBatch")
        error.response = {  # type: ignore[attr-defined]  # botocore's ClientError shape
            "Error": {"Code": "AccessDeniedException", "Message": "not authorized"},
            "ResponseMetadata": {"HTTPStatusCode": 400},
        }
        raise error


def test_a_permanent_firehose_error_fails_fast_and_keeps_the_records(tmp_path: Path) -> None:
    client = DeniedFirehose()
    sink = FirehoseSink("tapes", client, tmp_path / "spool", flush_ms=10, attempts=5,
                        base_delay_s=0.001, max_delay_s=0.01)  # fmt: skip
    records = _records(2, 1000)
    sink.put(records)
    sink.tick(time.monotonic_ns() + 10**9)
    assert _until(lambda: sink.failure is not None)
    assert "AccessDeniedException" in (sink.failure or "") and "not retried" in (sink.failure or "")
    assert client.calls[0] == 2 and sink.stats["retries"] == 0, "a permanent error is not retried"
    size = sum(len(r) for r in records)
    assert _until(lambda: sink.spool_bytes == size), "the records are kept in the spool"
    with pytest.raises(SinkError, match="AccessDenied"):
        sink.put(_records(1, 1024))
    sink.close()


def test_a_permanent_per_entry_code_fails_fast(tmp_path: Path) -> None:
    class KmsFirehose(FakeFirehose):
        def put_record_batch(self, DeliveryStreamName: str, Records: list[dict[str, Any]]) -> dict:
            self.calls.append(len(Records))
            return {"FailedPutCount": len(Records), "RequestResponses": [
                {"ErrorCode": "KMS.DisabledException", "ErrorMessage": "key disabled"}
                for _ in Records]}  # fmt: skip

    client = KmsFirehose()
    sink = FirehoseSink("tapes", client, tmp_path / "spool", flush_ms=10, base_delay_s=0.001,
                        max_delay_s=0.01)  # fmt: skip
    sink.put([b"x"], urgent=True)
    assert _until(lambda: sink.failure is not None)
    assert "KMS.DisabledException" in (sink.failure or "")
    assert client.calls[0] == 1 and sink.stats["retries"] == 0
    sink.close()


def test_an_outage_spools_at_once_instead_of_holding_batches_in_memory(tmp_path: Path) -> None:
    client = FakeFirehose()
    client.down = True
    sink = FirehoseSink("tapes", client, tmp_path / "spool", flush_ms=10, attempts=3,
                        base_delay_s=0.001, max_delay_s=0.01)  # fmt: skip
    a, b = _records(2, 1024)
    first = sink.put([a], urgent=True)
    assert first is not None
    first.result(timeout=10)  # held: in the spool
    calls = len(client.calls)
    later = sink.put([b], urgent=True)
    assert later is not None
    later.result(timeout=10)
    assert sink.stats["spooled_records"] == 2
    # The degraded sink went straight to the spool (the drain's probes may add a call or two,
    # but not another batch's worth of retries per batch).
    assert sink.memory_bytes == 0
    assert calls >= 1
    client.down = False
    assert _until(lambda: sink.spool_bytes == 0), "the spool drains once Firehose is back"
    sink.close()
    assert sorted(client.accepted) == sorted([a, b])


class SlowFirehose(FakeFirehose):
    """Takes records only when the test opens the gate."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = threading.Event()

    def put_record_batch(self, DeliveryStreamName: str, Records: list[dict[str, Any]]) -> dict:
        self.gate.wait(30)
        return super().put_record_batch(DeliveryStreamName, Records)


def test_memory_over_the_cap_goes_to_the_spool_first(tmp_path: Path) -> None:
    client = SlowFirehose()
    cap = 1 << 20
    sink = FirehoseSink("tapes", client, tmp_path / "spool", flush_ms=10,
                        max_memory_bytes=cap)  # fmt: skip
    records = _records(40, 200_000)  # 8 MB, far over the cap
    for record in records:
        sink.put([record], urgent=True)
    # The senders hold what they are sending; everything else went to disk.
    assert _until(lambda: sink.memory_bytes <= cap + 4 * 200_000), sink.memory_bytes
    assert sink.stats["spooled_records"] > 0 and sink.spool_bytes > 0
    client.gate.set()
    assert _until(lambda: sink.spool_bytes == 0)
    sink.close()
    assert sorted(client.accepted) == sorted(records)


def _recorder(sink: Any, *, acked: bool, max_chunk_bytes: int = 4096) -> Recorder:
    writer = TapeWriter(make_header(), SigningKey.generate(), [PrivateKey.generate().public_key],
                        max_chunk_bytes=max_chunk_bytes)  # fmt: skip
    return Recorder(writer, sink, acked=acked, commit_timeout_s=30)


def test_acked_commit_covers_chunks_that_filled_by_size(tmp_path: Path) -> None:
    """COPY data makes no event: the chunk it fills is shipped by size, not by the commit."""

    async def scenario() -> None:
        sink = GatedWrites(tmp_path / "out")
        sink.bind(asyncio.get_running_loop())
        recorder = _recorder(sink, acked=True)
        recorder.frame(C2S, b"d" * 10_000, time.time_ns())  # fills (and seals) chunks
        # Seal the rest too, as a chunk filling exactly by size would: the commit then has
        # nothing left to seal, and must still wait for what was shipped.
        recorder._ship(recorder.writer.flush(time.time_ns()))
        assert recorder.writer.flush(time.time_ns()) == []
        commit = asyncio.ensure_future(recorder.commit())
        for _ in range(20):
            await asyncio.sleep(0.01)
        assert not commit.done(), "the commit must wait for the chunk sealed by size"
        sink.gate.set()
        await asyncio.wait_for(commit, 10)
        assert _delivered(tmp_path / "out"), "the chunk is on disk once the commit returns"
        await asyncio.to_thread(sink.close)

    asyncio.run(scenario())


def test_a_waiting_commit_wakes_on_a_sink_failure(tmp_path: Path) -> None:
    async def scenario() -> None:
        blocked = tmp_path / "out"
        blocked.write_text("not a folder")  # every write fails
        sink = LocalFolderSink(blocked, flush_ms=10)
        sink.bind(asyncio.get_running_loop())
        recorder = _recorder(sink, acked=True)
        recorder.frame(C2S, b"q" * 100, time.time_ns())
        with pytest.raises(RecordingUnavailable, match="cannot write to the archive folder"):
            await asyncio.wait_for(recorder.commit(), 10)
        blocked.unlink()
        # The writer retries with backoff: once it succeeds the sink is healthy again.
        assert await asyncio.to_thread(_until, lambda: sink.failure is None)
        await asyncio.to_thread(sink.close)
        records, errors = split_records(_delivered(blocked))
        assert records and not errors, "what the commit gave up on is still written later"

    asyncio.run(scenario())


def test_backpressure_waits_on_the_loop_without_blocking_it(tmp_path: Path) -> None:
    async def scenario() -> None:
        sink = GatedWrites(tmp_path / "out", max_memory_bytes=1 << 20)
        sink.bind(asyncio.get_running_loop())
        recorder = _recorder(sink, acked=False, max_chunk_bytes=256 * 1024)
        for _ in range(8):  # 2 MB, over the 1 MB cap
            recorder.frame(C2S, b"x" * 256 * 1024, time.time_ns())
        sink.hand_off_now()
        assert sink.over_memory
        waiting = asyncio.ensure_future(recorder.forwarding())
        ticks = 0
        for _ in range(50):  # the loop keeps running other work meanwhile
            await asyncio.sleep(0.005)
            ticks += 1
        assert ticks == 50 and not waiting.done(), "the session waits, the loop does not"
        sink.gate.set()
        await asyncio.wait_for(waiting, 10)
        assert not sink.over_memory
        await asyncio.to_thread(sink.close)

    asyncio.run(scenario())


class OneSlowCall(FakeFirehose):
    """Holds the call that carries `slow` until the gate opens; others go through at once."""

    def __init__(self, slow: bytes) -> None:
        super().__init__()
        self.slow = slow
        self.gate = threading.Event()

    def put_record_batch(self, DeliveryStreamName: str, Records: list[dict[str, Any]]) -> dict:
        if any(r["Data"] == self.slow for r in Records):
            self.gate.wait(30)
        return super().put_record_batch(DeliveryStreamName, Records)


def test_an_ack_waits_for_every_batch_its_records_landed_in(tmp_path: Path) -> None:
    """One put that fills a batch and starts the next: its ack means both are held."""
    first, second = _records(2, 700_000)  # together over the 1 MiB a call carries
    client = OneSlowCall(slow=first)
    sink = FirehoseSink("tapes", client, tmp_path / "spool", flush_ms=10)
    ack = sink.put([first, second], ack=True, urgent=True)
    assert ack is not None
    assert _until(lambda: second in client.accepted), "the second batch went on its own"
    time.sleep(0.2)
    assert not ack.done(), "acked before the batch with the first record was held"
    client.gate.set()
    ack.result(timeout=10)
    sink.close()
    assert sorted(client.accepted) == sorted([first, second])


class FlakyWrites(LocalFolderSink):
    """A folder sink whose first `errors` writes fail as a disk would (EIO)."""

    def __init__(self, root: Path, errors: int) -> None:
        super().__init__(root, flush_ms=10)
        self.errors = errors

    def _write(self, batch: Batch) -> str | None:
        if self.errors > 0:
            self.errors -= 1
            return "cannot write to the archive folder: Input/output error"
        return super()._write(batch)


def test_a_transient_error_at_shutdown_loses_nothing(tmp_path: Path) -> None:
    sink = FlakyWrites(tmp_path / "out", errors=2)
    sink.put([b"final chunk"])
    assert sink.close() == 0, "close keeps trying until its deadline"
    assert _delivered(tmp_path / "out") == b"final chunk"


def test_a_hung_worker_turns_the_sink_failing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A write that never returns (a blocked fsync) is a failure, found by the watchdog."""
    monkeypatch.setattr(batching, "STALL_S", 0.2)
    sink = GatedWrites(tmp_path / "out")  # every write waits at the closed gate
    sink.put([b"stuck"], urgent=True)
    assert _until(lambda: sink.waiting.is_set())
    time.sleep(0.3)
    assert sink.failure is None, "found by the watchdog's tick, not on the hot path"
    sink.tick()
    assert "has not delivered a batch" in (sink.failure or "")
    with pytest.raises(SinkError, match="has not delivered"):
        sink.put([b"refused"])
    sink.gate.set()
    assert _until(lambda: (sink.tick(), sink.failure)[1] is None), "healthy once it delivers"
    sink.close()
    assert _delivered(tmp_path / "out") == b"stuckrefused"

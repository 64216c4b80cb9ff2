"""The Firehose sink against an injected client: partial failures, throttling, outages, spool."""

from __future__ import annotations

import contextlib
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from gateway_task.recording.firehose import MAX_BATCH_BYTES, MAX_BATCH_RECORDS, FirehoseSink
from gateway_task.recording.sink import SinkError
from tapegate.tape import split_records
from tests.tapes import record_session


class FakeFirehose:
    """Stands in for boto3's client; scripted failures, every accepted record kept."""

    def __init__(self) -> None:
        self.accepted: list[bytes] = []
        self.calls: list[int] = []
        self.fail_entries: set[int] = set()  # indexes (in the next call) to fail once
        self.down = False
        self.lock = threading.Lock()

    def put_record_batch(self, DeliveryStreamName: str, Records: list[dict[str, Any]]) -> dict:
        with self.lock:
            assert len(Records) <= MAX_BATCH_RECORDS
            assert sum(len(r["Data"]) for r in Records) <= MAX_BATCH_BYTES
            self.calls.append(len(Records))
            if self.down:
                raise ConnectionError("endpoint unreachable")
            responses, failed = [], 0
            for i, rec in enumerate(Records):
                if i in self.fail_entries:
                    responses.append({"ErrorCode": "ServiceUnavailableException",
                                      "ErrorMessage": "slow down"})  # fmt: skip
                    failed += 1
                else:
                    self.accepted.append(rec["Data"])
                    responses.append({"RecordId": str(len(self.accepted))})
            self.fail_entries = set()
            return {"FailedPutCount": failed, "RequestResponses": responses}


def _sink(tmp_path: Path, client: FakeFirehose, **kw: Any) -> FirehoseSink:
    return FirehoseSink("tapes", client, tmp_path / "spool", flush_ms=10, base_delay_s=0.001,
                        max_delay_s=0.01, **kw)  # fmt: skip


def test_batches_respect_firehose_limits(tmp_path: Path) -> None:
    client = FakeFirehose()
    sink = _sink(tmp_path, client)
    records = [bytes([i % 256]) * 20_000 for i in range(700)]  # 14 MB in 700 records
    sink.put(records)
    sink.close()
    # Batches go out in parallel: Firehose keeps no order anyway, the archive sorts by seq.
    assert sorted(client.accepted) == sorted(records)
    assert len(client.calls) >= 4 and max(client.calls) <= MAX_BATCH_RECORDS


def test_partial_failure_resends_only_the_failed_entries(tmp_path: Path) -> None:
    client = FakeFirehose()
    client.fail_entries = {1, 3}
    sink = _sink(tmp_path, client)
    records = [f"r{i}".encode() * 10 for i in range(5)]
    sink.put(records)
    sink.close()
    assert client.calls == [5, 2]
    assert sorted(client.accepted) == sorted(records) and len(client.accepted) == 5
    assert sink.stats["failed_entries"] == 2 and sink.stats["retries"] == 1


def test_outage_spools_then_drains_oldest_first_after_restart(tmp_path: Path) -> None:
    client = FakeFirehose()
    client.down = True
    s = record_session(exchanges=5)
    sink = _sink(tmp_path, client, attempts=2)
    sink.put(s.records[:2])
    sink.flush()
    sink.put(s.records[2:])
    sink.close()
    spooled = sorted((tmp_path / "spool").glob("*.bin"))
    assert len(spooled) == 2 and client.accepted == []
    assert [r for p in spooled for r in split_records(p.read_bytes())[0]] == s.records
    # The gateway restarts with the endpoint back: the spool drains, oldest first.
    client.down = False
    restarted = _sink(tmp_path, client)
    restarted.flush()
    deadline = time.monotonic() + 5
    while list((tmp_path / "spool").glob("*.bin")) and time.monotonic() < deadline:
        time.sleep(0.02)
    restarted.close()
    assert client.accepted == s.records
    assert not list((tmp_path / "spool").glob("*.bin"))


def test_full_spool_fails_closed_and_loses_nothing(tmp_path: Path) -> None:
    client = FakeFirehose()
    client.down = True
    sink = _sink(tmp_path, client, attempts=1, spool_max_bytes=2048)
    tape = record_session(exchanges=4).records  # records of about 1.1 to 1.6 KB
    records, late = tape[:3], tape[3]
    for r in records:
        with contextlib.suppress(SinkError):
            sink.put([r])
        sink.flush(timeout=1)
    deadline = time.monotonic() + 5
    while sink.failure is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert sink.failure is not None and "spool is full" in sink.failure
    with pytest.raises(SinkError, match="spool is full"):
        sink.put([late])
    client.down = False
    deadline = time.monotonic() + 5
    while sink.failure is not None and time.monotonic() < deadline:
        time.sleep(0.02)
    sink.close()
    assert sorted(client.accepted) == sorted([*records, late])


def test_urgent_put_acknowledges_after_firehose_accepts(tmp_path: Path) -> None:
    client = FakeFirehose()
    sink = _sink(tmp_path, client)
    ack = sink.put([b"now"], urgent=True)
    assert ack is not None
    ack.result(timeout=5)
    assert client.accepted == [b"now"]
    sink.close()


def test_acks_wait_while_nothing_holds_the_records(tmp_path: Path) -> None:
    """With Firehose down and the spool full, an urgent put is not acknowledged until sent."""
    client = FakeFirehose()
    client.down = True
    sink = _sink(tmp_path, client, attempts=1, spool_max_bytes=1024)
    record = record_session(exchanges=1).records[0]  # larger than the whole spool
    ack = sink.put([record], urgent=True)
    assert ack is not None
    time.sleep(0.3)
    assert not ack.done(), "neither Firehose nor the spool holds the record yet"
    client.down = False
    ack.result(timeout=5)
    assert client.accepted == [record]
    sink.close()

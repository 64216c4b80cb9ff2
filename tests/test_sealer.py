"""The sealing thread: order kept, the loop throttled by the backlog, a failing op contained."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from gateway_task.sealer import Sealer


def test_operations_run_in_order_on_one_other_thread() -> None:
    sealer = Sealer()
    seen: list[tuple[int, str]] = []

    async def record() -> None:
        for i in range(1000):
            sealer.run(lambda i=i: seen.append((i, threading.current_thread().name)))
            if i % 7 == 0:
                await asyncio.sleep(0)  # hand-overs happen between loop iterations
        await sealer.drain()

    asyncio.run(record())
    sealer.close()
    assert [i for i, _ in seen] == list(range(1000))
    names = {name for _, name in seen}
    assert len(names) == 1 and names != {threading.current_thread().name}


def test_a_backlog_over_the_cap_makes_the_loop_wait() -> None:
    sealer = Sealer(max_backlog_bytes=1000)
    gate = threading.Event()
    done: list[int] = []

    def slow(i: int) -> None:
        gate.wait(5)
        done.append(i)

    async def record() -> float:
        sealer.run(lambda: slow(0), 600)
        sealer.hand_over()
        threading.Timer(0.3, gate.set).start()
        started = time.monotonic()
        sealer.run(lambda: slow(1), 600)  # over the cap: waits for the sealing thread
        waited = time.monotonic() - started
        assert done == [0, 1]
        return waited

    waited = asyncio.run(record())
    sealer.close()
    assert waited >= 0.2


def test_a_failing_operation_is_logged_and_the_rest_still_run(
    caplog: pytest.LogCaptureFixture,
) -> None:
    sealer = Sealer()
    done: list[str] = []

    def broken() -> None:
        raise ValueError("boom")

    async def record() -> None:
        sealer.run(broken)
        sealer.run(lambda: done.append("after"))
        await sealer.drain()

    asyncio.run(record())
    sealer.close()
    assert done == ["after"]
    assert "sealing operation failed" in caplog.text

"""The sealer: order kept between loop and thread, the loop throttled, a failing op contained."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from gateway_task.sealer import Sealer


def test_order_is_kept_across_the_loop_and_the_thread() -> None:
    sealer = Sealer()
    seen: list[tuple[int, str]] = []
    loop_thread = threading.current_thread().name

    async def record() -> None:
        for i in range(300):
            seals = i % 10 == 5  # a chunk sealed now and then, frames added in between
            sealer.run(lambda i=i: seen.append((i, threading.current_thread().name)), 100, seals)
            if i % 10 == 9:
                await asyncio.sleep(0.05)  # long enough for a hand-over and the thread's run
        await sealer.drain()

    asyncio.run(record())
    sealer.close()
    assert [i for i, _ in seen] == list(range(300))
    on_thread = {i for i, name in seen if name != loop_thread}
    assert on_thread == {i for i in range(300) if i % 10 >= 5}, "a seal and what follows it"


def test_a_backlog_over_the_cap_makes_the_loop_wait() -> None:
    sealer = Sealer(max_backlog_bytes=1500)
    gate = threading.Event()
    done: list[int] = []

    def slow(i: int) -> None:
        gate.wait(5)
        done.append(i)

    async def record() -> float:
        for _ in range(100):  # these run inline and must not count against the backlog
            sealer.run(lambda: None, 500)
        sealer.run(lambda: slow(0), 1000, seals=True)
        sealer.hand_over()
        threading.Timer(0.3, gate.set).start()
        started = time.monotonic()
        sealer.run(lambda: slow(1), 1000, seals=True)  # over the cap: waits for the first batch
        waited = time.monotonic() - started
        assert done[:1] == [0]
        await sealer.drain()
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
        sealer.run(broken, seals=True)
        sealer.run(broken)
        sealer.run(lambda: done.append("after"))
        await sealer.drain()

    asyncio.run(record())
    sealer.close()
    assert done == ["after"]
    assert "sealing operation failed" in caplog.text

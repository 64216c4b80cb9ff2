"""Credential lookups: off the loop, cached with a TTL, shared while in flight, errors not kept."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest

from gateway_task.secrets import CredentialError, Credentials


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_lookups_run_off_the_loop_are_cached_and_shared() -> None:
    clock = Clock()
    store = Credentials(ttl_s=300, clock=clock)
    threads: list[int] = []
    gate = threading.Event()

    def fetch() -> str:
        threads.append(threading.get_ident())
        gate.wait(5)
        return f"value-{len(threads)}"

    async def scenario() -> list[Any]:
        loop_thread = threading.get_ident()
        first = [asyncio.ensure_future(store._get(("password", "db"), fetch)) for _ in range(5)]
        await asyncio.sleep(0.05)
        assert not any(f.done() for f in first), "the loop is free while the fetch runs"
        gate.set()
        values = await asyncio.gather(*first)
        assert threads and loop_thread not in threads
        cached = await store._get(("password", "db"), fetch)
        clock.now = 301  # past the TTL: fetched again (a rotated secret is picked up)
        fresh = await store._get(("password", "db"), fetch)
        return [*values, cached, fresh]

    values = asyncio.run(scenario())
    assert values[:6] == ["value-1"] * 6, "five concurrent lookups made one fetch; then cached"
    assert values[6] == "value-2" and len(threads) == 2


def test_a_failed_lookup_is_not_cached() -> None:
    store = Credentials()
    calls = []

    def fetch() -> str:
        calls.append(1)
        if len(calls) == 1:
            raise CredentialError("environment variable X is not set")
        return "now-set"

    async def scenario() -> str:
        with pytest.raises(CredentialError):
            await store._get(("password", "db"), fetch)
        return await store._get(("password", "db"), fetch)

    assert asyncio.run(scenario()) == "now-set" and len(calls) == 2


def test_a_caller_that_gives_up_does_not_cancel_the_shared_lookup() -> None:
    store = Credentials()
    gate = threading.Event()

    def fetch() -> str:
        gate.wait(5)
        return "value"

    async def scenario() -> str:
        first = asyncio.ensure_future(store._get(("password", "db"), fetch))
        second = asyncio.ensure_future(store._get(("password", "db"), fetch))
        await asyncio.sleep(0.05)
        first.cancel()  # its login deadline passed
        await asyncio.sleep(0.05)
        gate.set()
        return await second

    assert asyncio.run(scenario()) == "value"

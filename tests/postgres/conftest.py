from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.gateway_harness import RunningGateway, gateway_config
from tests.pg import PgServer, start_postgres


@pytest.fixture(scope="session")
def pg() -> Iterator[PgServer]:
    server = start_postgres()
    yield server
    server.stop()


@pytest.fixture
def gw(pg: PgServer, tmp_path: Path) -> Iterator[RunningGateway]:
    running = RunningGateway(gateway_config(tmp_path / "data", pg))
    yield running
    running.stop()

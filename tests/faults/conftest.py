from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.pg import PgServer, start_postgres


@pytest.fixture(scope="session")
def pg() -> Iterator[PgServer]:
    server = start_postgres()
    yield server
    server.stop()

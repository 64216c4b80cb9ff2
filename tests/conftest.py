from __future__ import annotations

import pytest

from tests.tapes import Session, record_session


@pytest.fixture
def session() -> Session:
    return record_session()

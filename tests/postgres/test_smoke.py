from __future__ import annotations

from tests.gateway_harness import RunningGateway


def test_psql_select(gw: RunningGateway) -> None:
    out = gw.psql(gw.token(), "SELECT 40 + 2")
    assert out.stdout.strip() == "42", out.stderr

"""The refusal ledger: per-source rate, IPv6 by /64, bounded memory."""

from __future__ import annotations

from gateway_task.server import refusals
from gateway_task.server.refusals import RefusalLedger, source_key


def test_sources_are_hosts_and_ipv6_64s() -> None:
    assert source_key("10.1.2.3") == "10.1.2.3"
    assert source_key("2001:db8::1") == source_key("2001:db8::ffff") == "2001:db8::/64"
    assert source_key("::ffff:10.1.2.3") == "10.1.2.3"


def test_past_the_rate_refusals_fold_and_come_out_as_one_summary() -> None:
    ledger = RefusalLedger(per_source=2, interval_s=60)
    taken = [ledger.take(f"2001:db8::{i:x}", 0) for i in range(5)]  # one client, five addresses
    assert taken == [True, True, False, False, False]
    for i in range(3):
        ledger.fold(f"2001:db8::{i:x}", i, protocol="ssh", reason="bad token", subject=None,
                    target="web1")  # fmt: skip
    assert ledger.due(59 * 10**9) == []
    (summary,) = ledger.due(60 * 10**9)
    assert summary.count == 3 and summary.source == "2001:db8::/64"
    assert dict(summary.by_reason) == {"bad token": 3}


def test_sources_past_the_cap_share_one_window(monkeypatch) -> None:
    monkeypatch.setattr(refusals, "MAX_WINDOWS", 3)
    ledger = RefusalLedger(per_source=1, interval_s=60)
    assert [ledger.take(f"10.0.0.{i}", 0) for i in range(3)] == [True] * 3
    assert ledger.take("10.0.0.9", 0) is True  # the shared window's first
    assert ledger.take("10.0.0.10", 0) is False  # and it is shared
    assert len(ledger._windows) == 4

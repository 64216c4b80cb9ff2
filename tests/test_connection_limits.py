"""The per-source pre-auth cap counts an IPv6 /64 as one source, as the refusal ledger does."""

from __future__ import annotations

from gateway_task.server.admission import Admission, Slot
from tapegate.config import LimitsConfig


def test_one_hosts_ipv6_range_is_one_source() -> None:
    # Found by review: keyed by the raw address, one /64 could hold every pre-auth slot.
    admission = Admission(LimitsConfig(max_preauth_per_source=3))
    slots = [admission.arrive(f"2001:db8:1:2::{n:x}") for n in range(1, 4)]
    assert all(isinstance(s, Slot) for s in slots)
    refused = admission.arrive("2001:db8:1:2:ffff::9")
    assert isinstance(refused, str) and "from this address" in refused
    assert isinstance(admission.arrive("2001:db8:1:3::1"), Slot)  # another /64
    assert isinstance(admission.arrive("192.0.2.7"), Slot)
    slots[0].release()  # type: ignore[union-attr]
    assert isinstance(admission.arrive("2001:db8:1:2::abcd"), Slot)
    assert isinstance(admission.arrive("::ffff:192.0.2.7"), Slot)  # v4-mapped is its v4 source
    assert admission.preauth_by_source["192.0.2.7"] == 2

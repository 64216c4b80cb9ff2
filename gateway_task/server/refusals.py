"""Refusals as bounded evidence: each is recorded, but a flood cannot fill the disk.

Per source address and interval (`limits.refusal_interval_s`), the first
`limits.refusals_per_source` refusals are recorded as sessions of their own, as always. The rest
are folded into one summary per source and interval — counts per protocol and reason, the first
and last time, a sample of subjects and targets — which is sealed as one session (an
`refusal_summary` event, end reason `refused`) when the interval ends or the gateway stops.
Folding costs a dictionary update, not a sealed chunk and a Parquet file, so admitted sessions
keep being served during a flood.
"""

from __future__ import annotations

import ipaddress
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

SAMPLE = 10  # subjects and targets kept per summary
MAX_WINDOWS = 10_000  # sources tracked at once; past it, new sources share one window


def source_key(address: str) -> str:
    """The unit a rate applies to: an IPv4 address, or an IPv6 /64 (one host's whole range,
    which a single client can pick addresses from)."""
    try:
        ip = ipaddress.ip_address(address.strip("[]"))
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.ip_network(f"{ip}/64", strict=False))
    return str(ip)


@dataclass
class Summary:
    source: str
    first_ns: int
    last_ns: int = 0
    count: int = 0
    by_reason: Counter[str] = field(default_factory=Counter)
    by_protocol: Counter[str] = field(default_factory=Counter)
    subjects: list[str] = field(default_factory=list)
    targets: list[str] = field(default_factory=list)

    def attrs(self) -> dict[str, Any]:
        return {
            "source": self.source, "count": self.count, "first_ns": self.first_ns,
            "last_ns": self.last_ns, "by_reason": dict(self.by_reason),
            "by_protocol": dict(self.by_protocol), "subjects": self.subjects,
            "targets": self.targets,
        }  # fmt: skip


@dataclass
class _Window:
    started_ns: int
    recorded: int = 0
    folded: Summary | None = None


class RefusalLedger:
    def __init__(self, per_source: int, interval_s: int) -> None:
        self.per_source = per_source
        self.interval_ns = interval_s * 1_000_000_000
        self._windows: dict[str, _Window] = {}

    def take(self, source: str, now_ns: int) -> bool:
        """True when this refusal is recorded on its own; False when it must be folded."""
        source = self._key(source)
        window = self._windows.get(source)
        if window is None:
            window = self._windows[source] = _Window(now_ns)
        if window.recorded < self.per_source:
            window.recorded += 1
            return True
        return False

    def fold(self, source: str, now_ns: int, *, protocol: str, reason: str, subject: str | None,
             target: str) -> None:  # fmt: skip
        source = self._key(source)
        window = self._windows.setdefault(source, _Window(now_ns))
        summary = window.folded
        if summary is None:
            summary = window.folded = Summary(source, now_ns)
        summary.count += 1
        summary.last_ns = now_ns
        summary.by_reason[reason[:200]] += 1
        summary.by_protocol[protocol] += 1
        if subject and subject not in summary.subjects and len(summary.subjects) < SAMPLE:
            summary.subjects.append(subject)
        if target not in summary.targets and len(summary.targets) < SAMPLE:
            summary.targets.append(target[:200])

    def _key(self, source: str) -> str:
        key = source_key(source)
        if key not in self._windows and len(self._windows) >= MAX_WINDOWS:
            return "(many sources)"  # bounded memory: a flood from everywhere shares a window
        return key

    def due(self, now_ns: int, everything: bool = False) -> list[Summary]:
        """Summaries whose interval has ended (all of them with `everything`); their windows
        start afresh."""
        out = []
        for source, window in list(self._windows.items()):
            if everything or now_ns - window.started_ns >= self.interval_ns:
                del self._windows[source]
                if window.folded is not None:
                    out.append(window.folded)
        return out

"""Every event a test records is checked against the registry (tapegate/vocab/events.py): its
type is registered, for this protocol, with one of its directions, and only registered
attributes. The protocol tests read their tapes through here, so the docs generated from the
registry cannot fall behind what the gateway writes."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from tapegate.vocab import EVENT_TYPES, TRIM_ATTRS, EventType


def event_problems(events: Iterable[dict[str, Any]], protocol: str | None) -> list[str]:
    problems = []
    for event in events:
        try:
            spec = EVENT_TYPES[EventType(event["type"])]
        except ValueError:
            problems.append(f"event type {event['type']!r} is not in the registry")
            continue
        where = f"{event['type']} ({protocol})"
        if protocol is not None and protocol not in spec.protocols:
            problems.append(f"{where}: not registered for {protocol}")
        if event.get("dir") not in spec.dirs:
            problems.append(f"{where}: dir {event.get('dir')!r} is not one of {spec.dirs}")
        extra = set(event.get("attrs") or {}) - set(spec.attrs) - set(TRIM_ATTRS)
        if extra:
            problems.append(f"{where}: attributes not in the registry: {sorted(extra)}")
    return problems


def assert_registered(records: Iterable[Any]) -> None:
    """Decoded records of any sessions: every event conforms to the registry."""
    protocols: dict[Any, str | None] = {}
    recs = list(records)
    for rec in recs:
        if rec.seq == 0:
            protocols[rec.session_id] = rec.meta["session"].get("protocol")
    problems = sorted(
        {
            problem
            for rec in recs
            for problem in event_problems(rec.meta["events"], protocols.get(rec.session_id))
        }
    )
    assert not problems, "events the registry does not describe:\n" + "\n".join(problems)

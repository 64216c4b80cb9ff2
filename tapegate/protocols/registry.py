"""Every protocol tapegate records, each in one entry: its target, its events' replay lines, the
replay formats only it has.

Config reads a target's keys and model from here, replay its views. A protocol joins by adding
its entry here and its listener in gateway_task/server/registry.py (the runtime's half, kept in
step with this one by a test), and its peer in the contract suite (tests/contract).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tapegate.config.targets import Target
from tapegate.protocols.http import replay as http_replay
from tapegate.protocols.http import target as http_target
from tapegate.protocols.mcp import replay as mcp_replay
from tapegate.protocols.mcp import target as mcp_target
from tapegate.protocols.postgres import replay as postgres_replay
from tapegate.protocols.postgres import target as postgres_target
from tapegate.protocols.ssh import replay as ssh_replay
from tapegate.protocols.ssh import target as ssh_target

if TYPE_CHECKING:
    from tapegate.audit.timeline import Replay

View = Callable[[dict[str, Any]], tuple[str, str]]  # an event's attrs → (style, line)


@dataclass(frozen=True)
class TargetSchema:
    keys: frozenset[str]  # what its targets may say besides name, protocol, upstream, groups
    build: Callable[[dict[str, Any], str, Path, dict[str, Any]], Target]  # checked, as its model
    upstream_optional: bool = False  # MCP: a `command:` (stdio) server has no upstream address


@dataclass(frozen=True)
class Format:
    render: Callable[[Replay], Iterator[str]]
    needs_bytes: bool  # made from the frames, so only with the auditor's key


@dataclass(frozen=True)
class Protocol:
    name: str
    title: str  # as people name it in messages
    target: TargetSchema
    views: Mapping[str, View]  # the event types it records, each as a replay line
    formats: Mapping[str, Format] = field(default_factory=dict)  # `tapegate replay --format`


PROTOCOLS: dict[str, Protocol] = {
    p.name: p
    for p in (
        Protocol(
            "postgres",
            "PostgreSQL",
            TargetSchema(postgres_target.KEYS, postgres_target.build),
            postgres_replay.VIEWS,
        ),
        Protocol(
            "ssh",
            "terminal (ssh)",
            TargetSchema(ssh_target.KEYS, ssh_target.build),
            ssh_replay.VIEWS,
            {"cast": Format(ssh_replay.asciicast, needs_bytes=True)},
        ),
        Protocol(
            "http",
            "HTTP",
            TargetSchema(http_target.KEYS, http_target.build),
            http_replay.VIEWS,
            {"har": Format(http_replay.har, needs_bytes=False)},
        ),
        Protocol(
            "mcp",
            "MCP",
            TargetSchema(mcp_target.KEYS, mcp_target.build, upstream_optional=True),
            mcp_replay.VIEWS,
        ),
    )
}


def formats() -> list[str]:
    """Every protocol's own replay formats, for `--format`'s choices."""
    return sorted({name for p in PROTOCOLS.values() for name in p.formats})

"""What a tape holds: frames, events, the session header and the end summary.

These are plain values. Encoding them lives in `codec`, sealing in `seal`, cutting a stream of them
into chunks in `writer`, checking a set of sealed chunks in `verify`.
"""

from __future__ import annotations

import os
import time
import uuid
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any


class Direction(IntEnum):
    """Which way bytes travelled. The integer values are part of the wire format."""

    CLIENT_TO_SERVER = 0
    SERVER_TO_CLIENT = 1

    @property
    def short(self) -> str:
        return "c2s" if self is Direction.CLIENT_TO_SERVER else "s2c"

    @classmethod
    def from_short(cls, text: str | None) -> Direction | None:
        if text is None:
            return None
        return {"c2s": cls.CLIENT_TO_SERVER, "s2c": cls.SERVER_TO_CLIENT}[text]


class Stream(IntEnum):
    """Which of a direction's streams the bytes belong to (format version 2). Outside SSH there
    is only `DATA`; an SSH channel's server side also has `STDERR`, its extended data of type 1
    (RFC 4254 section 5.2). The integer values are part of the wire format."""

    DATA = 0
    STDERR = 1


@dataclass(frozen=True, slots=True)
class Frame:
    """Bytes seen on the wire in one direction, stamped when the gateway read them."""

    ts_ns: int
    direction: Direction
    data: bytes
    stream: Stream = Stream.DATA


@dataclass(frozen=True, slots=True)
class Event:
    """Something parsed out of the frames: a query, a command, an auth result, an error...

    `attrs` must be JSON-serialisable; events are stored in clear text so the archive can index
    and query them without the auditor key.
    """

    ts_ns: int
    type: str
    direction: Direction | None = None
    attrs: dict[str, Any] = field(default_factory=dict)

    def to_json_obj(self) -> dict[str, Any]:
        return {
            "ts": self.ts_ns,
            "dir": self.direction.short if self.direction is not None else None,
            "type": self.type,
            "attrs": self.attrs,
        }

    @classmethod
    def from_json_obj(cls, obj: dict[str, Any]) -> Event:
        return cls(
            ts_ns=int(obj["ts"]),
            type=str(obj["type"]),
            direction=Direction.from_short(obj.get("dir")),
            attrs=dict(obj.get("attrs") or {}),
        )


@dataclass(frozen=True, slots=True)
class Identity:
    """Who the verified OIDC token says the caller is. Never the token itself."""

    issuer: str
    subject: str
    email: str | None = None
    groups: tuple[str, ...] = ()
    token_id: str | None = None
    expires_at: int | None = None  # unix seconds, the token's `exp`

    def to_json_obj(self) -> dict[str, Any]:
        return {
            "issuer": self.issuer,
            "subject": self.subject,
            "email": self.email,
            "groups": list(self.groups),
            "token_id": self.token_id,
            "expires_at": self.expires_at,
        }

    @classmethod
    def from_json_obj(cls, obj: dict[str, Any]) -> Identity:
        return cls(
            issuer=str(obj["issuer"]),
            subject=str(obj["subject"]),
            email=obj.get("email"),
            groups=tuple(obj.get("groups") or ()),
            token_id=obj.get("token_id"),
            expires_at=obj.get("expires_at"),
        )


@dataclass(frozen=True, slots=True)
class SessionHeader:
    """Carried by chunk 0: who connected, to what, from where, through which gateway."""

    identity: Identity
    target: str
    protocol: str
    client_addr: str
    gateway: str
    started_ns: int

    def to_json_obj(self) -> dict[str, Any]:
        return {
            "identity": self.identity.to_json_obj(),
            "target": self.target,
            "protocol": self.protocol,
            "client_addr": self.client_addr,
            "gateway": self.gateway,
            "started_ns": self.started_ns,
        }

    @classmethod
    def from_json_obj(cls, obj: dict[str, Any]) -> SessionHeader:
        return cls(
            identity=Identity.from_json_obj(obj["identity"]),
            target=str(obj["target"]),
            protocol=str(obj["protocol"]),
            client_addr=str(obj["client_addr"]),
            gateway=str(obj["gateway"]),
            started_ns=int(obj["started_ns"]),
        )


@dataclass(frozen=True, slots=True)
class SessionEnd:
    """Carried by the final chunk: why the session ended and what it amounted to."""

    reason: str
    ended_ns: int
    chunks: int
    frames: int
    events: int
    bytes_c2s: int
    bytes_s2c: int

    def to_json_obj(self) -> dict[str, Any]:
        return {
            "reason": self.reason,
            "ended_ns": self.ended_ns,
            "totals": {
                "chunks": self.chunks,
                "frames": self.frames,
                "events": self.events,
                "bytes_c2s": self.bytes_c2s,
                "bytes_s2c": self.bytes_s2c,
            },
        }

    @classmethod
    def from_json_obj(cls, obj: dict[str, Any]) -> SessionEnd:
        totals = obj["totals"]
        return cls(
            reason=str(obj["reason"]),
            ended_ns=int(obj["ended_ns"]),
            chunks=int(totals["chunks"]),
            frames=int(totals["frames"]),
            events=int(totals["events"]),
            bytes_c2s=int(totals["bytes_c2s"]),
            bytes_s2c=int(totals["bytes_s2c"]),
        )


def new_session_id(now_ns: int | None = None) -> uuid.UUID:
    """A UUIDv7 (RFC 9562): sessions sort by start time in every listing and index."""
    ms = (time.time_ns() if now_ns is None else now_ns) // 1_000_000
    rand = int.from_bytes(os.urandom(10), "big")
    value = (ms & ((1 << 48) - 1)) << 80
    value |= 0x7 << 76  # version
    value |= ((rand >> 62) & 0xFFF) << 64  # rand_a, 12 bits
    value |= 0b10 << 62  # variant
    value |= rand & ((1 << 62) - 1)  # rand_b, 62 bits
    return uuid.UUID(int=value)

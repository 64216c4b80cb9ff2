"""Helpers that record synthetic sessions for the tape tests."""

from __future__ import annotations

from dataclasses import dataclass

from nacl.public import PrivateKey
from nacl.signing import SigningKey

from tapegate.keys import Keyring
from tapegate.tape import Direction, Event, Identity, SessionHeader, TapeWriter

T0 = 1_764_000_000_000_000_000  # a fixed start time, in ns


def make_header(started_ns: int = T0) -> SessionHeader:
    return SessionHeader(
        identity=Identity(
            issuer="https://issuer.example",
            subject="agent-7",
            email="agent7@example.com",
            groups=("agents",),
            token_id="tok-1",
            expires_at=T0 // 1_000_000_000 + 600,
        ),
        target="appdb",
        protocol="postgres",
        client_addr="127.0.0.1:50000",
        gateway="gw-test",
        started_ns=started_ns,
    )


@dataclass
class Session:
    records: list[bytes]
    writer: TapeWriter
    signer: SigningKey
    auditor: PrivateKey
    trusted: Keyring
    sent: list[tuple[int, Direction, bytes]]


def record_session(
    exchanges: int = 3,
    *,
    max_chunk_bytes: int = 1024,
    payload: bytes = b"x" * 400,
    signer: SigningKey | None = None,
    auditor: PrivateKey | None = None,
) -> Session:
    """A synthetic request/response session, small chunks so that it spans several."""
    signer = signer or SigningKey.generate()
    auditor = auditor or PrivateKey.generate()
    writer = TapeWriter(
        make_header(), signer, [auditor.public_key], max_chunk_bytes=max_chunk_bytes
    )
    records: list[bytes] = []
    sent: list[tuple[int, Direction, bytes]] = []
    ts = T0
    for i in range(exchanges):
        ts += 1000
        q = b"Q" + f"SELECT {i};".encode() + payload
        records += writer.add_frame(ts, Direction.CLIENT_TO_SERVER, q)
        records += writer.add_event(
            Event(ts, "query", Direction.CLIENT_TO_SERVER, {"sql": f"SELECT {i}"})
        )
        sent.append((ts, Direction.CLIENT_TO_SERVER, q))
        ts += 1000
        r = b"D" + str(i).encode() * 50 + payload
        records += writer.add_frame(ts, Direction.SERVER_TO_CLIENT, r)
        sent.append((ts, Direction.SERVER_TO_CLIENT, r))
    records.append(writer.close(ts + 1, "client_terminate"))
    return Session(records, writer, signer, auditor, Keyring.of(signer.verify_key), sent)

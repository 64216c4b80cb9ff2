"""A small archive of real tapes run through the real pipeline: the Parquet the named queries and
the compliance export are tested on. Sessions (all on the day of T0):
    ada    → appdb: two statements on orders, one blocked DROP; closed, verified
    linus  → appdb: refused at login (28000); closed with end_reason refused
    grace  → appdb: a statement on customers; the final chunk never arrives → truncated
    hopper → tickets (MCP): get_ticket ok twice, flaky is_error, delete_ticket blocked; closed
"""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

from nacl.public import PrivateKey
from nacl.signing import SigningKey

from tapegate.archive.local import DuckDBQuery, LocalObjectStore, SqliteIndex
from tapegate.keys import Keyring
from tapegate.pipeline import Pipeline
from tapegate.tape import Direction, Event, TapeWriter
from tests.tapes import T0, make_header

DAY = datetime.fromtimestamp(T0 / 1e9, UTC).date().isoformat()
C2S, S2C = Direction.CLIENT_TO_SERVER, Direction.SERVER_TO_CLIENT


def _writer(subject: str, signer: SigningKey, started: int, **header_fields: str) -> TapeWriter:
    header = make_header(started)
    header = replace(header, identity=replace(header.identity, subject=subject), **header_fields)
    return TapeWriter(header, signer, [PrivateKey.generate().public_key], max_chunk_bytes=1024)


def build(root: Path) -> DuckDBQuery:
    signer = SigningKey.generate()
    curated = root / "curated"
    pipe = Pipeline(Keyring.of(signer.verify_key), SqliteIndex(root / "index.sqlite"),
                    LocalObjectStore(curated))  # fmt: skip
    records: list[bytes] = []

    ada = _writer("ada", signer, T0)
    for i, sql in enumerate(["SELECT * FROM orders WHERE id = 1", "UPDATE Orders SET paid = true"]):
        records += ada.add_frame(T0 + 10 + i, C2S, b"Q" + sql.encode())
        records += ada.add_event(Event(T0 + 10 + i, "query", C2S, {"sql": sql}))
    records += ada.add_event(Event(T0 + 20, "blocked", C2S,
                                   {"sql": "DROP TABLE orders", "rule": "kind DROP"}))  # fmt: skip
    records.append(ada.close(T0 + 30, "client_terminate"))

    linus = _writer("linus", signer, T0 + 100)
    records += linus.add_event(
        Event(
            T0 + 101,
            "auth",
            None,
            {"result": "refused", "sqlstate": "28000", "reason": "not in an allowed group"},
        )
    )
    records.append(linus.close(T0 + 102, "refused"))

    hopper = _writer("hopper", signer, T0 + 300, target="tickets", protocol="mcp")
    for i, (tool, outcome) in enumerate(
        [
            ("get_ticket", "ok"),
            ("get_ticket", "ok"),
            ("flaky", "is_error"),
            ("delete_ticket", "blocked"),
        ]
    ):
        at = T0 + 310 + 10 * i
        records += hopper.add_event(
            Event(
                at,
                "mcp_request",
                C2S,
                {"id": i, "method": "tools/call", "tool": tool, "arguments": '{"id":7}'},
            )
        )
        attrs = {
            "id": i,
            "method": "tools/call",
            "tool": tool,
            "outcome": outcome,
            "duration_ns": 2_000_000,
        }
        if outcome == "blocked":
            attrs["reason"] = "tapegate: tool 'delete_ticket' is not allowed (tools.deny)"
        records += hopper.add_event(Event(at + 1, "mcp_response", S2C, attrs))
    records.append(hopper.close(T0 + 400, "client_closed"))

    grace = _writer("grace", signer, T0 + 200)
    records += grace.add_event(Event(T0 + 201, "query", C2S, {"sql": "SELECT * FROM customers"}))
    records += grace.add_frame(T0 + 202, C2S, b"Q" + b"x" * 1500)  # cuts a chunk
    pipe.process_object("deliveries/o1", b"".join(records + grace.flush(T0 + 203)), T0 + 10**9)
    pipe.sweep(T0 + 10**9 + pipe.grace_ns)  # grace's session never closes: truncated
    return DuckDBQuery(curated)

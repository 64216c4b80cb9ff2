"""Replay without sockets: result sets from server bytes, the timeline with and without the
auditor key, asciicast and HAR from sealed sessions, and --follow on an open session."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from nacl.public import PrivateKey
from nacl.signing import SigningKey

from tapegate.audit.postgres import ResultReader
from tapegate.audit.render import RenderError, render
from tapegate.audit.timeline import auditor_keyring, open_replay
from tapegate.keys import LocalKeyStore
from tapegate.protocols.postgres import messages as m
from tapegate.tape import Direction, Event, Identity, SessionHeader, TapeWriter, decode_record
from tests.tapes import T0

C2S, S2C = Direction.CLIENT_TO_SERVER, Direction.SERVER_TO_CLIENT


def _server_bytes() -> bytes:
    out = m.message(b"T", b"\x00\x01" + m.cstr("n") + bytes(18))
    out += b"".join(m.data_row([str(i).encode()]) for i in range(5))
    out += m.message(b"C", m.cstr("SELECT 5"))
    out += m.message(b"E", b"SERROR\x00C22012\x00Mdivision by zero\x00\x00")
    out += m.message(b"H", bytes(3)) + m.message(b"d", b"1\ta\n") + m.message(b"d", b"2\tb\n")
    out += m.message(b"C", m.cstr("COPY 2")) + m.message(b"I") + m.ready_for_query()
    return out


def test_result_sets_in_order_whatever_the_cuts() -> None:
    data = _server_bytes()
    for cut in (1, 7, len(data) // 2, len(data)):
        reader = ResultReader(max_rows=3)
        sets = reader.feed(data[:cut]) + reader.feed(data[cut:])
        assert [s.tag for s in sets] == ["SELECT 5", "COPY 2", "EMPTY"]
        assert sets[0].columns == ["n"] and sets[0].rows == [["0"], ["1"], ["2"]]
        assert sets[0].total_rows == 5 and sets[0].capped == 2
        assert sets[1].copy_lines == ["1\ta", "2\tb"] and sets[1].capped == 0


def test_data_row_round_trip_and_damage() -> None:
    row = m.data_row([b"x", None, b""])
    assert m.decode_data_row(row[5:]) == [b"x", None, b""]
    with pytest.raises(m.ProtocolError):
        m.decode_data_row(b"\x00\x01\x00\x00\x00\x09ab")  # 9 bytes declared, 2 sent
    reader = ResultReader()
    assert reader.feed(b"D\x00\x00\x00\x02") == [] and reader.broken  # a length below 4


def _session(protocol: str, auditor: PrivateKey, signer: SigningKey) -> list[bytes]:
    header = SessionHeader(Identity("https://issuer.example", "ops-bot", groups=("agents",)),
                           "web1" if protocol == "ssh" else "api", protocol, "127.0.0.1:4",
                           "gw", T0)  # fmt: skip
    writer = TapeWriter(header, signer, [auditor.public_key])
    out: list[bytes] = []
    if protocol == "ssh":
        out += writer.add_event(Event(T0 + 1, "pty", C2S, {"cols": 100, "rows": 30}))
        out += writer.add_frame(T0 + 1_000_000, C2S, b"ls\r")
        out += writer.add_frame(T0 + 2_000_000, S2C, b"ls\r\nREADME\r\n$ ")
        out += writer.add_event(Event(T0 + 3_000_000, "resize", C2S, {"cols": 120, "rows": 40}))
    else:
        out += writer.add_event(
            Event(
                T0 + 1,
                "request",
                C2S,
                {"method": "GET", "url": "http://gw/api/v1/items", "headers": [["accept", "*/*"]]},
            )
        )
        out += writer.add_event(Event(T0 + 5_000_000, "response", S2C, {
            "status": 200, "reason": "OK", "headers": [["content-type", "application/json"]],
            "body": "[]", "body_length": 2, "content_type": "application/json",
            "duration_ns": 5_000_000}))  # fmt: skip
    out.append(writer.close(T0 + 9_000_000, "client_closed"))
    return out


def _replay(records: list[bytes], keys: dict) -> object:
    return open_replay(sorted((decode_record(r) for r in records), key=lambda r: r.seq), keys)


def test_asciicast_of_a_terminal_session() -> None:
    auditor, signer = PrivateKey.generate(), SigningKey.generate()
    replay = _replay(_session("ssh", auditor, signer), auditor_keyring([auditor]))
    header, *events = [json.loads(line) for line in render(replay, "cast")]
    assert header["version"] == 2 and (header["width"], header["height"]) == (100, 30)
    assert events == [[0.001, "i", "ls\r"], [0.002, "o", "ls\r\nREADME\r\n$ "],
                      [0.003, "r", "120x40"]]  # fmt: skip
    with pytest.raises(RenderError, match="needs the session's bytes"):
        list(render(_replay(_session("ssh", auditor, signer), {}), "cast"))
    with pytest.raises(RenderError, match="HTTP sessions"):
        list(render(replay, "har"))


def test_har_of_an_http_session() -> None:
    auditor, signer = PrivateKey.generate(), SigningKey.generate()
    (doc,) = render(_replay(_session("http", auditor, signer), {}), "har")
    log = json.loads(doc)["log"]
    assert log["version"] == "1.2"
    (entry,) = log["entries"]
    assert entry["request"]["method"] == "GET" and entry["request"]["url"].endswith("/v1/items")
    assert entry["response"]["status"] == 200 and entry["response"]["content"]["text"] == "[]"
    assert entry["time"] == 5.0


def test_follow_tails_an_open_session_until_it_ends(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    keys = LocalKeyStore(data_dir)
    signer, auditor = keys.signing_key(), keys.auditor_key()
    header = SessionHeader(Identity("https://issuer.example", "tailer"), "appdb", "postgres",
                           "127.0.0.1:4", "gw", time.time_ns())  # fmt: skip
    writer = TapeWriter(header, signer, [auditor.public_key])
    deliveries = data_dir / "deliveries"
    deliveries.mkdir(parents=True)
    ts = time.time_ns()
    first = writer.add_event(Event(ts, "query", C2S, {"sql": "SELECT 'first'"}))
    first += writer.tick(ts + 10**10)
    (deliveries / "a.bin").write_bytes(b"".join(first))
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump({"data_dir": str(data_dir)}))
    sid = str(writer.session_id)
    proc = subprocess.Popen(
        [sys.executable, "-m", "tapegate.cli", "replay", sid, "--follow", "--config", str(cfg)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert "SELECT 'first'" in proc.stdout.readline() + proc.stdout.readline()
        later = writer.add_event(Event(ts + 1, "query", C2S, {"sql": "SELECT 'second'"}))
        later.append(writer.close(ts + 2, "client_terminate"))
        (deliveries / "b.bin").write_bytes(b"".join(later))
        out, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    assert "SELECT 'second'" in out and "end: client_terminate" in out

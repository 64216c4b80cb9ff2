"""`make demo`: tapegate end to end on the embedded default.

The full demo starts a throwaway PostgreSQL and the gateway (dev issuer, local folder archive),
runs an agent-like psql session through it — a few statements, one blocked by a guardrail —
stops the gateway, and audits the session as an auditor would: lists and queries it, replays it,
verifies it, exports an evidence bundle, verifies that bundle from another directory, and flips
one byte in it to show the verifier catching it. `--tape-only` does the last part on a
synthetic session, without servers.
"""

from __future__ import annotations

import os
import struct
import time
from pathlib import Path

import yaml

from tapegate.config import Config, load_config
from tapegate.keys import LocalKeyStore
from tapegate.tape import (
    Direction,
    Event,
    Identity,
    SessionHeader,
    TapeWriter,
    decode_record,
    key_id,
    open_frames,
    open_session_key,
    split_records,
)
from tapegate.tape.codec import FIXED_LEN
from tapegate.vocab import EventType


def _pg(tag: bytes, body: bytes) -> bytes:
    return tag + struct.pack(">I", len(body) + 4) + body


def _conversation() -> list[tuple[Direction, bytes, str | None]]:
    """What an agent might say to a database, and what it hears back."""
    c2s, s2c = Direction.CLIENT_TO_SERVER, Direction.SERVER_TO_CLIENT
    convo: list[tuple[Direction, bytes, str | None]] = []
    for sql, rows in [
        ("SELECT id, email FROM customers WHERE id < 4", [b"1", b"2", b"3"]),
        ("UPDATE orders SET status = 'shipped' WHERE id = 42", []),
    ]:
        convo.append((c2s, _pg(b"Q", sql.encode() + b"\0"), sql))
        reply = b"".join(_pg(b"D", b"\x00\x01" + struct.pack(">I", len(r)) + r) for r in rows)
        tag = f"SELECT {len(rows)}" if rows else "UPDATE 1"
        reply += _pg(b"C", tag.encode() + b"\0") + _pg(b"Z", b"I")
        convo.append((s2c, reply, None))
    return convo


AGENT_SCRIPT = """\
CREATE TABLE IF NOT EXISTS customers (id int PRIMARY KEY, email text);
INSERT INTO customers VALUES (1, 'ada@example.com'), (2, 'linus@example.com')
  ON CONFLICT DO NOTHING;
SELECT id, email FROM customers ORDER BY id;
DROP TABLE customers;
SELECT count(*) AS still_there FROM customers;
"""


def run_demo(data_dir: Path) -> int:
    import asyncio
    import shutil
    import tempfile

    from gateway_task.devtools import demo_mcp, demo_more
    from gateway_task.devtools.throwaway_pg import APP_PASSWORD, free_port, start_postgres
    from gateway_task.devtools.throwaway_sshd import start_sshd

    if data_dir.exists():
        shutil.rmtree(data_dir)
    print("== tapegate demo: an agent's psql, ssh, API and MCP sessions through the gateway ==\n")
    print("1. Starting a throwaway PostgreSQL, sshd, JSON API and MCP server, and the gateway")
    print("   (dev OIDC issuer, local archive)")
    pg = start_postgres()
    sshd = start_sshd(Path(tempfile.mkdtemp(prefix="tapegate-demo-sshd-")))
    api, api_url = demo_more.start_api()
    listen, more_targets = demo_more.listen_and_targets(sshd, api_url)
    tickets, tickets_url = demo_mcp.start_tickets()
    mcp_listen, mcp_target = demo_mcp.listen_and_target(tickets_url)
    listen.update(mcp_listen)
    more_targets.append(mcp_target)
    try:
        os.environ["TAPEGATE_DEMO_APPDB_PASSWORD"] = APP_PASSWORD
        raw = {
            "data_dir": str(data_dir.resolve()),
            "identity": {"issuer": "dev", "dev_listen": f"127.0.0.1:{free_port()}"},
            "listen": {"postgres": f"127.0.0.1:{free_port()}", **listen},
            "targets": [
                {
                    "name": "appdb",
                    "protocol": "postgres",
                    "upstream": f"{pg.host}:{pg.port}",
                    "database": "app",
                    "username": "app",
                    "password_env": "TAPEGATE_DEMO_APPDB_PASSWORD",
                    "upstream_tls": "disable",
                    "allow_groups": ["agents"],
                    "guardrails": {"deny": [{"kind": "DROP"}, {"kind": "TRUNCATE"}]},
                },
                *more_targets,
            ],
        }
        data_dir.mkdir(parents=True)
        config_file = data_dir / "tapegate.yaml"
        config_file.write_text(yaml.safe_dump(raw, sort_keys=False))
        config = load_config(config_file)
        asyncio.run(_agent_session(config))
    finally:
        pg.stop()
        sshd.stop()
        shutil.rmtree(sshd.folder, ignore_errors=True)
        api.shutdown()
        tickets.terminate()
    return _audit(data_dir, config_file)


async def _agent_session(config: Config) -> None:
    import asyncio
    import os

    from gateway_task.dev_issuer import mint_token
    from gateway_task.server import Gateway

    gateway = Gateway(config)
    await gateway.start()
    address = gateway.addresses["postgres"]
    host, port = address.rsplit(":", 1)
    print(f"   gateway ready on {address}; target 'appdb' denies DROP and TRUNCATE\n")
    token = mint_token(config.data_dir, config.identity, "demo-agent", ["agents"], 600)
    print("2. The agent runs psql against the gateway, its OIDC token as the password:")
    print(f"   $ psql 'host={host} port={port} dbname=appdb user=agent sslmode=require'\n")
    env = {**os.environ, "PGPASSWORD": token, "PGSSLMODE": "require"}
    proc = await asyncio.create_subprocess_exec(
        "psql", "-X", "-e", "-h", host, "-p", port, "-U", "agent", "-d", "appdb", "-f", "-",
        env=env, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    out, _ = await proc.communicate(AGENT_SCRIPT.encode())
    for line in out.decode().splitlines():
        print(f"   | {line}")
    from gateway_task.devtools.demo_more import agent_ssh_and_http

    await agent_ssh_and_http(gateway.addresses, config.data_dir, token)
    from gateway_task.devtools.demo_mcp import agent_mcp

    await agent_mcp(gateway.addresses["mcp"], config.data_dir, token)
    await gateway.stop(drain_s=1.0)


def _audit(data_dir: Path, config_file: Path) -> int:
    import json
    import subprocess
    import sys
    import tempfile
    import zipfile
    from contextlib import redirect_stdout
    from io import StringIO

    from tapegate.cli import main as cli_main

    cfg = ["--config", str(config_file)]
    print("\n3. The gateway has stopped; the archive indexed the session (SQLite) and wrote its")
    print("   tables (Parquet):")
    print("   $ tapegate sessions")
    cli_main(["sessions", *cfg])
    listing = StringIO()
    with redirect_stdout(listing):
        cli_main(["sessions", "--json", *cfg])
    listed = json.loads(listing.getvalue())
    by_target = {s["target"]: s["session_id"] for s in reversed(listed)}
    session_id = by_target["appdb"]
    sql = ("SELECT strftime(ts, '%H:%M:%S.%g') AS at, type, outcome, rows, text FROM events "
           "WHERE type IN ('query', 'result', 'blocked') ORDER BY ts_ns")  # fmt: skip
    print(f'\n   $ tapegate query "{sql}"')
    cli_main(["query", sql, *cfg])

    print("\n4. Replay it: statements from the sealed events, result rows decrypted from the")
    print("   recorded bytes with the auditor's private key (keys/auditor.key):")
    print(f"   $ tapegate replay {session_id}")
    cli_main(["replay", session_id, *cfg])

    print("\n   The SSH command, from its events and the recorded terminal bytes:")
    print(f"   $ tapegate replay {by_target['web1']}")
    cli_main(["replay", by_target["web1"], *cfg])
    print("\n   The API call as HAR (the X-Api-Key the gateway added is redacted):")
    print(f"   $ tapegate replay {by_target['api']} --format har")
    cli_main(["replay", by_target["api"], "--format", "har", *cfg])
    print("\n   The MCP session as a conversation: each call, its outcome; the denied one blocked:")
    print(f"   $ tapegate replay {by_target['tickets']}")
    cli_main(["replay", by_target["tickets"], *cfg])

    print("\n5. Verify it from the raw delivered records and the gateway's public key alone:")
    print(f"   $ tapegate verify {session_id}")
    if cli_main(["verify", session_id, *cfg]) != 0:
        print("   unexpected: the recorded session did not verify")
        return 1

    bundle = data_dir / "evidence.zip"
    print("\n6. Export an evidence bundle and verify it elsewhere, with nothing but the bundle:")
    print(f"   $ tapegate export {session_id} -o {bundle}")
    cli_main(["export", session_id, "-o", str(bundle), *cfg])
    with tempfile.TemporaryDirectory(prefix="tapegate-elsewhere-") as elsewhere:
        copy = Path(elsewhere) / "evidence.zip"
        copy.write_bytes(bundle.read_bytes())
        env = {k: v for k, v in os.environ.items() if not k.startswith("TAPEGATE_")}
        print(f"   (in {elsewhere}) $ tapegate verify evidence.zip")
        check = [sys.executable, "-m", "tapegate.cli", "verify", "evidence.zip"]
        result = subprocess.run(check, cwd=elsewhere, env=env, capture_output=True, text=True)
        print("   " + result.stdout.strip().replace("\n", "\n   "))
        if result.returncode != 0:
            print("   unexpected: the bundle did not verify")
            return 1

        print("\n7. Flip one byte of recorded traffic inside the bundle, verify again:")
        tampered = Path(elsewhere) / "tampered.zip"
        with zipfile.ZipFile(copy) as src, zipfile.ZipFile(tampered, "w") as dst:
            for item in src.infolist():
                data = src.read(item)
                if item.filename == "records/001.bin":
                    data = bytearray(data)
                    data[FIXED_LEN + 8] ^= 0x20  # inside chunk 0's encrypted payload
                    data = bytes(data)
                dst.writestr(item, data)
        check[-1] = "tampered.zip"
        print("   $ tapegate verify tampered.zip")
        result = subprocess.run(check, cwd=elsewhere, env=env, capture_output=True, text=True)
        print("   " + result.stdout.strip().replace("\n", "\n   "))
    print(f"   exit status {result.returncode}: the change is detected and located.")
    if result.returncode != 1:
        return 1
    return _delete_a_session(data_dir, cfg, by_target["web1"])


def _delete_a_session(data_dir: Path, cfg: list[str], victim: str) -> int:
    """Step 8: a session removed whole, which no remaining tape can show; the log does."""
    from tapegate.cli import main as cli_main

    print("\n8. The session log: is every session still there?")
    print("   $ tapegate log verify")
    if cli_main(["log", "verify", *cfg]) != 0:
        print("   unexpected: the untouched archive's log did not verify")
        return 1
    print(f"\n   Someone with write access removes every chunk of session {victim} (the SSH")
    print("   one) from the delivery objects, and its rows from the index. (On AWS, Object Lock")
    print("   forbids the first; on one machine nothing does.) Every remaining tape still")
    print("   verifies; no tape can show a session that is gone. The log can:")
    removed = remove_session(data_dir, victim)
    print(f"   (removed {removed} chunk(s) from the delivery folder and the index)")
    print("   $ tapegate log verify")
    status = cli_main(["log", "verify", *cfg])
    print(f"   exit status {status}: the missing session is named.")
    return 0 if status == 1 else 1


def remove_session(data_dir: Path, session_id: str) -> int:
    """What an operator with write access to the data dir could do: cut one session's chunks
    out of every delivery object, and its rows out of the index. Returns the chunks removed."""
    import sqlite3
    import uuid

    from tapegate.tape.codec import MAGIC

    sid = uuid.UUID(session_id).bytes
    removed = 0
    for path in sorted((data_dir / "deliveries").rglob("*.bin")):
        records, _ = split_records(path.read_bytes())
        kept = [r for r in records if not (r[:4] == MAGIC and r[12:28] == sid)]
        if len(kept) != len(records):
            removed += len(records) - len(kept)
            path.write_bytes(b"".join(kept))
    index = sqlite3.connect(data_dir / "archive" / "index.sqlite")
    try:
        with index:
            index.execute("DELETE FROM sessions WHERE session_id = ?", (session_id,))
            index.execute("DELETE FROM chunks WHERE session_id = ?", (session_id,))
    finally:
        index.close()
    return removed


def run_tape_demo(data_dir: Path) -> int:
    from tapegate.cli import main as cli_main

    keys = LocalKeyStore(data_dir)
    signer, auditor = keys.signing_key(), keys.auditor_key()
    now = time.time_ns()
    header = SessionHeader(
        identity=Identity("dev", "demo-agent", None, ("agents",), "demo-token", now // 10**9 + 900),
        target="appdb",
        protocol="postgres",
        client_addr="127.0.0.1:50000",
        gateway="demo",
        started_ns=now,
    )
    writer = TapeWriter(header, signer, keys.auditor_public_keys(), max_chunk_bytes=1024)
    records: list[bytes] = []
    ts = now
    for direction, data, sql in _conversation():
        ts += 2_000_000
        records += writer.add_frame(ts, direction, data)
        if sql:
            records += writer.add_event(Event(ts, EventType.QUERY, direction, {"sql": sql}))
        records += writer.tick(ts + 1_000_000_000)  # as if a second passed: one chunk each
    records.append(writer.close(ts + 3_000_000, "client_terminate"))

    deliveries = data_dir / "deliveries"
    deliveries.mkdir(parents=True, exist_ok=True)
    delivered = deliveries / f"demo-{writer.session_id}.bin"
    delivered.write_bytes(b"".join(records))

    print(f"1. Recorded session {writer.session_id}: {len(records)} sealed chunks")
    print(f"   signed by key {key_id(bytes(signer.verify_key)).hex()}, written to {delivered}")

    print("\n2. Verify it with nothing but the public key:")
    print(f"   $ tapegate verify {delivered}")
    status = cli_main(["verify", "--data-dir", str(data_dir), str(delivered)])
    if status != 0:
        print("   unexpected: the fresh tape did not verify")
        return 1

    print("\n3. Open the payload with the auditor private key (without it, bytes stay sealed):")
    chunks = sorted(
        (decode_record(r) for r in split_records(delivered.read_bytes())[0]), key=lambda r: r.seq
    )
    session_key = open_session_key(chunks[0], {key_id(bytes(auditor.public_key)): auditor})
    assert session_key is not None
    for chunk in chunks:
        for event in chunk.meta["events"]:
            print(f"   event  seq={chunk.seq} {event['type']}: {event['attrs'].get('sql')}")
        for frame in open_frames(chunk, session_key):
            arrow = "→" if frame.direction is Direction.CLIENT_TO_SERVER else "←"
            print(
                f"   frame  seq={chunk.seq} {arrow} {len(frame.data):4d} bytes {frame.data[:40]!r}"
            )

    print("\n4. Flip one byte in chunk 1 and verify again:")
    tampered_bytes = bytearray(delivered.read_bytes())
    offset = len(records[0]) + 200
    tampered_bytes[offset] ^= 0x20
    tampered = deliveries / f"demo-{writer.session_id}-tampered.bin"
    tampered.write_bytes(bytes(tampered_bytes))
    print(f"   $ tapegate verify {tampered}   (byte {offset} flipped)")
    status = cli_main(["verify", "--data-dir", str(data_dir), str(tampered)])
    print(f"   exit status {status}: the change is detected and located.")
    return 0 if status == 1 else 1

"""A gateway instance on paper: sessions and leaves written as delivery objects, with the
clock and the delivery in the test's hands, then the embedded archive and the log over them."""

from __future__ import annotations

import shutil
from pathlib import Path

import yaml

from tapegate.archive.embedded import LocalArchive
from tapegate.config import load_config
from tapegate.keys import LocalKeyStore
from tapegate.log.leaf import LeafWriter
from tapegate.log.verify import LogVerdict, verify_log
from tapegate.tape import Direction, Event, TapeWriter
from tests.tapes import T0, make_header

HEARTBEAT_S = 60


class Fleet:
    def __init__(self, tmp_path: Path, name: str = "gw-test") -> None:
        self.config_file = tmp_path / "tapegate.yaml"
        raw = {"data_dir": str(tmp_path / "data"), "log": {"heartbeat_s": HEARTBEAT_S}}
        self.config_file.write_text(yaml.safe_dump(raw))
        self.config = load_config(self.config_file)
        keys = LocalKeyStore(self.config.data_dir)
        self.signer = keys.signing_key()
        self.auditors = keys.auditor_public_keys()
        self.now = T0
        self.name = name
        self.leaves = LeafWriter(self.signer, name)
        self.previous: str | None = None  # the instance before this one, on this data dir
        self.pending: list[bytes] = []  # the next delivery object's records
        self.delivered = 0

    def restart(self) -> str:
        """A new process run of the gateway: a new instance, chained to the one before."""
        self.previous = str(self.leaves.instance)
        self.leaves = LeafWriter(self.signer, self.name)
        return str(self.leaves.instance)

    def tick(self, seconds: float) -> None:
        self.now += int(seconds * 1e9)

    def heartbeat(self, state: str = "running") -> bytes:
        previous = self.previous if state == "start" else None
        leaf = self.leaves.heartbeat(state, HEARTBEAT_S, 0, self.now, previous)
        self.pending.append(leaf)
        return leaf

    def session(self, exchanges: int = 2) -> tuple[str, list[bytes]]:
        """One session's leaves and chunks, appended to the next delivery object; its id and
        its chunks."""
        writer = TapeWriter(make_header(self.now), self.signer, self.auditors, max_chunk_bytes=1024)
        self.pending.append(self.leaves.session_open(writer.session_id, writer.header, self.now))
        chunks: list[bytes] = []
        for i in range(exchanges):
            self.tick(0.01)
            chunks += writer.add_event(Event(self.now, "query", Direction.CLIENT_TO_SERVER,
                                             {"sql": f"SELECT {i}"}))  # fmt: skip
            chunks += writer.add_frame(self.now, Direction.CLIENT_TO_SERVER, b"q" * 700)
            chunks += writer.add_frame(self.now, Direction.SERVER_TO_CLIENT, b"r" * 700)
        self.tick(0.01)
        final = writer.close(self.now, "client_terminate")
        chunks.append(final)
        close = self.leaves.session_close(writer.session_id, final, writer.seq, writer.totals,
                                          "client_terminate", self.now)  # fmt: skip
        self.pending += [*chunks, close]
        return str(writer.session_id), chunks

    def deliver(self) -> Path:
        """Write what is pending as one delivery object, as the folder sink would."""
        self.delivered += 1
        path = self.config.delivery_dir / f"{self.delivered:06d}.bin"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"".join(self.pending))
        self.pending = []
        return path

    def redeliver(self, path: Path) -> Path:
        """The same object again under another name: Firehose delivers at least once."""
        self.delivered += 1
        copy = path.with_name(f"{self.delivered:06d}.bin")
        shutil.copy(path, copy)
        return copy

    def archive(self) -> LocalArchive:
        archive = LocalArchive(self.config)
        archive.scan()
        archive.sequence()
        return archive

    def verify(self, since_ns: int | None = None) -> LogVerdict:
        return verify_log(self.archive().log_sources(), now_ns=self.now, since_ns=since_ns)

    @property
    def log_dir(self) -> Path:
        return self.config.data_dir / "archive" / "log"


def a_day(fleet: Fleet, sessions: int = 3) -> list[str]:
    """An instance that starts, records sessions with heartbeats on time, and stops."""
    fleet.heartbeat("start")
    ids = []
    for _ in range(sessions):
        ids.append(fleet.session()[0])
        fleet.tick(HEARTBEAT_S / 2)
        fleet.heartbeat()
    fleet.deliver()
    fleet.heartbeat("stop")
    fleet.deliver()
    return ids

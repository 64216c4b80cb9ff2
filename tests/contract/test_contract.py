"""Promises every protocol keeps, checked the same way for each (see conftest's PEERS).

Each test first asserts that something was recorded, then what it says.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from typing import Any

import pytest

from tapegate.tape import decode_record
from tests.capture import TcpProxy
from tests.contract.conftest import (
    ContractGateway,
    PostgresPeer,
    Refused,
    SshPeer,
    target_address,
)
from tests.pg import free_port
from tests.sinks import BreakingSink, GatedWrites


def _ends(gw: Any) -> dict[str, tuple[str, list[dict[str, Any]]]]:
    """Each recorded session's end reason and events."""
    out = {}
    for sid, records in gw.sessions().items():
        recs = [decode_record(r) for r in records]
        final = [r for r in recs if r.final]
        reason = final[0].meta["end"]["reason"] if final else "(open)"
        events = [e for r in sorted(recs, key=lambda r: r.seq) for e in r.meta["events"]]
        out[sid] = (reason, events)
    return out


def _auth_results(gw: Any) -> list[tuple[str, str]]:
    return [(reason, e["attrs"].get("result", "")) for reason, events in _ends(gw).values()
            for e in events if e["type"] == "auth"]  # fmt: skip


def test_a_bad_token_is_refused_and_recorded(contract: ContractGateway) -> None:
    gw, peer = contract.start()
    with pytest.raises(Refused) as refused:
        peer.open("not-a-token")
    told = str(refused.value).lower()
    assert "token" in told or "authentication" in told or "permission denied" in told, told
    results = _auth_results(gw)
    assert results, "the refusal was recorded"
    assert ("refused", "refused") in results


def _short_identity(**extra: Any) -> dict[str, Any]:
    return {"issuer": "dev", "dev_listen": f"127.0.0.1:{free_port()}", "leeway_s": 0, **extra}


def test_an_expired_token_ends_the_session_with_its_message(contract: ContractGateway) -> None:
    gw, peer = contract.start(identity=_short_identity())
    session = peer.open(gw.token(ttl_s=3))
    try:
        peer.round_trip(session)  # admitted and served while the token is good
        time.sleep(3.6)  # past exp: the gateway's ticker ends the session
        with pytest.raises(Refused) as ended:
            peer.round_trip(session)
        told = str(ended.value).lower()
        # asyncssh's client keeps a disconnect's reason to itself (OpenSSH prints it:
        # tests/ssh/test_sessions.py checks that); the connection is gone either way.
        assert "expired" in told or (contract.protocol == "ssh" and "closed" in told), told
    finally:
        peer.close(session)
    gw.wait_closed()
    ends = _ends(gw)
    assert ends, "the session was recorded"
    reasons = [reason for reason, _ in ends.values()]
    if contract.protocol in ("postgres", "websocket"):
        assert "token_expired" in reasons
    elif contract.protocol in ("http", "mcp"):  # the next request is refused, recorded so
        refusals = [e for reason, events in ends.values() if reason == "refused"
                    for e in events if e["type"] == "auth"]  # fmt: skip
        assert any("expired" in str(e["attrs"].get("reason", "")) for e in refusals), refusals
    # SSH: the connection itself is disconnected with the reason (no channel was open to end).


def test_keep_lets_a_connection_outlive_its_token(contract: ContractGateway) -> None:
    """`keep`: PostgreSQL sessions and SSH connections go on; HTTP still checks each request."""
    gw, peer = contract.start(identity=_short_identity(on_token_expiry="keep"))
    session = peer.open(gw.token(ttl_s=2))
    try:
        time.sleep(2.6)
        if contract.protocol in ("http", "mcp"):
            with pytest.raises(Refused, match="expired"):
                peer.round_trip(session)
        else:
            peer.round_trip(session)
    finally:
        peer.close(session)
    ends = _ends(gw)
    assert ends, "the session was recorded"
    assert "token_expired" not in [reason for reason, _ in ends.values()]


def test_every_session_is_in_the_session_log(contract: ContractGateway) -> None:
    """One place opens and closes every protocol's tapes, and with them their log leaves: the
    open leaf signed before the tape's chunk 0, the close leaf naming its final chunk."""
    gw, peer = contract.start()
    session = peer.open(gw.token())
    peer.round_trip(session)
    peer.close(session)
    gw.stop()  # every tape closed, and the instance's stop heartbeat sent
    sessions = gw.sessions()
    assert sessions, "the sessions were recorded"
    leaves = gw.leaves()
    assert [leaf.counter for leaf in leaves] == list(range(len(leaves)))
    assert leaves[-1].body["state"] == "stop"
    for sid, records in sessions.items():
        chunks = sorted((decode_record(r) for r in records), key=lambda r: r.seq)
        (opened,) = [x for x in leaves if x.kind == "session_open" and x.session_id == sid]
        (closed,) = [x for x in leaves if x.kind == "session_close" and x.session_id == sid]
        assert opened.sealed_ns <= chunks[0].sealed_ns
        assert closed.body["final_digest"] == chunks[-1].digest.hex()
        assert closed.body["chunks"] == len(chunks) and chunks[-1].final


def test_a_sink_worker_that_raises_once_is_restarted(contract: ContractGateway) -> None:
    gw, peer = contract.start(sink=lambda c: BreakingSink(c.delivery_dir, breaks=1))
    session = peer.open(gw.token())
    try:
        for _ in range(3):
            peer.round_trip(session)
    finally:
        peer.close(session)
    verdicts = gw.verdicts()
    assert verdicts, "the sessions were recorded"
    assert all(v.intact for v in verdicts.values())
    assert gw.gateway.sink.stats["worker_restarts"] == 1
    assert gw.gateway._not_ready() is None


def test_a_sink_worker_that_keeps_raising_turns_the_gateway_not_ready(
    contract: ContractGateway,
) -> None:
    gw, peer = contract.start(sink=lambda c: BreakingSink(c.delivery_dir, breaks=10**9))
    deadline = time.monotonic() + 30
    session = None
    with pytest.raises(Refused):  # the first sessions trip it; then every one is refused
        while time.monotonic() < deadline:
            session = peer.open(gw.token())
            peer.round_trip(session)
            peer.close(session)
            session = None
            time.sleep(0.1)
    if session is not None:
        peer.close(session)
    failure = gw.gateway.sink.failure
    assert failure is not None and "keeps failing" in failure
    assert "keeps failing" in (gw.gateway._not_ready() or "")
    with pytest.raises(Refused) as refused:
        peer.round_trip(peer.open(gw.token()))
    told = str(refused.value).lower()
    assert "record" in told or "archive" in told, told


# -- limits: pre-auth deadline and connection caps ----------------------------------------------

# The first bytes of a login in each protocol, to trickle one at a time.
TRICKLE = {
    "postgres": (8).to_bytes(4, "big") + (80877103).to_bytes(4, "big"),  # an SSLRequest
    "ssh": b"SSH-2.0-trickle_0.1\r\n",
    "http": b"GET /api/echo HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 200,
}
TRICKLE["websocket"] = TRICKLE["http"]
TRICKLE["mcp"] = b"POST /mcp/tickets HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 200


def _listener(gw: Any, protocol: str) -> tuple[str, int]:
    return gw.address("http" if protocol == "websocket" else protocol)


def test_trickled_preauth_bytes_are_cut_at_the_deadline(contract: ContractGateway) -> None:
    gw, _ = contract.start(limits={"preauth_deadline_s": 2})
    sock = socket.create_connection(_listener(gw, contract.protocol), timeout=5)
    sock.settimeout(0.3)
    sent, closed = 0, False
    started = time.monotonic()
    try:
        for byte in TRICKLE[contract.protocol] * 20:  # far more than 2 s worth of bytes
            try:
                sock.sendall(bytes([byte]))
                sent += 1
                if sock.recv(4096) == b"":
                    closed = True
                    break
            except TimeoutError:
                continue  # nothing to read yet: keep trickling
            except OSError:
                closed = True
                break
            if time.monotonic() - started > 30:
                break
    finally:
        sock.close()
    assert closed, f"the gateway kept a trickling login open ({sent} bytes over 30 s)"
    assert gw.gateway.admission.preauth == 0 or _until_preauth_zero(gw)


def _until_preauth_zero(gw: Any) -> bool:
    deadline = time.monotonic() + 5
    while gw.gateway.admission.preauth and time.monotonic() < deadline:
        time.sleep(0.05)
    return gw.gateway.admission.preauth == 0


def test_connections_over_the_limit_are_refused_while_admitted_ones_work(
    contract: ContractGateway,
) -> None:
    gw, peer = contract.start(limits={"max_preauth_per_source": 3, "preauth_deadline_s": 60})
    admitted = peer.open(gw.token())
    idle = [socket.create_connection(_listener(gw, contract.protocol)) for _ in range(3)]
    try:
        deadline = time.monotonic() + 5  # the listener counts them as it accepts them
        while gw.gateway.admission.preauth < 3 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert gw.gateway.admission.preauth == 3
        with pytest.raises(Refused) as refused:
            peer.round_trip(peer.open(gw.token()))
        # PostgreSQL answers at once with 53300, as the postmaster does, but libpq hides an
        # error's text during the SSL exchange; SSH and HTTP close at accept, as sshd's
        # MaxStartups does (no HTTP answer can reach a TLS client before its handshake).
        if contract.protocol == "postgres":
            assert "error response" in str(refused.value), refused.value
        peer.round_trip(admitted)  # the admitted session is still served
        assert gw.gateway.metrics.counters.get("connections_refused_limit", 0) >= 1
    finally:
        for sock in idle:
            sock.close()
    assert _until_preauth_zero(gw)
    again = peer.open(gw.token())  # room again once the idle sockets are gone
    peer.round_trip(again)
    peer.close(again)
    peer.close(admitted)


def test_a_refusal_flood_is_folded_into_summaries(contract: ContractGateway) -> None:
    gw, peer = contract.start(limits={"refusals_per_source": 3, "refusal_interval_s": 600})
    admitted = peer.open(gw.token())
    attempts = 20
    for _ in range(attempts):
        with pytest.raises(Refused):
            peer.open("not-a-token")
        peer.round_trip(admitted)  # served all along
    peer.close(admitted)
    gw.stop()  # seals the summary of the interval still open
    ends = _ends(gw)
    assert ends, "the refusals were recorded"
    alone = [events for reason, events in ends.values() if reason == "refused"
             and not any(e["type"] == "refusal_summary" for e in events)]  # fmt: skip
    summaries = [e["attrs"] for _, events in ends.values() for e in events
                 if e["type"] == "refusal_summary"]  # fmt: skip
    assert len(alone) == 3, "the first refusals of an interval are sessions of their own"
    assert len(summaries) == 1 and summaries[0]["count"] == attempts - 3
    assert summaries[0]["source"] == "127.0.0.1"
    assert sum(summaries[0]["by_reason"].values()) == attempts - 3
    assert gw.verdicts() and all(v.intact for v in gw.verdicts().values())


# -- acked: nothing reaches the target before the sink holds its chunk --------------------------


@pytest.mark.parametrize("what", ["round_trip", "bulk"])
def test_acked_forwards_nothing_before_the_sink_holds_it(
    contract: ContractGateway, request: pytest.FixtureRequest, what: str
) -> None:
    capture = TcpProxy(target_address(contract.protocol, request))
    try:
        gw, peer = contract.start(sink=lambda c: GatedWrites(c.delivery_dir, open=True),
                                  via=capture.address, durability="acked")  # fmt: skip
        sink: GatedWrites = gw.gateway.sink  # type: ignore[assignment]
        session = peer.open(gw.token())
        peer.round_trip(session)
        time.sleep(0.3)  # let the login's and the round trip's last bytes settle
        before = capture.to_target
        assert before > 0, "the capture sits between the gateway and the target"
        sink.waiting.clear()
        sink.gate.clear()
        data = b"".join(b"%08d some bulk line that makes no event\n" % i for i in range(40_000))
        work = threading.Thread(
            target=(lambda: peer.round_trip(session)) if what == "round_trip"
            else (lambda: peer.bulk(session, data)), daemon=True)  # fmt: skip
        work.start()
        assert sink.waiting.wait(10), "the session's chunk was handed to the sink"
        time.sleep(0.5)
        assert capture.to_target == before, (
            f"{capture.to_target - before} bytes reached the target before the sink held them"
        )
        sink.gate.set()
        work.join(30)
        assert not work.is_alive(), "the exchange completes once the sink holds its chunks"
        assert capture.to_target > before
        peer.close(session)
    finally:
        capture.close()
    verdicts = gw.verdicts()
    assert verdicts and all(v.intact for v in verdicts.values())


def test_an_idle_session_ends_at_the_idle_timeout(contract: ContractGateway) -> None:
    gw, peer = contract.start(limits={"idle_timeout_s": 1})
    session = peer.open(gw.token())
    peer.round_trip(session)
    held = None
    if isinstance(peer, SshPeer):  # an SSH session is a channel: hold one open, silent
        held = peer.hold(session)
    time.sleep(2.5)
    if isinstance(peer, PostgresPeer):
        with pytest.raises(Refused, match="idle-session timeout"):
            peer.round_trip(session)
    if held is not None:
        done = peer._run(held.wait(check=False, timeout=20))
        assert done.exit_status == 255 and b"idle" in done.stderr, done
    peer.close(session)
    gw.wait_closed()
    reasons = [reason for reason, _ in _ends(gw).values()]
    assert reasons, "the sessions were recorded"
    assert "idle_timeout" in reasons, reasons


def test_shutdown_seals_a_final_chunk_and_tells_the_client(contract: ContractGateway) -> None:
    gw, peer = contract.start()
    session = peer.open(gw.token())
    peer.round_trip(session)
    held = None
    if isinstance(peer, SshPeer):  # an SSH session is a channel: one is open at the stop
        held = peer.hold(session)
    gw.stop(drain_s=0.5)
    if isinstance(peer, PostgresPeer):
        with pytest.raises(Refused, match="shutting down"):
            peer.round_trip(session)
    if held is not None:
        done = peer._run(held.wait(check=False, timeout=20))
        assert done.exit_status == 255 and b"shutting down" in done.stderr, done
    peer.close(session)
    ends = _ends(gw)
    assert "gateway_shutdown" in [reason for reason, _ in ends.values()], ends
    assert all(v.intact for v in gw.verdicts().values()), "every session has its final chunk"
    if isinstance(peer, PostgresPeer) or held is not None:  # what the client was told is taped
        told = [f.data for sid in gw.events() for f in gw.frames(sid) if f.direction.short == "s2c"]
        assert any(b"shutting down" in data for data in told)


def test_a_failing_archive_stops_forwarding_with_the_protocols_error(
    contract: ContractGateway, request: pytest.FixtureRequest
) -> None:
    capture = TcpProxy(target_address(contract.protocol, request))
    try:
        gw, peer = contract.start(via=capture.address)
        session = peer.open(gw.token())
        peer.round_trip(session)
        deliveries = gw.config.delivery_dir
        saved = deliveries.with_name("deliveries.saved")  # what was delivered is kept aside
        deliveries.mkdir(parents=True, exist_ok=True)  # nothing may have been written yet
        deliveries.rename(saved)
        deliveries.write_text("not a folder")  # the archive can no longer be written
        deadline = time.monotonic() + 10
        early: list[str] = []  # the session may be told (and ended) while this still loops
        while gw.gateway.sink.failure is None and time.monotonic() < deadline:
            try:  # what was in memory may still have run
                peer.round_trip(session)
            except Refused as exc:
                early.append(str(exc).lower())
            time.sleep(0.05)
        assert gw.gateway.sink.failure is not None
        time.sleep(0.3)
        before = capture.to_target
        with pytest.raises(Refused) as refused:
            peer.round_trip(session)
            peer.round_trip(peer.open(gw.token()))  # HTTP and SSH: a new request or channel
        told = " | ".join([*early, str(refused.value).lower()])
        assert "record" in told or "archive" in told or "unavailable" in told, told
        time.sleep(0.3)
        assert capture.to_target == before, "nothing reached the target while unrecordable"
        with contextlib.suppress(Exception):
            peer.close(session)
    finally:
        capture.close()
    deliveries.unlink()  # the archive is back: what was kept in memory is written
    saved.rename(deliveries)
    deadline = time.monotonic() + 10
    while gw.gateway.sink.failure is not None and time.monotonic() < deadline:
        time.sleep(0.05)
    gw.stop()
    verdicts = gw.verdicts()
    assert all(v.intact for v in verdicts.values()), [
        [str(p) for p in v.problems] for v in verdicts.values() if not v.intact
    ]

"""The HTTP connection handler without I/O: bytes and answers in, commands out (mitmproxy's
Playbook tests). The same handler runs under the driver in every other test of tests/http/."""

from __future__ import annotations

from typing import Any

from tapegate.config.checks import Address
from tapegate.protocols.http import relay as r
from tapegate.protocols.http.relay import HttpRelay
from tapegate.protocols.http.target import HttpTarget, InjectHeader
from tapegate.proxy.admission import Admitted, Refusal, RefusalKind
from tapegate.proxy.questions import (
    Admit,
    CloseSession,
    Connect,
    ConnectFailed,
    OpenSession,
    RecordRefusal,
)
from tapegate.proxy.relay import (
    Ask,
    Command,
    End,
    Pause,
    Record,
    Resume,
    Side,
    Timer,
    ToClient,
    ToServer,
    Wake,
)
from tapegate.tape import Identity
from tapegate.vocab import EndReason

SECRET = "Bearer up-secret-0123456789"
GET = b"GET /api/v1/items HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer agent-token\r\n\r\n"
UPGRADE = (
    b"GET /api/ws HTTP/1.1\r\nHost: gw\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
)
OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


def _target(name: str = "api") -> HttpTarget:
    return HttpTarget(name=name, protocol="http", upstream=Address("up.internal", 9000),
                      allow_groups=("agents",), upstream_url="http://up.internal:9000/base",
                      inject_header=InjectHeader("Authorization", prefix="Bearer "))  # fmt: skip


def _admitted(target: str = "api", subject: str = "alice") -> Admitted:
    identity = Identity(issuer="https://idp", subject=subject, groups=("agents",))
    return Admitted(_target(target), identity, SECRET)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Driver:
    """Carries out what the handler asks as the real driver would, answering from a table,
    and keeps every command in order."""

    def __init__(self, answers: dict[type, Any] | None = None) -> None:
        self.clock = Clock()
        self.relay = HttpRelay(tls=True, client_addr="10.0.0.7:5000", body_cap=1024,
                               clock=self.clock, now_ns=lambda: 1,
                               preauth_until=self.clock.now + 10)  # fmt: skip
        self.answers: dict[type, Any] = {Admit: _admitted(), OpenSession: None, Connect: None,
                                         CloseSession: None, RecordRefusal: None}  # fmt: skip
        self.answers.update(answers or {})
        self.commands: list[Command] = []

    def _run(self, commands: list[Command]) -> list[Command]:
        done: list[Command] = []
        for command in commands:
            done.append(command)
            if isinstance(command, Ask):
                given = self.answers[type(command.question)]
                answer = given(command.question) if callable(given) else given
                done.extend(self._run(self.relay.answer(command.question, answer)))
            elif isinstance(command, Wake):
                done.extend(self._run(self.relay.wake()))
        return done

    def client(self, data: bytes) -> list[Command]:
        out = self._run(self.relay.client_data(data, 0))
        self.commands += out
        return out

    def server(self, data: bytes) -> list[Command]:
        out = self._run(self.relay.server_data(data, 0))
        self.commands += out
        return out

    def closed(self, side: Side) -> list[Command]:
        out = self._run(self.relay.closed(side))
        self.commands += out
        return out

    def wake_at(self, now: float) -> list[Command]:
        self.clock.now = now
        out = self._run(self.relay.wake())
        self.commands += out
        return out


def _kinds(commands: list[Command]) -> list[str]:
    names = []
    for c in commands:
        name = type(c).__name__
        if isinstance(c, Ask):
            name = f"Ask({type(c.question).__name__})"
        names.append(name)
    return names


def _sent(commands: list[Command]) -> bytes:
    return b"".join(c.data for c in commands if isinstance(c, ToServer))


def _to_client(commands: list[Command]) -> bytes:
    return b"".join(c.data for c in commands if isinstance(c, ToClient))


def _events(commands: list[Command]) -> list[str]:
    return [e.type for c in commands if isinstance(c, Record) for e in c.events]


def test_a_first_request_is_admitted_recorded_forwarded_and_answered() -> None:
    d = Driver()
    out = d.client(GET)
    assert _kinds(out) == ["Ask(Admit)", "Ask(OpenSession)", "Record", "Ask(Connect)",
                           "ToServer", "Record", "Timer"]  # fmt: skip
    head = _sent(out)
    assert head.startswith(b"GET /base/v1/items HTTP/1.1\r\nhost: up.internal:9000\r\n")
    assert SECRET.encode() in head and b"agent-token" not in head  # token out, credential in
    shown = next(c.shown for c in out if isinstance(c, ToServer))
    assert shown is not None and SECRET.encode() not in shown and b"[redacted]" in shown
    assert _events(out) == ["auth", "request"]
    timer = next(c for c in out if isinstance(c, Timer))
    assert timer.at == d.clock.now + r.RESPONSE_TIMEOUT_S
    out = d.server(OK)
    assert _to_client(out).endswith(b"\r\n\r\nok") and _events(out) == ["response"]
    assert d.relay.idle and not any(isinstance(c, Timer) for c in out)  # one is armed earlier
    ended = d.clock.now
    assert d.wake_at(timer.at) == [Timer(ended + r.IDLE_TIMEOUT_S)]  # it rang: the next one


def test_a_kept_alive_request_asks_nothing_new_and_pipelined_ones_wait_their_turn() -> None:
    d = Driver()
    d.client(GET)
    d.server(OK)
    # Two more at once: the second waits, unread and the client paused, for the first's answer.
    out = d.client(GET + GET)
    assert "Ask(OpenSession)" not in _kinds(out) and "Ask(Connect)" not in _kinds(out)
    assert _sent(out).count(b"GET /base/v1/items") == 1
    out = d.client(b"GET /api/third HTTP/1.1\r\nHost: gw\r\n\r\n")
    assert _kinds(out) == ["Pause"] and out[0] == Pause(Side.CLIENT)
    out = d.server(OK)  # the answer ends: the next request goes on, on the client's lane
    assert Resume(Side.CLIENT) in out and Wake() in out
    assert _sent(out).count(b"GET /base/v1/items") == 1
    out = d.server(OK)
    assert b"GET /base/third" in _sent(out)


def test_a_refused_request_is_recorded_answered_unrecorded_and_closed() -> None:
    refusal = Refusal(RefusalKind.BAD_TOKEN, "authentication failed: expired", "fetch one")
    d = Driver({Admit: refusal})
    out = d.client(GET)
    assert _kinds(out) == ["Ask(Admit)", "Ask(RecordRefusal)", "ToClient", "End"]
    answer = next(c for c in out if isinstance(c, ToClient))
    assert answer.data.startswith(b"HTTP/1.1 401 ") and not answer.record
    assert b'error="invalid_token"' in answer.data
    recorded = [c.question for c in out if isinstance(c, Ask)][1]
    assert isinstance(recorded, RecordRefusal) and recorded.attrs["refusal"] == "bad_token"
    assert "agent-token" not in repr(recorded)  # the token is never recorded


def test_a_path_that_escapes_is_refused_before_admission() -> None:
    d = Driver()
    out = d.client(b"GET /api/../admin HTTP/1.1\r\nHost: gw\r\n\r\n")
    assert _kinds(out) == ["Ask(RecordRefusal)", "ToClient", "End"]
    assert _to_client(out).startswith(b"HTTP/1.1 400 ")


def test_a_trickled_head_is_cut_at_its_deadline_not_at_each_byte() -> None:
    d = Driver()
    d.client(b"GET /api/v1 HTTP/1.1\r\n")  # the head has begun: it has HEAD_TIMEOUT_S, or less
    deadline = next(c.at for c in d.commands if isinstance(c, Timer))
    assert deadline == d.clock.now + 10  # the pre-auth deadline comes first
    d.clock.now += 9
    assert not any(isinstance(c, Timer) for c in d.client(b"X-A: 1\r\n"))  # not moved
    assert d.wake_at(d.clock.now + 0.5) == []  # woken early: nothing yet
    out = d.wake_at(deadline)
    assert _to_client(out).startswith(b"HTTP/1.1 408 ") and isinstance(out[-1], End)


def test_an_upstream_that_does_not_answer_gets_a_504_and_the_session_ends() -> None:
    d = Driver()
    d.client(GET)
    out = d.wake_at(d.clock.now + r.RESPONSE_TIMEOUT_S)
    assert _kinds(out) == ["Record", "Disconnect", "ToClient", "End"]
    assert _to_client(out).startswith(b"HTTP/1.1 504 ") and _events(out) == ["upstream_error"]
    assert out[-1] == End(EndReason.UPSTREAM_UNAVAILABLE)


def test_an_unreachable_upstream_gets_its_status() -> None:
    d = Driver({Connect: ConnectFailed(502, "target 'api' is unreachable")})
    out = d.client(GET)
    assert _to_client(out).startswith(b"HTTP/1.1 502 ") and "ToServer" not in _kinds(out)


def test_bytes_from_an_idle_upstream_drop_its_connection_and_the_next_request_reconnects() -> None:
    d = Driver()
    d.client(GET)
    d.server(OK)
    assert _kinds(d.server(b"HTTP/1.1 200 OK\r\n")) == ["Disconnect"]  # answers nothing sent
    assert "Ask(Connect)" in _kinds(d.client(GET))


def test_another_target_closes_the_session_and_opens_the_next() -> None:
    d = Driver()
    d.client(GET)
    d.server(OK)
    d.answers[Admit] = _admitted("other")
    out = d.client(GET.replace(b"/api/", b"/other/"))
    kinds = [k for k in _kinds(out) if k != "Timer"]
    assert kinds[:4] == ["Ask(Admit)", "Ask(CloseSession)", "Disconnect", "Ask(OpenSession)"]
    closing = next(c.question for c in out if isinstance(c, Ask)
                   and isinstance(c.question, CloseSession))  # fmt: skip
    assert isinstance(closing, CloseSession) and closing.reason == EndReason.TARGET_CHANGED


def test_an_early_answer_waits_for_the_request_to_end() -> None:
    d = Driver()
    d.client(b"POST /api/up HTTP/1.1\r\nHost: gw\r\nContent-Length: 10\r\n\r\n12345")
    out = d.server(b"HTTP/1.1 413 Too Large\r\nContent-Length: 0\r\n\r\n")
    assert out == [Pause(Side.SERVER)]  # held: read once the request has ended
    out = d.client(b"67890")
    assert _sent(out) == b"67890" and Resume(Side.SERVER) in out
    assert _to_client(out).startswith(b"HTTP/1.1 413 ")


def test_a_request_waiting_for_its_answer_is_told_why_the_gateway_ends_it() -> None:
    d = Driver()
    d.client(GET)
    farewell = d.relay.farewell(EndReason.RECORDING_FAILED, "disk full")
    assert farewell is not None and farewell.startswith(b"HTTP/1.1 503 ")
    d = Driver()
    d.client(GET)
    d.server(OK)
    assert d.relay.farewell(EndReason.GATEWAY_SHUTDOWN, "") is None  # between requests


def test_a_broken_request_in_a_session_is_recorded_and_answered_400() -> None:
    d = Driver()
    d.client(GET)
    d.server(OK)
    out = d.client(b"GET /api/x HTTP/1.1\r\nHost: gw\r\nContent-Length: 1\r\nContent-Length: 2"
                   b"\r\n\r\n")  # fmt: skip
    assert _events(out) == ["protocol_error"] and _to_client(out).startswith(b"HTTP/1.1 400 ")
    assert out[-1] == End(EndReason.PROTOCOL_ERROR) and not _sent(out)


def test_the_upgrade_hands_the_connection_to_the_websocket_relay() -> None:
    d = Driver()  # a masked "hi" right behind the head
    d.client(b"GET /api/ws HTTP/1.1\r\nHost: gw\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
             b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
             b"\x81\x82abcd\x09\x0b")  # fmt: skip
    assert not d.relay.records_arrivals
    out = d.server(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                   b"Connection: Upgrade\r\n\r\n")  # fmt: skip
    assert d.relay.records_arrivals  # from here the tape is the wire
    early = [c for c in out if isinstance(c, ToServer)]
    assert early == [ToServer(b"\x81\x82abcd\x09\x0b", shown=b"\x81\x82abcd\x09\x0b")]
    assert _to_client(out).startswith(b"HTTP/1.1 101 ")
    assert _kinds(d.client(b"\x88\x80abcd")) == ["Record", "ToServer"]
    assert isinstance(d.closed(Side.SERVER)[-1], Timer)  # the client gets a grace to close
    assert d.wake_at(d.clock.now + r.CLOSE_GRACE_S) == [End(EndReason.UPSTREAM_CLOSED)]


def test_a_websocket_whose_target_closes_after_a_fired_timer_still_gets_its_grace() -> None:
    d = Driver()  # the response timer armed for the upgrade request fires after the switch
    d.client(UPGRADE)
    armed = [c.at for c in d.commands if isinstance(c, Timer)]
    d.server(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
             b"Connection: Upgrade\r\n\r\n")  # fmt: skip
    assert armed and d.wake_at(max(armed)) == []  # nothing is due in a live WebSocket
    out = d.closed(Side.SERVER)
    grace = [c.at for c in out if isinstance(c, Timer)]
    assert grace == [d.clock.now + r.CLOSE_GRACE_S]
    assert d.wake_at(grace[0]) == [End(EndReason.UPSTREAM_CLOSED)]

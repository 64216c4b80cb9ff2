"""PostgreSQL's relay phase as a `RelayHandler`: the relay's bytes and events as commands, and
what the client is told, as PostgreSQL would tell it, when the session ends.
"""

from __future__ import annotations

from tapegate.protocols.postgres import messages as m
from tapegate.protocols.postgres.relay import PgRelay
from tapegate.proxy.relay import Command, End, Record, Side, ToClient, ToServer
from tapegate.tape import Direction, Event
from tapegate.vocab import EndReason, EventType

C2S, S2C = Direction.CLIENT_TO_SERVER, Direction.SERVER_TO_CLIENT
OFF_LOOP_BYTES = 1 << 20  # a client message this large is named for the guardrails on a thread


class PgRelayHandler:
    records_arrivals = True  # the tape is the client's wire

    def __init__(self, relay: PgRelay, target: str, idle_timeout_s: float) -> None:
        self.relay = relay
        self.target = target
        self.idle_timeout_s = idle_timeout_s

    def heavy(self, data: bytes) -> bool:
        return self.relay.client_buffered + len(data) >= OFF_LOOP_BYTES

    def client_data(self, data: bytes, ts: int) -> list[Command]:
        try:
            forward, events = self.relay.from_client(data, ts)
        except m.ProtocolError as exc:
            return [
                Record([Event(ts, EventType.PROTOCOL_ERROR, C2S, {"message": str(exc)})]),
                ToClient(m.error_response("08P01", f"protocol violation: {exc}")),
                End(EndReason.PROTOCOL_ERROR),
            ]
        commands: list[Command] = [Record(events)] if events else []
        reply = self.relay.take_reply()
        if reply:
            commands.append(ToClient(reply))
        if forward:
            commands.append(ToServer(forward))
        return commands

    def server_data(self, data: bytes, ts: int) -> list[Command]:
        try:
            segments, events = self.relay.from_server(data, ts)
        except m.ProtocolError as exc:
            return [
                Record([Event(ts, EventType.PROTOCOL_ERROR, S2C, {"message": str(exc)})]),
                End(EndReason.ERROR),
            ]
        out = segments[0] if len(segments) == 1 else b"".join(segments)
        commands: list[Command] = [ToClient(out)] if out else []
        if events:
            commands.append(Record(events))
        return commands

    def closed(self, side: Side) -> list[Command]:
        if self.relay.terminated:
            return [End(EndReason.CLIENT_TERMINATE)]
        if side is Side.CLIENT:
            return [End(EndReason.CLIENT_CLOSED)]
        commands: list[Command] = []
        if self.relay.at_boundary:
            message = f"target {self.target!r} closed the connection"
            commands.append(ToClient(m.error_response("08006", message)))
        return [*commands, End(EndReason.UPSTREAM_CLOSED)]

    def farewell(self, reason: EndReason, why: str) -> bytes | None:
        """A FATAL error between messages; in the middle of one only the close can say it."""
        if not self.relay.at_boundary:
            return None
        if reason == EndReason.RECORDING_FAILED:
            return unrecordable(why)
        if reason == EndReason.GATEWAY_SHUTDOWN:
            return m.error_response("57P01", "terminating connection: tapegate is shutting down")
        if reason == EndReason.IDLE_TIMEOUT:
            return m.error_response(
                "57P05",
                "terminating connection due to idle-session timeout "
                f"(limits.idle_timeout_s is {self.idle_timeout_s:g} s)",
            )
        if reason == EndReason.TOKEN_EXPIRED:
            return m.error_response(
                "28000",
                "terminating connection: your OIDC token has expired",
                hint="Connect again with a fresh token (the gateway's identity.on_token_expiry "
                "is end).",
            )
        return None


def unrecordable(why: str) -> bytes:
    return m.error_response(
        "58030",
        "tapegate cannot record this session, so it is closed: nothing runs unrecorded",
        hint=why,
    )

"""Events from the WebSocket frames relayed after an upgrade, parsed by wsproto, without I/O.

The gateway only watches: bytes are relayed as they arrive, and each direction's frames are
parsed on the side to record one event per message (and per close). The upgrade request is sent
without `Sec-WebSocket-Extensions`, so no compression is negotiated and frames parse as sent.
"""

from __future__ import annotations

import base64
from collections.abc import Callable

from wsproto.frame_protocol import FrameProtocol, Opcode, ParseFailed

from tapegate.protocols.http.exchange import Masker
from tapegate.proxy.relay import CloseWrite, Command, End, Record, Side, ToClient, ToServer
from tapegate.tape import Direction, Event
from tapegate.vocab import EndReason, EventType


class WebSocketObserver:
    """One direction of a WebSocket: bytes in, `ws_message` / `ws_close` events out."""

    def __init__(self, direction: Direction, cap: int, clock: Callable[[], int]) -> None:
        self.direction = direction
        # Frames from the client are masked; the parser checks that from the server's side.
        self._frames = FrameProtocol(client=direction is Direction.SERVER_TO_CLIENT, extensions=[])
        self._cap = cap
        self._clock = clock
        self._opcode: Opcode | None = None
        self._parts: list[bytes] = []
        self._kept = 0
        self._length = 0
        self.failed = False

    @property
    def at_boundary(self) -> bool:
        """Whether the bytes seen so far end between frames, where a frame can be added.
        wsproto says so only in its decoder's state (no header in progress, nothing buffered);
        should that change, this answers False, and the connection's close says it instead."""
        decoder = getattr(self._frames, "_frame_decoder", None)
        buffered = getattr(decoder, "buffer", None)
        if self.failed or buffered is None or getattr(decoder, "header", True) is not None:
            return False
        return len(buffered) == 0

    def feed(self, data: bytes) -> list[Event]:
        if self.failed:
            return []
        self._frames.receive_bytes(data)
        events: list[Event] = []
        try:
            for frame in self._frames.received_frames():
                event = self._frame(frame.opcode, frame.payload, frame.message_finished)
                if event is not None:
                    events.append(event)
        except ParseFailed as exc:
            self.failed = True  # the endpoints see the same bytes and deal with them
            events.append(Event(self._clock(), EventType.WS_PROTOCOL_ERROR, self.direction,
                                {"message": str(exc)}))  # fmt: skip
        return events

    def _frame(self, opcode: Opcode, payload: object, finished: bool) -> Event | None:
        if opcode is Opcode.CLOSE:
            code, reason = payload  # type: ignore[misc]
            return Event(self._clock(), EventType.WS_CLOSE, self.direction,
                         {"code": int(code), "reason": str(reason)})  # fmt: skip
        if opcode in (Opcode.PING, Opcode.PONG):
            return None
        if opcode is not Opcode.CONTINUATION:
            self._opcode = opcode
        data = payload.encode() if isinstance(payload, str) else bytes(payload)  # type: ignore[arg-type]
        self._length += len(data)
        if self._kept < self._cap:
            part = data[: self._cap - self._kept]
            self._parts.append(part)
            self._kept += len(part)
        if not finished:
            return None
        kept = b"".join(self._parts)
        text = self._opcode is Opcode.TEXT
        attrs: dict[str, object] = {
            "opcode": "text" if text else "binary",
            "length": self._length,
            "data": kept.decode("utf-8", errors="replace") if text
            else base64.b64encode(kept).decode(),
        }  # fmt: skip
        if len(kept) < self._length:
            attrs["truncated"] = True
        self._parts, self._kept, self._length = [], 0, 0
        return Event(self._clock(), EventType.WS_MESSAGE, self.direction, attrs)


class WebSocketRelay:
    """The relay phase after a 101: bytes pass as they arrive, each direction watched for
    events. Either side's EOF half-closes the other; the session ends when both are closed.

    An upstream that echoes the injected credential shows it to no one: each read from it is
    masked (same length, so frames stay as framed) before the client, the frames and the events
    see it. Unlike an HTTP body, nothing is held back for an occurrence cut by two reads: a
    message must never wait for the next one."""

    records_arrivals = True  # the tape is the client's wire

    def __init__(self, cap: int, clock: Callable[[], int], masker: Masker | None = None) -> None:
        self._masker = masker
        self._watch = {
            Side.CLIENT: WebSocketObserver(Direction.CLIENT_TO_SERVER, cap, clock),
            Side.SERVER: WebSocketObserver(Direction.SERVER_TO_CLIENT, cap, clock),
        }
        self._closed: list[Side] = []

    def heavy(self, data: bytes) -> bool:
        return False  # watching a frame is bounded work per byte

    def client_data(self, data: bytes, ts: int) -> list[Command]:
        events = self._watch[Side.CLIENT].feed(data)
        return [Record(events), ToServer(data)] if events else [ToServer(data)]

    def server_data(self, data: bytes, ts: int) -> list[Command]:
        if self._masker is not None:
            data = self._masker.feed(data) + self._masker.flush()
        events = self._watch[Side.SERVER].feed(data)
        return [ToClient(data), Record(events)] if events else [ToClient(data)]

    def closed(self, side: Side) -> list[Command]:
        if side not in self._closed:
            self._closed.append(side)
        if len(self._closed) == 2:
            first = self._closed[0]
            return [End(EndReason.CLIENT_CLOSED if first is Side.CLIENT
                        else EndReason.UPSTREAM_CLOSED)]  # fmt: skip
        return [CloseWrite(Side.SERVER if side is Side.CLIENT else Side.CLIENT)]

    def farewell(self, reason: EndReason, why: str) -> bytes | None:
        """A close frame saying why (RFC 6455 §7.4), when the client's stream is between
        frames; in the middle of one only the connection's close can say it."""
        if not self._watch[Side.SERVER].at_boundary:
            return None
        code, text = _FAREWELLS.get(reason, (1011, "tapegate ended the session"))
        if reason == EndReason.RECORDING_FAILED:
            text = f"{text}: {why}"
        payload = code.to_bytes(2, "big") + text.encode()[:123]  # a control frame's limit is 125
        return bytes((0x88, len(payload))) + payload  # FIN + close; a server's frames are unmasked


_FAREWELLS = {
    EndReason.TOKEN_EXPIRED: (1008, "your OIDC token has expired: reconnect with a fresh one"),
    EndReason.RECORDING_FAILED: (1011, "tapegate cannot record this session"),
    EndReason.GATEWAY_SHUTDOWN: (1001, "tapegate is shutting down: reconnect to another gateway"),
    EndReason.IDLE_TIMEOUT: (1001, "the session was idle past limits.idle_timeout_s"),
}

"""A stdio MCP server seen as a Streamable HTTP one, sans-IO: the server side of the bridge.

The relay speaks Streamable HTTP to every MCP target, so a `command:` target gets the same
admission, policy, recording and `acked` as a remote one. What it talks to is this bridge: the
gateway runs the server as a process (`gateway_task/server/mcp_stdio.py`, one per tape session)
and this class turns each HTTP request into lines on the process's stdin, and the lines of its
stdout into HTTP answers:

- a POST's requests are written one message per line (compact JSON: stdio forbids a newline
  inside one), each under an id of the bridge's (several clients of one stateless tape may
  both use id 1), answered under the client's own; a POST of only notifications or responses
  is 202;
- what the server sends unasked (a progress notification, a log line, an elicitation, a
  `subscriptions/listen` event) goes to the stream of the request it names (by progress token,
  or the listen request's id), else the oldest POST stream still awaiting answers, else the GET
  stream, else waits (bounded) for one;
- a POST's answer is JSON when it comes whole before anything else, as the SDK's own server
  answers: SSE (when the client accepts it) once the server says something else first, or
  after COMMIT_AFTER_S;
- the handshake era's `Mcp-Session-Id` is the bridge's, minted at `initialize`; one the bridge
  did not mint is 404, as a server says of a session it does not know;
- the process gone, every request still awaiting an answer gets a JSON-RPC error saying so.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any

import orjson

from tapegate.protocols.http import wire
from tapegate.protocols.mcp import messages as jr
from tapegate.vocab import EventType

SERVER_GONE = -32003  # the gateway's: the stdio server exited before it answered
MAX_WAITING = 256  # server messages held for a stream to carry them ...
MAX_WAITING_BYTES = 8 * 1024 * 1024  # ... and their size
MAX_BATCH = 256  # messages in one POST (a batch): each is a line, an id, an answer to hold
MAX_DROPPED = 4096  # ids whose late answers are ignored quietly; past it, noted like a stray
MAX_NOTES = 100  # what the server writes that is not JSON-RPC, noted per process
# An answer that may be SSE is JSON if it comes whole first (as the SDK's server does): a call
# that has said nothing by then commits to SSE, before the relay's wait for a head runs out.
COMMIT_AFTER_S = 5.0
SUBSCRIPTION = "io.modelcontextprotocol/subscriptionId"  # in a listen stream's events' _meta

Headers = list[tuple[bytes, bytes]]


@dataclass(frozen=True, slots=True)
class ToProcess:
    line: bytes  # one message, ending in a newline


@dataclass(frozen=True, slots=True)
class ToStream:
    stream: int  # the HTTP request it answers
    data: bytes
    end: bool = False  # the answer is complete: its connection may carry the next request


@dataclass(frozen=True, slots=True)
class Later:
    """Call `commit(stream)` after COMMIT_AFTER_S if the answer has not come by then."""

    stream: int


@dataclass(frozen=True, slots=True)
class Note:
    """Something to record: the server broke the stdio framing, say."""

    kind: str
    attrs: dict[str, Any]


Output = ToProcess | ToStream | Later | Note


@dataclass(slots=True)
class _Stream:
    sse: bool  # the client accepts server-sent events
    batch: bool = False
    committed: bool = False  # its SSE head has gone out: what follows goes as events
    open: bool = False  # its POST has been read whole (until then a cancel does not end it)
    get: bool = False  # the GET stream: the server's messages that no request carries
    ids: set[int] = field(default_factory=set)  # the bridge's ids still awaiting answers
    tokens: set[str] = field(default_factory=set)  # progress tokens its requests gave
    answers: list[jr.Message] = field(default_factory=list)  # JSON: held until all are in


def _header(headers: Headers, name: bytes) -> bytes | None:
    for n, v in headers:
        if n == name:
            return v
    return None


def _line(msg: jr.Message) -> bytes:
    return orjson.dumps(msg) + b"\n"


def _event(msg: jr.Message) -> bytes:
    return wire.chunk(b"event: message\ndata: " + orjson.dumps(msg) + b"\n\n")


class StdioBridge:
    """One process's bridge; `mint` makes a session id nobody can guess."""

    def __init__(self, mint: Callable[[], str]) -> None:
        self._mint = mint
        self.session_id: str | None = None
        self.gone: str | None = None  # why the process is gone
        self.terminated = False  # a DELETE ended the session
        self._streams: dict[int, _Stream] = {}  # in the order opened
        self._calls: dict[int, tuple[int, Any]] = {}  # the bridge's id → (stream, client's id)
        self._by_client: dict[str, list[int]] = {}  # the client's id (as a key) → the bridge's
        self._dropped: dict[int, None] = {}  # ids whose answer nobody awaits any more (ordered)
        self._notes = 0
        self._next_id = 0
        self._get: int | None = None
        self._waiting: deque[tuple[jr.Message, int]] = deque()  # with its size
        self._waiting_bytes = 0

    # -- what the relay sends --------------------------------------------------------------

    def request(self, stream: int, method: bytes, headers: Headers, body: bytes) -> list[Output]:
        sse = b"text/event-stream" in (_header(headers, b"accept") or b"").lower()
        if self.gone is not None:
            gone = f"tapegate: the MCP server process is gone ({self.gone})"
            return self._refuse(stream, 502, SERVER_GONE, gone)
        items: list[jr.Message] = []
        if method == b"POST":
            try:
                items = jr.parse(body)
            except jr.McpError as exc:  # the relay judged it whole: not seen in practice
                return self._refuse(stream, exc.status, exc.code, exc.message)
            if len(items) > MAX_BATCH:
                return self._refuse(stream, 400, jr.INVALID_REQUEST,
                                    f"a batch of at most {MAX_BATCH} messages")  # fmt: skip
        initialize = any(m.get("method") == "initialize" and "id" in m for m in items)
        refused = self._check_session(stream, _header(headers, b"mcp-session-id"), initialize)
        if refused is not None:
            return refused
        if method == b"POST":
            if initialize and self.session_id is None:
                self.session_id = self._mint()
            return self._post(stream, items, sse, body.lstrip().startswith(b"["))
        if method == b"GET":
            return self._open_get(stream, sse)
        if method == b"DELETE":
            self.terminated = True
            out = self._end_get()
            out.append(self._answer(stream, 200, b""))
            return out
        methods = "MCP over HTTP is POST (messages), GET (the server's stream), DELETE"
        return self._refuse(stream, 405, jr.INVALID_REQUEST, methods)

    def closed(self, stream: int) -> None:
        """The connection carrying `stream` closed: its answers are awaited by nobody."""
        s = self._streams.pop(stream, None)
        if s is None:
            return
        if s.get:
            self._get = None
        for wire_id in s.ids:
            self._drop(wire_id)

    def busy(self, stream: int, why: str) -> list[Output]:
        """The request is not taken: the process is behind (its stdin backlog)."""
        return self._refuse(stream, 503, SERVER_GONE, f"tapegate: the MCP server is busy: {why}")

    def _forget(self, wire_id: int) -> tuple[int, Any] | None:
        call = self._calls.pop(wire_id, None)
        if call is not None:
            same = self._by_client.get(jr.key(call[1]))
            if same is not None:
                same.remove(wire_id)
                if not same:
                    del self._by_client[jr.key(call[1])]
        return call

    def _drop(self, wire_id: int) -> None:
        """Its answer, when it comes, goes to no one and is not a stray."""
        if self._forget(wire_id) is not None:
            self._dropped[wire_id] = None
            if len(self._dropped) > MAX_DROPPED:
                del self._dropped[next(iter(self._dropped))]

    def _check_session(
        self, stream: int, given: bytes | None, initialize: bool
    ) -> list[Output] | None:
        if self.terminated:
            return self._refuse(stream, 404, jr.INVALID_REQUEST, "the MCP session has ended")
        if self.session_id is None:
            if given is not None and not initialize:
                return self._refuse(stream, 404, jr.INVALID_REQUEST,
                                    "no such MCP session (it ended, or the gateway restarted): "
                                    "initialize a new one")  # fmt: skip
            return None
        if given is None:
            if initialize:
                return None
            return self._refuse(stream, 400, jr.INVALID_REQUEST, "Mcp-Session-Id is required")
        if given.decode("latin-1") != self.session_id:
            return self._refuse(stream, 404, jr.INVALID_REQUEST, "no such MCP session")
        return None

    def _post(self, stream: int, items: list[jr.Message], sse: bool, batch: bool) -> list[Output]:
        out: list[Output] = []
        s = self._streams[stream] = _Stream(sse=sse, batch=batch)
        for msg in items:
            kind = jr.kind(msg)
            if kind == "request":
                wire_id = self._next_id
                self._next_id += 1
                self._calls[wire_id] = (stream, msg["id"])
                self._by_client.setdefault(jr.key(msg["id"]), []).append(wire_id)
                s.ids.add(wire_id)
                token = _progress_token(msg)
                if token is not None:
                    s.tokens.add(token)
                out.append(ToProcess(_line({**msg, "id": wire_id})))
            elif kind == "notification" and msg.get("method") == "notifications/cancelled":
                out.extend(self._cancel(msg))
            else:  # a notification, or the answer to a server's request (its id is the server's)
                out.append(ToProcess(_line(msg)))
        if not s.ids:
            del self._streams[stream]
            out.append(self._answer(stream, 202, b""))
            return out
        s.open = True
        if sse:
            out.append(Later(stream))
        return out

    def commit(self, stream: int) -> list[Output]:
        """The answer goes as server-sent events from here on (what it holds, first)."""
        s = self._streams.get(stream)
        if s is None or not s.sse or s.committed:
            return []
        s.committed = True
        out: list[Output] = [ToStream(stream, self._sse_head())]
        out.extend(ToStream(stream, _event(msg)) for msg in s.answers)
        s.answers.clear()
        return out

    def _cancel(self, msg: jr.Message) -> list[Output]:
        """The client gives up on one of its calls: the server is told under the bridge's id,
        and the stream that awaited it no longer does (a cancelled call is not answered). A
        cancel naming no call still waiting goes nowhere: under the client's id it would name
        another call of the server's. (Clients sharing a stateless tape are one client here: a
        cancel names the latest call under that id.)"""
        params = msg.get("params") if isinstance(msg.get("params"), dict) else {}
        same = self._by_client.get(jr.key(params.get("requestId")))
        if not same:
            return []
        wire_id = same[-1]
        stream, _ = self._calls[wire_id]
        self._drop(wire_id)
        out: list[Output] = [ToProcess(_line({**msg, "params": {**params, "requestId": wire_id}}))]
        s = self._streams.get(stream)
        if s is not None:
            s.ids.discard(wire_id)
            if not s.ids and s.open:
                out.extend(self._finish(stream, s))
        return out

    def _open_get(self, stream: int, sse: bool) -> list[Output]:
        if not sse:
            events = "the GET stream is server-sent events: accept text/event-stream"
            return self._refuse(stream, 405, jr.INVALID_REQUEST, events)
        if self._get is not None:
            return self._refuse(stream, 409, jr.INVALID_REQUEST, "a GET stream is open already")
        self._get = stream
        self._streams[stream] = _Stream(sse=True, get=True, committed=True)
        out: list[Output] = [ToStream(stream, self._sse_head())]
        while self._waiting:
            out.append(ToStream(stream, _event(self._waiting.popleft()[0])))
        self._waiting_bytes = 0
        return out

    # -- what the process writes -----------------------------------------------------------

    def line(self, raw: bytes) -> list[Output]:
        """One line of the server's stdout."""
        if not raw.strip():
            return []
        try:
            value = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return self._broken("a line that is not JSON", raw)
        out: list[Output] = []
        for msg in value if isinstance(value, list) else [value]:
            if not isinstance(msg, dict) or msg.get("jsonrpc") != "2.0":
                out.extend(self._broken("a line that is not JSON-RPC 2.0", raw))
            elif jr.kind(msg) == "response":
                out.extend(self._response(msg))
            else:
                out.extend(self._unasked(msg))
        return out

    def exited(self, why: str) -> list[Output]:
        """The process is gone: what still awaited it is answered with an error."""
        self.gone = why
        out: list[Output] = []
        for stream, s in list(self._streams.items()):
            for wire_id in sorted(s.ids):
                call = self._forget(wire_id)
                if call is not None:
                    out.extend(self._deliver(stream, s, wire_id, jr.error(call[1], SERVER_GONE,
                               f"tapegate: the MCP server process ended before it answered "
                               f"({why})")))  # fmt: skip
            if s.get:
                out.extend(self._end_get())
        return out

    def _response(self, msg: jr.Message) -> list[Output]:
        wire_id = msg.get("id")
        call = self._forget(wire_id) if isinstance(wire_id, int) else None
        if call is None:
            if isinstance(wire_id, int) and self._dropped.pop(wire_id, 0) is None:
                return []  # its stream closed, or the call was cancelled
            return self._note(f"MCP stdio: the server answered id {jr.key(wire_id)[:64]}, "
                              "which no request had")  # fmt: skip
        stream, client_id = call
        s = self._streams.get(stream)
        if s is None:
            return []
        return self._deliver(stream, s, wire_id, {**msg, "id": client_id})  # type: ignore[arg-type]

    def _unasked(self, msg: jr.Message) -> list[Output]:
        token = _progress_token(msg)
        carrier = None
        params = msg.get("params")
        meta = params.get("_meta") if isinstance(params, dict) else None
        listen = meta.get(SUBSCRIPTION) if isinstance(meta, dict) else None
        if isinstance(listen, int) and listen in self._calls:
            # 2026-07-28 `subscriptions/listen`: its events name the listen request, by the
            # bridge's id; the client knows it by its own.
            stream, client_id = self._calls[listen]
            msg = {**msg, "params": {**params, "_meta": {**meta, SUBSCRIPTION: client_id}}}
            listening = self._streams.get(stream)
            if listening is not None and listening.sse:  # else it goes as any other would
                carrier = stream
        if carrier is None and token is not None:
            carrier = next((n for n, s in self._streams.items() if s.sse and token in s.tokens),
                           None)  # fmt: skip
        if carrier is None:
            carrier = next((n for n, s in self._streams.items() if s.sse and s.ids), self._get)
        if carrier is not None:
            return [*self.commit(carrier), ToStream(carrier, _event(msg))]
        size = len(orjson.dumps(msg))
        self._waiting.append((msg, size))
        self._waiting_bytes += size
        dropped = 0
        while len(self._waiting) > MAX_WAITING or self._waiting_bytes > MAX_WAITING_BYTES:
            self._waiting_bytes -= self._waiting.popleft()[1]
            dropped += 1
        if dropped:
            return self._note(f"MCP stdio: over {MAX_WAITING} messages or "
                              f"{MAX_WAITING_BYTES} bytes awaited a stream to carry them: "
                              f"the oldest {dropped} were dropped")  # fmt: skip
        return []

    # -- answers -------------------------------------------------------------------------

    def _deliver(self, stream: int, s: _Stream, wire_id: int, msg: jr.Message) -> list[Output]:
        s.ids.discard(wire_id)
        out: list[Output] = []
        if s.committed:
            out.append(ToStream(stream, _event(msg)))
        else:
            s.answers.append(msg)
        if not s.ids:
            out.extend(self._finish(stream, s))
        return out

    def _finish(self, stream: int, s: _Stream) -> list[Output]:
        del self._streams[stream]
        if s.committed:
            return [ToStream(stream, wire.LAST_CHUNK, end=True)]
        if not s.answers:  # every call of a JSON answer cancelled: nothing to say but 202
            return [self._answer(stream, 202, b"")]
        body = orjson.dumps(s.answers if s.batch else s.answers[0])
        return [self._answer(stream, 200, body, b"application/json")]

    def _end_get(self) -> list[Output]:
        stream, self._get = self._get, None
        if stream is None:
            return []
        self._streams.pop(stream, None)
        return [ToStream(stream, wire.LAST_CHUNK, end=True)]

    def _headers(self) -> Headers:
        if self.session_id is None:
            return []
        return [(b"mcp-session-id", self.session_id.encode())]

    def _sse_head(self) -> bytes:
        headers = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache"),
                   *self._headers()]  # fmt: skip
        return wire.response_head(200, b"OK", headers, wire.Body(chunked=True))

    def _answer(self, stream: int, status: int, body: bytes, ctype: bytes = b"") -> ToStream:
        headers = [(b"content-type", ctype)] if ctype else []
        headers += self._headers()
        head = wire.response_head(status, HTTPStatus(status).phrase.encode(), headers,
                                  wire.Body(length=len(body)))  # fmt: skip
        return ToStream(stream, head + body, end=True)

    def _broken(self, what: str, raw: bytes) -> list[Output]:
        text = raw[:200].decode("utf-8", "replace")
        return self._note(f"MCP stdio: the server wrote {what} to stdout: {text!r}")

    def _note(self, message: str) -> list[Output]:
        """A `protocol_error` to record, up to MAX_NOTES per process (a server that logs to
        stdout would otherwise flood the tape)."""
        self._notes += 1
        if self._notes > MAX_NOTES:
            return []
        if self._notes == MAX_NOTES:
            message += f" (the last of {MAX_NOTES} such notes for this process)"
        return [Note(EventType.PROTOCOL_ERROR, {"message": message})]

    def _refuse(self, stream: int, status: int, code: int, message: str) -> list[Output]:
        body = orjson.dumps(jr.error(None, code, message))
        return [self._answer(stream, status, body, b"application/json")]


def _progress_token(msg: jr.Message) -> str | None:
    """The progress token a request gives (`_meta.progressToken`) or a notification names."""
    params = msg.get("params")
    if not isinstance(params, dict):
        return None
    if "progressToken" in params and msg.get("method") == "notifications/progress":
        return jr.key(params["progressToken"])
    meta = params.get("_meta")
    if isinstance(meta, dict) and "progressToken" in meta:
        return jr.key(meta["progressToken"])
    return None

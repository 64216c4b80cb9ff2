"""One Streamable HTTP exchange read as MCP, sans-IO: the request judged whole before it is
forwarded, the answer (JSON or server-sent events) read message by message.

The HTTP relay (`tapegate/protocols/http/relay.py`) moves the bytes and frames them; this module
decides, for an MCP target:

- a request: forward it, or answer it in the gateway's name (a denied tool, a `deny_args` match,
  a body that is not JSON-RPC, `Mcp-Method`/`Mcp-Name` headers that disagree with the body);
- an answer: what the client is sent (a `tools/list` result without the denied tools) and what
  is recorded (`mcp_request`, `mcp_response`, `mcp_notification`, `mcp_cancel`, `mcp_tools`).

What lives across the exchanges of one tape session (the calls awaiting their answers, the tool
catalogue a change is measured against) is its `Ledger`.
"""

from __future__ import annotations

import fnmatch
import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson

from tapegate.protocols.mcp import messages as jr
from tapegate.protocols.mcp.sse import SseEvent, SseReader, with_data
from tapegate.protocols.mcp.target import McpTarget
from tapegate.tape import Direction, Event
from tapegate.vocab import EventType

C2S, S2C = Direction.CLIENT_TO_SERVER, Direction.SERVER_TO_CLIENT
MAX_JSON_ANSWER_BYTES = 8 * 1024 * 1024  # a JSON answer is read whole; a larger one goes unread
MAX_PENDING = 1024  # calls awaiting answers per tape session: past it the oldest is forgotten
MAX_ANSWERED = 256  # answered calls remembered, so that an answer replayed on resumption is named

Headers = list[tuple[bytes, bytes]]


@dataclass(slots=True)
class Call:
    method: str
    tool: str | None
    started_ns: int
    interrupted: bool = False  # its answer's stream closed first; a resumed one may bring it


@dataclass
class Ledger:
    """One tape session's MCP state: calls awaiting answers, the tools seen so far."""

    pending: dict[str, Call] = field(default_factory=dict)
    catalogue: dict[str, str] = field(default_factory=dict)  # tool name → digest
    asked: dict[str, Call] = field(default_factory=dict)  # the server's requests to the agent
    answered: dict[str, Call] = field(default_factory=dict)  # the latest calls answered
    session_id: str | None = None  # Mcp-Session-Id, where the era has one
    protocol_version: str | None = None


@dataclass(frozen=True, slots=True)
class Answer:
    """The gateway answers the request itself: nothing reaches the target."""

    status: int
    body: bytes  # JSON


def _header(headers: Headers, name: bytes) -> bytes | None:
    for n, v in headers:
        if n == name:
            return v
    return None


def tool_digest(tool: dict[str, Any]) -> str:
    """SHA-256 over the tool's name, description and input schema (compact JSON, sorted keys)."""
    canon = orjson.dumps(
        [tool.get("name"), tool.get("description"), tool.get("inputSchema")],
        option=orjson.OPT_SORT_KEYS,
    )
    return hashlib.sha256(canon).hexdigest()


class McpExchange:
    """One exchange. The relay reads the request (`read`), picks its tape session by its
    `boundary`, hands over that session's `ledger`, then asks for the verdict (`judge`)."""

    def __init__(
        self, target: McpTarget, ledger: Ledger | None, cap: int, now_ns: Callable[[], int]
    ) -> None:
        self.target, self.cap, self._now_ns = target, cap, now_ns
        self.ledger = ledger if ledger is not None else Ledger()
        self.events: list[Event] = []  # what to record next; the relay takes them
        self._sent: list[str] = []  # ids of the requests this exchange forwarded
        self._method, self._headers = b"", []  # type: tuple[bytes, Headers]
        self._items: list[jr.Message] = []
        self._bad: jr.McpError | None = None
        self._body_len = 0
        self._json: bytearray | None = None
        self._sse: SseReader | None = None

    # -- the request -------------------------------------------------------------------------

    def request(self, method: bytes, headers: Headers, body: bytes) -> Answer | None:
        """`read` and `judge` in one (what a caller with one tape session does)."""
        self.read(method, headers, body)
        return self.judge()

    def read(self, method: bytes, headers: Headers, body: bytes) -> None:
        self._method, self._headers, self._body_len = method, headers, len(body)
        if method == b"POST":
            try:
                self._items = jr.parse(body)
            except jr.McpError as exc:
                self._bad = exc

    def boundary(self) -> str | None:
        """Which MCP session the request belongs to, as far as it says: its `Mcp-Session-Id`;
        for the stateless era the run it names (`X-Tapegate-Run`, the trace id of its
        `traceparent`) or else the client it says it is (`_meta` clientInfo). None: it does
        not say (an `initialize`, whose answer names the session; a client that sends nothing)."""
        session = _header(self._headers, b"mcp-session-id")
        if session is not None:
            return "session:" + session.decode("latin-1")[:128]
        run = _header(self._headers, b"x-tapegate-run")
        if run is not None:
            return "run:" + run.decode("latin-1")[:128]
        trace = (_header(self._headers, b"traceparent") or b"").split(b"-")
        if len(trace) == 4 and len(trace[1]) == 32:
            return "trace:" + trace[1].decode("latin-1")
        for msg in self._items:
            params = msg.get("params")
            meta = params.get("_meta") if isinstance(params, dict) else None
            client = (
                meta.get("io.modelcontextprotocol/clientInfo") if isinstance(meta, dict) else None
            )
            if isinstance(client, dict):
                return f"client:{str(client.get('name'))[:64]}/{str(client.get('version'))[:32]}"
        return None

    def judge(self) -> Answer | None:
        """None: forward it. Events for what it says are in `events` either way."""
        method, headers, items = self._method, self._headers, self._items
        self._note_headers(headers)
        if method not in (b"POST", b"GET", b"DELETE") or (method != b"POST" and self._body_len):
            # Streamable HTTP has these three, and only POST carries messages: a body on
            # another method would reach the server unjudged.
            message = "MCP over HTTP is POST (messages), GET (the server's stream), DELETE"
            self._event(EventType.PROTOCOL_ERROR, C2S, {"message": f"MCP: {message}"})
            return Answer(405, jr.dumps(jr.error(None, jr.INVALID_REQUEST, message)))
        if method != b"POST":
            if method == b"DELETE":
                self._event(EventType.MCP_NOTIFICATION, C2S, {"method": "(session end: DELETE)"})
            return None  # GET opens the server's stream; its events are read as they come
        if self._bad is not None:
            exc = self._bad
            self._event(EventType.PROTOCOL_ERROR, C2S, {"message": f"MCP: {exc.message}"})
            return Answer(exc.status, jr.dumps(jr.error(None, exc.code, exc.message)))
        mismatch = self._header_mismatch(headers, items)
        if mismatch is not None:
            self._event(EventType.PROTOCOL_ERROR, C2S, {"message": f"MCP: {mismatch[1]}"})
            return Answer(400, jr.dumps(jr.error(mismatch[0], jr.HEADER_MISMATCH, mismatch[1])))
        blocked: dict[int, str] = {}  # by position: ids may repeat
        for i, msg in enumerate(items):
            why = self._client_message(msg)
            if why is not None:
                blocked[i] = why
        if not blocked:
            self._sent = [jr.key(m["id"]) for m in items if jr.kind(m) == "request"]
            return None
        answers = []
        for i, msg in enumerate(items):
            if jr.kind(msg) != "request":
                continue
            call = self.ledger.pending.pop(jr.key(msg["id"]), None)
            text = blocked.get(i) or "not sent: another call in the same batch was blocked"
            answers.append(jr.error(msg["id"], jr.BLOCKED, text))
            self._answered(msg["id"], call, "blocked", {"error_code": jr.BLOCKED, "reason": text})
        if not answers:  # a call sent as a notification: nothing to answer it by id
            why = next(iter(blocked.values()))
            return Answer(400, jr.dumps(jr.error(None, jr.INVALID_REQUEST, why)))
        return Answer(200, jr.dumps(answers if len(items) > 1 else answers[0]))

    def _note_headers(self, headers: Headers) -> None:
        session = _header(headers, b"mcp-session-id")
        if session is not None:
            self.ledger.session_id = session.decode("latin-1")
        version = _header(headers, b"mcp-protocol-version")
        if version is not None:
            self.ledger.protocol_version = version.decode("latin-1")

    def _header_mismatch(self, headers: Headers, items: list[jr.Message]) -> tuple[Any, str] | None:
        """2026-07-28: the routing headers must say what the body says (a proxy that trusted
        the header and a server that trusted the body would disagree on what was called)."""
        said = _header(headers, b"mcp-method")
        named = _header(headers, b"mcp-name")
        if said is None and named is None:
            return None
        if len(items) != 1:
            return None, "Mcp-Method is for a single message, not a batch"
        msg = items[0]
        if said is not None and said.decode("latin-1") != msg.get("method"):
            return msg.get("id"), "the Mcp-Method header does not match the body's method"
        name_key = jr.NAME_BEARING.get(str(msg.get("method")))
        params = msg.get("params")
        if (name_key and isinstance(params, dict) and params.get(name_key) is not None
                and jr.header_name(named) != params.get(name_key)):  # fmt: skip
            return msg.get("id"), f"the Mcp-Name header does not match the body's {name_key!r}"
        return None

    def _client_message(self, msg: jr.Message) -> str | None:
        """Records one message from the client; for a call policy refuses, why."""
        kind = jr.kind(msg)
        if kind == "response":
            self._response(msg, C2S)
            return None
        method = str(msg.get("method"))
        params = msg.get("params") if isinstance(msg.get("params"), dict) else {}
        if kind == "notification":
            attrs: dict[str, Any] = {"method": method}
            if params:
                attrs["params"], _ = jr.capped(params, self.cap)
            if method == "notifications/cancelled" and "requestId" in params:
                call = self.ledger.pending.pop(jr.key(params["requestId"]), None)
                if call is not None:  # the call it gives up on, and how long it had waited
                    attrs.update(id=params["requestId"], call=call.method, tool=call.tool,
                                 duration_ns=self._now_ns() - call.started_ns)  # fmt: skip
            self._event(EventType.MCP_CANCEL if method == "notifications/cancelled" else
                        EventType.MCP_NOTIFICATION, C2S, attrs)  # fmt: skip
            if method in jr.NAME_BEARING:  # a call without an id would go unjudged
                return f"tapegate: {method} is a request: it needs an id"
            return None
        tool = None
        attrs = {"id": msg["id"], "method": method}
        if method == "tools/call":
            tool = str(params.get("name", ""))
            attrs["tool"] = tool
            arguments = params.get("arguments", {})
            attrs["arguments"], cut = jr.capped(arguments, self.cap)
            if cut:
                attrs["arguments_truncated"] = True
        elif params:
            attrs["params"], _ = jr.capped({k: v for k, v in params.items() if k != "_meta"},
                                           self.cap)  # fmt: skip
        if "inputResponses" in params:  # 2026-07-28: a retry with what the server asked for
            attrs["input_responses"], _ = jr.capped(params["inputResponses"], self.cap)
        meta = params.get("_meta") if isinstance(params.get("_meta"), dict) else {}
        if "traceparent" in meta:
            attrs["traceparent"] = str(meta["traceparent"])[:128]
        version = meta.get("io.modelcontextprotocol/protocolVersion") or params.get(
            "protocolVersion"
        )
        if version:
            self.ledger.protocol_version = str(version)
        if self.ledger.protocol_version:
            attrs["protocol_version"] = self.ledger.protocol_version
        if self.ledger.session_id:
            attrs["mcp_session"] = self.ledger.session_id
        self._event(EventType.MCP_REQUEST, C2S, attrs)
        pending = self.ledger.pending
        if len(pending) >= MAX_PENDING:  # answers that never came (or a client that floods)
            del pending[next(iter(pending))]
        pending[jr.key(msg["id"])] = Call(method, tool, self._now_ns())
        if tool is not None:
            return self._denied(tool, params.get("arguments", {}))
        return None

    def _denied(self, tool: str, arguments: Any) -> str | None:
        why = self.target.tool_denied(tool)
        if why is not None:
            return f"tapegate: tool {tool!r} is not allowed on target {self.target.name!r} ({why})"
        # Each key and value as the server decodes it (a rule must not be dodged by a JSON
        # escape: "rm\t-rf" is a tab to the server), and the whole as compact JSON text.
        texts = [jr.dumps(arguments).decode(), *_strings(arguments)]
        for rule in self.target.deny_args:
            if fnmatch.fnmatchcase(tool, rule.tool) and any(rule.regex.search(t) for t in texts):
                return (f"tapegate: the arguments of {tool!r} match the guardrail "
                        f"{rule.regex.pattern!r} of target {self.target.name!r}")  # fmt: skip
        return None

    # -- the answer --------------------------------------------------------------------------

    def response_head(self, status: int, headers: Headers) -> str | None:
        """Reads the answer's head; the boundary its `Mcp-Session-Id` names, if it has one."""
        named = None
        session = _header(headers, b"mcp-session-id")
        if session is not None:
            self.ledger.session_id = session.decode("latin-1")
            named = "session:" + self.ledger.session_id[:128]
        ctype = (_header(headers, b"content-type") or b"").split(b";")[0].strip().lower()
        if ctype.startswith(b"application/json") or ctype.endswith(b"+json"):  # as clients read it
            self._json = bytearray()
        elif ctype == b"text/event-stream":
            self._sse = SseReader()
        elif status >= 400:
            for sent in self._sent:  # an HTTP error answers the exchange's calls
                call = self.ledger.pending.pop(sent, None)
                if call is not None:
                    self._answered(None, call, "error", {"http_status": status}, sent)
            self._sent = []
        return named

    def response_data(self, data: bytes) -> bytes:
        """What of the answer the client gets now."""
        if self._sse is not None:
            out = []
            for item in self._sse.feed(data):
                out.append(item if isinstance(item, bytes) else self._sse_event(item))
            return b"".join(out)
        if self._json is not None:
            self._json += data
            if len(self._json) > MAX_JSON_ANSWER_BYTES:
                held, self._json = bytes(self._json), None
                self._event(EventType.MCP_RESPONSE, S2C, {"unread": "a JSON answer over 8 MiB"})
                return held
            return b""
        return data

    def response_end(self, complete: bool) -> bytes:
        """The rest of the answer; calls it left unanswered are recorded as cancelled."""
        out = b""
        if self._json is not None:
            raw, self._json = bytes(self._json), None
            out = self._json_answer(raw) if complete else raw
        elif self._sse is not None:
            out = self._sse.flush()
        for sent in self._sent:
            call = self.ledger.pending.get(sent)
            if call is not None and not call.interrupted:
                # Kept: a client may resume the stream (GET with Last-Event-ID) and get it.
                call.interrupted = True
                self._event(EventType.MCP_CANCEL, S2C, {
                    "id_key": sent, "method": call.method, "tool": call.tool,
                    "reason": "the answer's stream closed before the response",
                    "duration_ns": self._now_ns() - call.started_ns})  # fmt: skip
        self._sent = []
        return out

    def _json_answer(self, raw: bytes) -> bytes:
        if not raw.strip():
            return raw  # a 202's empty body: nothing to read
        try:
            items = jr.parse(raw)
        except jr.McpError as exc:
            self._event(EventType.PROTOCOL_ERROR, S2C, {"message": f"MCP answer: {exc.message}"})
            return raw
        changed = [self._server_message(m) for m in items]
        if not any(c is not None for c in changed):
            return raw
        merged = [c if c is not None else m for m, c in zip(items, changed, strict=True)]
        return jr.dumps(merged if raw.lstrip().startswith(b"[") else merged[0])

    def _sse_event(self, event: SseEvent) -> bytes:
        if not event.data or not event.data.strip():
            return event.raw
        try:
            items = jr.parse(event.data.encode())
        except jr.McpError:
            return event.raw  # not JSON-RPC: passed on, not ours to read
        changed = [self._server_message(m) for m in items]
        if not any(c is not None for c in changed):
            return event.raw
        merged = [c if c is not None else m for m, c in zip(items, changed, strict=True)]
        return with_data(event, jr.dumps(merged if len(items) > 1 else merged[0]).decode())

    def _server_message(self, msg: jr.Message) -> jr.Message | None:
        """Records one message from the server; the message as the client gets it, if changed."""
        kind = jr.kind(msg)
        if kind == "response":
            return self._response(msg, S2C)
        method = str(msg.get("method"))
        attrs: dict[str, Any] = {"method": method}
        if kind == "request":  # sampling, elicitation, roots: the server asks the agent
            attrs["id"] = msg["id"]
            self.ledger.asked[jr.key(msg["id"])] = Call(method, None, self._now_ns())
        params = msg.get("params")
        if params:
            attrs["params"], _ = jr.capped(params, self.cap)
        self._event(
            EventType.MCP_REQUEST if kind == "request" else EventType.MCP_NOTIFICATION, S2C, attrs
        )
        return None

    def _response(self, msg: jr.Message, direction: Direction) -> jr.Message | None:
        msg_id = msg.get("id")
        if direction is C2S:  # the agent answers a request of the server's
            attrs: dict[str, Any] = {"id": msg_id, "outcome": _outcome(msg)}
            asked = self.ledger.asked.pop(jr.key(msg_id), None)
            if asked is not None:
                attrs.update(method=asked.method, duration_ns=self._now_ns() - asked.started_ns)
            answer = msg.get("result") if isinstance(msg.get("result"), dict) else None
            if answer is not None:
                if "action" in answer:  # an elicitation: accepted, declined or cancelled
                    attrs["action"] = str(answer["action"])
                attrs["result"], _ = jr.capped(answer, self.cap)
            self._event(EventType.MCP_RESPONSE, C2S, attrs)
            return None
        sent = jr.key(msg_id)
        call = self.ledger.pending.pop(sent, None)
        replayed = self.ledger.answered.get(sent) if call is None else None
        if call is not None:
            answered = self.ledger.answered
            answered[sent] = call
            if len(answered) > MAX_ANSWERED:
                del answered[next(iter(answered))]
        if sent in self._sent:
            self._sent.remove(sent)
        result = msg.get("result") if isinstance(msg.get("result"), dict) else None
        extra: dict[str, Any] = {}
        changed: jr.Message | None = None
        if result is not None and isinstance(result.get("tools"), list):
            changed = self._catalogue(msg, result)
        outcome = _outcome(msg)
        if "error" in msg and isinstance(msg["error"], dict):
            extra["error_code"] = msg["error"].get("code")
            extra["error"], _ = jr.capped(msg["error"].get("message", ""), self.cap)
        elif outcome == "input_required" and result is not None:
            extra["input_requests"], _ = jr.capped(result.get("inputRequests"), self.cap)
            if "requestState" in result:  # opaque to all but the server: its size only
                extra["request_state_bytes"] = len(str(result["requestState"]))
        elif result is not None:
            if "structuredContent" in result:
                extra["structured"], _ = jr.capped(result["structuredContent"], self.cap)
            texts = [c.get("text", "") for c in result.get("content", []) or []
                     if isinstance(c, dict) and c.get("type") == "text"]  # fmt: skip
            if texts:
                extra["text"], _ = jr.capped("\n".join(texts), self.cap)
        if replayed is not None:  # again, on a resumed stream (Last-Event-ID)
            extra["replayed"] = True
        self._answered(msg_id, call or replayed, outcome, extra)
        return changed

    def _answered(
        self,
        msg_id: Any,
        call: Call | None,
        outcome: str,
        extra: dict[str, Any],
        sent: str | None = None,
    ) -> None:
        attrs: dict[str, Any] = {"id": msg_id, "outcome": outcome}
        if call is not None:
            attrs["method"] = call.method
            if call.tool is not None:
                attrs["tool"] = call.tool
            attrs["duration_ns"] = self._now_ns() - call.started_ns
            if call.interrupted:
                attrs["resumed"] = True  # on another stream than the one that asked
        if sent is not None:
            attrs["id_key"] = sent
        attrs.update(extra)
        self._event(EventType.MCP_RESPONSE, S2C if outcome != "blocked" else None, attrs)
        if outcome == "blocked":
            self._event(
                EventType.BLOCKED, C2S, {"tool": attrs.get("tool"), "rule": extra.get("reason")}
            )

    def _catalogue(self, msg: jr.Message, result: dict[str, Any]) -> jr.Message | None:
        """`tools/list` (or `server/discover`) as a catalogue; denied tools taken out."""
        tools = [t for t in result["tools"] if isinstance(t, dict)]
        entries, changed, hidden, shown = [], [], [], []
        for tool in tools:
            name = str(tool.get("name", ""))
            digest = tool_digest(tool)
            before = self.ledger.catalogue.get(name)
            if before is not None and before != digest:
                changed.append(name)
            self.ledger.catalogue[name] = digest
            entries.append({"name": name, "sha256": digest})
            if self.target.tool_denied(name) is None:
                shown.append(tool)
            else:
                hidden.append(name)
        attrs: dict[str, Any] = {"tools": entries, "hidden": hidden}
        if changed:
            attrs["tool_changed"] = changed
        self._event(EventType.MCP_TOOLS, S2C, attrs)
        if not hidden:
            return None
        return {**msg, "result": {**result, "tools": shown}}

    def _event(self, kind: str, direction: Direction | None, attrs: dict[str, Any]) -> None:
        self.events.append(Event(self._now_ns(), kind, direction, attrs))


def _strings(value: Any) -> list[str]:
    """Every key and scalar in a JSON value, as text."""
    out: list[str] = []
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            out.extend(str(k) for k in item)
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
        elif item is not None:
            out.append(item if isinstance(item, str) else jr.dumps(item).decode())
    return out


def _outcome(msg: jr.Message) -> str:
    if "error" in msg:
        return "error"
    result = msg.get("result")
    if isinstance(result, dict) and result.get("isError") is True:
        return "is_error"
    if isinstance(result, dict) and result.get("resultType") == "input_required":
        return "input_required"  # 2026-07-28: the call is retried with what the server asks
    return "ok"

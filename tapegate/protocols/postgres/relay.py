"""The relay phase of a PostgreSQL session, sans-IO: bytes in, bytes to forward and events out.

Client → server: whole messages are parsed (so guardrails see complete SQL) and forwarded
unchanged, except a denied Query or Parse. A denied message never reaches the upstream; in its
place the relay sends a Sync, and the ErrorResponse for the client is slipped in right before the
ReadyForQuery that Sync produces. That keeps the client's view in order even when it pipelines,
and keeps the transaction status honest (it is the upstream's own).

Server → client: bytes are passed on as they arrive, never held for a whole message (a 50 MB
row streams), while a scanner follows message boundaries to count rows and read the few message
types that make events: RowDescription, CommandComplete, ErrorResponse, notices, ReadyForQuery.
"""

from __future__ import annotations

import struct
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from tapegate.protocols.postgres import messages as m
from tapegate.protocols.postgres.sql import (
    SqlText,
    Unparsable,
    first_words,
    statement_kinds,
    unsettles_text,
)
from tapegate.tape import Direction, Event
from tapegate.vocab import EventType

C2S, S2C = Direction.CLIENT_TO_SERVER, Direction.SERVER_TO_CLIENT
_U32 = struct.Struct(">I")
# Server messages whose bodies the scanner keeps (bounded) to turn into events.
_READ_BODY = frozenset(b"TCEINAZGHWsS")
_MAX_KEPT_BODY = 64 * 1024
_MAX_NAMED = 10_000
# Extended-protocol messages that open a batch the upstream answers at the next Sync.
_BATCH_MESSAGES = frozenset(b"PBEDCH")  # prepared statements / portals remembered for events


@dataclass
class RelayLimits:
    sql_cap: int = 8192
    param_cap: int = 1024
    max_message_bytes: int = m.DEFAULT_MAX_MESSAGE_BYTES


@dataclass
class _Request:
    """Something the server will answer: a simple Query, an Execute, or a Sync."""

    kind: str  # query | execute | sync
    started_ns: int
    sql: str | None = None
    rows: int = 0
    columns: list[str] = field(default_factory=list)


# A guard takes SQL and its statements' kinds, and returns a description of the rule that
# denies it, or None. Kinds are None when the parser could not name them: a guard with rules
# denies that (fail closed).
Guard = Callable[[str, list[str] | None], str | None]


class PgRelay:
    def __init__(
        self,
        guard: Guard,
        limits: RelayLimits | None = None,
        *,
        text: SqlText | None = None,
        deny_function_call: bool = False,
    ) -> None:
        self.limits = limits or RelayLimits()
        self._guard = guard
        self.text = text or SqlText()  # how the server reads SQL text: kept current
        self._deny_function_call = deny_function_call
        # After a statement that may change how text is read, the ReadyForQuery (by number)
        # until which what the client pipelines cannot be checked.
        self._unsettled_until: int | None = None
        self._client = m.MessageReader(self.limits.max_message_bytes)
        self._discarding = False  # after a denied Parse: drop messages until Sync
        self._pending_denial: bytes | None = None
        self._batch_open = False  # extended-protocol messages forwarded since the last Sync
        self._reply = bytearray()  # bytes for the client that no upstream answer carries
        self._syncs_sent = 0  # Query / Sync / FunctionCall forwarded: each earns a ReadyForQuery
        self._rfq_seen = 0
        self._inject: dict[int, bytes] = {}  # ReadyForQuery number → bytes to send before it
        self._requests: deque[_Request] = deque()
        self._statements: dict[str, str] = {}
        self._portals: dict[str, str] = {}
        # server-side scanner state
        self._s_carry = b""  # an incomplete message header held back (at most 4 bytes)
        self._s_type = 0
        self._s_left = 0
        self._s_body: bytearray | None = None
        self.terminated = False  # the client sent Terminate
        self.status = b"I"

    @property
    def at_boundary(self) -> bool:
        """True when the client has received whole messages only: an error may be sent now."""
        return not self._s_left and not self._s_carry

    @property
    def client_buffered(self) -> int:
        """Bytes of a client message still incomplete (a large statement arriving)."""
        return self._client.buffered

    @property
    def idle(self) -> bool:
        """Nothing asked of the server is still unanswered, and no client bytes are waiting."""
        return not self._requests and not self._client.buffered and self.at_boundary

    # -- client → server -------------------------------------------------------------------

    def from_client(self, data: bytes, ts: int) -> tuple[bytes, list[Event]]:
        """Bytes to forward upstream and the events they make. Raises m.ProtocolError."""
        self._client.feed(data)
        forward = bytearray()
        events: list[Event] = []
        for tag, body, whole in self._client.messages():
            if self._discarding:
                if tag == ord("S"):
                    # The Sync that ends the batch carries the denied Parse's error.
                    self._discarding = False
                    self._batch_open = False
                    forward += whole
                    self._sync_sent(ts, "sync", inject=self._pending_denial)
                    self._pending_denial = None
                elif tag == ord("H") and self._pending_denial and self._quiet:
                    # A Flush asks for the error now (PostgreSQL would send it); with nothing
                    # else outstanding it can go straight to the client, in order.
                    self._reply += self._pending_denial
                    self._pending_denial = None
                continue
            sent = self._client_message(tag, body, whole, ts, events)
            if sent and tag in _BATCH_MESSAGES:
                self._batch_open = True
            elif tag == ord("S"):
                self._batch_open = False
            forward += sent
        return bytes(forward), events

    @property
    def _quiet(self) -> bool:
        """Nothing forwarded is still unanswered, and no batch is open upstream."""
        return not self._batch_open and self._rfq_seen == self._syncs_sent and not self._requests

    def take_reply(self) -> bytes:
        """Bytes the relay itself answers the client with (sent after from_client)."""
        reply, self._reply = bytes(self._reply), bytearray()
        return reply

    def _client_message(
        self, tag: int, body: bytes, whole: bytes, ts: int, events: list[Event]
    ) -> bytes:
        if tag == ord("Q"):
            sql, kinds, problem = self._name(m.query_text(body))
            denied = self._guard(sql, kinds)
            if denied:
                events.append(self._blocked(ts, sql, kinds, denied, problem=problem))
                self._sync_sent(ts, "sync", inject=_denied_error(denied, problem))
                return m.SYNC
            events.append(Event(ts, EventType.QUERY, C2S, self._sql_attrs(sql, kinds, problem)))
            self._unsettle_if(kinds)
            self._sync_sent(ts, "query", sql)
            return whole
        if tag == ord("P"):
            parse = m.decode_parse(body)
            sql, kinds, problem = self._name(parse.sql_bytes)
            denied = self._guard(sql, kinds)
            if denied:
                events.append(self._blocked(ts, sql, kinds, denied, parse.statement, problem))
                self._discarding = True
                self._pending_denial = _denied_error(denied, problem)
                return b""
            self._unsettle_if(kinds)
            self._remember(self._statements, parse.statement, sql)
            attrs = {"statement": parse.statement, **self._sql_attrs(sql, kinds, problem)}
            events.append(Event(ts, EventType.PARSE, C2S, attrs))
            return whole
        if tag == ord("B"):
            bind = m.decode_bind(body)
            self._remember(self._portals, bind.portal, bind.statement)
            events.append(Event(ts, EventType.BIND, C2S, self._bind_attrs(bind)))
            return whole
        if tag == ord("E"):
            portal, max_rows = m.decode_execute(body)
            sql = self._statements.get(self._portals.get(portal, ""), None)
            shown = sql[: self.limits.sql_cap] if sql else sql
            attrs = {"portal": portal, "max_rows": max_rows, "sql": shown}
            events.append(Event(ts, EventType.EXECUTE, C2S, attrs))
            self._requests.append(_Request("execute", ts, sql))
            return whole
        if tag == ord("S"):
            self._sync_sent(ts, "sync")
            return whole
        if tag == ord("F"):
            call = m.decode_function_call(body)
            attrs = self._call_attrs(call)
            if self._deny_function_call:
                rule = "deny_function_call"
                events.append(Event(ts, EventType.BLOCKED, C2S, {**attrs, "rule": rule}))
                self._sync_sent(ts, "sync", inject=_denied_error(rule, None))
                return m.SYNC
            events.append(Event(ts, EventType.FUNCTION_CALL, C2S, attrs))
            self._sync_sent(ts, "query", f"<function call {call.oid}>")
            return whole
        if tag == ord("X"):
            self.terminated = True
            events.append(Event(ts, EventType.TERMINATE, C2S, {}))
            return whole
        if tag == ord("f"):
            events.append(
                Event(
                    ts,
                    EventType.COPY_FAIL,
                    C2S,
                    {"message": body.rstrip(b"\0").decode("utf-8", "replace")},
                )
            )
        return whole

    def _sync_sent(
        self, ts: int, kind: str, sql: str | None = None, inject: bytes | None = None
    ) -> None:
        self._syncs_sent += 1
        if inject is not None:
            self._inject[self._syncs_sent] = inject
        self._requests.append(_Request(kind, ts, sql))

    def _name(self, raw: bytes) -> tuple[str, list[str] | None, str | None]:
        """The SQL as the server will read it, its statements' kinds (None when they cannot be
        named), and why they cannot."""
        sql, problem = self.text.read(raw)
        if problem is not None:
            return sql, None, problem
        if self._unsettled_until is not None:
            if self._rfq_seen >= self._unsettled_until:
                self._unsettled_until = None  # answered: its ParameterStatus came before
            else:
                return (
                    sql,
                    None,
                    (
                        "it was sent before the server answered a statement that can change "
                        "client_encoding or standard_conforming_strings; send it after the answer"
                    ),
                )
        try:
            return sql, statement_kinds(sql), None
        except Unparsable as exc:
            return sql, None, f"PostgreSQL's parser does not accept it ({exc})"

    def _unsettle_if(self, kinds: list[str] | None) -> None:
        if kinds and unsettles_text(kinds):
            # Its answer comes with the next ReadyForQuery (a Parse's, at the batch's Sync).
            self._unsettled_until = self._syncs_sent + 1

    def _blocked(
        self, ts: int, sql: str, kinds: list[str] | None, rule: str,
        statement: str | None = None, problem: str | None = None,
    ) -> Event:  # fmt: skip
        attrs = {**self._sql_attrs(sql, kinds, problem), "rule": rule}
        if statement is not None:
            attrs["statement"] = statement
        return Event(ts, EventType.BLOCKED, C2S, attrs)

    def _sql_attrs(self, sql: str, kinds: list[str] | None, problem: str | None) -> dict[str, Any]:
        cap = self.limits.sql_cap
        attrs: dict[str, Any] = {"sql": sql[:cap], "kinds": first_words(kinds or [])}
        if problem is not None:
            attrs["unchecked"] = problem
        if len(sql) > cap:
            attrs["sql_truncated"] = True
            attrs["sql_length"] = len(sql)
        return attrs

    def _call_attrs(self, call: m.FunctionCall) -> dict[str, Any]:
        cap = self.limits.param_cap
        args: list[Any] = []
        for value in call.args[:100]:
            if value is None:
                args.append(None)
            else:
                args.append({"hex": value[:cap].hex(), "length": len(value)})
        return {"oid": call.oid, "args": args, "arg_count": len(call.args)}

    def _bind_attrs(self, bind: m.Bind) -> dict[str, Any]:
        cap = self.limits.param_cap
        params: list[Any] = []
        for value, fmt in zip(bind.params, bind.formats, strict=True):
            if value is None:
                params.append(None)
            elif fmt == 0:
                text = value[:cap].decode("utf-8", "replace")
                params.append(text if len(value) <= cap else {"text": text, "length": len(value)})
            else:
                params.append({"binary": value[:cap].hex(), "length": len(value)})
        return {"portal": bind.portal, "statement": bind.statement, "params": params}

    @staticmethod
    def _remember(table: dict[str, str], key: str, value: str) -> None:
        table.pop(key, None)
        table[key] = value
        if len(table) > _MAX_NAMED:
            del table[next(iter(table))]

    # -- server → client -------------------------------------------------------------------

    def from_server(self, data: bytes, ts: int) -> tuple[list[bytes], list[Event]]:
        """Segments to write to the client, in order, and the events the bytes make."""
        if self._s_carry:
            data = self._s_carry + data
            self._s_carry = b""
        out: list[bytes] = []
        events: list[Event] = []
        pos, seg, n = 0, 0, len(data)
        while pos < n:
            if self._s_left:
                take = min(self._s_left, n - pos)
                if self._s_body is not None and len(self._s_body) < _MAX_KEPT_BODY:
                    self._s_body += data[pos : pos + take]
                pos += take
                self._s_left -= take
                if not self._s_left:
                    self._server_message(ts, events)
                continue
            if n - pos < 5:
                self._s_carry = data[pos:]
                break
            tag = data[pos]
            if tag in (0x44, 0x64):  # rows: the bulk of any result, skipped at their length
                pos, rows, partial = _skip_rows(data, pos, n)
                if self._requests:
                    self._requests[0].rows += rows
                if partial:  # a row that continues in the next read
                    self._s_type = 0x44
                    self._s_body = None
                    self._s_left = _U32.unpack_from(data, pos + 1)[0] - 4 - (n - pos - 5)
                    if self._requests:
                        self._requests[0].rows += 1
                    pos = n
                continue
            length = _U32.unpack_from(data, pos + 1)[0]
            if length < 4:
                raise m.ProtocolError(f"upstream sent message {chr(tag)!r} with length {length}")
            if tag == 0x5A:  # 'Z' ReadyForQuery: maybe a denial goes first
                self._rfq_seen += 1
                injected = self._inject.pop(self._rfq_seen, None)
                if injected is not None:
                    out.append(data[seg:pos])
                    out.append(injected)
                    seg = pos
            self._s_type = tag
            self._s_left = length - 4
            self._s_body = bytearray() if tag in _READ_BODY else None
            pos += 5
            if not self._s_left:
                self._server_message(ts, events)
        end = n - len(self._s_carry)
        if end > seg:
            out.append(data[seg:end])
        return out, events

    def _server_message(self, ts: int, events: list[Event]) -> None:
        tag = self._s_type
        body = bytes(self._s_body) if self._s_body is not None else b""
        self._s_body = None
        head = self._head()
        if tag == ord("T"):
            if head is not None:
                head.columns = _safe(m.decode_row_description, body, [])
        elif tag in (ord("C"), ord("I"), ord("s")):
            tag_text = {ord("C"): None, ord("I"): "EMPTY", ord("s"): "SUSPENDED"}[tag]
            tag_text = tag_text or _safe(m.decode_command_complete, body, "")
            if head is not None:
                events.append(self._result(ts, head, tag_text))
                if head.kind == "execute":
                    self._requests.remove(head)
                else:
                    head.rows, head.columns, head.started_ns = 0, [], ts
            else:
                events.append(Event(ts, EventType.RESULT, S2C, {"tag": tag_text}))
        elif tag == ord("E"):
            fields = _safe(m.decode_fields, body, {})
            attrs = {
                "sqlstate": fields.get("C"),
                "severity": fields.get("V") or fields.get("S"),
                "message": fields.get("M"),
            }
            if head is not None:
                attrs["duration_ns"] = ts - head.started_ns
                attrs["sql"] = head.sql[: self.limits.sql_cap] if head.sql else head.sql
            events.append(Event(ts, EventType.ERROR, S2C, attrs))
            # Extended protocol: after an error the server skips to the next Sync.
            while self._requests and self._requests[0].kind == "execute":
                self._requests.popleft()
        elif tag == ord("N"):
            fields = _safe(m.decode_fields, body, {})
            events.append(
                Event(ts, EventType.NOTICE, S2C, {"severity": fields.get("V") or fields.get("S"),
                                          "sqlstate": fields.get("C"), "message": fields.get("M")})
            )  # fmt: skip
        elif tag == ord("A"):
            _pid, channel, payload = _safe(m.decode_notification, body, (0, "", ""))
            events.append(
                Event(
                    ts, EventType.NOTIFICATION, S2C, {"channel": channel, "payload": payload[:1024]}
                )
            )
        elif tag == ord("S"):
            name, value = _safe(m.decode_parameter_status, body, ("", ""))
            self.text.parameter(name, value)  # client_encoding, standard_conforming_strings
        elif tag == ord("Z"):
            self.status = body[:1] or b"I"
            while self._requests:
                done = self._requests.popleft()
                if done.kind != "execute":
                    break
        elif tag in (ord("G"), ord("H"), ord("W")):
            direction = {ord("G"): "in", ord("H"): "out", ord("W"): "both"}[tag]
            events.append(Event(ts, EventType.COPY, S2C, {"direction": direction}))

    def _head(self) -> _Request | None:
        for req in self._requests:
            if req.kind != "sync":
                return req
            return None
        return None

    def _result(self, ts: int, req: _Request, tag: str) -> Event:
        return Event(
            ts,
            EventType.RESULT,
            S2C,
            {
                "tag": tag,
                "rows": req.rows,
                "columns": req.columns[:100],
                "duration_ns": ts - req.started_ns,
                "sql": req.sql[: self.limits.sql_cap] if req.sql else None,
            },
        )


def _skip_rows(data: bytes, pos: int, n: int) -> tuple[int, int, bool]:
    """Skip whole DataRow/CopyData messages from pos: (next pos, rows skipped, whether the
    message at next pos is a row that runs past the data)."""
    unpack = _U32.unpack_from
    rows = 0
    while pos + 5 <= n and data[pos] in (0x44, 0x64):
        length = unpack(data, pos + 1)[0]
        if length < 4:
            raise m.ProtocolError(f"upstream sent a row with length {length}")
        end = pos + 1 + length
        if end > n:
            return pos, rows, True
        rows += 1
        pos = end
    return pos, rows, False


def _denied_error(rule: str, problem: str | None) -> bytes:
    if problem is not None:
        return m.error_response(
            "42501",
            f"tapegate cannot check this statement against the target's guardrails, so it was "
            f"not run: {problem}",
            severity="ERROR",
            hint="Statements on this target are checked before they run, and one the check "
            "cannot read is refused; the attempt was recorded.",
        )
    return m.error_response(
        "42501",
        f"statement blocked by tapegate guardrail ({rule})",
        severity="ERROR",
        hint="This target's policy denies such statements; the attempt was recorded. "
        "Ask the target's owner if you need it.",
    )


def _safe(fn: Callable[[bytes], Any], body: bytes, default: Any) -> Any:
    """Decode an upstream message for an event; a malformed one makes no event, not a crash."""
    try:
        return fn(body)
    except m.ProtocolError:
        return default

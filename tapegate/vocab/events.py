"""Every event type a tape can carry, with its attributes: the one registry.

Emitters name a type as `EventType.X`; docs/FORMAT.md's vocabulary is generated from
`EVENT_TYPES` (`event_type_list`), and tests keep both honest: no event is written under a name
this registry lacks, and the protocol tests check every event they record against its entry
(type, direction, protocol, attribute names). An attribute marked "(when ...)" is present only
then. Any event may also carry the writer's `trimmed` (and `original_bytes`), listed once in
`TRIM_ATTRS`, not under each type.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class EventType(StrEnum):
    # shared by several protocols
    AUTH = "auth"
    BLOCKED = "blocked"
    PROTOCOL_ERROR = "protocol_error"
    UPSTREAM_ERROR = "upstream_error"
    REFUSAL_SUMMARY = "refusal_summary"
    # postgres
    STARTUP = "startup"
    UPSTREAM = "upstream"
    CANCEL_REQUEST = "cancel_request"
    QUERY = "query"
    PARSE = "parse"
    BIND = "bind"
    EXECUTE = "execute"
    FUNCTION_CALL = "function_call"
    TERMINATE = "terminate"
    COPY_FAIL = "copy_fail"
    RESULT = "result"
    ERROR = "error"
    NOTICE = "notice"
    NOTIFICATION = "notification"
    COPY = "copy"
    # ssh
    PTY = "pty"
    ENV = "env"
    SHELL = "shell"
    EXEC = "exec"
    SUBSYSTEM = "subsystem"
    EOF = "eof"
    BREAK = "break"
    SIGNAL = "signal"
    RESIZE = "resize"
    EXIT = "exit"
    PORT_FORWARD = "port_forward"
    FORWARD_CLOSED = "forward_closed"
    SFTP = "sftp"
    SFTP_PROTOCOL_ERROR = "sftp_protocol_error"
    SCP = "scp"
    SCP_PROTOCOL_ERROR = "scp_protocol_error"
    # http (and its WebSocket upgrade)
    REQUEST = "request"
    RESPONSE = "response"
    WS_MESSAGE = "ws_message"
    WS_CLOSE = "ws_close"
    WS_PROTOCOL_ERROR = "ws_protocol_error"
    # mcp
    MCP_REQUEST = "mcp_request"
    MCP_RESPONSE = "mcp_response"
    MCP_NOTIFICATION = "mcp_notification"
    MCP_CANCEL = "mcp_cancel"
    MCP_TOOLS = "mcp_tools"
    MCP_SERVER_START = "mcp_server_start"
    MCP_SERVER_STOP = "mcp_server_stop"
    MCP_SERVER_EXIT = "mcp_server_exit"
    MCP_STDERR = "mcp_stderr"


ALL = ("postgres", "ssh", "http", "mcp")
PG, SSH, HTTP, MCP = ("postgres",), ("ssh",), ("http",), ("mcp",)
C2S, S2C, NONE = ("c2s",), ("s2c",), (None,)
EITHER = ("c2s", "s2c")


@dataclass(frozen=True, slots=True)
class EventSpec:
    protocols: tuple[str, ...]  # the protocols whose tapes carry it
    dirs: tuple[str | None, ...]  # the `dir` values it is written with (None: no direction)
    summary: str  # what happened, as an auditor reads it
    attrs: dict[str, str]  # attribute name: what it holds


TRIM_ATTRS = {
    "trimmed": "true when the event was over 16 KiB as JSON and its strings were cut to 4,096 "
    "characters each (the bytes are in the sealed frames regardless)",
    "original_bytes": "the event's size as JSON before trimming, when even cut strings did not "
    "fit: `attrs` is then only `trimmed` and `original_bytes`",
}

_SQL = {
    "sql": "the statement text, the first `recording.sql_cap` characters",
    "kinds": "the statements' first words (`SELECT`, `DROP`…); `[]` when none could be named",
    "unchecked": "why the text could not be parsed (when it could not)",
    "sql_truncated": "true (when the text is longer than `sql_cap`)",
    "sql_length": "the text's length in characters (when `sql_truncated`)",
}
_ENV = {"env": "name → value of the environment passed on (when any)"}
_BODY = {
    "body": "the first `recording.body_cap` bytes of the body, as UTF-8 text or base64 (when "
    "there is a body)",
    "body_encoding": "`base64` (when the kept bytes are not UTF-8)",
    "body_truncated": "true (when the body is longer than `body_cap`)",
}

EVENT_TYPES: dict[EventType, EventSpec] = {
    EventType.AUTH: EventSpec(
        ALL,
        NONE,
        "the caller's admission: token, target, groups, credential",
        {
            "result": "`ok` (this session) or `refused` (a tape of its own, ended `refused`)",
            "method": "how the token came: `oidc`, or the SSH method (`password`, "
            "`keyboard-interactive`)",
            "subject": "the token's subject (when `ok`)",
            "groups": "the token's groups (when `ok`)",
            "refusal": "why, as a kind: `tls_required`, `unknown_target`, `no_token`, `bad_token`, "
            "`groups`, `archive_failing`, `no_credential`, or a protocol's own "
            "(`protocol`, `path_escape`, `malformed`, `unknown_path`, `too_large`, `port_forward`) "
            "(when `refused`)",
            "reason": "the refusal as the client was told it (when `refused`)",
            "tls": "whether the client's connection to the gateway is TLS (not SSH)",
            "sqlstate": "the SQLSTATE the client was sent (when a PostgreSQL login is refused)",
            "status": "the HTTP status the client was sent (when an HTTP or MCP request is "
            "refused)",
            "connection": "the SSH connection's id (16 hex digits), shared by its channels' tapes",
            "channel": "the SSH channel asked for: `session` or `port_forward`",
        },
    ),
    EventType.BLOCKED: EventSpec(
        ("postgres", "ssh", "mcp"),
        C2S,
        "a guardrail denied what the client sent: it never reached the target",
        {
            "rule": "the rule that denied it",
            **{k: f"{v} (PostgreSQL Query or Parse)" for k, v in _SQL.items()},
            "statement": "the prepared statement's name (when a Parse was denied)",
            "oid": "the function's OID (when a FunctionCall was denied)",
            "args": "the FunctionCall's first 100 arguments, each null or `{hex, length}` "
            "(when one was denied)",
            "arg_count": "how many arguments the FunctionCall had (when one was denied)",
            "startup": "true (when the startup packet's settings were denied)",
            "command": "the command line, the first `body_cap` characters (an SSH exec)",
            "term": "the terminal type (an SSH pty request after the session started)",
            "name": "the variable's name (an SSH env request)",
            "value": "the variable's value, the first `body_cap` characters (an SSH env request)",
            "tool": "the tool called; null for a batch's other requests, blocked with it (MCP)",
        },
    ),
    EventType.PROTOCOL_ERROR: EventSpec(
        ("postgres", "http", "mcp"),
        EITHER,
        "a side broke its protocol: `c2s` the client, `s2c` the target",
        {
            "message": "what was wrong",
        },
    ),
    EventType.UPSTREAM_ERROR: EventSpec(
        ALL,
        (None, "s2c"),
        "the gateway could not reach, log in to or keep "
        "talking to the target (`s2c`: it closed mid-answer)",
        {
            "reason": "why, as the client was told it",
        },
    ),
    EventType.REFUSAL_SUMMARY: EventSpec(
        ALL,
        NONE,
        "refusals from one source past "
        "`limits.refusals_per_source`, folded into one (target "
        "`(refusals)`, ended `refused`)",
        {
            "source": "an IPv4 address, an IPv6 /64, or `(many sources)`",
            "count": "how many refusals were folded",
            "first_ns": "the first one's time (Unix ns)",
            "last_ns": "the last one's time (Unix ns)",
            "by_reason": "refusal message (first 200 characters) → count",
            "by_protocol": "protocol → count",
            "subjects": "up to ten distinct verified subjects",
            "targets": "up to ten distinct target names asked for",
        },
    ),
    # -- postgres --
    EventType.STARTUP: EventSpec(
        PG,
        C2S,
        "the client's startup packet",
        {
            "user": "the `user` parameter (null when absent)",
            "database": "the `database` parameter, which names the target (null when absent)",
            "application_name": "the `application_name` parameter (null when absent)",
            "tls": "whether the client's connection is TLS",
            "params": "every other parameter → its value, the first `recording.param_cap` "
            "characters",
            "settings": "setting (lowercase) → value the server would apply, from the parameters "
            "and `options`",
        },
    ),
    EventType.UPSTREAM: EventSpec(
        PG,
        NONE,
        "the gateway logged in to the target with its own credential",
        {
            "method": "`scram-sha-256`, `scram-sha-256-plus`, `md5`, `cleartext` or `trust`",
            "tls": "whether the connection to the target is TLS",
            "channel_binding": "whether SCRAM bound the login to the target's TLS certificate",
        },
    ),
    EventType.CANCEL_REQUEST: EventSpec(
        PG,
        C2S,
        "a CancelRequest for this session, on a connection of its own (forwarded once recorded)",
        {
            "from": "that connection's address, host:port",
        },
    ),
    EventType.QUERY: EventSpec(PG, C2S, "a simple Query message, forwarded", _SQL),
    EventType.PARSE: EventSpec(
        PG,
        C2S,
        "a Parse message (a statement prepared), forwarded",
        {
            "statement": 'the prepared statement\'s name, `""` for the unnamed one',
            **_SQL,
        },
    ),
    EventType.BIND: EventSpec(
        PG,
        C2S,
        "a Bind message: parameters bound to a statement",
        {
            "portal": 'the portal\'s name, `""` for the unnamed one',
            "statement": "the prepared statement's name",
            "params": "one per parameter: null; text (the first `param_cap` bytes); "
            "`{text, length}` when cut; `{binary, length}` (hex) for a binary value",
        },
    ),
    EventType.EXECUTE: EventSpec(
        PG,
        C2S,
        "an Execute message: a portal run",
        {
            "portal": "the portal's name",
            "max_rows": "the row limit asked for, 0 for none",
            "sql": "the portal's statement text, the first `sql_cap` characters; null when unknown",
        },
    ),
    EventType.FUNCTION_CALL: EventSpec(
        PG,
        C2S,
        "a FunctionCall message, forwarded",
        {
            "oid": "the function's OID",
            "args": "the first 100 arguments, each null or `{hex, length}` (the first `param_cap` "
            "bytes)",
            "arg_count": "how many arguments there were",
        },
    ),
    EventType.TERMINATE: EventSpec(PG, C2S, "the client's Terminate message", {}),
    EventType.COPY_FAIL: EventSpec(
        PG,
        C2S,
        "the client aborted a COPY FROM STDIN",
        {
            "message": "the client's reason",
        },
    ),
    EventType.RESULT: EventSpec(
        PG,
        S2C,
        "a statement completed (CommandComplete, EmptyQueryResponse or PortalSuspended)",
        {
            "tag": "the command tag (`SELECT 3`), `EMPTY` or `SUSPENDED`",
            "rows": "rows (DataRow or CopyData) sent for it (when it answers a known request)",
            "columns": "the first 100 column names (when it answers a known request)",
            "duration_ns": "from the request to this (when it answers a known request)",
            "sql": "the text it answers, the first `sql_cap` characters (when known)",
        },
    ),
    EventType.ERROR: EventSpec(
        PG,
        S2C,
        "the server sent an ErrorResponse",
        {
            "sqlstate": "the SQLSTATE (null when absent)",
            "severity": "`ERROR`, `FATAL` or `PANIC`",
            "message": "the primary message",
            "duration_ns": "since the request it answers (when one was waiting)",
            "sql": "that request's text, the first `sql_cap` characters (when one was waiting)",
        },
    ),
    EventType.NOTICE: EventSpec(
        PG,
        S2C,
        "the server sent a NoticeResponse",
        {
            "severity": "`WARNING`, `NOTICE`…",
            "sqlstate": "the SQLSTATE",
            "message": "the primary message",
        },
    ),
    EventType.NOTIFICATION: EventSpec(
        PG,
        S2C,
        "a LISTEN/NOTIFY notification was delivered",
        {
            "channel": "the channel's name",
            "payload": "the payload, the first 1,024 characters",
        },
    ),
    EventType.COPY: EventSpec(
        PG,
        S2C,
        "the server started a COPY",
        {
            "direction": "`in` (the client sends the data), `out` or `both`",
        },
    ),
    # -- ssh --
    EventType.PTY: EventSpec(
        SSH,
        NONE,
        "the client asked for a terminal",
        {
            "term": "the terminal type",
            "cols": "width in characters",
            "rows": "height in rows",
        },
    ),
    EventType.ENV: EventSpec(
        SSH,
        C2S,
        "an env request `allow_env` let through",
        {
            "name": "the variable's name",
            "value": "its value, the first `body_cap` characters",
        },
    ),
    EventType.SHELL: EventSpec(SSH, C2S, "the client asked for a shell", _ENV),
    EventType.EXEC: EventSpec(
        SSH,
        C2S,
        "the client ran a command the guardrails allowed",
        {
            "command": "the command line, the first `body_cap` characters",
            **_ENV,
        },
    ),
    EventType.SUBSYSTEM: EventSpec(
        SSH,
        C2S,
        "the client asked for a subsystem (`sftp`…)",
        {
            "name": "the subsystem's name",
            **_ENV,
        },
    ),
    EventType.EOF: EventSpec(SSH, C2S, "the client's input ended", {}),
    EventType.BREAK: EventSpec(SSH, C2S, "the client sent a break", {"ms": "its length in ms"}),
    EventType.SIGNAL: EventSpec(
        SSH,
        C2S,
        "the client signalled the remote process",
        {
            "name": "the signal (`INT`, `TERM`…)",
        },
    ),
    EventType.RESIZE: EventSpec(
        SSH,
        C2S,
        "the client's terminal changed size",
        {
            "cols": "width in characters",
            "rows": "height in rows",
        },
    ),
    EventType.EXIT: EventSpec(
        SSH,
        S2C,
        "the target's channel ended",
        {
            "status": "the exit status; null when none came (a signal, or a close)",
            "signal": "the signal that ended the process (when one did)",
            "stdin_bytes": "bytes the client sent",
            "stdout_bytes": "stdout bytes sent to the client",
            "stderr_bytes": "stderr bytes sent to the client",
            "stderr": "the head of stderr, the first `body_cap` bytes as UTF-8 (when any)",
        },
    ),
    EventType.PORT_FORWARD: EventSpec(
        SSH,
        NONE,
        "the client asked for a port forward",
        {
            "kind": "`local` (`ssh -L`) or `remote` (`ssh -R`, always refused)",
            "dest_host": "the host to reach (when `local`)",
            "dest_port": "the port to reach (when `local`)",
            "orig_host": "the originator's host, as the client said (when `local`)",
            "orig_port": "the originator's port (when `local`)",
            "listen_host": "the host to listen on (when `remote`)",
            "listen_port": "the port to listen on (when `remote`)",
            "result": "`allowed` (this tape) or `refused` (a refusal's tape)",
            "reason": "why it was refused (when `refused`)",
        },
    ),
    EventType.FORWARD_CLOSED: EventSpec(
        SSH,
        NONE,
        "a forwarded connection closed",
        {
            "bytes_in": "bytes the client sent towards the target",
            "bytes_out": "bytes the target sent to the client",
        },
    ),
    EventType.SFTP: EventSpec(
        SSH,
        NONE,
        "an SFTP operation answered, or a file closed",
        {
            "op": "`upload`, `download`, `open`, `remove`, `mkdir`, `rmdir`, `setstat`, `rename`, "
            "`symlink` or `list`",
            "path": "the path as the client sent it",
            "to": "the second path (when `rename` or `symlink`)",
            "mode": "`read`, `write` or `append` (when a file was opened)",
            "bytes": "bytes written or read (when a file was closed)",
            "sha256": "SHA-256 of the bytes that crossed the gateway; null when the offsets were "
            "not sequential (when `upload` or `download`)",
            "sha256_note": "why `sha256` is null (when it is)",
            "result": "`ok`, `error CODE: message`, or `unclosed` (the channel ended first)",
        },
    ),
    EventType.SFTP_PROTOCOL_ERROR: EventSpec(
        SSH,
        NONE,
        "the channel stopped parsing as SFTP: relaying goes on, watching stops",
        {"message": "what"},
    ),
    EventType.SCP: EventSpec(
        SSH,
        NONE,
        "a file copied with the scp protocol, or its error",
        {
            "op": "`upload`, `download` or `error`",
            "path": "the file's path within the copy (when `upload` or `download`)",
            "target": "the scp command's path argument (not a tapegate target)",
            "mode": "the file's permissions, octal (when `upload` or `download`)",
            "bytes": "the file's bytes that crossed the gateway (when `upload` or `download`)",
            "sha256": "SHA-256 of them; null when the file was not complete",
            "result": "`ok`, the error text, `incomplete` or `unanswered`",
        },
    ),
    EventType.SCP_PROTOCOL_ERROR: EventSpec(
        SSH,
        NONE,
        "the channel stopped parsing as scp: relaying goes on, watching stops",
        {"message": "what"},
    ),
    # -- http --
    EventType.REQUEST: EventSpec(
        ("http", "mcp"),
        C2S,
        "an HTTP request, once its body was in",
        {
            "method": "the HTTP method",
            "url": "the target of the request as the client sent it, `access_token` removed",
            "upstream_path": "the path forwarded to the target (not on a refused request)",
            "http_version": "`HTTP/1.1` or `HTTP/1.0`",
            "headers": "`[name, value]` pairs as sent; credentials and cookies `[redacted]`",
            "body_length": "the body's bytes (not on a refused request)",
            "content_type": 'the Content-Type, `""` when none (not on a refused request)',
            **_BODY,
        },
    ),
    EventType.RESPONSE: EventSpec(
        ("http", "mcp"),
        S2C,
        "the answer the client got: the target's, or the gateway's own",
        {
            "status": "the HTTP status (101 for a WebSocket switch)",
            "reason": "the reason phrase",
            "http_version": "the target's HTTP version",
            "headers": "`[name, value]` pairs as received, credential echoes masked",
            "duration_ns": "from the request's head to the answer's end",
            "body_length": "body bytes sent to the client",
            "content_type": 'the Content-Type, `""` when none',
            **_BODY,
            "incomplete": "true (when the answer did not end: the target or the client left)",
            "client_closed": "true (when the client left an event stream)",
            "credential_masked": "how many echoes of the credential were masked (when any)",
            "unmasked": "why the body was not checked for the credential (when compressed)",
            "gateway": "true (MCP: when the gateway answered in its own name)",
        },
    ),
    EventType.WS_MESSAGE: EventSpec(
        HTTP,
        EITHER,
        "one WebSocket message",
        {
            "opcode": "`text` or `binary`",
            "length": "the message's bytes",
            "data": "its first `body_cap` bytes: text, or base64 for binary",
            "truncated": "true (when longer than `body_cap`)",
        },
    ),
    EventType.WS_CLOSE: EventSpec(
        HTTP,
        EITHER,
        "a WebSocket close frame",
        {
            "code": "the close code",
            "reason": "the close reason",
        },
    ),
    EventType.WS_PROTOCOL_ERROR: EventSpec(
        HTTP,
        EITHER,
        "that side stopped parsing as WebSocket: relaying goes on, watching stops",
        {"message": "what"},
    ),
    # -- mcp --
    EventType.MCP_REQUEST: EventSpec(
        MCP,
        EITHER,
        "a JSON-RPC request: the agent's (`c2s`, judged before it "
        "is forwarded) or the server's to the agent (`s2c`)",
        {
            "id": "the JSON-RPC id as sent",
            "method": "the method",
            "tool": "the tool (when `tools/call`)",
            "arguments": "the tool's arguments as JSON text, the first `body_cap` characters (when "
            "`tools/call`)",
            "arguments_truncated": "true (when `arguments` was cut)",
            "params": "the params as JSON text, the first `body_cap` characters (when any, and not "
            "`tools/call`)",
            "input_responses": "`params.inputResponses` as JSON text (when a retry carries them)",
            "traceparent": "`params._meta.traceparent` (when given)",
            "protocol_version": "the MCP protocol version of the session (when known)",
            "mcp_session": "the `Mcp-Session-Id` (when known)",
        },
    ),
    EventType.MCP_RESPONSE: EventSpec(
        MCP,
        ("c2s", "s2c", None),
        "a JSON-RPC answer: the server's (`s2c`), the agent's to "
        "the server (`c2s`), or the gateway's to a blocked call",
        {
            "id": "the id answered (null when an HTTP error answered the call)",
            "outcome": "`ok`, `error`, `is_error`, `input_required` or `blocked`",
            "method": "the call's method (when known)",
            "tool": "the tool called (when `tools/call`)",
            "duration_ns": "since the call was sent (when known)",
            "resumed": "true (when it came on another stream than the one that asked)",
            "replayed": "true (when a resumed stream replayed an answer already given)",
            "id_key": "the call's id as JSON text (when an HTTP error status answered it)",
            "http_status": "the HTTP status that answered the call instead (when one did)",
            "error_code": "the JSON-RPC error code (when `error` or `blocked`)",
            "error": "the error's message, the first `body_cap` characters (when `error`)",
            "reason": "why the gateway blocked the call (when `blocked`)",
            "input_requests": "`result.inputRequests` as JSON text (when `input_required`)",
            "request_state_bytes": "the size of `result.requestState` (when `input_required`)",
            "structured": "`result.structuredContent` as JSON text (when present)",
            "text": "the result's text content, joined by newlines (when any)",
            "action": "an elicitation's answer: `accept`, `decline` or `cancel` (when one)",
            "result": "the agent's result as JSON text (`c2s`)",
            "unread": "why the answer was passed on unread (then the only attribute)",
        },
    ),
    EventType.MCP_NOTIFICATION: EventSpec(
        MCP,
        EITHER,
        "a JSON-RPC notification, or the session ended by DELETE",
        {
            "method": "the method; `(session end: DELETE)` for a DELETE",
            "params": "the params as JSON text, the first `body_cap` characters (when any)",
        },
    ),
    EventType.MCP_CANCEL: EventSpec(
        MCP,
        EITHER,
        "a call given up: the agent cancelled it (`c2s`), or its "
        "answer's stream closed first (`s2c`)",
        {
            "method": "`notifications/cancelled` (`c2s`), the call's method (`s2c`)",
            "params": "the notification's params as JSON text (`c2s`)",
            "id": "the request id cancelled (`c2s`, when it names a pending call)",
            "call": "that call's method (`c2s`, when it names a pending call)",
            "tool": "the call's tool, null when not `tools/call`",
            "duration_ns": "how long the call had waited",
            "id_key": "the call's id as JSON text (`s2c`)",
            "reason": "why (`s2c`)",
        },
    ),
    EventType.MCP_TOOLS: EventSpec(
        MCP,
        S2C,
        "a tools catalogue, as the client was shown it",
        {
            "tools": "`{name, sha256}` per tool: SHA-256 of its name, description and input schema",
            "hidden": "the tools the target's policy removed",
            "tool_changed": "tools whose digest changed since last listed (when any)",
        },
    ),
    EventType.MCP_SERVER_START: EventSpec(
        MCP,
        NONE,
        "the gateway started a `command:` target's process",
        {
            "command": "the argv run",
            "pid": "its process id",
            "env": "the names of the variables it was given, sorted (never the values)",
        },
    ),
    EventType.MCP_SERVER_STOP: EventSpec(
        MCP,
        NONE,
        "the gateway stopped the process",
        {
            "reason": "`its tape ended`, or its `process_lifetime_s` passed",
        },
    ),
    EventType.MCP_SERVER_EXIT: EventSpec(
        MCP,
        NONE,
        "the process ended",
        {
            "status": "its return code; -N when killed by signal N",
            "reason": "`exit status N` or `killed by SIGNAME`",
            "stopped": "whether the gateway had stopped it",
            "stderr_bytes": "bytes it wrote to stderr in all",
        },
    ),
    EventType.MCP_STDERR: EventSpec(
        MCP,
        S2C,
        "what the process wrote to stderr (the first MiB, credentials masked)",
        {
            "text": "the bytes as UTF-8",
            "truncated": "a sentence, when the first MiB was reached (then nothing more is kept)",
        },
    ),
}


def event_type_list() -> str:
    """docs/FORMAT.md's vocabulary of event types, as Markdown."""
    groups = [("Several protocols", lambda s: len(s.protocols) > 1)] + [
        (name, lambda s, p=p: s.protocols == (p,))
        for name, p in (
            ("PostgreSQL", "postgres"),
            ("SSH", "ssh"),
            ("HTTP", "http"),
            ("MCP", "mcp"),
        )
    ]
    lines: list[str] = []
    for title, belongs in groups:
        lines += ["", f"**{title}**", ""]
        for kind, spec in EVENT_TYPES.items():
            if not belongs(spec):
                continue
            dirs = " or ".join("none" if d is None else d for d in spec.dirs)
            where = ", ".join(spec.protocols)
            lines.append(f"- `{kind.value}` ({where}; `dir` {dirs}): {spec.summary}.")
            lines += [f"  - `{name}`: {what}" for name, what in spec.attrs.items()]
    return "\n".join(lines[1:]) + "\n"

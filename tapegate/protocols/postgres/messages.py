"""PostgreSQL wire messages (protocol 3.0): framing, and encode/decode for the ones the gateway
reads or writes. No I/O here: bytes in, typed values out, and back.

Most relayed messages are never decoded at all: the relay only needs their type byte and length
(see `MessageReader`). The types below are the ones whose contents the gateway looks at.
"""

from __future__ import annotations

import functools
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import ParamSpec, TypeVar

PROTOCOL_3 = 196608  # 3.0
SSL_REQUEST = 80877103
GSSENC_REQUEST = 80877104
CANCEL_REQUEST = 80877102

MAX_STARTUP_BYTES = 10_000  # what PostgreSQL itself accepts for a startup packet
DEFAULT_MAX_MESSAGE_BYTES = 64 * 1024 * 1024

_I32 = struct.Struct(">i")
_U32 = struct.Struct(">I")
_I16 = struct.Struct(">h")


class ProtocolError(ValueError):
    """Bytes that break the protocol. The message is safe to show to the peer.

    The only exception a decoder here raises, whatever the bytes (the fuzz tests hold it to
    that): a truncated or inconsistent message becomes one of these, never a struct.error.
    """


_P = ParamSpec("_P")
_R = TypeVar("_R")


def _typed(what: str) -> Callable[[Callable[_P, _R]], Callable[_P, _R]]:
    def wrap(decode: Callable[_P, _R]) -> Callable[_P, _R]:
        @functools.wraps(decode)
        def decoded(*args: _P.args, **kwargs: _P.kwargs) -> _R:
            try:
                return decode(*args, **kwargs)
            except ProtocolError:
                raise
            except (struct.error, IndexError, ValueError, OverflowError):
                raise ProtocolError(f"malformed {what} message") from None

        return decoded

    return wrap


# -- framing -------------------------------------------------------------------------------------


class MessageReader:
    """Splits a stream into (type, body) messages. Feed bytes; take complete messages.

    Holds back an incomplete message until its last byte arrives. A declared length below 4 or
    above `max_bytes` is a ProtocolError: nothing is buffered without bound.
    """

    def __init__(self, max_bytes: int = DEFAULT_MAX_MESSAGE_BYTES) -> None:
        self._buf = bytearray()
        self._max = max_bytes

    def feed(self, data: bytes) -> None:
        self._buf += data

    @property
    def buffered(self) -> int:
        return len(self._buf)

    def messages(self) -> Iterator[tuple[int, bytes, bytes]]:
        """Yield (type, body, whole message bytes) for each complete message buffered."""
        buf = self._buf
        pos = 0
        n = len(buf)
        try:
            while n - pos >= 5:
                length = _U32.unpack_from(buf, pos + 1)[0]
                if length < 4 or length > self._max:
                    raise ProtocolError(
                        f"message {chr(buf[pos])!r} declares length {length}, "
                        f"outside 4..{self._max}"
                    )
                end = pos + 1 + length
                if end > n:
                    break
                whole = bytes(buf[pos:end])
                yield buf[pos], whole[5:], whole
                pos = end
        finally:
            del buf[:pos]


def read_startup(buf: bytes | bytearray) -> tuple[int, bytes] | None:
    """Parse one untyped startup-phase packet from the start of `buf`.

    Returns (packet length, body) when complete, None when more bytes are needed.
    """
    if len(buf) < 4:
        return None
    length = _U32.unpack_from(buf, 0)[0]
    if length < 8 or length > MAX_STARTUP_BYTES:
        raise ProtocolError(f"invalid startup packet length {length}")
    if len(buf) < length:
        return None
    return length, bytes(buf[4:length])


# -- startup phase (frontend) ----------------------------------------------------------------


@dataclass(frozen=True)
class SSLRequest:
    def encode(self) -> bytes:
        return struct.pack(">II", 8, SSL_REQUEST)


@dataclass(frozen=True)
class GSSENCRequest:
    pass


@dataclass(frozen=True)
class CancelRequest:
    pid: int
    secret: int

    def encode(self) -> bytes:
        return struct.pack(">IIii", 16, CANCEL_REQUEST, self.pid, self.secret)


@dataclass(frozen=True)
class StartupMessage:
    params: dict[str, str] = field(default_factory=dict)
    minor: int = 0  # protocol 3.minor the client asked for; the gateway speaks 3.0

    @property
    def needs_negotiation(self) -> bool:
        """A newer minor or protocol options (`_pq_.*`): answer NegotiateProtocolVersion."""
        return self.minor > 0 or any(k.startswith("_pq_.") for k in self.params)

    def encode(self) -> bytes:
        body = _I32.pack(PROTOCOL_3)
        for k, v in self.params.items():
            body += k.encode() + b"\0" + v.encode() + b"\0"
        body += b"\0"
        return _U32.pack(len(body) + 4) + body


StartupPacket = SSLRequest | GSSENCRequest | CancelRequest | StartupMessage


@_typed("startup")
def decode_startup(body: bytes) -> StartupPacket:
    if len(body) < 4:
        raise ProtocolError("startup packet too short")
    code = _I32.unpack_from(body, 0)[0]
    if code == SSL_REQUEST and len(body) == 4:
        return SSLRequest()
    if code == GSSENC_REQUEST and len(body) == 4:
        return GSSENCRequest()
    if code == CANCEL_REQUEST and len(body) == 12:
        pid, secret = struct.unpack_from(">ii", body, 4)
        return CancelRequest(pid, secret)
    major, minor = code >> 16, code & 0xFFFF
    if major != 3:
        raise ProtocolError(f"unsupported frontend protocol {major}.{minor}: 3.0 is required")
    parts = body[4:].split(b"\0")
    # The list ends with a lone terminator (two empty strings after the split).
    if len(parts) < 2 or parts[-1] != b"" or parts[-2] != b"" or len(parts) % 2:
        raise ProtocolError("malformed startup parameters")
    params: dict[str, str] = {}
    try:
        for i in range(0, len(parts) - 2, 2):
            params[parts[i].decode()] = parts[i + 1].decode()
    except UnicodeDecodeError:
        raise ProtocolError("startup parameters are not UTF-8") from None
    return StartupMessage(params, minor)


def negotiate_protocol_version(options: list[str]) -> bytes:
    """NegotiateProtocolVersion: the gateway speaks 3.0 and none of the `_pq_` options."""
    body = _I32.pack(PROTOCOL_3) + _I32.pack(len(options))
    body += b"".join(cstr(o) for o in options)
    return message(b"v", body)


# -- building messages ----------------------------------------------------------------------


def message(tag: bytes, body: bytes = b"") -> bytes:
    return tag + _U32.pack(len(body) + 4) + body


def cstr(text: str) -> bytes:
    return text.encode() + b"\0"


def auth_request(code: int, extra: bytes = b"") -> bytes:
    return message(b"R", _I32.pack(code) + extra)


AUTH_OK = 0
AUTH_CLEARTEXT = 3
AUTH_MD5 = 5
AUTH_SASL = 10
AUTH_SASL_CONTINUE = 11
AUTH_SASL_FINAL = 12


def parameter_status(name: str, value: str) -> bytes:
    return message(b"S", cstr(name) + cstr(value))


def backend_key_data(pid: int, secret: int) -> bytes:
    return message(b"K", struct.pack(">ii", pid, secret))


def ready_for_query(status: bytes = b"I") -> bytes:
    return message(b"Z", status)


def password_message(secret: bytes) -> bytes:
    return message(b"p", secret + b"\0")


def sasl_initial_response(mechanism: str, data: bytes) -> bytes:
    return message(b"p", cstr(mechanism) + _I32.pack(len(data)) + data)


def sasl_response(data: bytes) -> bytes:
    return message(b"p", data)


SYNC = message(b"S")
TERMINATE = message(b"X")


def error_response(
    sqlstate: str, text: str, *, severity: str = "FATAL", hint: str | None = None
) -> bytes:
    """ErrorResponse (or, with tag N, a notice): what psql shows as `FATAL:  <text>`."""
    fields = [b"S" + cstr(severity), b"V" + cstr(severity), b"C" + cstr(sqlstate)]
    fields.append(b"M" + cstr(text))
    if hint:
        fields.append(b"H" + cstr(hint))
    return message(b"E", b"".join(fields) + b"\0")


# -- decoding the messages the gateway reads ----------------------------------------------------


def _cstr_at(body: bytes, pos: int) -> tuple[str, int]:
    raw, end = _cbytes_at(body, pos)
    return raw.decode("utf-8", "replace"), end


def _cbytes_at(body: bytes, pos: int) -> tuple[bytes, int]:
    end = body.find(b"\0", pos)
    if end < 0:
        raise ProtocolError("unterminated string")
    return body[pos:end], end + 1


@_typed("ErrorResponse")
def decode_fields(body: bytes) -> dict[str, str]:
    """ErrorResponse / NoticeResponse fields by their one-letter code."""
    out: dict[str, str] = {}
    pos = 0
    while pos < len(body) and body[pos] != 0:
        code = chr(body[pos])
        value, pos = _cstr_at(body, pos + 1)
        out[code] = value
    return out


@_typed("Query")
def decode_query(body: bytes) -> str:
    text, _ = _cstr_at(body, 0)
    return text


@_typed("Query")
def query_text(body: bytes) -> bytes:
    """A Query's text as sent, in the session's client_encoding (the relay decodes it)."""
    return _cbytes_at(body, 0)[0]


@dataclass(frozen=True)
class Parse:
    statement: str
    sql: str
    param_types: tuple[int, ...]
    sql_bytes: bytes = b""  # as sent, in the session's client_encoding


@_typed("Parse")
def decode_parse(body: bytes) -> Parse:
    name, pos = _cstr_at(body, 0)
    raw, pos = _cbytes_at(body, pos)
    sql = raw.decode("utf-8", "replace")
    if len(body) < pos + 2:
        raise ProtocolError("Parse message truncated")
    (n,) = _I16.unpack_from(body, pos)
    if n < 0 or len(body) < pos + 2 + 4 * n:
        raise ProtocolError("Parse parameter types truncated")
    types = struct.unpack_from(f">{n}I", body, pos + 2)
    return Parse(name, sql, types, raw)


@dataclass(frozen=True)
class Bind:
    portal: str
    statement: str
    params: tuple[bytes | None, ...]
    formats: tuple[int, ...]  # per parameter: 0 text, 1 binary


@_typed("Bind")
def decode_bind(body: bytes) -> Bind:
    portal, pos = _cstr_at(body, 0)
    statement, pos = _cstr_at(body, pos)
    fmt_codes, params, _ = _formats_and_values(body, pos, "Bind parameter")
    nf, np_ = len(fmt_codes), len(params)
    if nf == 0:
        formats = (0,) * np_
    elif nf == 1:
        formats = (fmt_codes[0],) * np_
    elif nf == np_:
        formats = tuple(fmt_codes)
    else:
        raise ProtocolError("Bind format codes do not match the parameters")
    return Bind(portal, statement, tuple(params), formats)


def _formats_and_values(
    body: bytes, pos: int, what: str
) -> tuple[tuple[int, ...], list[bytes | None], int]:
    """What Bind and FunctionCall share: Int16 n, n format codes, Int16 m, then m values, each
    an Int32 length (-1: NULL) and its bytes. Returns the codes, the values, the next position."""
    (nf,) = _I16.unpack_from(body, pos)
    if nf < 0:
        raise ProtocolError(f"{what} format count is negative")
    codes = struct.unpack_from(f">{nf}h", body, pos + 2)
    pos += 2 + 2 * nf
    (nv,) = _I16.unpack_from(body, pos)
    if nv < 0:
        raise ProtocolError(f"{what} count is negative")
    pos += 2
    values: list[bytes | None] = []
    for _ in range(nv):
        (size,) = _I32.unpack_from(body, pos)
        pos += 4
        if size == -1:
            values.append(None)
            continue
        if size < 0 or pos + size > len(body):
            raise ProtocolError(f"{what} runs past the message")
        values.append(body[pos : pos + size])
        pos += size
    return codes, values, pos


@_typed("Execute")
def decode_execute(body: bytes) -> tuple[str, int]:
    portal, pos = _cstr_at(body, 0)
    if len(body) < pos + 4:
        raise ProtocolError("Execute message truncated")
    return portal, _I32.unpack_from(body, pos)[0]


@dataclass(frozen=True)
class FunctionCall:
    oid: int
    args: tuple[bytes | None, ...]
    formats: tuple[int, ...]
    result_format: int


@_typed("FunctionCall")
def decode_function_call(body: bytes) -> FunctionCall:
    """The fast-path call: a function's oid and its arguments, bypassing SQL."""
    (oid,) = _U32.unpack_from(body, 0)
    formats, args, pos = _formats_and_values(body, 4, "FunctionCall argument")
    (result_format,) = _I16.unpack_from(body, pos)
    return FunctionCall(oid, tuple(args), tuple(formats), result_format)


@_typed("RowDescription")
def decode_row_description(body: bytes) -> list[str]:
    (n,) = _I16.unpack_from(body, 0)
    pos, names = 2, []
    for _ in range(n):
        name, pos = _cstr_at(body, pos)
        names.append(name)
        pos += 18
    return names


def data_row(values: list[bytes | None]) -> bytes:
    body = bytearray(_I16.pack(len(values)))
    for value in values:
        body += _I32.pack(-1) if value is None else _I32.pack(len(value)) + value
    return message(b"D", bytes(body))


@_typed("DataRow")
def decode_data_row(body: bytes) -> list[bytes | None]:
    """A DataRow's column values as sent (text or binary, as the query asked); None is NULL."""
    if len(body) < 2:
        raise ProtocolError("DataRow message truncated")
    (n,) = _I16.unpack_from(body, 0)
    pos, values = 2, []
    for _ in range(n):
        if len(body) < pos + 4:
            raise ProtocolError("DataRow message truncated")
        (length,) = _I32.unpack_from(body, pos)
        pos += 4
        if length < 0:
            values.append(None)
            continue
        if len(body) < pos + length:
            raise ProtocolError("DataRow value runs past the message")
        values.append(body[pos : pos + length])
        pos += length
    return values


@_typed("CommandComplete")
def decode_command_complete(body: bytes) -> str:
    tag, _ = _cstr_at(body, 0)
    return tag


@_typed("NotificationResponse")
def decode_notification(body: bytes) -> tuple[int, str, str]:
    (pid,) = _I32.unpack_from(body, 0)
    channel, pos = _cstr_at(body, 4)
    payload, _ = _cstr_at(body, pos)
    return pid, channel, payload


@_typed("ParameterStatus")
def decode_parameter_status(body: bytes) -> tuple[str, str]:
    name, pos = _cstr_at(body, 0)
    value, _ = _cstr_at(body, pos)
    return name, value


@_typed("BackendKeyData")
def decode_backend_key_data(body: bytes) -> tuple[int, int]:
    if len(body) != 8:
        raise ProtocolError("BackendKeyData of unexpected length")
    pid, secret = struct.unpack(">ii", body)
    return pid, secret


@_typed("Authentication")
def decode_auth(body: bytes) -> tuple[int, bytes]:
    if len(body) < 4:
        raise ProtocolError("Authentication message truncated")
    return _I32.unpack_from(body, 0)[0], body[4:]


@_typed("PasswordMessage")
def decode_password(body: bytes) -> bytes:
    """The cleartext password message body: the secret, NUL-terminated."""
    if not body.endswith(b"\0"):
        raise ProtocolError("password message is not NUL-terminated")
    return body[:-1]

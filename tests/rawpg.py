"""A minimal PostgreSQL client on a raw socket, for tests that need every byte it saw.

It speaks just enough: SSLRequest + TLS, StartupMessage, cleartext password, simple Query.
Everything sent after the password and everything received from AuthenticationOk on is kept,
so a test can compare them with the recorded frames.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import struct

from tapegate.protocols.postgres import messages as m


class RawPg:
    def __init__(self, host: str, port: int, *, tls: bool = True, timeout: float = 10) -> None:
        self.sock: socket.socket | ssl.SSLSocket = socket.create_connection((host, port), timeout)
        if tls:
            self.sock.sendall(m.SSLRequest().encode())
            assert self.sock.recv(1) == b"S"
            ctx = ssl.create_default_context()
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
            self.sock = ctx.wrap_socket(self.sock)
        self.sent = bytearray()  # after the password
        self.received = bytearray()  # from AuthenticationOk on
        self._buf = bytearray()
        self._authed = False

    def send_raw(self, data: bytes) -> None:
        self.sock.sendall(data)
        if self._authed:
            self.sent += data

    def login(self, target: str, token: str) -> list[tuple[int, bytes]]:
        self.send_raw(m.StartupMessage({"user": "agent", "database": target}).encode())
        tag, body = self.read_message()
        if tag != ord("R"):
            return [(tag, body)]
        self.send_raw(m.password_message(token.encode()))
        self._authed = True
        return self.read_until_ready()

    def query(self, sql: str) -> list[tuple[int, bytes]]:
        self.send_raw(m.message(b"Q", sql.encode() + b"\0"))
        return self.read_until_ready()

    def read_until_ready(self) -> list[tuple[int, bytes]]:
        out = []
        while True:
            tag, body = self.read_message()
            out.append((tag, body))
            if tag in (ord("Z"),) or (tag == ord("E") and b"SFATAL" in body):
                return out

    def read_message(self) -> tuple[int, bytes]:
        while True:
            if len(self._buf) >= 5:
                (length,) = struct.unpack_from(">I", self._buf, 1)
                if len(self._buf) >= 1 + length:
                    whole = bytes(self._buf[: 1 + length])
                    del self._buf[: 1 + length]
                    if whole[:1] == b"R" and whole[5:9] == b"\0\0\0\0":
                        self._authed = True
                    if self._authed:
                        self.received += whole
                    return whole[0], whole[5:]
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionError("gateway closed the connection")
            self._buf += data

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.send_raw(m.TERMINATE)
        self.sock.close()


def error_fields(messages: list[tuple[int, bytes]]) -> dict[str, str]:
    for tag, body in messages:
        if tag == ord("E"):
            return m.decode_fields(body)
    return {}

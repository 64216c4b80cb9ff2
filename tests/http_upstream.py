"""A real HTTP/1.1 API the tests put behind the gateway (the standard library's http.server)."""

from __future__ import annotations

import gzip
import json
import secrets
import ssl
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from gateway_task.tls import ensure_self_signed

API_KEY = "k-" + secrets.token_hex(16)  # made per run: tests look for it where it must not be


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, *args: Any) -> None:
        pass

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            out = bytearray()
            while True:
                size = int(self.rfile.readline().split(b";")[0], 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b""):
                        pass
                    return bytes(out)
                out += self.rfile.read(size)
                self.rfile.readline()
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _send(self, status: int, body: bytes, ctype: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        self._route(b"")

    def do_POST(self) -> None:
        self._route(self._body())

    do_PUT = do_POST

    def do_HEAD(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", "1234")
        self.end_headers()

    def _route(self, body: bytes) -> None:
        self.server.seen.append({"path": self.path, "headers": dict(self.headers.items())})
        path = self.path.split("?")[0]
        if path.endswith("/items") or path.endswith("/whoami"):
            # What it was sent, but never a credential's value: the tests look for those.
            headers = {k.lower(): v for k, v in self.headers.items()}
            for name in ("x-api-key", "authorization"):
                if name in headers:
                    headers[name] = "the test key" if API_KEY in headers[name] else "other"
            doc = {"path": self.path, "headers": headers}
            self._send(200, json.dumps(doc).encode())
        elif path.endswith("/reflect") or path.endswith("/reflect-gzip"):
            # A careless API that echoes its caller's key, in a header and in the body.
            key = self.headers.get("X-Api-Key", "")
            body = json.dumps({"you_sent": key, "padding": "p" * 5000, "again": key}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("X-Seen-Key", key)
            if path.endswith("-gzip"):
                body = gzip.compress(body)
                self.send_header("Content-Encoding", "gzip")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        elif path.endswith("/echo"):
            self._send(200, body, self.headers.get("Content-Type") or "application/octet-stream")
        elif path.endswith("/big"):
            n = int(self.path.split("n=")[1])
            self._send(200, b"x" * n, "application/octet-stream")
        elif path.endswith("/chunked"):
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.send_header("Content-Type", "text/plain")
            self.end_headers()
            for part in (b"one ", b"two ", b"three"):
                self.wfile.write(b"%x\r\n%s\r\n" % (len(part), part))
                self.wfile.flush()
            self.wfile.write(b"0\r\n\r\n")
        elif path.endswith("/sse"):
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Cache-Control", "no-cache")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for i in range(3):
                part = f"id: {i}\ndata: tick {i}\n\n".encode()
                self.wfile.write(b"%x\r\n%s\r\n" % (len(part), part))
                self.wfile.flush()
                time.sleep(0.3)
            self.wfile.write(b"0\r\n\r\n")
        elif path.endswith("/smuggle-response"):
            # Framed twice: a lenient proxy would pass a second response on to the next request.
            self.wfile.write(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n"
                             b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\nHTTP/1.1 200 OK\r\n"
                             b"Content-Length: 7\r\n\r\nsmuggle")  # fmt: skip
            self.close_connection = True
        elif path.endswith("/until-close"):
            self.wfile.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nread until")
            self.wfile.write(b" the close")
            self.close_connection = True
        elif path.endswith("/hang"):
            self.server.release.wait(30)
            self._send(200, b"{}")
        elif path.endswith("/drop"):
            self.close_connection = True
            self.connection.shutdown(2)
        elif path.endswith("/half"):
            self.send_response(200)
            self.send_header("Content-Length", "1000")
            self.end_headers()
            self.wfile.write(b"only ten b")
            self.wfile.flush()
            self.close_connection = True
            self.connection.shutdown(2)
        else:
            self._send(404, b'{"error": "no such path"}')


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    seen: list[dict[str, Any]]
    release: threading.Event


class HttpUpstream:
    def __init__(self, tls_dir: Path | None = None) -> None:
        """With tls_dir: HTTPS with a self-signed certificate for localhost made there."""
        self.server = _Server(("127.0.0.1", 0), _Handler)
        self.server.seen = []
        self.server.release = threading.Event()
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.ca_file: Path | None = None
        if tls_dir is not None:
            cert, key = ensure_self_signed(tls_dir)
            ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            ctx.load_cert_chain(cert, key)
            self.server.socket = ctx.wrap_socket(self.server.socket, server_side=True)
            self.url, self.ca_file = f"https://localhost:{self.port}", cert
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def seen(self) -> list[dict[str, Any]]:
        return self.server.seen

    def close(self) -> None:
        self.server.release.set()
        self.server.shutdown()
        self.server.server_close()

"""A real RFC 3161 timestamp authority for tests: OpenSSL's `openssl ts -reply` behind a small
HTTP server, with a CA and a TSA certificate the test makes (nothing leaves the machine)."""

from __future__ import annotations

import datetime as dt
import subprocess
import tempfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

_CONFIG = """
[ tsa ]
default_tsa = test_tsa
[ test_tsa ]
dir = {dir}
serial = $dir/serial
crypto_device = builtin
signer_cert = $dir/tsa.pem
signer_key = $dir/tsa.key
signer_digest = sha256
default_policy = 1.3.6.1.4.1.99999.1
digests = sha256, sha384, sha512
accuracy = secs:1
ordering = no
tsa_name = yes
ess_cert_id_chain = no
ess_cert_id_alg = sha256
"""


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


class LocalTsa:
    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="tapegate-tsa-"))
        now = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)
        ca_key, tsa_key = (
            ec.generate_private_key(ec.SECP256R1()),
            ec.generate_private_key(ec.SECP256R1()),
        )
        self.ca = (
            x509.CertificateBuilder().subject_name(_name("tapegate test TSA root"))
            .issuer_name(_name("tapegate test TSA root")).public_key(ca_key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now)
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(ca_key, hashes.SHA256())
        )  # fmt: skip
        self.cert = (
            x509.CertificateBuilder().subject_name(_name("tapegate test TSA"))
            .issuer_name(self.ca.subject).public_key(tsa_key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now)
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.TIME_STAMPING]),
                           critical=True)
            .sign(ca_key, hashes.SHA256())
        )  # fmt: skip
        pem = serialization.Encoding.PEM
        (self.dir / "ca.pem").write_bytes(self.ca.public_bytes(pem))
        (self.dir / "tsa.pem").write_bytes(self.cert.public_bytes(pem))
        (self.dir / "tsa.key").write_bytes(tsa_key.private_bytes(
            pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))  # fmt: skip
        (self.dir / "serial").write_text("01\n")
        (self.dir / "tsa.cnf").write_text(_CONFIG.format(dir=self.dir))
        self.requests = 0
        tsa = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # http.server's name for it
                query = self.rfile.read(int(self.headers["Content-Length"]))
                answer = tsa.reply(query)
                self.send_response(200)
                self.send_header("Content-Type", "application/timestamp-reply")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/tsa"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def reply(self, query: bytes) -> bytes:
        self.requests += 1
        tsq, tsr = self.dir / f"q{self.requests}.tsq", self.dir / f"r{self.requests}.tsr"
        tsq.write_bytes(query)
        subprocess.run(["openssl", "ts", "-reply", "-config", str(self.dir / "tsa.cnf"),
                        "-queryfile", str(tsq), "-out", str(tsr)],
                       check=True, capture_output=True)  # fmt: skip
        return tsr.read_bytes()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

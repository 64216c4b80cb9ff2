"""TLS for clients: the configured certificate, or a self-signed one made once in the data dir."""

from __future__ import annotations

import datetime
import ipaddress
import os
import ssl
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tapegate.config import TLSConfig


def server_context(tls: TLSConfig, data_dir: Path, alpn: list[str] | None = None) -> ssl.SSLContext:
    if tls.cert_file and tls.key_file:
        cert, key = tls.cert_file, tls.key_file
    else:
        cert, key = ensure_self_signed(Path(data_dir) / "tls")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(cert, key)
    if alpn:
        ctx.set_alpn_protocols(alpn)
    return ctx


def ensure_self_signed(folder: Path) -> tuple[Path, Path]:
    """A P-256 certificate for localhost / 127.0.0.1 / ::1, valid for a year."""
    cert_path, key_path = folder / "gateway.crt", folder / "gateway.key"
    if cert_path.exists() and key_path.exists():
        return cert_path, key_path
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "tapegate local gateway")])
    now = datetime.datetime.now(datetime.UTC)
    san = x509.SubjectAlternativeName(
        [
            x509.DNSName("localhost"),
            x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
            x509.IPAddress(ipaddress.ip_address("::1")),
        ]
    )
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=365))
        .add_extension(san, critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return cert_path, key_path


def upstream_context(mode: str, ca_file: Path | None) -> ssl.SSLContext | None:
    if mode == "disable":
        return None
    ctx = ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
    if mode in ("prefer", "require"):
        # libpq semantics: require encrypts without checking who answers; verify-full checks.
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


def upstream_https_context(ca_file: Path | None) -> ssl.SSLContext:
    """HTTPS to an API target always checks the certificate and the name (system CAs or ca_file)."""
    ctx = ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
    ctx.set_alpn_protocols(["http/1.1"])
    return ctx

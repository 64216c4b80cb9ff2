"""A throwaway PostgreSQL server for `make demo` and the tests: initdb into a temp dir, a free
port, scram-sha-256, an `app` database owned by an `app` role (plus md5 and cleartext logins).

PostgreSQL refuses to run as root, so under root the server runs as the `postgres` system user
that Debian's package creates (make test installs the package when it is missing).
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pg_bindir() -> Path:
    found = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4])
    )
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    if initdb:
        return Path(initdb).parent
    raise RuntimeError(
        "PostgreSQL server binaries not found: `make demo` and `make test` install them"
    )


@dataclass
class PgServer:
    host: str
    port: int
    root: Path
    superuser: str
    password: str
    bindir: Path
    _user: str | None

    @property
    def ca_file(self) -> Path:
        """The server's self-signed certificate, for clients that verify it (TLS is on)."""
        return self.root / "tls" / "gateway.crt"

    def dsn(self, user: str | None = None, password: str | None = None, db: str = "app") -> str:
        return (
            f"host={self.host} port={self.port} dbname={db} user={user or self.superuser} "
            f"password={password or self.password} sslmode=disable"
        )

    def psql(self, sql: str, db: str = "app") -> str:
        env = {**os.environ, "PGPASSWORD": self.password}
        out = subprocess.run(
            ["psql", "-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-h", self.host, "-p",
             str(self.port), "-U", self.superuser, "-d", db, "-c", sql],
            env=env, capture_output=True, text=True, check=True,
        )  # fmt: skip
        return out.stdout.strip()

    def stop(self) -> None:
        self._run(["pg_ctl", "-D", str(self.root / "data"), "-m", "immediate", "stop"], check=False)
        shutil.rmtree(self.root, ignore_errors=True)

    def _run(self, argv: list[str], check: bool = True) -> subprocess.CompletedProcess[str]:
        argv = [str(self.bindir / argv[0]), *argv[1:]]
        if self._user:
            argv = ["runuser", "-u", self._user, "--", *argv]
        return subprocess.run(argv, capture_output=True, text=True, check=check)


APP_PASSWORD = "app-secret-" + os.urandom(6).hex()


def start_postgres(max_connections: int = 400) -> PgServer:
    root = Path(tempfile.mkdtemp(prefix="tapegate-pg-"))
    user = None
    if os.geteuid() == 0:
        user = "postgres"
        uid, gid = pwd.getpwnam(user).pw_uid, pwd.getpwnam(user).pw_gid
        os.chown(root, uid, gid)
    os.chmod(root, 0o755)
    password = "admin-" + os.urandom(8).hex()
    server = PgServer("127.0.0.1", free_port(), root, "tapegate_admin", password, pg_bindir(), user)
    pwfile = root / "pw"
    pwfile.write_text(password + "\n")
    if user:
        os.chown(pwfile, uid, gid)
    server._run(["initdb", "-D", str(root / "data"), "-U", server.superuser, "-A",
                 "scram-sha-256", "--pwfile", str(pwfile), "-E", "UTF8", "--no-sync",
                 "--no-instructions"])  # fmt: skip
    from gateway_task.tls import ensure_self_signed

    cert, key = ensure_self_signed(root / "tls")
    if user:
        for path in (root / "tls", cert, key):
            os.chown(path, uid, gid)
    os.chmod(root / "tls", 0o755)
    conf = root / "data" / "postgresql.conf"
    with conf.open("a") as fh:
        fh.write(
            f"\nlisten_addresses = '127.0.0.1'\nport = {server.port}\n"
            f"unix_socket_directories = '{root}'\nfsync = off\nsynchronous_commit = off\n"
            f"full_page_writes = off\nmax_connections = {max_connections}\nshared_buffers = 64MB\n"
            f"ssl = on\nssl_cert_file = '{cert}'\nssl_key_file = '{key}'\n"
        )
    hba = root / "data" / "pg_hba.conf"
    hba.write_text(
        "local all all scram-sha-256\n"
        "host all app_md5 127.0.0.1/32 md5\n"
        "host all app_plain 127.0.0.1/32 password\n"
        "host all all 127.0.0.1/32 scram-sha-256\n"
    )
    if user:
        os.chown(hba, uid, gid)
    server._run(["pg_ctl", "-D", str(root / "data"), "-l", str(root / "log"), "-w", "start"])
    deadline = time.time() + 30
    while True:
        try:
            server.psql("SELECT 1", db="postgres")
            break
        except subprocess.CalledProcessError:
            if time.time() > deadline:
                raise
            time.sleep(0.2)
    server.psql(f"CREATE ROLE app LOGIN PASSWORD '{APP_PASSWORD}'", db="postgres")
    server.psql("CREATE DATABASE app OWNER app", db="postgres")
    server.psql(
        f"SET password_encryption = 'md5'; CREATE ROLE app_md5 LOGIN PASSWORD '{APP_PASSWORD}';"
        f"CREATE ROLE app_plain LOGIN PASSWORD '{APP_PASSWORD}';"
        "GRANT app TO app_md5, app_plain;",
        db="postgres",
    )
    return server

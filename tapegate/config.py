"""The tapegate.yaml contract: parsed once, checked strictly, errors name the key and the reason.

Lookup order for every command: --config FILE, then $TAPEGATE_CONFIG, then ./tapegate.yaml, then
the built-in embedded defaults (a dev issuer, a local data dir, no targets).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

PROTOCOLS = ("postgres",)
STATEMENT_KINDS_MAX_WORDS = 2


class ConfigError(ValueError):
    """A config that cannot be used. str() is `<key>: <reason>`."""

    def __init__(self, key: str, reason: str) -> None:
        super().__init__(f"{key}: {reason}")
        self.key = key
        self.reason = reason


@dataclass(frozen=True)
class Address:
    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"


@dataclass(frozen=True)
class IdentityConfig:
    issuer: str = "dev"  # "dev": the embedded dev issuer; otherwise the issuer URL
    audience: str = "tapegate"
    groups_claim: str = "groups"
    leeway_s: int = 30
    dev_listen: Address = Address("127.0.0.1", 6580)

    @property
    def is_dev(self) -> bool:
        return self.issuer == "dev"

    @property
    def issuer_url(self) -> str:
        """The `iss` tokens must carry: the dev issuer's own URL, or the configured one."""
        if self.is_dev:
            return f"http://{self.dev_listen}"
        return self.issuer.rstrip("/")


@dataclass(frozen=True)
class GuardRule:
    """Deny a statement by kind (its leading keywords, e.g. DROP, ALTER ROLE) or by regex."""

    kind: str | None = None
    regex: re.Pattern[str] | None = None

    def describe(self) -> str:
        return f"kind {self.kind}" if self.kind else f"regex {self.regex.pattern!r}"  # type: ignore[union-attr]


@dataclass(frozen=True)
class Target:
    name: str
    protocol: str
    upstream: Address
    database: str
    username: str
    password_env: str | None = None
    password_file: Path | None = None
    secret_arn: str | None = None
    allow_groups: tuple[str, ...] = ()
    deny: tuple[GuardRule, ...] = ()
    upstream_tls: str = "prefer"  # disable | prefer | require | verify-full
    upstream_ca_file: Path | None = None


@dataclass(frozen=True)
class TLSConfig:
    mode: str = "required"  # required | optional
    cert_file: Path | None = None  # None: a self-signed certificate in the data dir
    key_file: Path | None = None


@dataclass(frozen=True)
class RecordingConfig:
    max_chunk_bytes: int = 256 * 1024
    max_age_ms: int = 1000
    param_cap: int = 1024  # longest Bind parameter kept in an event, in bytes
    sql_cap: int = 8192  # longest SQL text kept in an event, in characters


@dataclass(frozen=True)
class SinkConfig:
    kind: str = "local"  # local | firehose
    dir: Path | None = None  # local: default <data_dir>/deliveries
    flush_bytes: int = 4 * 1024 * 1024
    flush_ms: int = 500
    stream: str | None = None  # firehose: the delivery stream name
    region: str | None = None
    spool_dir: Path | None = None  # firehose: default <data_dir>/spool
    spool_max_bytes: int = 1 << 30


@dataclass(frozen=True)
class ArchiveConfig:
    """Where `tapegate sessions`/`query` (and the pipeline) find the archive."""

    kind: str = "local"  # local | aws
    region: str | None = None
    evidence_bucket: str | None = None
    curated_bucket: str | None = None
    table: str | None = None  # DynamoDB session index
    workgroup: str | None = None  # Athena
    database: str | None = None  # Glue
    # The gateway's Ed25519 public key(s) for auditors on AWS: an SSM parameter (hex, several
    # comma-separated during rotation). Locally the data dir's keys are used.
    public_key_param: str | None = None
    # The auditor's X25519 private key: a file path or a Secrets Manager secret ARN. Locally it
    # defaults to <data_dir>/keys/auditor.key.
    auditor_key: str | None = None
    # `tapegate up` with the folder sink also runs the pipeline (the embedded archive); off, it
    # only records, as on Fargate where the pipeline runs in Lambda.
    embedded_pipeline: bool = True


@dataclass(frozen=True)
class KeysConfig:
    """Where the gateway's keys come from. Unset: the data dir's keys/ (made on first use)."""

    signing_key: str | None = None  # a file or a Secrets Manager ARN holding the seed (hex)
    auditor_public_keys: tuple[bytes, ...] = ()  # X25519 keys the session keys are sealed to


@dataclass(frozen=True)
class Config:
    data_dir: Path = Path(".tapegate")
    gateway_name: str = "local"
    identity: IdentityConfig = field(default_factory=IdentityConfig)
    listen_postgres: Address | None = Address("127.0.0.1", 6543)
    listen_health: Address | None = None  # /healthz, /readyz, /metrics
    tls: TLSConfig = field(default_factory=TLSConfig)
    targets: dict[str, Target] = field(default_factory=dict)
    recording: RecordingConfig = field(default_factory=RecordingConfig)
    sink: SinkConfig = field(default_factory=SinkConfig)
    durability: str = "buffered"  # buffered | acked
    archive: ArchiveConfig = field(default_factory=ArchiveConfig)
    keys: KeysConfig = field(default_factory=KeysConfig)
    source: str = "built-in defaults"

    @property
    def delivery_dir(self) -> Path:
        return self.sink.dir or self.data_dir / "deliveries"


def find_config_file(explicit: str | os.PathLike[str] | None) -> Path | None:
    if explicit:
        return Path(explicit)
    env = os.environ.get("TAPEGATE_CONFIG")
    if env:
        return Path(env)
    local = Path("tapegate.yaml")
    return local if local.exists() else None


def load_config(explicit: str | os.PathLike[str] | None = None) -> Config:
    path = find_config_file(explicit)
    if path is None and os.environ.get("TAPEGATE_CONFIG_YAML"):
        # A container (Fargate) gets its whole config in the environment; targets may come
        # separately from a secret that ECS injects as $TAPEGATE_TARGETS.
        raw = _yaml(os.environ["TAPEGATE_CONFIG_YAML"], "$TAPEGATE_CONFIG_YAML") or {}
        if os.environ.get("TAPEGATE_TARGETS") and isinstance(raw, dict):
            raw["targets"] = _yaml(os.environ["TAPEGATE_TARGETS"], "$TAPEGATE_TARGETS")
        return _replace(parse_config(raw), source="$TAPEGATE_CONFIG_YAML")
    if path is None:
        return Config()
    try:
        raw = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise ConfigError(str(path), f"cannot read: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(str(path), f"not valid YAML: {exc}") from None
    config = parse_config(raw or {}, base_dir=path.parent)
    return _replace(config, source=str(path))


def _yaml(text: str, source: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(source, f"not valid YAML: {exc}") from None


def _replace(config: Config, **changes: Any) -> Config:
    from dataclasses import replace

    return replace(config, **changes)


# -- parsing --------------------------------------------------------------------------------


def parse_config(raw: Any, base_dir: Path = Path(".")) -> Config:
    top = _mapping(raw, "config")
    _only(
        top,
        "config",
        {
            "data_dir",
            "gateway_name",
            "identity",
            "listen",
            "tls",
            "targets",
            "recording",
            "sink",
            "archive",
            "durability",
            "keys",
        },
    )
    data_dir = _path(top.get("data_dir", ".tapegate"), "data_dir", base_dir)
    identity = _identity(top.get("identity", {}))
    listen = _mapping(top.get("listen", {}), "listen")
    _only(listen, "listen", {"postgres", "health"})
    pg_listen = _address(listen["postgres"], "listen.postgres") if "postgres" in listen else None
    if "listen" not in top:
        pg_listen = Config().listen_postgres
    targets: dict[str, Target] = {}
    raw_targets = top.get("targets", [])
    if not isinstance(raw_targets, list):
        raise ConfigError("targets", "must be a list")
    for i, item in enumerate(raw_targets):
        target = _target(item, f"targets[{i}]", base_dir)
        if target.name in targets:
            raise ConfigError(f"targets[{i}].name", f"duplicate target name {target.name!r}")
        targets[target.name] = target
    return Config(
        data_dir=data_dir,
        gateway_name=_str(top.get("gateway_name", "local"), "gateway_name"),
        identity=identity,
        listen_postgres=pg_listen,
        listen_health=_address(listen["health"], "listen.health") if "health" in listen else None,
        tls=_tls(top.get("tls", "required"), base_dir),
        targets=targets,
        recording=_recording(top.get("recording", {})),
        sink=_sink(top.get("sink", {}), base_dir),
        archive=_archive(top.get("archive", {})),
        durability=_durability(top.get("durability", "buffered")),
        keys=_keys(top.get("keys", {})),
    )


def _identity(raw: Any) -> IdentityConfig:
    m = _mapping(raw, "identity")
    _only(m, "identity", {"issuer", "audience", "groups_claim", "leeway_s", "dev_listen"})
    issuer = _str(m.get("issuer", "dev"), "identity.issuer")
    if issuer != "dev" and not issuer.startswith(("https://", "http://")):
        raise ConfigError("identity.issuer", 'must be "dev" or an http(s) URL')
    return IdentityConfig(
        issuer=issuer,
        audience=_str(m.get("audience", "tapegate"), "identity.audience"),
        groups_claim=_str(m.get("groups_claim", "groups"), "identity.groups_claim"),
        leeway_s=_int(m.get("leeway_s", 30), "identity.leeway_s", 0, 600),
        dev_listen=_address(m.get("dev_listen", "127.0.0.1:6580"), "identity.dev_listen"),
    )


def _target(raw: Any, key: str, base_dir: Path) -> Target:
    m = _mapping(raw, key)
    allowed = {
        "name", "protocol", "upstream", "database", "username", "password_env", "password_file",
        "secret_arn", "allow_groups", "guardrails", "upstream_tls", "upstream_ca_file",
    }  # fmt: skip
    _only(m, key, allowed)
    for required in ("name", "protocol", "upstream", "username"):
        if required not in m:
            raise ConfigError(f"{key}.{required}", "is required")
    name = _str(m["name"], f"{key}.name")
    if not re.fullmatch(r"[A-Za-z0-9_.-]{1,63}", name):
        raise ConfigError(f"{key}.name", "use letters, digits, '_', '.', '-' (at most 63)")
    protocol = _str(m["protocol"], f"{key}.protocol")
    if protocol not in PROTOCOLS:
        raise ConfigError(f"{key}.protocol", f"must be one of {', '.join(PROTOCOLS)}")
    sources = [s for s in ("password_env", "password_file", "secret_arn") if s in m]
    if len(sources) != 1:
        raise ConfigError(key, "give exactly one of password_env, password_file, secret_arn")
    groups = m.get("allow_groups", [])
    if not isinstance(groups, list) or not all(isinstance(g, str) for g in groups) or not groups:
        raise ConfigError(f"{key}.allow_groups", "must be a non-empty list of group names")
    upstream_tls = _str(m.get("upstream_tls", "prefer"), f"{key}.upstream_tls")
    if upstream_tls not in ("disable", "prefer", "require", "verify-full"):
        raise ConfigError(f"{key}.upstream_tls", "must be disable, prefer, require or verify-full")
    return Target(
        name=name,
        protocol=protocol,
        upstream=_address(m["upstream"], f"{key}.upstream"),
        database=_str(m.get("database", name), f"{key}.database"),
        username=_str(m["username"], f"{key}.username"),
        password_env=_str(m["password_env"], f"{key}.password_env")
        if "password_env" in m
        else None,
        password_file=_path(m["password_file"], f"{key}.password_file", base_dir)
        if "password_file" in m
        else None,
        secret_arn=_str(m["secret_arn"], f"{key}.secret_arn") if "secret_arn" in m else None,
        allow_groups=tuple(groups),
        deny=_guardrails(m.get("guardrails", {}), f"{key}.guardrails"),
        upstream_tls=upstream_tls,
        upstream_ca_file=_path(m["upstream_ca_file"], f"{key}.upstream_ca_file", base_dir)
        if "upstream_ca_file" in m
        else None,
    )


def _guardrails(raw: Any, key: str) -> tuple[GuardRule, ...]:
    m = _mapping(raw, key)
    _only(m, key, {"deny"})
    rules = m.get("deny", [])
    if not isinstance(rules, list):
        raise ConfigError(f"{key}.deny", "must be a list of {kind: ...} or {regex: ...}")
    out: list[GuardRule] = []
    for i, rule in enumerate(rules):
        rk = f"{key}.deny[{i}]"
        r = _mapping(rule, rk)
        _only(r, rk, {"kind", "regex"})
        if len(r) != 1:
            raise ConfigError(rk, "give exactly one of kind or regex")
        if "kind" in r:
            kind = " ".join(_str(r["kind"], f"{rk}.kind").upper().split())
            if not re.fullmatch(r"[A-Z]+( [A-Z]+)?", kind):
                raise ConfigError(f"{rk}.kind", "one or two SQL keywords, e.g. DROP or ALTER ROLE")
            out.append(GuardRule(kind=kind))
        else:
            pattern = _str(r["regex"], f"{rk}.regex")
            try:
                out.append(GuardRule(regex=re.compile(pattern)))
            except re.error as exc:
                raise ConfigError(f"{rk}.regex", f"invalid regular expression: {exc}") from None
    return tuple(out)


def _tls(raw: Any, base_dir: Path) -> TLSConfig:
    if isinstance(raw, str):
        raw = {"mode": raw}
    m = _mapping(raw, "tls")
    _only(m, "tls", {"mode", "cert_file", "key_file"})
    mode = _str(m.get("mode", "required"), "tls.mode")
    if mode not in ("required", "optional"):
        raise ConfigError("tls.mode", "must be required or optional")
    if ("cert_file" in m) != ("key_file" in m):
        raise ConfigError("tls", "give cert_file and key_file together")
    return TLSConfig(
        mode=mode,
        cert_file=_path(m["cert_file"], "tls.cert_file", base_dir) if "cert_file" in m else None,
        key_file=_path(m["key_file"], "tls.key_file", base_dir) if "key_file" in m else None,
    )


def _recording(raw: Any) -> RecordingConfig:
    m = _mapping(raw, "recording")
    _only(m, "recording", {"max_chunk_bytes", "max_age_ms", "param_cap", "sql_cap"})
    d = RecordingConfig()
    return RecordingConfig(
        max_chunk_bytes=_int(
            m.get("max_chunk_bytes", d.max_chunk_bytes), "recording.max_chunk_bytes", 1024,
            768 * 1024,
        ),
        max_age_ms=_int(m.get("max_age_ms", d.max_age_ms), "recording.max_age_ms", 10, 60_000),
        param_cap=_int(m.get("param_cap", d.param_cap), "recording.param_cap", 0, 65536),
        sql_cap=_int(m.get("sql_cap", d.sql_cap), "recording.sql_cap", 16, 65536),
    )  # fmt: skip


def _durability(raw: Any) -> str:
    value = _str(raw, "durability")
    if value not in ("buffered", "acked"):
        raise ConfigError("durability", "must be buffered or acked")
    return value


def _sink(raw: Any, base_dir: Path) -> SinkConfig:
    m = _mapping(raw, "sink")
    _only(m, "sink", {"kind", "dir", "flush_bytes", "flush_ms", "stream", "region", "spool_dir",
                      "spool_max_bytes"})  # fmt: skip
    kind = _str(m.get("kind", "local"), "sink.kind")
    if kind not in ("local", "firehose"):
        raise ConfigError("sink.kind", "must be local or firehose")
    if kind == "firehose" and "stream" not in m:
        raise ConfigError("sink.stream", "is required for kind firehose")
    d = SinkConfig()
    return SinkConfig(
        kind=kind,
        dir=_path(m["dir"], "sink.dir", base_dir) if "dir" in m else None,
        flush_bytes=_int(m.get("flush_bytes", d.flush_bytes), "sink.flush_bytes", 1, 64 << 20),
        flush_ms=_int(m.get("flush_ms", d.flush_ms), "sink.flush_ms", 1, 60_000),
        stream=_str(m["stream"], "sink.stream") if "stream" in m else None,
        region=_str(m["region"], "sink.region") if "region" in m else None,
        spool_dir=_path(m["spool_dir"], "sink.spool_dir", base_dir) if "spool_dir" in m else None,
        spool_max_bytes=_int(m.get("spool_max_bytes", d.spool_max_bytes), "sink.spool_max_bytes",
                             1024, 1 << 40),
    )  # fmt: skip


def _archive(raw: Any) -> ArchiveConfig:
    m = _mapping(raw, "archive")
    keys = {
        "kind",
        "region",
        "evidence_bucket",
        "curated_bucket",
        "table",
        "workgroup",
        "database",
        "public_key_param",
        "auditor_key",
    }
    _only(m, "archive", keys | {"embedded_pipeline"})
    embedded = m.get("embedded_pipeline", True)
    if not isinstance(embedded, bool):
        raise ConfigError("archive.embedded_pipeline", "must be true or false")
    kind = _str(m.get("kind", "local"), "archive.kind")
    if kind not in ("local", "aws"):
        raise ConfigError("archive.kind", "must be local or aws")
    values = {k: _str(m[k], f"archive.{k}") for k in keys - {"kind"} if k in m}
    if kind == "aws":
        for required in ("evidence_bucket", "curated_bucket", "table"):
            if required not in values:
                raise ConfigError(f"archive.{required}", "is required for kind aws")
    return ArchiveConfig(kind=kind, embedded_pipeline=embedded, **values)


def _keys(raw: Any) -> KeysConfig:
    m = _mapping(raw, "keys")
    _only(m, "keys", {"signing_key", "auditor_public_keys"})
    signing = _str(m["signing_key"], "keys.signing_key") if "signing_key" in m else None
    auditors = m.get("auditor_public_keys", [])
    if not isinstance(auditors, list):
        raise ConfigError("keys.auditor_public_keys", "must be a list of hex keys")
    parsed = []
    for i, key in enumerate(auditors):
        try:
            raw_key = bytes.fromhex(_str(key, f"keys.auditor_public_keys[{i}]"))
        except ValueError:
            raw_key = b""
        if len(raw_key) != 32:
            raise ConfigError(f"keys.auditor_public_keys[{i}]", "must be 64 hex digits")
        parsed.append(raw_key)
    return KeysConfig(signing_key=signing, auditor_public_keys=tuple(parsed))


# -- small checkers ------------------------------------------------------------------------------


def _mapping(raw: Any, key: str) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise ConfigError(key, "must be a mapping")
    return raw


def _only(m: dict[str, Any], key: str, allowed: set[str]) -> None:
    for k in m:
        if k not in allowed:
            raise ConfigError(f"{key}.{k}" if key != "config" else str(k), "unknown key")


def _str(raw: Any, key: str) -> str:
    if not isinstance(raw, str) or not raw:
        raise ConfigError(key, "must be a non-empty string")
    return raw


def _int(raw: Any, key: str, lo: int, hi: int) -> int:
    if isinstance(raw, bool) or not isinstance(raw, int) or not lo <= raw <= hi:
        raise ConfigError(key, f"must be a whole number from {lo} to {hi}")
    return raw


def _path(raw: Any, key: str, base_dir: Path) -> Path:
    p = Path(_str(raw, key)).expanduser()
    return p if p.is_absolute() else base_dir / p


def _address(raw: Any, key: str) -> Address:
    text = _str(raw, key)
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(key, f"expected HOST:PORT, got {text!r}")
    return Address(host.strip("[]"), int(port))

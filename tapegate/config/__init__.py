"""The tapegate.yaml contract: parsed once, checked strictly, errors name the key and the reason.

Lookup order for every command: --config FILE, then $TAPEGATE_CONFIG, then ./tapegate.yaml, then
the built-in embedded defaults (a dev issuer, a local data dir, no targets).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tapegate.config.checks import (
    Address,
    ConfigError,
    as_address,
    as_int,
    as_mapping,
    as_path,
    as_str,
    check_only,
)
from tapegate.config.targets import GuardRule, Target, parse_target

__all__ = [
    "Address", "ArchiveConfig", "Config", "ConfigError", "GuardRule", "IdentityConfig",
    "KeysConfig", "LimitsConfig", "LogConfig", "RecordingConfig", "SinkConfig", "TLSConfig",
    "Target", "load_config", "parse_config",
]  # fmt: skip


@dataclass(frozen=True)
class IdentityConfig:
    issuer: str = "dev"  # "dev": the embedded dev issuer; otherwise the issuer URL
    audience: str = "tapegate"
    groups_claim: str = "groups"
    leeway_s: int = 30
    dev_listen: Address = Address("127.0.0.1", 6580)
    # At the token's `exp` (+ leeway) a session ends (`end`, reason token_expired), or goes on
    # until it closes (`keep`). HTTP checks the token on each request either way.
    on_token_expiry: str = "end"
    # A token whose lifetime (exp - iat) is longer is refused: a leaked long-lived token would
    # otherwise open sessions for as long as it says.
    max_token_lifetime_s: int = 24 * 3600

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
    body_cap: int = 16384  # longest HTTP body, SSH stderr or command kept in an event, in bytes


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
    # Sealed bytes held in memory until the sink holds them; above it, batches go to the disk
    # spool first (Firehose) and sessions wait for room (both sinks).
    max_memory_bytes: int = 64 << 20


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
    # The session log on AWS (docs/LOG.md): the SSM parameter with its public key(s) (hex, the
    # stack's LogPublicKeyParameter output), and the anchor bucket (AnchorBucket). Its origin is
    # log.origin (the stack's LogOrigin output).
    log_public_key_param: str | None = None
    anchor_bucket: str | None = None


@dataclass(frozen=True)
class LimitsConfig:
    """What one gateway takes on at once, and how long a login may take. The defaults suit a
    small production gateway (a file limit of 65,536, a few hundred agents)."""

    max_connections: int = 4096  # open client connections, every listener together
    max_preauth: int = 1024  # of those, not yet admitted (token verified, policy passed)
    max_preauth_per_source: int = 256  # not yet admitted, from one source (a pool, a NAT)
    preauth_deadline_s: int = 15  # from accept to admitted, whatever trickles in meanwhile
    idle_timeout_s: int = 3600  # a session with no byte either way this long ends; 0: never
    max_message_bytes: int = 64 << 20  # the largest PostgreSQL message a client may send
    # Refusals are recorded as sessions up to this many per source address and interval; the
    # rest are folded into one sealed summary per source and interval.
    refusals_per_source: int = 10
    refusal_interval_s: int = 60


@dataclass(frozen=True)
class KeysConfig:
    """Where the gateway's keys come from. Unset: the data dir's keys/ (made on first use)."""

    signing_key: str | None = None  # a file or a Secrets Manager ARN holding the seed (hex)
    # The SSH host key's Ed25519 seed (hex), the same way: shared by every task behind a load
    # balancer. Without it the gateway makes one in <data_dir>/ssh/ and keeps it there.
    ssh_host_key: str | None = None
    auditor_public_keys: tuple[bytes, ...] = ()  # X25519 keys the session keys are sealed to


@dataclass(frozen=True)
class LogConfig:
    """The session log (docs/LOG.md): the gateway's heartbeats, the local sequencer's pace."""

    heartbeat_s: int = 60  # each gateway instance says it is alive this often
    # The checkpoints' origin line and the log key's name: one per log, never changed.
    origin: str = "tapegate.local/log"
    sequence_s: int = 10  # the embedded archive signs a checkpoint at most this often


@dataclass(frozen=True)
class Config:
    data_dir: Path = Path(".tapegate")
    gateway_name: str = "local"
    identity: IdentityConfig = field(default_factory=IdentityConfig)
    listen_postgres: Address | None = Address("127.0.0.1", 6543)
    listen_ssh: Address | None = None
    listen_http: Address | None = None
    listen_mcp: Address | None = None  # Streamable HTTP for agents' MCP clients
    listen_health: Address | None = None  # /healthz, /readyz, /metrics
    tls: TLSConfig = field(default_factory=TLSConfig)
    targets: dict[str, Target] = field(default_factory=dict)
    recording: RecordingConfig = field(default_factory=RecordingConfig)
    sink: SinkConfig = field(default_factory=SinkConfig)
    durability: str = "buffered"  # buffered | acked
    archive: ArchiveConfig = field(default_factory=ArchiveConfig)
    keys: KeysConfig = field(default_factory=KeysConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    log: LogConfig = field(default_factory=LogConfig)
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
    top = as_mapping(raw, "config")
    check_only(
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
            "limits",
            "log",
        },
    )
    data_dir = as_path(top.get("data_dir", ".tapegate"), "data_dir", base_dir)
    identity = _identity(top.get("identity", {}))
    listen = as_mapping(top.get("listen", {}), "listen")
    check_only(listen, "listen", {"postgres", "ssh", "http", "mcp", "health"})
    pg_listen = as_address(listen["postgres"], "listen.postgres") if "postgres" in listen else None
    if "listen" not in top:
        pg_listen = Config().listen_postgres
    targets: dict[str, Target] = {}
    raw_targets = top.get("targets", [])
    if not isinstance(raw_targets, list):
        raise ConfigError("targets", "must be a list")
    for i, item in enumerate(raw_targets):
        target = parse_target(item, f"targets[{i}]", base_dir)
        if target.name in targets:
            raise ConfigError(f"targets[{i}].name", f"duplicate target name {target.name!r}")
        targets[target.name] = target
    return Config(
        data_dir=data_dir,
        gateway_name=as_str(top.get("gateway_name", "local"), "gateway_name"),
        identity=identity,
        listen_postgres=pg_listen,
        listen_ssh=as_address(listen["ssh"], "listen.ssh") if "ssh" in listen else None,
        listen_http=as_address(listen["http"], "listen.http") if "http" in listen else None,
        listen_mcp=as_address(listen["mcp"], "listen.mcp") if "mcp" in listen else None,
        listen_health=as_address(listen["health"], "listen.health") if "health" in listen else None,
        tls=_tls(top.get("tls", "required"), base_dir),
        targets=targets,
        recording=_recording(top.get("recording", {})),
        sink=_sink(top.get("sink", {}), base_dir),
        archive=_archive(top.get("archive", {})),
        durability=_durability(top.get("durability", "buffered")),
        keys=_keys(top.get("keys", {})),
        limits=_limits(top.get("limits", {})),
        log=_log(top.get("log", {})),
    )


def _identity(raw: Any) -> IdentityConfig:
    m = as_mapping(raw, "identity")
    check_only(m, "identity", {"issuer", "audience", "groups_claim", "leeway_s", "dev_listen",
                               "on_token_expiry", "max_token_lifetime"})  # fmt: skip
    on_expiry = as_str(m.get("on_token_expiry", "end"), "identity.on_token_expiry")
    if on_expiry not in ("end", "keep"):
        raise ConfigError("identity.on_token_expiry", "must be end or keep")
    issuer = as_str(m.get("issuer", "dev"), "identity.issuer")
    if issuer != "dev" and not issuer.startswith(("https://", "http://")):
        raise ConfigError("identity.issuer", 'must be "dev" or an http(s) URL')
    return IdentityConfig(
        issuer=issuer,
        audience=as_str(m.get("audience", "tapegate"), "identity.audience"),
        groups_claim=as_str(m.get("groups_claim", "groups"), "identity.groups_claim"),
        leeway_s=as_int(m.get("leeway_s", 30), "identity.leeway_s", 0, 600),
        dev_listen=as_address(m.get("dev_listen", "127.0.0.1:6580"), "identity.dev_listen"),
        on_token_expiry=on_expiry,
        max_token_lifetime_s=_duration(
            m.get("max_token_lifetime", "24h"), "identity.max_token_lifetime"
        ),
    )


def _duration(raw: Any, key: str) -> int:
    """Seconds, from a number of seconds or '90s', '15m', '24h', '7d'."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    text = str(raw).strip() if isinstance(raw, str | int) and not isinstance(raw, bool) else ""
    try:
        value = int(text[:-1]) * units[text[-1]] if text[-1:] in units else int(text)
    except ValueError:
        raise ConfigError(key, "a duration: seconds, or a number with s, m, h or d") from None
    if value <= 0:
        raise ConfigError(key, "must be positive")
    return value


def _tls(raw: Any, base_dir: Path) -> TLSConfig:
    if isinstance(raw, str):
        raw = {"mode": raw}
    m = as_mapping(raw, "tls")
    check_only(m, "tls", {"mode", "cert_file", "key_file"})
    mode = as_str(m.get("mode", "required"), "tls.mode")
    if mode not in ("required", "optional"):
        raise ConfigError("tls.mode", "must be required or optional")
    if ("cert_file" in m) != ("key_file" in m):
        raise ConfigError("tls", "give cert_file and key_file together")
    return TLSConfig(
        mode=mode,
        cert_file=as_path(m["cert_file"], "tls.cert_file", base_dir) if "cert_file" in m else None,
        key_file=as_path(m["key_file"], "tls.key_file", base_dir) if "key_file" in m else None,
    )


def _recording(raw: Any) -> RecordingConfig:
    m = as_mapping(raw, "recording")
    allowed = {"max_chunk_bytes", "max_age_ms", "param_cap", "sql_cap", "body_cap"}
    check_only(m, "recording", allowed)
    d = RecordingConfig()
    return RecordingConfig(
        max_chunk_bytes=as_int(
            m.get("max_chunk_bytes", d.max_chunk_bytes), "recording.max_chunk_bytes", 1024,
            768 * 1024,
        ),
        max_age_ms=as_int(m.get("max_age_ms", d.max_age_ms), "recording.max_age_ms", 10, 60_000),
        param_cap=as_int(m.get("param_cap", d.param_cap), "recording.param_cap", 0, 65536),
        sql_cap=as_int(m.get("sql_cap", d.sql_cap), "recording.sql_cap", 16, 65536),
        body_cap=as_int(m.get("body_cap", d.body_cap), "recording.body_cap", 0, 1 << 20),
    )  # fmt: skip


def _durability(raw: Any) -> str:
    value = as_str(raw, "durability")
    if value not in ("buffered", "acked"):
        raise ConfigError("durability", "must be buffered or acked")
    return value


def _sink(raw: Any, base_dir: Path) -> SinkConfig:
    m = as_mapping(raw, "sink")
    check_only(m, "sink", {"kind", "dir", "flush_bytes", "flush_ms", "stream", "region",
                           "spool_dir", "spool_max_bytes", "max_memory_bytes"})  # fmt: skip
    kind = as_str(m.get("kind", "local"), "sink.kind")
    if kind not in ("local", "firehose"):
        raise ConfigError("sink.kind", "must be local or firehose")
    if kind == "firehose" and "stream" not in m:
        raise ConfigError("sink.stream", "is required for kind firehose")
    d = SinkConfig()
    return SinkConfig(
        kind=kind,
        dir=as_path(m["dir"], "sink.dir", base_dir) if "dir" in m else None,
        flush_bytes=as_int(m.get("flush_bytes", d.flush_bytes), "sink.flush_bytes", 1, 64 << 20),
        flush_ms=as_int(m.get("flush_ms", d.flush_ms), "sink.flush_ms", 1, 60_000),
        stream=as_str(m["stream"], "sink.stream") if "stream" in m else None,
        region=as_str(m["region"], "sink.region") if "region" in m else None,
        spool_dir=as_path(m["spool_dir"], "sink.spool_dir", base_dir) if "spool_dir" in m else None,
        spool_max_bytes=as_int(m.get("spool_max_bytes", d.spool_max_bytes), "sink.spool_max_bytes",
                             1024, 1 << 40),
        max_memory_bytes=as_int(m.get("max_memory_bytes", d.max_memory_bytes),
                                "sink.max_memory_bytes", 1 << 20, 16 << 30),
    )  # fmt: skip


def _archive(raw: Any) -> ArchiveConfig:
    m = as_mapping(raw, "archive")
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
        "log_public_key_param",
        "anchor_bucket",
    }
    check_only(m, "archive", keys | {"embedded_pipeline"})
    embedded = m.get("embedded_pipeline", True)
    if not isinstance(embedded, bool):
        raise ConfigError("archive.embedded_pipeline", "must be true or false")
    kind = as_str(m.get("kind", "local"), "archive.kind")
    if kind not in ("local", "aws"):
        raise ConfigError("archive.kind", "must be local or aws")
    values = {k: as_str(m[k], f"archive.{k}") for k in keys - {"kind"} if k in m}
    if kind == "aws":
        for required in ("evidence_bucket", "curated_bucket", "table"):
            if required not in values:
                raise ConfigError(f"archive.{required}", "is required for kind aws")
    return ArchiveConfig(kind=kind, embedded_pipeline=embedded, **values)


def _keys(raw: Any) -> KeysConfig:
    m = as_mapping(raw, "keys")
    check_only(m, "keys", {"signing_key", "ssh_host_key", "auditor_public_keys"})
    signing = as_str(m["signing_key"], "keys.signing_key") if "signing_key" in m else None
    ssh_host = as_str(m["ssh_host_key"], "keys.ssh_host_key") if "ssh_host_key" in m else None
    auditors = m.get("auditor_public_keys", [])
    if not isinstance(auditors, list):
        raise ConfigError("keys.auditor_public_keys", "must be a list of hex keys")
    parsed = []
    for i, key in enumerate(auditors):
        try:
            raw_key = bytes.fromhex(as_str(key, f"keys.auditor_public_keys[{i}]"))
        except ValueError:
            raw_key = b""
        if len(raw_key) != 32:
            raise ConfigError(f"keys.auditor_public_keys[{i}]", "must be 64 hex digits")
        parsed.append(raw_key)
    return KeysConfig(signing_key=signing, ssh_host_key=ssh_host, auditor_public_keys=tuple(parsed))


def _log(raw: Any) -> LogConfig:
    m = as_mapping(raw, "log")
    check_only(m, "log", {"heartbeat_s", "origin", "sequence_s"})
    d = LogConfig()
    origin = as_str(m.get("origin", d.origin), "log.origin")
    if not origin or any(c.isspace() or c == "+" for c in origin):
        raise ConfigError("log.origin", "must be one word without spaces or '+' (a key name)")
    return LogConfig(
        heartbeat_s=as_int(m.get("heartbeat_s", d.heartbeat_s), "log.heartbeat_s", 1, 3600),
        origin=origin,
        sequence_s=as_int(m.get("sequence_s", d.sequence_s), "log.sequence_s", 0, 3600),
    )


def _limits(raw: Any) -> LimitsConfig:
    m = as_mapping(raw, "limits")
    d = LimitsConfig()
    bounds = {"max_connections": (1, 1 << 20), "max_preauth": (1, 1 << 20),
              "max_preauth_per_source": (1, 1 << 20), "preauth_deadline_s": (1, 600),
              "idle_timeout_s": (0, 7 * 86_400), "max_message_bytes": (1 << 16, 1 << 30),
              "refusals_per_source": (1, 1 << 20), "refusal_interval_s": (1, 86_400)}  # fmt: skip
    check_only(m, "limits", set(bounds))
    values = {key: as_int(m.get(key, getattr(d, key)), f"limits.{key}", lo, hi)
              for key, (lo, hi) in bounds.items()}  # fmt: skip
    if values["max_preauth"] > values["max_connections"]:
        raise ConfigError("limits.max_preauth", "cannot exceed limits.max_connections")
    return LimitsConfig(**values)

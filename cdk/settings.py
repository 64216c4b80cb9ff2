"""Deployment settings: CDK context values (defaults in cdk.json, overridable with `-c key=value`).

Every value is checked here, once, so a bad setting stops synth with one line naming the key
instead of a CloudFormation failure halfway through a deploy.
"""

from __future__ import annotations

import ipaddress
import json
import re
from dataclasses import dataclass, field
from typing import Any

from constructs import Node

from tapegate.protocols.ssh.target import is_known_hosts_lines

LOCK_MODES = ("GOVERNANCE", "COMPLIANCE")
_NAME = re.compile(r"^[a-z][a-z0-9-]{0,30}$")
_HEX_KEY = re.compile(r"^[0-9a-f]{64}$")
_SCHEDULE = re.compile(r"^(rate|cron|at)\(.+\)$")


class SettingsError(ValueError):
    def __init__(self, key: str, reason: str) -> None:
        super().__init__(f"context {key}: {reason}")


@dataclass(frozen=True)
class Settings:
    name: str = "tapegate"
    # Gateway targets, as in tapegate.yaml (credentials only by secret_arn), or a Secrets Manager
    # secret holding that list as JSON, which ECS hands to the task at start.
    targets: tuple[dict[str, Any], ...] = ()
    targets_secret_arn: str | None = None
    oidc_issuer: str = "https://issuer.example.com"
    oidc_audience: str = "tapegate"
    groups_claim: str = "groups"
    # Listener ports on the NLB, per protocol; the task listens on the same ports.
    listeners: dict[str, int] = field(default_factory=lambda: {"postgres": 5432})
    health_port: int = 8081
    retention_days: int = 365
    lock_mode: str = "GOVERNANCE"
    vpc_id: str | None = None
    vpc_cidr: str = "10.42.0.0/16"  # for a new VPC; an existing one keeps its own
    export_schedule: str = "cron(15 1 * * ? *)"
    export_timezone: str = "UTC"
    auditor_public_key: str | None = None
    private_link: bool = False
    private_link_principals: tuple[str, ...] = ()
    internet_facing: bool = False
    desired_count: int = 2
    max_count: int = 6
    sessions_per_task: int = 200
    verify_concurrency: int = 10
    athena_bytes_cutoff: int = 10 * 1024**3
    buffer_interval_s: int = 60
    buffer_size_mib: int = 64
    break_glass_principal: str | None = None
    # Principal ARN patterns besides the auditor role that may read evidence, e.g. the IAM
    # Identity Center role of a permission set the auditor policy is attached to.
    auditor_principals: tuple[str, ...] = ()
    alarm_email: str | None = None
    # Debian packages added to the gateway's image: what stdio MCP targets' commands need
    # (they run inside the task), e.g. ["nodejs", "npm"] for `npx` servers.
    image_packages: tuple[str, ...] = ()
    # Bump to rotate: a new key pair, with the old public keys still trusted (cdk/keys.py).
    gateway_key_generation: int = 1
    export_key_generation: int = 1
    # The session log (docs/LOG.md): its origin (default "<name>.tapegate/log"), how often the
    # sequencer runs, the daily anchor: its own compliance-locked bucket unless one is named by
    # ARN (another account's, say), how long anchors are kept, and an optional RFC 3161 TSA.
    log_origin: str = ""
    log_schedule: str = "rate(1 minute)"
    anchor_schedule: str = "cron(30 0 * * ? *)"
    anchor_bucket_arn: str | None = None
    anchor_retention_days: int = 0  # 0: retention_days
    tsa_url: str | None = None
    log_key_generation: int = 1

    @classmethod
    def from_context(cls, node: Node) -> Settings:
        def get(key: str) -> Any:
            return node.try_get_context(key)

        d = cls()
        name = _str(get("name"), "name", d.name)
        if not _NAME.match(name):
            raise SettingsError("name", "lowercase letters, digits and '-', at most 31")
        lock_mode = _str(get("lock_mode"), "lock_mode", d.lock_mode).upper()
        if lock_mode not in LOCK_MODES:
            raise SettingsError("lock_mode", f"one of {', '.join(LOCK_MODES)}")
        auditor = _str(get("auditor_public_key"), "auditor_public_key", "") or None
        if auditor is not None and not _HEX_KEY.match(auditor):
            raise SettingsError("auditor_public_key", "64 hex digits (an X25519 public key)")
        schedule = _str(get("export_schedule"), "export_schedule", d.export_schedule)
        if not _SCHEDULE.match(schedule):
            raise SettingsError("export_schedule", "rate(...), cron(...) or at(...)")
        issuer = _str(get("oidc_issuer"), "oidc_issuer", d.oidc_issuer)
        if not issuer.startswith("https://"):
            raise SettingsError("oidc_issuer", "an https:// issuer URL")
        targets = tuple(_targets(get("targets")))
        listeners = _listeners(get("listeners"), d.listeners)
        for target in targets:
            if target["protocol"] not in listeners:
                raise SettingsError("targets", f"{target['name']}: no listener for "
                                    f"protocol {target['protocol']!r}")  # fmt: skip
        settings = cls(
            name=name,
            targets=targets,
            targets_secret_arn=_str(get("targets_secret_arn"), "targets_secret_arn", "") or None,
            oidc_issuer=issuer,
            oidc_audience=_str(get("oidc_audience"), "oidc_audience", d.oidc_audience),
            groups_claim=_str(get("groups_claim"), "groups_claim", d.groups_claim),
            listeners=listeners,
            health_port=_int(get("health_port"), "health_port", d.health_port, 1, 65535),
            retention_days=_int(
                get("retention_days"), "retention_days", d.retention_days, 1, 36500
            ),
            lock_mode=lock_mode,
            vpc_id=_str(get("vpc_id"), "vpc_id", "") or None,
            vpc_cidr=_cidr(get("vpc_cidr"), d.vpc_cidr),
            export_schedule=schedule,
            export_timezone=_str(get("export_timezone"), "export_timezone", d.export_timezone),
            auditor_public_key=auditor,
            private_link=_bool(get("private_link"), "private_link", d.private_link),
            private_link_principals=tuple(
                _list(get("private_link_principals"), "private_link_principals")
            ),
            internet_facing=_bool(get("internet_facing"), "internet_facing", d.internet_facing),
            desired_count=_int(get("desired_count"), "desired_count", d.desired_count, 1, 100),
            max_count=_int(get("max_count"), "max_count", d.max_count, 1, 100),
            sessions_per_task=_int(
                get("sessions_per_task"), "sessions_per_task", d.sessions_per_task, 1, 100000
            ),
            verify_concurrency=_int(
                get("verify_concurrency"), "verify_concurrency", d.verify_concurrency, 1, 1000
            ),
            athena_bytes_cutoff=_int(
                get("athena_bytes_cutoff"),
                "athena_bytes_cutoff",
                d.athena_bytes_cutoff,
                10 * 1024**2,
                2**62,
            ),
            buffer_interval_s=_int(
                get("buffer_interval_s"), "buffer_interval_s", d.buffer_interval_s, 0, 900
            ),
            buffer_size_mib=_int(
                get("buffer_size_mib"), "buffer_size_mib", d.buffer_size_mib, 1, 128
            ),
            break_glass_principal=_str(get("break_glass_principal"), "break_glass_principal", "")
            or None,
            alarm_email=_str(get("alarm_email"), "alarm_email", "") or None,
            auditor_principals=tuple(_list(get("auditor_principals"), "auditor_principals")),
            image_packages=_packages(get("image_packages")),
            gateway_key_generation=_int(
                get("gateway_key_generation"), "gateway_key_generation", 1, 1, 10**6
            ),
            export_key_generation=_int(
                get("export_key_generation"), "export_key_generation", 1, 1, 10**6
            ),
        )
        if settings.max_count < settings.desired_count:
            raise SettingsError("max_count", "must be at least desired_count")
        return _with_log(settings, get)


def _with_log(settings: Settings, get: Any) -> Settings:
    """The session log's settings, checked like the rest."""
    from dataclasses import replace

    d = Settings()
    origin = _str(get("log_origin"), "log_origin", "") or f"{settings.name}.tapegate/log"
    if any(c.isspace() or c == "+" for c in origin):
        raise SettingsError("log_origin", "one word without spaces or '+' (it names the key)")
    schedules = {}
    for key in ("log_schedule", "anchor_schedule"):
        schedules[key] = _str(get(key), key, getattr(d, key))
        if not _SCHEDULE.match(schedules[key]):
            raise SettingsError(key, "rate(...), cron(...) or at(...)")
    arn = _str(get("anchor_bucket_arn"), "anchor_bucket_arn", "") or None
    if arn is not None and not re.fullmatch(r"arn:aws[a-z-]*:s3:::[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]",
                                            arn):  # fmt: skip
        raise SettingsError("anchor_bucket_arn", "an S3 bucket ARN, arn:aws:s3:::NAME")
    tsa = _str(get("tsa_url"), "tsa_url", "") or None
    if tsa is not None and not tsa.startswith(("https://", "http://")):
        raise SettingsError("tsa_url", "an http(s):// URL of an RFC 3161 timestamp authority")
    retention = _int(get("anchor_retention_days"), "anchor_retention_days", 0, 0, 36500)
    return replace(
        settings,
        log_origin=origin,
        anchor_bucket_arn=arn,
        anchor_retention_days=retention or settings.retention_days,
        tsa_url=tsa,
        log_key_generation=_int(get("log_key_generation"), "log_key_generation", 1, 1, 10**6),
        **schedules,
    )


def _parsed(raw: Any) -> Any:
    """`-c key=value` always gives a string; cdk.json gives JSON types. Accept both."""
    if isinstance(raw, str) and raw[:1] in "[{":
        try:
            return json.loads(raw)
        except json.JSONDecodeError:
            return raw
    return raw


def _str(raw: Any, key: str, default: str) -> str:
    if raw is None:
        return default
    if not isinstance(raw, str):
        raise SettingsError(key, "must be a string")
    return raw.strip()


def _int(raw: Any, key: str, default: int, lo: int, hi: int) -> int:
    if raw is None:
        return default
    try:
        value = int(raw)
    except (TypeError, ValueError):
        raise SettingsError(key, "must be an integer") from None
    if not lo <= value <= hi:
        raise SettingsError(key, f"must be between {lo} and {hi}")
    return value


def _bool(raw: Any, key: str, default: bool) -> bool:
    if raw is None:
        return default
    if isinstance(raw, bool):
        return raw
    if str(raw).lower() in ("true", "1", "yes"):
        return True
    if str(raw).lower() in ("false", "0", "no", ""):
        return False
    raise SettingsError(key, "must be true or false")


def _list(raw: Any, key: str) -> list[str]:
    raw = _parsed(raw)
    if raw is None or raw == "":
        return []
    if isinstance(raw, str):
        return [part.strip() for part in raw.split(",") if part.strip()]
    if not isinstance(raw, list) or not all(isinstance(x, str) for x in raw):
        raise SettingsError(key, "must be a list of strings")
    return raw


def _packages(raw: Any) -> tuple[str, ...]:
    names = _list(raw, "image_packages")
    for name in names:
        if not re.fullmatch(r"[a-z0-9][a-z0-9+.-]+", name):
            raise SettingsError("image_packages", f"{name!r} is not a Debian package name")
    return tuple(names)


def _cidr(raw: Any, default: str) -> str:
    value = _str(raw, "vpc_cidr", default)
    try:
        network = ipaddress.IPv4Network(value)
    except ValueError:
        raise SettingsError("vpc_cidr", "an IPv4 CIDR block such as 10.42.0.0/16") from None
    if not 16 <= network.prefixlen <= 24:
        raise SettingsError("vpc_cidr", "a prefix length between /16 and /24")
    return str(network)


def _listeners(raw: Any, default: dict[str, int]) -> dict[str, int]:
    raw = _parsed(raw)
    if raw is None:
        return dict(default)
    if not isinstance(raw, dict) or not raw:
        raise SettingsError("listeners", "a mapping of protocol to port")
    return {str(k): _int(v, f"listeners.{k}", 0, 1, 65535) for k, v in raw.items()}


def _targets(raw: Any) -> list[dict[str, Any]]:
    raw = _parsed(raw)
    if raw is None or raw == "":
        return []
    if not isinstance(raw, list):
        raise SettingsError("targets", "a list of targets as in tapegate.yaml")
    for i, target in enumerate(raw):
        if not isinstance(target, dict) or not {"name", "protocol"} <= target.keys():
            raise SettingsError(f"targets[{i}]", "needs at least name and protocol")
        # On AWS a credential comes from Secrets Manager only: an env var or a file would have
        # to be baked into the task definition or the image.
        for local in ("password_env", "password_file", "private_key_file", "value_env"):
            if local in target:
                raise SettingsError(f"targets[{i}].{local}", "use secret_arn on AWS")
            if isinstance(target.get("inject_header"), dict) and local in target["inject_header"]:
                raise SettingsError(f"targets[{i}].inject_header.{local}", "use secret_arn on AWS")
        env = target.get("env")  # an MCP stdio server's: plain values, or secret_arn sources
        for var, source in env.items() if isinstance(env, dict) else ():
            if isinstance(source, dict) and {"value_env", "value_file"} & source.keys():
                raise SettingsError(f"targets[{i}].env.{var}", "use secret_arn on AWS")
        known = target.get("known_hosts")
        if isinstance(known, str) and not is_known_hosts_lines(known):
            raise SettingsError(f"targets[{i}].known_hosts", "give the known_hosts lines "
                                "themselves on AWS, not a path")  # fmt: skip
    return raw

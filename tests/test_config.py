"""tapegate.yaml: the contract's shape, defaults, and errors that name the key and the reason."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tapegate.config import ConfigError, load_config, parse_config

EXAMPLE = """
data_dir: ./.tapegate
identity:
  issuer: dev
  audience: tapegate
  groups_claim: groups
listen:
  postgres: 127.0.0.1:6543
targets:
  - name: appdb
    protocol: postgres
    upstream: 127.0.0.1:5432
    database: app
    username: app
    password_env: APPDB_PASSWORD
    allow_groups: [dba, agents]
    guardrails:
      deny: [{kind: DROP}, {regex: "(?i)\\\\bdelete\\\\s+from\\\\s+audit_log"}]
"""


def test_the_documented_example_parses(tmp_path: Path) -> None:
    path = tmp_path / "tapegate.yaml"
    path.write_text(EXAMPLE)
    config = load_config(path)
    target = config.targets["appdb"]
    assert str(target.upstream) == "127.0.0.1:5432" and target.database == "app"
    assert target.allow_groups == ("dba", "agents")
    assert target.deny[0].kind == "DROP"
    assert target.deny[1].regex.search("DELETE  FROM audit_log")
    assert config.data_dir == tmp_path / ".tapegate"
    assert str(config.listen_postgres) == "127.0.0.1:6543"
    assert config.tls.mode == "required"


def test_lookup_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("TAPEGATE_CONFIG", raising=False)
    assert load_config().source == "built-in defaults"
    (tmp_path / "tapegate.yaml").write_text("gateway_name: from-cwd\n")
    assert load_config().gateway_name == "from-cwd"
    env_file = tmp_path / "env.yaml"
    env_file.write_text("gateway_name: from-env\n")
    monkeypatch.setenv("TAPEGATE_CONFIG", str(env_file))
    assert load_config().gateway_name == "from-env"
    explicit = tmp_path / "x.yaml"
    explicit.write_text("gateway_name: explicit\n")
    assert load_config(explicit).gateway_name == "explicit"


@pytest.mark.parametrize(
    ("raw", "key", "reason"),
    [
        ({"listen": {"postgres": "nope"}}, "listen.postgres", "expected HOST:PORT"),
        ({"targets": [{"name": "a", "protocol": "postgres", "upstream": "h:1",
                       "username": "u", "allow_groups": ["g"]}]},
         "targets[0]", "exactly one of password_env"),
        ({"targets": [{"name": "a", "protocol": "mysql", "upstream": "h:1", "username": "u",
                       "password_env": "X", "allow_groups": ["g"]}]},
         "targets[0].protocol", "must be one of"),
        ({"targets": [{"name": "a", "protocol": "postgres", "upstream": "h:1", "username": "u",
                       "password_env": "X", "allow_groups": ["g"],
                       "guardrails": {"deny": [{"regex": "("}]}}]},
         "targets[0].guardrails.deny[0].regex", "invalid regular expression"),
        ({"targets": [{"name": "a", "protocol": "postgres", "upstream": "h:1", "username": "u",
                       "password_env": "X", "allow_groups": ["g"], "pasword": "typo"}]},
         "targets[0].pasword", "unknown key"),
        ({"targets": [{"name": "s", "protocol": "ssh", "upstream": "h:22", "username": "u",
                       "secret_arn": "arn:x", "allow_groups": ["g"],
                       "known_hosts": "h ssh-ed25519 AAAA\njunk\n"}]},
         "targets[0].known_hosts", "line 2 is not"),
        ({"targets": [{"name": "a", "protocol": "postgres", "upstream": "h:1", "username": "u",
                       "password_env": "X", "allow_groups": ["g"],
                       "allow_insecure_auth": "yes"}]},
         "targets[0].allow_insecure_auth", "true or false"),
        ({"targets": [{"name": "s", "protocol": "ssh", "upstream": "h:22", "username": "u",
                       "secret_arn": "arn:x", "allow_groups": ["g"], "known_hosts": "kh",
                       "guardrails": {"deny_function_call": True}}]},
         "targets[0].guardrails.deny_function_call", "unknown key"),
        ({"targets": [{"name": "a", "protocol": "postgres", "upstream": "h:1", "username": "u",
                       "password_env": "X", "allow_groups": ["g"],
                       "guardrails": {"deny": [{"kind": "DROP TABLE NOW PLEASE"}]}}]},
         "targets[0].guardrails.deny[0].kind", "one to three SQL keywords"),
        ({"identity": {"issuer": "idp.example"}}, "identity.issuer", "http(s) URL"),
        ({"tls": "sometimes"}, "tls.mode", "required or optional"),
        ({"colour": "blue"}, "colour", "unknown key"),
    ],
)  # fmt: skip
def test_errors_name_the_key(raw: dict, key: str, reason: str) -> None:
    with pytest.raises(ConfigError) as exc:
        parse_config(raw)
    assert exc.value.key == key and reason in exc.value.reason


def test_ssh_known_hosts_is_a_path_or_the_lines_themselves(tmp_path: Path) -> None:
    def target(known: str) -> Any:
        raw = {"name": "s", "protocol": "ssh", "upstream": "h:22", "username": "u",
               "secret_arn": "arn:x", "allow_groups": ["g"], "known_hosts": known}  # fmt: skip
        return parse_config({"targets": [raw]}).targets["s"]

    as_file = target("keys/known_hosts")
    assert as_file.known_hosts is not None and as_file.known_hosts_lines is None
    lines = (
        "# the bastion\n[10.0.1.5]:22 ssh-ed25519 AAAAC3Nza\n@cert-authority *.lan ssh-rsa AAAAB\n"
    )
    inline = target(lines)
    assert inline.known_hosts is None and inline.known_hosts_lines == lines


def test_postgres_upstream_defaults_are_the_safe_ones() -> None:
    config = parse_config({"targets": [{"name": "a", "protocol": "postgres", "upstream": "h:1",
                                        "username": "u", "password_env": "X",
                                        "allow_groups": ["g"]}]})  # fmt: skip
    (target,) = config.targets.values() if isinstance(config.targets, dict) else config.targets
    assert target.upstream_tls == "require"
    assert not target.allow_insecure_auth and not target.deny_function_call


def test_yaml_syntax_error(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("targets: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(path)


def test_archive_section() -> None:
    config = parse_config({"archive": {"kind": "local", "embedded_pipeline": False}})
    assert config.archive.kind == "local" and not config.archive.embedded_pipeline
    assert parse_config({}).archive.embedded_pipeline
    with pytest.raises(ConfigError, match="table: is required for kind aws"):
        parse_config({"archive": {"kind": "aws", "evidence_bucket": "e", "curated_bucket": "c"}})


def test_the_shipped_example_parses() -> None:
    config = load_config(Path(__file__).parent.parent / "examples" / "tapegate.yaml")
    assert config.targets["appdb"].deny and config.durability == "buffered"


def test_keys_section_names_the_signing_key_and_auditor_keys(tmp_path) -> None:
    from tapegate.config import parse_config

    auditor = "ab" * 32
    config = parse_config({"keys": {"signing_key": "arn:aws:secretsmanager:eu-west-1:1:secret:s",
                                    "auditor_public_keys": [auditor]}})  # fmt: skip
    assert config.keys.signing_key.endswith(":secret:s")
    assert config.keys.auditor_public_keys == (bytes.fromhex(auditor),)
    with pytest.raises(ConfigError, match=r"keys.auditor_public_keys\[0\]: must be 64 hex"):
        parse_config({"keys": {"auditor_public_keys": ["abc"]}})
    with pytest.raises(ConfigError, match=r"keys\.signing: unknown key"):
        parse_config({"keys": {"signing": "x"}})


def test_a_container_gets_its_config_and_targets_from_the_environment(monkeypatch) -> None:
    import json

    from tapegate.config import load_config

    monkeypatch.delenv("TAPEGATE_CONFIG", raising=False)
    monkeypatch.chdir("/")
    monkeypatch.setenv("TAPEGATE_CONFIG_YAML", json.dumps(
        {"gateway_name": "fargate", "listen": {"postgres": "0.0.0.0:5432"}}))  # fmt: skip
    monkeypatch.setenv("TAPEGATE_TARGETS", json.dumps([
        {"name": "appdb", "protocol": "postgres", "upstream": "db.internal:5432",
         "database": "app", "username": "app",
         "secret_arn": "arn:aws:secretsmanager:x", "allow_groups": ["agents"]}]))  # fmt: skip
    config = load_config()
    assert config.gateway_name == "fargate" and config.source == "$TAPEGATE_CONFIG_YAML"
    assert list(config.targets) == ["appdb"]
    monkeypatch.setenv("TAPEGATE_CONFIG_YAML", "listen: [")
    with pytest.raises(ConfigError, match=r"\$TAPEGATE_CONFIG_YAML: not valid YAML"):
        load_config()

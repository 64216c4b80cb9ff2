"""show, replay, verify and export against the AWS adapters under moto: records in the evidence
bucket, the session in DynamoDB, the gateway's public key in SSM, the auditor key in Secrets
Manager — all through the standard boto3 chain, as an auditor's laptop would reach them."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import boto3
import pytest
import yaml

moto = pytest.importorskip("moto")

from tapegate.archive.aws import TABLE_SPEC, DynamoIndex, S3ObjectStore  # noqa: E402
from tapegate.cli import main  # noqa: E402
from tapegate.pipeline import Pipeline  # noqa: E402
from tapegate.tape import decode_record  # noqa: E402
from tests.tapes import record_session  # noqa: E402

REGION = "eu-west-1"


@pytest.fixture
def archive(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Any:
    for k, v in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_SESSION_TOKEN": "testing",
        "AWS_DEFAULT_REGION": REGION,
    }.items():
        monkeypatch.setenv(k, v)  # fmt: skip
    with moto.mock_aws():
        s3 = boto3.client("s3", region_name=REGION)
        for bucket in ("evidence", "curated"):
            s3.create_bucket(Bucket=bucket,
                             CreateBucketConfiguration={"LocationConstraint": REGION})  # fmt: skip
        ddb = boto3.client("dynamodb", region_name=REGION)
        ddb.create_table(TableName="index", **TABLE_SPEC)
        session = record_session(exchanges=5)
        boto3.client("ssm", region_name=REGION).put_parameter(
            Name="/tapegate/public-key", Type="String",
            Value=bytes(session.signer.verify_key).hex(),
        )  # fmt: skip
        secret = boto3.client("secretsmanager", region_name=REGION).create_secret(
            Name="tapegate/auditor", SecretString=bytes(session.auditor).hex()
        )["ARN"]
        key = "raw/2026/11/24/13/tapes-1-2026-11-24-13-00-00-abc"
        data = b"".join(session.records)
        s3.put_object(Bucket="evidence", Key=key, Body=data)
        pipeline = Pipeline(session.trusted, DynamoIndex("index", ddb),
                            S3ObjectStore("curated", s3))  # fmt: skip
        pipeline.process_object(key, data, time.time_ns())
        cfg = tmp_path / "aws.yaml"
        archive_cfg = {
            "kind": "aws", "region": REGION, "evidence_bucket": "evidence",
            "curated_bucket": "curated", "table": "index",
            "public_key_param": "/tapegate/public-key", "auditor_key": secret,
        }  # fmt: skip
        cfg.write_text(yaml.safe_dump({"archive": archive_cfg}))
        sid = str(decode_record(session.records[0]).session_id)
        yield cfg, sid, session, s3


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_show_verify_replay_export_on_aws(archive, capsys, tmp_path: Path) -> None:
    cfg, sid, session, _ = archive
    code, out, _ = _run(capsys, "show", sid, "--json", "--config", str(cfg))
    assert code == 0
    summary = json.loads(out)
    assert summary["verdict"] == "intact" and summary["identity"]["subject"] == "agent-7"
    assert summary["statements"] == 5

    code, out, _ = _run(capsys, "verify", sid, "--config", str(cfg))
    assert code == 0 and "intact" in out

    code, out, err = _run(capsys, "replay", sid, "--format", "json", "--config", str(cfg))
    assert code == 0 and "payloads not shown" not in err  # the secret's key opened them
    assert [json.loads(line)["attrs"]["sql"] for line in out.splitlines()] == [
        f"SELECT {i}" for i in range(5)]  # fmt: skip

    bundle = tmp_path / "aws-evidence.zip"
    code, out, _ = _run(capsys, "export", sid, "-o", str(bundle), "--config", str(cfg))
    assert code == 0
    code, out, _ = _run(capsys, "verify", str(bundle))
    assert code == 0 and "intact" in out and bytes(session.signer.verify_key).hex() in out


def test_a_tampered_evidence_object_fails_verification(archive, capsys) -> None:
    cfg, sid, session, s3 = archive
    key = "raw/2026/11/24/13/tapes-1-2026-11-24-13-00-00-abc"
    data = bytearray(s3.get_object(Bucket="evidence", Key=key)["Body"].read())
    data[len(session.records[0]) + 120] ^= 0x01  # inside chunk 1
    s3.put_object(Bucket="evidence", Key=key, Body=bytes(data))
    code, out, _ = _run(capsys, "verify", sid, "--config", str(cfg))
    assert code == 1 and "bad_signature at seq 1" in out


def test_clear_errors_without_keys_or_archive(archive, capsys, tmp_path: Path) -> None:
    cfg, sid, _, _ = archive
    raw = yaml.safe_load(cfg.read_text())
    del raw["archive"]["public_key_param"]
    cfg.write_text(yaml.safe_dump(raw))
    code, _, err = _run(capsys, "verify", sid, "--config", str(cfg))
    assert code == 2 and "archive.public_key_param is not set" in err
    raw["archive"]["table"] = "no-such-table"
    cfg.write_text(yaml.safe_dump(raw))
    code, _, err = _run(capsys, "show", sid, "--config", str(cfg))
    assert code == 2 and "cannot read the archive" in err and "Traceback" not in err

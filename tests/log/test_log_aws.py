"""The session log on the AWS adapters under moto: the verify/index pipeline holds the leaves
in DynamoDB, the sequencer Lambda's run appends them to tiles in the evidence bucket, the anchor
Lambda copies the checkpoint to the anchor bucket and verifies; `tapegate log verify` and a
bundle's proofs work against it; and a deleted delivery object is named."""

from __future__ import annotations

import datetime as dt
import time
from pathlib import Path
from typing import Any

import boto3
import pytest
import yaml
from nacl.public import PrivateKey
from nacl.signing import SigningKey

moto = pytest.importorskip("moto")

from tapegate.archive.aws import TABLE_SPEC, DynamoIndex, S3ObjectStore  # noqa: E402
from tapegate.cli import main  # noqa: E402
from tapegate.keys import Keyring  # noqa: E402
from tapegate.log.leaf import LeafWriter  # noqa: E402
from tapegate.log.sequencer import LogKey, Sequencer  # noqa: E402
from tapegate.pipeline import Pipeline  # noqa: E402
from tapegate.tape import Direction, Event, TapeWriter  # noqa: E402
from tests.tapes import make_header  # noqa: E402

REGION = "eu-west-1"
ORIGIN = "test.tapegate/log"


@pytest.fixture
def aws(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Any:
    for k, v in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                 "AWS_SESSION_TOKEN": "testing", "AWS_DEFAULT_REGION": REGION}.items():  # fmt: skip
        monkeypatch.setenv(k, v)
    with moto.mock_aws():
        s3 = boto3.client("s3", region_name=REGION)
        for bucket in ("evidence", "curated", "anchors"):
            s3.create_bucket(Bucket=bucket,
                             CreateBucketConfiguration={"LocationConstraint": REGION})  # fmt: skip
        ddb = boto3.client("dynamodb", region_name=REGION)
        ddb.create_table(TableName="index", **TABLE_SPEC)
        ssm = boto3.client("ssm", region_name=REGION)
        gateway, log_key = SigningKey.generate(), SigningKey.generate()
        for name, key in (("/t/gateway", gateway), ("/t/log", log_key)):
            ssm.put_parameter(Name=name, Type="String", Value=bytes(key.verify_key).hex())
        env = {"TAPEGATE_TABLE": "index", "TAPEGATE_EVIDENCE_BUCKET": "evidence",
               "TAPEGATE_ANCHOR_BUCKET": "anchors", "TAPEGATE_LOG_ORIGIN": ORIGIN,
               "TAPEGATE_LOG_PUBLIC_KEY_PARAM": "/t/log",
               "TAPEGATE_PUBLIC_KEY_PARAM": "/t/gateway"}  # fmt: skip
        for k, v in env.items():
            monkeypatch.setenv(k, v)
        cfg = tmp_path / "aws.yaml"
        cfg.write_text(yaml.safe_dump({
            "archive": {"kind": "aws", "region": REGION, "evidence_bucket": "evidence",
                        "curated_bucket": "curated", "table": "index",
                        "public_key_param": "/t/gateway", "log_public_key_param": "/t/log",
                        "anchor_bucket": "anchors"},
            "log": {"origin": ORIGIN},
        }))  # fmt: skip
        yield {"s3": s3, "ddb": ddb, "ssm": ssm, "gateway": gateway, "log_key": log_key,
               "cfg": cfg}  # fmt: skip


def _deliver(aws: Any, n: int, records: list[bytes]) -> str:
    """Write one delivery object, as Firehose would, and run the pipeline on it."""
    key = f"deliveries/2026/12/04/18/tapegate-{n:04d}"
    data = b"".join(records)
    aws["s3"].put_object(Bucket="evidence", Key=key, Body=data)
    pipeline = Pipeline(Keyring.of(aws["gateway"].verify_key), DynamoIndex("index", aws["ddb"]),
                        S3ObjectStore("curated", aws["s3"]))  # fmt: skip
    report = pipeline.process_object(key, data, time.time_ns())
    assert not report.rejected, report.rejected
    return key


def _session(leaves: LeafWriter, signer: SigningKey, now: int) -> tuple[str, list[bytes]]:
    writer = TapeWriter(make_header(now), signer, [PrivateKey.generate().public_key],
                        max_chunk_bytes=1024)  # fmt: skip
    out = [leaves.session_open(writer.session_id, writer.header, now)]
    out += writer.add_event(Event(now, "query", Direction.CLIENT_TO_SERVER, {"sql": "SELECT 1"}))
    final = writer.close(now + 1000, "client_terminate")
    close = leaves.session_close(writer.session_id, final, writer.seq, writer.totals,
                                 "client_terminate", now + 1000)  # fmt: skip
    return str(writer.session_id), [*out, final, close]


def test_sequencer_anchor_and_log_verify_on_aws(aws: Any, capsys, tmp_path: Path) -> None:
    from lambdas.log_anchor.handler import anchor_and_verify, sources
    from lambdas.sequencer.handler import run

    now = time.time_ns() - 60 * 10**9
    leaves = LeafWriter(aws["gateway"], "gw-aws")
    first, records = _session(leaves, aws["gateway"], now)
    keys = [_deliver(aws, 1, [leaves.heartbeat("start", 60, 0, now), *records])]
    second, records = _session(leaves, aws["gateway"], now + 10**9)
    keys.append(_deliver(aws, 2, [*records, leaves.heartbeat("stop", 60, 0, now + 2 * 10**9)]))
    # Firehose delivers at least once: the second object again under another key.
    body = aws["s3"].get_object(Bucket="evidence", Key=keys[1])["Body"].read()
    _deliver(aws, 3, [body])

    sequencer = Sequencer(DynamoIndex("index", aws["ddb"]), S3ObjectStore("evidence", aws["s3"]),
                          LogKey(ORIGIN, aws["log_key"]), prefix="log/")  # fmt: skip
    assert run(sequencer, lambda: 10**6) == {"checkpoints": 1, "size": 6}
    assert run(sequencer, lambda: 10**6) == {"checkpoints": 0, "size": -1}  # nothing pending
    listed = aws["s3"].list_objects_v2(Bucket="evidence", Prefix="log/")["Contents"]
    assert {o["Key"] for o in listed} >= {"log/checkpoint", "log/tile/0/000.p/6",
                                          "log/tile/entries/000.p/6"}  # fmt: skip

    src = sources(aws["s3"], aws["ssm"], aws["ddb"])
    result = anchor_and_verify(src, dt.date(2026, 12, 4), time.time_ns())
    assert result == {"anchor": f"anchors/{ORIGIN}/2026-12-04.note", "size": 6, "problems": []}
    anchored = aws["s3"].get_object(Bucket="anchors", Key=result["anchor"])["Body"].read()
    assert anchored == aws["s3"].get_object(Bucket="evidence", Key="log/checkpoint")["Body"].read()

    cfg = ["--config", str(aws["cfg"])]
    assert main(["log", "verify", *cfg]) == 0
    assert capsys.readouterr().out.rstrip().endswith("consistent")
    bundle = tmp_path / "b.zip"
    assert main(["export", second, "-o", str(bundle), *cfg]) == 0
    capsys.readouterr()
    assert main(["verify", str(bundle)]) == 0
    assert f"in {ORIGIN}'s checkpoint of 6 leaves" in capsys.readouterr().out

    # Someone deletes the first session's delivery object (Object Lock forbids it on AWS; moto
    # has none here): the log and the daily check both name the session.
    aws["s3"].delete_object(Bucket="evidence", Key=keys[0])
    assert main(["log", "verify", *cfg]) == 1
    assert f"session_missing: session {first}" in capsys.readouterr().out
    result = anchor_and_verify(src, dt.date(2026, 12, 5), time.time_ns())
    assert [p.split(":")[0] for p in result["problems"]] == ["session_missing"]

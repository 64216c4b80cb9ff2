"""The AWS path end to end under moto: a real PostgreSQL session through the gateway with the
Firehose sink (partial failures and throttling injected) → Firehose → S3 → the verify/index
handler fed the real S3-in-SQS event shape → DynamoDB + Parquet in S3 → DuckDB over those files.
"""

from __future__ import annotations

import json
import random
import uuid
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import boto3
import psycopg
import pytest
from botocore.exceptions import ClientError

moto = pytest.importorskip("moto")

from gateway_task.recording.firehose import FirehoseSink  # noqa: E402
from tapegate.archive.aws import TABLE_SPEC, DynamoIndex, S3ObjectStore  # noqa: E402
from tapegate.archive.local import DuckDBQuery  # noqa: E402
from tests.gateway_harness import RunningGateway, gateway_config  # noqa: E402
from tests.pg import PgServer  # noqa: E402

REGION = "us-east-1"


class FlakyFirehose:
    """moto's Firehose never fails: this one throttles some calls and fails some entries."""

    def __init__(self, real: Any, seed: int = 7) -> None:
        self.real = real
        self.rng = random.Random(seed)
        self.throttled = 0
        self.partial = 0

    def put_record_batch(self, **kwargs: Any) -> dict[str, Any]:
        roll = self.rng.random()
        if roll < 0.25:
            self.throttled += 1
            raise ClientError({"Error": {"Code": "ThrottlingException", "Message": "slow down"}},
                              "PutRecordBatch")  # fmt: skip
        records = kwargs["Records"]
        if roll < 0.6:  # the first entry fails, the rest (if any) go through
            self.partial += 1
            rest = []
            if len(records) > 1:
                rest = self.real.put_record_batch(
                    DeliveryStreamName=kwargs["DeliveryStreamName"], Records=records[1:]
                )["RequestResponses"]
            return {
                "FailedPutCount": 1,
                "RequestResponses": [{"ErrorCode": "ServiceUnavailableException",
                                      "ErrorMessage": "try again"}, *rest],
            }  # fmt: skip
        return self.real.put_record_batch(**kwargs)


def _s3_event_message(bucket: str, key: str, n: int) -> dict[str, Any]:
    """An SQS record whose body is an S3 ObjectCreated notification, as AWS sends them."""
    body = {"Records": [{
        "eventVersion": "2.1", "eventSource": "aws:s3", "awsRegion": REGION,
        "eventTime": "2030-01-01T00:00:00.000Z", "eventName": "ObjectCreated:Put",
        "s3": {"s3SchemaVersion": "1.0", "bucket": {"name": bucket,
               "arn": f"arn:aws:s3:::{bucket}"}, "object": {"key": key, "size": 1}},
    }]}  # fmt: skip
    return {
        "messageId": str(uuid.uuid4()), "receiptHandle": f"handle-{n}", "body": json.dumps(body),
        "attributes": {"ApproximateReceiveCount": "1", "SentTimestamp": "1",
                       "SenderId": "s3", "ApproximateFirstReceiveTimestamp": "1"},
        "messageAttributes": {}, "md5OfBody": "", "eventSource": "aws:sqs",
        "eventSourceARN": f"arn:aws:sqs:{REGION}:123456789012:tapegate", "awsRegion": REGION,
    }  # fmt: skip


@pytest.fixture
def aws(monkeypatch: pytest.MonkeyPatch):
    for k, v in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": REGION,
        "AWS_SESSION_TOKEN": "testing",
    }.items():
        monkeypatch.setenv(k, v)  # fmt: skip
    with moto.mock_aws():
        s3 = boto3.client("s3", region_name=REGION)
        for bucket in ("evidence", "curated"):
            s3.create_bucket(Bucket=bucket)
        boto3.client("dynamodb", region_name=REGION).create_table(TableName="index", **TABLE_SPEC)
        boto3.client("firehose", region_name=REGION).create_delivery_stream(
            DeliveryStreamName="tapes",
            DeliveryStreamType="DirectPut",
            ExtendedS3DestinationConfiguration={
                "RoleARN": "arn:aws:iam::123456789012:role/firehose",
                "BucketARN": "arn:aws:s3:::evidence",
                "Prefix": "raw/",
            },
        )
        yield s3


@pytest.mark.slow
def test_gateway_to_firehose_to_lambda_to_dynamodb_and_parquet(
    aws: Any, pg: PgServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = gateway_config(tmp_path / "data", pg)
    flaky = FlakyFirehose(boto3.client("firehose", region_name=REGION))
    sink = FirehoseSink("tapes", flaky, tmp_path / "spool", flush_ms=20, base_delay_s=0.001,
                        max_delay_s=0.005, attempts=8)  # fmt: skip
    gw = RunningGateway(config, sink=sink)
    try:
        for who in ("ada", "linus", "grace"):
            with psycopg.connect(gw.dsn(gw.token(sub=who))) as conn:
                for i in range(20):
                    conn.execute("SELECT %s::int, repeat('x', 3000)", (i,))
                with pytest.raises(psycopg.errors.InsufficientPrivilege):
                    conn.execute("DROP TABLE t")
        gw.wait_closed()
    finally:
        gw.stop()
    assert flaky.throttled and flaky.partial, "the failures were injected"

    public = (tmp_path / "data" / "keys" / "signing.pub").read_text().strip()
    monkeypatch.setenv("TAPEGATE_PUBLIC_KEYS", public)
    monkeypatch.setenv("TAPEGATE_TABLE", "index")
    monkeypatch.setenv("TAPEGATE_CURATED_BUCKET", "curated")
    from lambdas.verify_index import handler

    handler._clients.cache_clear()
    keys = S3ObjectStore("evidence", aws).list("raw/")
    assert keys, "Firehose delivered objects to the evidence bucket"
    messages = [_s3_event_message("evidence", key, n) for n, key in enumerate(keys)]
    context = SimpleNamespace(function_name="verify-index", memory_limit_in_mb=512,
                              invoked_function_arn="arn:aws:lambda:us-east-1:1:function:v",
                              aws_request_id="req-1")  # fmt: skip
    # Deliver everything twice and in reverse: at-least-once, unordered.
    for batch in (messages, list(reversed(messages))):
        for i in range(0, len(batch), 10):
            result = handler.lambda_handler({"Records": batch[i : i + 10]}, context)
            assert result == {"batchItemFailures": []}

    index = DynamoIndex("index", boto3.client("dynamodb", region_name=REGION))
    sessions = index.sessions()
    assert sorted(s.subject for s in sessions) == ["ada", "grace", "linus"]
    assert all(s.status == "closed" and s.verified for s in sessions), [
        (s.subject, s.status, s.problems) for s in sessions
    ]
    assert [s.subject for s in index.sessions(subject="ada")] == ["ada"]
    assert len(index.sessions(target="appdb")) == 3

    curated = tmp_path / "curated"
    store = S3ObjectStore("curated", aws)
    for key in store.list():
        (curated / key).parent.mkdir(parents=True, exist_ok=True)
        (curated / key).write_bytes(store.get(key))
    _, rows = DuckDBQuery(curated).query(
        "SELECT subject, count(*) FILTER (WHERE type = 'execute') AS statements, "
        "count(*) FILTER (WHERE type = 'blocked') AS blocked FROM events "
        "GROUP BY subject ORDER BY subject"
    )
    assert rows == [("ada", 20, 1), ("grace", 20, 1), ("linus", 20, 1)]
    _, rows = DuckDBQuery(curated).query("SELECT count(*), bool_and(verified) FROM sessions")
    assert rows == [(3, True)]


def test_handler_reports_a_failing_object_as_a_batch_item_failure(
    aws: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TAPEGATE_PUBLIC_KEYS", "00" * 32)
    monkeypatch.setenv("TAPEGATE_TABLE", "index")
    monkeypatch.setenv("TAPEGATE_CURATED_BUCKET", "curated")
    from lambdas.verify_index import handler

    handler._clients.cache_clear()
    aws.put_object(Bucket="evidence", Key="raw/ok", Body=b"not a tape, but readable")
    ok, missing = (
        _s3_event_message("evidence", "raw/ok", 1),
        _s3_event_message("evidence", "raw/does-not-exist", 2),
    )
    context = SimpleNamespace(function_name="v", memory_limit_in_mb=512,
                              invoked_function_arn="arn:aws:lambda:us-east-1:1:function:v",
                              aws_request_id="r")  # fmt: skip
    result = handler.lambda_handler({"Records": [ok, missing]}, context)
    assert result == {"batchItemFailures": [{"itemIdentifier": missing["messageId"]}]}


def test_cli_sessions_reads_the_dynamodb_index(aws: Any, tmp_path: Path, capsys) -> None:
    from nacl.signing import SigningKey

    from tapegate.cli import main
    from tapegate.keys import Keyring
    from tapegate.pipeline import Pipeline
    from tests.tapes import T0, record_session

    signer = SigningKey.generate()
    index = DynamoIndex("index", boto3.client("dynamodb", region_name=REGION))
    pipe = Pipeline(Keyring.of(signer.verify_key), index, S3ObjectStore("curated", aws))
    s = record_session(exchanges=3, signer=signer)
    pipe.process_object("raw/one", b"".join(s.records), T0 + 10**12)
    cfg = tmp_path / "aws.yaml"
    cfg.write_text(
        f"archive: {{kind: aws, region: {REGION}, evidence_bucket: evidence, "
        "curated_bucket: curated, table: index, workgroup: wg, database: db}\n"
    )
    assert main(["sessions", "--json", "--config", str(cfg)]) == 0
    (row,) = json.loads(capsys.readouterr().out)
    assert row["subject"] == "agent-7" and row["status"] == "closed" and row["statements"] == 3

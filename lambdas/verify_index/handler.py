"""verify/index Lambda: S3 object created → SQS → here → tapegate.pipeline.

A thin Powertools handler: SQS batch processing with partial batch failures (a message whose
object fails to process is retried by SQS, then lands in the DLQ), one pipeline run per delivered
object. Configuration comes from the environment the CDK stack sets:
    TAPEGATE_TABLE            DynamoDB session index
    TAPEGATE_CURATED_BUCKET   bucket for the Parquet tables
    TAPEGATE_PUBLIC_KEY_PARAM SSM parameter holding the gateway's Ed25519 public key (hex), or
    TAPEGATE_PUBLIC_KEYS      comma-separated hex public keys (rotation: several)
"""

from __future__ import annotations

import json
import os
import urllib.parse
from datetime import datetime
from functools import cache
from typing import Any

import boto3
from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.batch import (
    BatchProcessor,
    EventType,
    process_partial_response,
)
from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord

from tapegate.archive.aws import DynamoIndex, S3ObjectStore
from tapegate.keys import Keyring
from tapegate.pipeline import Pipeline

logger = Logger(service="tapegate-verify-index")
metrics = Metrics(namespace=os.environ.get("POWERTOOLS_METRICS_NAMESPACE", "tapegate"))
processor = BatchProcessor(event_type=EventType.SQS)
tracer = Tracer(service="tapegate-verify-index")


@cache
def _clients() -> tuple[Any, Pipeline]:
    s3 = boto3.client("s3")
    keys = os.environ.get("TAPEGATE_PUBLIC_KEYS", "")
    if not keys:
        name = os.environ["TAPEGATE_PUBLIC_KEY_PARAM"]
        keys = boto3.client("ssm").get_parameter(Name=name)["Parameter"]["Value"]
    trusted = Keyring.of(*(bytes.fromhex(k.strip()) for k in keys.split(",") if k.strip()))
    pipeline = Pipeline(
        trusted,
        DynamoIndex(os.environ["TAPEGATE_TABLE"], boto3.client("dynamodb")),
        S3ObjectStore(os.environ["TAPEGATE_CURATED_BUCKET"], s3),
    )
    return s3, pipeline


@tracer.capture_method
def record_handler(record: SQSRecord) -> None:
    s3, pipeline = _clients()
    body = json.loads(record.body)
    for s3_record in body.get("Records", []):  # an s3:TestEvent has none
        bucket = s3_record["s3"]["bucket"]["name"]
        key = urllib.parse.unquote_plus(s3_record["s3"]["object"]["key"])
        delivered = datetime.fromisoformat(s3_record["eventTime"].replace("Z", "+00:00"))
        data = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
        report = pipeline.process_object(key, data, int(delivered.timestamp() * 1e9))
        metrics.add_metric("RecordsVerified", MetricUnit.Count, report.new + report.duplicates)
        metrics.add_metric("DuplicateChunks", MetricUnit.Count, report.duplicates)
        metrics.add_metric("TamperAlerts", MetricUnit.Count, report.conflicts)
        metrics.add_metric("VerificationFailures", MetricUnit.Count, len(report.rejected))
        if report.rejected or report.conflicts:
            logger.warning("findings", key=key, rejected=report.rejected[:20],
                           conflicts=report.conflicts)  # fmt: skip
        logger.info("processed", key=key, records=report.records, new=report.new,
                    sessions=len(report.sessions))  # fmt: skip


@logger.inject_lambda_context
@metrics.log_metrics
@tracer.capture_lambda_handler
def lambda_handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    return process_partial_response(
        event=event, record_handler=record_handler, processor=processor, context=context
    )

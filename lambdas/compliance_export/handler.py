"""Compliance export Lambda: EventBridge Scheduler → here → tapegate.exports.export_day.

The schedule passes its scheduled time; the run exports the previous UTC day. `{"day":
"YYYY-MM-DD"}` exports a given day instead (a rerun writes a new prefix, never over the old one).
Configuration comes from the environment the CDK stack sets:
    TAPEGATE_WORKGROUP, TAPEGATE_DATABASE   where Athena runs the UNLOAD
    TAPEGATE_EXPORT_BUCKET                  where the files and the manifest go
    TAPEGATE_EXPORT_KEY_SECRET              Secrets Manager secret holding the Ed25519 seed (hex)
"""

from __future__ import annotations

import os
from datetime import date, datetime, timedelta
from typing import Any

import boto3
from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.metrics import MetricUnit
from nacl.signing import SigningKey

from tapegate.archive.aws import AthenaQuery, S3ObjectStore
from tapegate.exports import export_day

logger = Logger(service="tapegate-compliance-export")
metrics = Metrics(namespace=os.environ.get("POWERTOOLS_METRICS_NAMESPACE", "tapegate"))
tracer = Tracer(service="tapegate-compliance-export")


def day_to_export(event: dict[str, Any]) -> date:
    if event.get("day"):
        return date.fromisoformat(event["day"])
    scheduled = datetime.fromisoformat(event["scheduled_time"].replace("Z", "+00:00"))
    return scheduled.date() - timedelta(days=1)


@logger.inject_lambda_context
@metrics.log_metrics
@tracer.capture_lambda_handler
def lambda_handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    day = day_to_export(event)
    bucket = os.environ["TAPEGATE_EXPORT_BUCKET"]
    seed = boto3.client("secretsmanager").get_secret_value(
        SecretId=os.environ["TAPEGATE_EXPORT_KEY_SECRET"]
    )["SecretString"]
    athena = AthenaQuery(
        os.environ["TAPEGATE_WORKGROUP"], os.environ["TAPEGATE_DATABASE"],
        boto3.client("athena"), timeout_s=780.0,
    )  # fmt: skip
    manifest = export_day(
        day,
        unload=lambda table, d, prefix: athena.unload(table, d, f"s3://{bucket}/{prefix}"),
        store=S3ObjectStore(bucket, boto3.client("s3")),
        signer=SigningKey(bytes.fromhex(seed.strip())),
    )
    metrics.add_metric("ExportedRows", MetricUnit.Count, sum(manifest["tables"].values()))
    metrics.add_metric("ExportedFiles", MetricUnit.Count, len(manifest["files"]))
    logger.info("exported", day=day.isoformat(), prefix=manifest["prefix"],
                tables=manifest["tables"])  # fmt: skip
    return {"day": day.isoformat(), "prefix": manifest["prefix"], "tables": manifest["tables"]}

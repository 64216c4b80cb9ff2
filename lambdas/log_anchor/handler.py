"""Log anchor Lambda: EventBridge Scheduler (daily) → here.

1. Copies the session log's latest checkpoint into the anchor bucket (Object Lock in compliance
   mode, its own bucket, possibly another account's), with an RFC 3161 token over it when a
   timestamp authority is configured (tapegate/log/anchor.py).
2. Verifies the log against the archive for the last days (tapegate/log/verify.py) and publishes
   `LogProblems`, the number of problems found, on which an alarm pages someone.

Configuration comes from the environment the CDK stack sets:
    TAPEGATE_TABLE, TAPEGATE_EVIDENCE_BUCKET   the index and the evidence (the log under log/)
    TAPEGATE_ANCHOR_BUCKET                     where anchors go
    TAPEGATE_LOG_ORIGIN                        the log's origin
    TAPEGATE_LOG_PUBLIC_KEY_PARAM              SSM parameter: the log key(s), hex, comma-separated
    TAPEGATE_PUBLIC_KEY_PARAM                  SSM parameter: the gateway key(s), likewise
    TAPEGATE_TSA_URL                           optional: an RFC 3161 timestamp authority
    TAPEGATE_VERIFY_DAYS                       how far back the daily check looks (default 2)
"""

from __future__ import annotations

import datetime as dt
import os
import time
from typing import Any

import boto3
from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.metrics import MetricUnit
from nacl.signing import VerifyKey

from tapegate.archive.aws import DynamoIndex, S3ObjectStore
from tapegate.keys import Keyring
from tapegate.log.anchor import rfc3161_timestamper, write_anchor
from tapegate.log.verify import LogSources, verify_log

LOG_PREFIX = "log/"

logger = Logger(service="tapegate-log-anchor")
metrics = Metrics(namespace=os.environ.get("POWERTOOLS_METRICS_NAMESPACE", "tapegate"))
tracer = Tracer(service="tapegate-log-anchor")


def _hex_keys(ssm: Any, name: str) -> list[bytes]:
    value = ssm.get_parameter(Name=name)["Parameter"]["Value"]
    return [bytes.fromhex(k.strip()) for k in value.split(",") if k.strip()]


def sources(s3: Any, ssm: Any, dynamodb: Any) -> LogSources:
    origin = os.environ["TAPEGATE_LOG_ORIGIN"]
    evidence = S3ObjectStore(os.environ["TAPEGATE_EVIDENCE_BUCKET"], s3)
    log_keys = [VerifyKey(k) for k in _hex_keys(ssm, os.environ["TAPEGATE_LOG_PUBLIC_KEY_PARAM"])]
    return LogSources(
        log=evidence,
        log_prefix=LOG_PREFIX,
        evidence=evidence,
        index=DynamoIndex(os.environ["TAPEGATE_TABLE"], dynamodb),
        gateway_keys=Keyring.of(*_hex_keys(ssm, os.environ["TAPEGATE_PUBLIC_KEY_PARAM"])),
        log_keys={origin: tuple(log_keys)},
        origin=origin,
        anchors=S3ObjectStore(os.environ["TAPEGATE_ANCHOR_BUCKET"], s3),
    )


def anchor_and_verify(src: LogSources, day: dt.date, now_ns: int) -> dict[str, Any]:
    tsa = os.environ.get("TAPEGATE_TSA_URL") or None
    assert src.anchors is not None
    key = write_anchor(src.log, src.log_prefix, src.anchors, src.origin, day,
                       rfc3161_timestamper(tsa) if tsa else None)  # fmt: skip
    days = int(os.environ.get("TAPEGATE_VERIFY_DAYS", "2"))
    verdict = verify_log(src, now_ns=now_ns, since_ns=now_ns - days * 86_400 * 10**9)
    return {"anchor": key, "size": verdict.size, "problems": [str(p) for p in verdict.problems]}


@logger.inject_lambda_context
@metrics.log_metrics
@tracer.capture_lambda_handler
def lambda_handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    src = sources(boto3.client("s3"), boto3.client("ssm"), boto3.client("dynamodb"))
    result = anchor_and_verify(src, dt.datetime.now(dt.UTC).date(), time.time_ns())
    metrics.add_metric("LogProblems", MetricUnit.Count, len(result["problems"]))
    if result["problems"]:
        logger.warning("log problems", anchor=result["anchor"], problems=result["problems"][:50])
    logger.info("anchored", anchor=result["anchor"], size=result["size"])
    return result

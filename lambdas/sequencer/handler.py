"""Sequencer Lambda: EventBridge Scheduler (every minute) → here → tapegate.log.sequencer.

The one writer of the session log (docs/LOG.md): reserved concurrency 1, so two runs never
append at once. Each run appends every leaf the verify/index Lambda holds as pending, in batches,
and signs a checkpoint per batch. Configuration comes from the environment the CDK stack sets:
    TAPEGATE_TABLE             DynamoDB index: the pending leaves
    TAPEGATE_EVIDENCE_BUCKET   where the tiles and checkpoints go, under log/
    TAPEGATE_LOG_ORIGIN        the checkpoints' origin line and key name
    TAPEGATE_LOG_KEY_SECRET    Secrets Manager secret holding the log key's Ed25519 seed (hex)
"""

from __future__ import annotations

import os
import time
from functools import cache
from typing import Any

import boto3
from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.metrics import MetricUnit
from nacl.signing import SigningKey

from tapegate.archive.aws import DynamoIndex, S3ObjectStore
from tapegate.log.sequencer import LogKey, Sequencer

LOG_PREFIX = "log/"
# A batch is appended, signed, then marked leaf by leaf in DynamoDB (two calls each): 1,000
# leaves take well under a minute, so a batch started with this much time left finishes; one
# cut off while marking would be appended again by the next run (harmless, but wasted).
BATCH = 1_000
SPARE_MS = 120_000

logger = Logger(service="tapegate-sequencer")
metrics = Metrics(namespace=os.environ.get("POWERTOOLS_METRICS_NAMESPACE", "tapegate"))
tracer = Tracer(service="tapegate-sequencer")


@cache
def _sequencer() -> Sequencer:
    seed = boto3.client("secretsmanager").get_secret_value(
        SecretId=os.environ["TAPEGATE_LOG_KEY_SECRET"]
    )["SecretString"]
    key = LogKey(os.environ["TAPEGATE_LOG_ORIGIN"], SigningKey(bytes.fromhex(seed.strip())))
    index = DynamoIndex(os.environ["TAPEGATE_TABLE"], boto3.client("dynamodb"))
    store = S3ObjectStore(os.environ["TAPEGATE_EVIDENCE_BUCKET"], boto3.client("s3"))
    return Sequencer(index, store, key, prefix=LOG_PREFIX)


def run(sequencer: Sequencer, remaining_ms: Any) -> dict[str, int]:
    """Batches until nothing is pending or the time is nearly up; what was signed."""
    checkpoints, size = 0, None
    while remaining_ms() > SPARE_MS:
        signed = sequencer.run(time.time_ns() // 1_000_000, limit=BATCH)
        if signed is None:
            break
        checkpoints, size = checkpoints + 1, signed.checkpoint.size
    return {"checkpoints": checkpoints, "size": size if size is not None else -1}


@logger.inject_lambda_context
@metrics.log_metrics
@tracer.capture_lambda_handler
def lambda_handler(event: dict[str, Any], context: Any) -> dict[str, int]:
    result = run(_sequencer(), context.get_remaining_time_in_millis)
    metrics.add_metric("LogCheckpoints", MetricUnit.Count, result["checkpoints"])
    if result["size"] >= 0:
        metrics.add_metric("LogSize", MetricUnit.Count, result["size"])
    logger.info("sequenced", **result)
    return result

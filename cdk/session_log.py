"""The session log on AWS (docs/LOG.md): its key, the sequencer, the anchor bucket and the daily
anchor that also checks the log against the archive.

- The log key: an Ed25519 pair made by the key generator, like the gateway's; only the
  sequencer may read its seed. It is not the gateway's key: a leaked gateway key cannot sign a
  log that hides sessions.
- The sequencer: a Lambda every minute with reserved concurrency 1 (the one writer), appending
  the pending leaves from the index to tiles under log/ in the evidence bucket (Object Lock
  keeps every version) and signing checkpoints.
- Anchors: a bucket of its own with Object Lock in compliance mode (no one, root included,
  removes an anchor before its retention ends), or one named by ARN, e.g. in another account;
  a daily Lambda copies the latest checkpoint there, with an RFC 3161 token when `tsa_url` is
  set, then verifies the last days of the log and publishes LogProblems for the alarm.
"""

from __future__ import annotations

from aws_cdk import Duration
from aws_cdk import aws_iam as iam
from aws_cdk import aws_s3 as s3
from aws_cdk import aws_scheduler as scheduler
from aws_cdk import aws_scheduler_targets as targets
from constructs import Construct

from cdk.functions import python_function
from cdk.index import SessionIndex
from cdk.keys import KeyGenerator, KeyPair
from cdk.nag import acknowledge, objects_of
from cdk.settings import Settings
from cdk.storage import Storage

LOG_PREFIX = "log/"


class SessionLog(Construct):
    def __init__(
        self,
        scope: Construct,
        id: str,
        *,
        settings: Settings,
        storage: Storage,
        index: SessionIndex,
        generator: KeyGenerator,
        gateway_key: KeyPair,
    ) -> None:
        super().__init__(scope, id)
        self.origin = settings.log_origin
        self.key = KeyPair(
            self, "Key",
            generator=generator, key=storage.key, purpose="tapegate session log key",
            parameter_name=f"/{settings.name}/log-public-keys",
            generation=settings.log_key_generation,
        )  # fmt: skip
        self.sequencer = python_function(
            self, "Sequencer",
            description="Append the session log's pending leaves; sign a checkpoint",
            handler="lambdas.sequencer.handler.lambda_handler",
            service="tapegate-sequencer",
            key=storage.key,
            timeout=Duration.minutes(5),
            memory_mb=512,
            reserved_concurrency=1,  # the one writer of the log
            environment={
                "TAPEGATE_TABLE": index.table.table_name,
                "TAPEGATE_EVIDENCE_BUCKET": storage.evidence.bucket_name,
                "TAPEGATE_LOG_ORIGIN": self.origin,
                "TAPEGATE_LOG_KEY_SECRET": self.key.secret.secret_arn,
            },
        )  # fmt: skip
        self.key.grant_sign(self.sequencer.role)  # type: ignore[arg-type]
        storage.allow(self.sequencer, storage.evidence, read=True, write=True, list_keys=True,
                      prefix=LOG_PREFIX, why="The log's tiles and checkpoints.")  # fmt: skip
        self.sequencer.add_to_role_policy(iam.PolicyStatement(
            actions=["dynamodb:Query", "dynamodb:UpdateItem", "dynamodb:PutItem"],
            resources=[index.table.table_arn, f"{index.table.table_arn}/index/pending_leaves"],
        ))  # fmt: skip
        self.sequence_schedule = scheduler.Schedule(
            self, "EveryMinute",
            description="Sequence the session log's pending leaves",
            schedule=scheduler.ScheduleExpression.expression(settings.log_schedule),
            target=targets.LambdaInvoke(self.sequencer, retry_attempts=0),
        )  # fmt: skip

        if settings.anchor_bucket_arn:
            self.anchors: s3.IBucket = s3.Bucket.from_bucket_arn(
                self, "Anchors", settings.anchor_bucket_arn
            )
        else:
            lock = s3.ObjectLockRetention.compliance(Duration.days(settings.anchor_retention_days))
            bucket = storage.locked_bucket(self, "Anchors", "anchors/", lock)
            self.anchors = bucket
        self.anchor = python_function(
            self, "Anchor",
            description="Anchor the latest log checkpoint; verify the log against the archive",
            handler="lambdas.log_anchor.handler.lambda_handler",
            service="tapegate-log-anchor",
            key=storage.key,
            timeout=Duration.minutes(15),
            memory_mb=1024,
            reserved_concurrency=1,
            environment={
                "TAPEGATE_TABLE": index.table.table_name,
                "TAPEGATE_EVIDENCE_BUCKET": storage.evidence.bucket_name,
                "TAPEGATE_ANCHOR_BUCKET": self.anchors.bucket_name,
                "TAPEGATE_LOG_ORIGIN": self.origin,
                "TAPEGATE_LOG_PUBLIC_KEY_PARAM": self.key.parameter_name,
                "TAPEGATE_PUBLIC_KEY_PARAM": gateway_key.parameter_name,
                **({"TAPEGATE_TSA_URL": settings.tsa_url} if settings.tsa_url else {}),
            },
        )  # fmt: skip
        self.key.grant_read_public(self.anchor)
        gateway_key.grant_read_public(self.anchor)
        storage.allow(self.anchor, storage.evidence, read=True, list_keys=True,
                      why="The log and the objects of its sessions.")  # fmt: skip
        storage.allow(self.anchor, self.anchors, read=True, write=True, list_keys=True,
                      why="Writes one anchor per day and reads the earlier ones.")  # fmt: skip
        self.anchor.add_to_role_policy(iam.PolicyStatement(
            actions=["dynamodb:GetItem", "dynamodb:Query", "dynamodb:Scan"],
            resources=[index.table.table_arn, f"{index.table.table_arn}/index/pending_leaves"],
        ))  # fmt: skip
        self.anchor_schedule = scheduler.Schedule(
            self, "Daily",
            description="Anchor the session log's latest checkpoint and verify the log",
            schedule=scheduler.ScheduleExpression.expression(settings.anchor_schedule),
            target=targets.LambdaInvoke(self.anchor, retry_attempts=2),
        )  # fmt: skip
        acknowledge(self.anchor, objects_of(self.anchors), "One anchor object per day.")

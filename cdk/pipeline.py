"""Delivered object → S3 notification → SQS (with a DLQ) → the verify/index Lambda → DynamoDB
index and curated Parquet."""

from __future__ import annotations

from aws_cdk import Duration
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_lambda_event_sources as sources
from aws_cdk import aws_s3 as s3
from aws_cdk import aws_s3_notifications as notify
from aws_cdk import aws_sqs as sqs
from constructs import Construct

from cdk.functions import python_function
from cdk.index import SessionIndex
from cdk.ingest import DELIVERY_PREFIX
from cdk.keys import KeyPair
from cdk.settings import Settings
from cdk.storage import Storage

VERIFY_MINUTES = 5


class Pipeline(Construct):
    def __init__(
        self,
        scope: Construct,
        id: str,
        *,
        settings: Settings,
        storage: Storage,
        index: SessionIndex,
        gateway_key: KeyPair,
    ) -> None:
        super().__init__(scope, id)
        # Its own key: the queue's key policy names the evidence bucket (S3 notifications are
        # encrypted by S3 itself), and the evidence bucket already depends on the storage key.
        self.key = kms.Key(self, "Key", description=f"{settings.name}: pipeline queues",
                           enable_key_rotation=True)  # fmt: skip
        self.dlq = sqs.Queue(
            self, "DeadLetters",
            encryption=sqs.QueueEncryption.KMS,
            encryption_master_key=self.key,
            enforce_ssl=True,
            retention_period=Duration.days(14),
        )  # fmt: skip
        self.queue = sqs.Queue(
            self, "Delivered",
            encryption=sqs.QueueEncryption.KMS,
            encryption_master_key=self.key,
            enforce_ssl=True,
            # SQS wants at least six times the function timeout, so a slow batch is not
            # handed to a second invocation while the first still works on it.
            visibility_timeout=Duration.minutes(VERIFY_MINUTES * 6),
            retention_period=Duration.days(14),
            dead_letter_queue=sqs.DeadLetterQueue(queue=self.dlq, max_receive_count=5),
        )  # fmt: skip
        storage.evidence.add_event_notification(
            s3.EventType.OBJECT_CREATED,
            notify.SqsDestination(self.queue),
            s3.NotificationKeyFilter(prefix=DELIVERY_PREFIX),
        )
        self.function = python_function(
            self, "VerifyIndex",
            description="Verify delivered tape chunks, index sessions, write curated Parquet",
            handler="lambdas.verify_index.handler.lambda_handler",
            service="tapegate-verify-index",
            key=storage.key,
            timeout=Duration.minutes(VERIFY_MINUTES),
            memory_mb=1769,  # one full vCPU: Parquet encoding is CPU-bound
            reserved_concurrency=settings.verify_concurrency,
            environment={
                "TAPEGATE_TABLE": index.table.table_name,
                "TAPEGATE_CURATED_BUCKET": storage.curated.bucket_name,
                "TAPEGATE_PUBLIC_KEY_PARAM": gateway_key.parameter_name,
            },
        )  # fmt: skip
        self.function.add_event_source(sources.SqsEventSource(
            self.queue, batch_size=10, report_batch_item_failures=True,
            max_batching_window=Duration.seconds(5),
        ))  # fmt: skip
        storage.allow(
            self.function,
            storage.evidence,
            read=True,
            why="Reads each delivered object it is notified of; keys are per delivery.",
        )
        storage.allow(
            self.function,
            storage.curated,
            write=True,
            why="Writes Parquet per session and delivery under the table prefixes.",
        )
        self.function.add_to_role_policy(iam.PolicyStatement(
            actions=["dynamodb:GetItem", "dynamodb:PutItem", "dynamodb:Query"],
            resources=[index.table.table_arn],  # the base table only: no index is needed
        ))  # fmt: skip
        self.function.add_to_role_policy(iam.PolicyStatement(
            actions=["kms:Decrypt", "kms:GenerateDataKey"], resources=[storage.key.key_arn],
        ))  # fmt: skip
        gateway_key.grant_read_public(self.function)

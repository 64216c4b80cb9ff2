"""Firehose (Direct PUT) into the evidence bucket. No transform: a transform that fails a record
would divert evidence away from the archive, so verification happens after delivery."""

from __future__ import annotations

from aws_cdk import Duration, Size
from aws_cdk import aws_kinesisfirehose as firehose
from constructs import Construct

from cdk.nag import acknowledge, objects_of
from cdk.settings import Settings
from cdk.storage import Storage, log_group

DELIVERY_PREFIX = "deliveries/"
ERROR_PREFIX = "errors/"


class Ingest(Construct):
    def __init__(self, scope: Construct, id: str, *, settings: Settings, storage: Storage) -> None:
        super().__init__(scope, id)
        errors = log_group(self, "DeliveryErrors", storage.key)
        destination = firehose.S3Bucket(
            storage.evidence,
            data_output_prefix=DELIVERY_PREFIX + "!{timestamp:yyyy/MM/dd/HH}/",
            error_output_prefix=(
                ERROR_PREFIX + "!{firehose:error-output-type}/!{timestamp:yyyy/MM/dd}/"
            ),
            buffering_interval=Duration.seconds(settings.buffer_interval_s),
            buffering_size=Size.mebibytes(settings.buffer_size_mib),
            encryption_key=storage.key,
            logging_config=firehose.EnableLogging(errors),
        )
        self.stream = firehose.DeliveryStream(
            self, "Stream",
            destination=destination,
            encryption=firehose.StreamEncryption.customer_managed_key(storage.key),
        )  # fmt: skip
        # The L2 construct grants its delivery role the bucket helpers' wildcards. Deletes are
        # denied by the evidence bucket policy and reads by its OnlyNamedReaders statement.
        for finding in (
            "Action::s3:Abort*",
            "Action::s3:DeleteObject*",
            "Action::s3:GetBucket*",
            "Action::s3:GetObject*",
            "Action::s3:List*",
            "Action::kms:ReEncrypt*",
            "Action::kms:GenerateDataKey*",
        ):
            acknowledge(
                self.stream,
                f"AwsSolutions-IAM5[{finding}]",
                "Firehose's delivery "
                "role as the L2 construct grants it; the bucket policy denies deletes "
                "and reads.",
            )
        acknowledge(
            self.stream,
            objects_of(storage.evidence),
            "Firehose names each delivery object itself, under deliveries/ and errors/.",
        )

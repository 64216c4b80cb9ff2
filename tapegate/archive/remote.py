"""The AWS archive as the CLI reads it: the evidence bucket, the DynamoDB index and Athena, via
the standard boto3 credential chain."""

from __future__ import annotations

from collections.abc import Callable

from tapegate.archive.aws import AthenaQuery, DynamoIndex, S3ObjectStore
from tapegate.config import ArchiveConfig
from tapegate.keys import KeyFileError, Keyring


class AwsArchive:
    def __init__(
        self, config: ArchiveConfig, progress: Callable[[str, float], None] | None = None
    ) -> None:
        import boto3

        session = boto3.session.Session(region_name=config.region)
        self._session = session
        self._public_key_param = config.public_key_param
        self.default_auditor_key = None
        self.evidence = S3ObjectStore(config.evidence_bucket or "", session.client("s3"))
        self.index = DynamoIndex(config.table or "", session.client("dynamodb"))
        self.query_engine = AthenaQuery(
            config.workgroup or "primary",
            config.database or "tapegate",
            session.client("athena"),
            progress=progress,
        )

    def scan(self) -> list[object]:
        """Nothing to do: in AWS the verify/index Lambda indexes objects as they arrive."""
        return []

    def sequence(self) -> bool:
        """Nothing to do: in AWS the sequencer Lambda appends leaves on its schedule."""
        return False

    def trusted(self) -> Keyring:
        """The gateway's public key(s) from the SSM parameter the CDK stack writes."""
        if not self._public_key_param:
            raise KeyFileError(
                "archive.public_key_param is not set: name the SSM parameter holding the "
                "gateway's public key, or pass --trust PUBFILE"
            )
        try:
            value = self._session.client("ssm").get_parameter(Name=self._public_key_param)
            keys = value["Parameter"]["Value"]
            return Keyring.of(*(bytes.fromhex(k.strip()) for k in keys.split(",") if k.strip()))
        except Exception as exc:  # botocore's and nacl's errors both name the problem
            raise KeyFileError(
                f"cannot load the gateway key from {self._public_key_param}: {exc}"
            ) from None

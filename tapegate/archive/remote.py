"""The AWS archive as the CLI reads it: the evidence bucket, the DynamoDB index and Athena, via
the standard boto3 credential chain."""

from __future__ import annotations

from collections.abc import Callable

from nacl.signing import VerifyKey

from tapegate.archive.aws import AthenaQuery, DynamoIndex, S3ObjectStore
from tapegate.config import ArchiveConfig
from tapegate.keys import KeyFileError, Keyring
from tapegate.log.verify import LogSources


class AwsArchive:
    def __init__(
        self,
        config: ArchiveConfig,
        progress: Callable[[str, float], None] | None = None,
        origin: str = "",
    ) -> None:
        import boto3

        session = boto3.session.Session(region_name=config.region)
        self._session = session
        self._config = config
        self._origin = origin
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

    def log_sources(self) -> LogSources:
        """The log under log/ in the evidence bucket, its key from SSM, its anchors."""
        name = self._config.log_public_key_param
        if not name:
            raise KeyFileError(
                "archive.log_public_key_param is not set: name the SSM parameter holding the "
                "log's public key (the stack's LogPublicKeyParameter output)"
            )
        try:
            value = self._session.client("ssm").get_parameter(Name=name)["Parameter"]["Value"]
            keys = tuple(VerifyKey(bytes.fromhex(k.strip())) for k in value.split(",") if k.strip())
        except Exception as exc:  # botocore's and nacl's errors both name the problem
            raise KeyFileError(f"cannot load the log key from {name}: {exc}") from None
        s3 = self._session.client("s3")
        anchors = self._config.anchor_bucket
        return LogSources(
            log=self.evidence, log_prefix="log/", evidence=self.evidence, index=self.index,
            gateway_keys=self.trusted(), log_keys={self._origin: keys}, origin=self._origin,
            anchors=S3ObjectStore(anchors, s3) if anchors else None,
        )  # fmt: skip

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

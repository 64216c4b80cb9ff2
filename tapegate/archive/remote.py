"""The AWS archive as the CLI reads it: the DynamoDB index and Athena, via the boto3 chain."""

from __future__ import annotations

from collections.abc import Callable

from tapegate.archive.aws import AthenaQuery, DynamoIndex
from tapegate.config import ArchiveConfig


class AwsArchive:
    def __init__(
        self, config: ArchiveConfig, progress: Callable[[str, float], None] | None = None
    ) -> None:
        import boto3

        session = boto3.session.Session(region_name=config.region)
        self.index = DynamoIndex(config.table or "", session.client("dynamodb"))
        self.query_engine = AthenaQuery(
            config.workgroup or "primary",
            config.database or "tapegate",
            session.client("athena"),
            progress=progress,
        )

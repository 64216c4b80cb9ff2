"""The session index: DynamoDB, built from the one definition the adapters use (TABLE_SPEC)."""

from __future__ import annotations

from aws_cdk import RemovalPolicy
from aws_cdk import aws_dynamodb as dynamodb
from aws_cdk import aws_kms as kms
from constructs import Construct

from tapegate.archive.aws import TABLE_SPEC

_TYPES = {"S": dynamodb.AttributeType.STRING, "N": dynamodb.AttributeType.NUMBER,
          "B": dynamodb.AttributeType.BINARY}  # fmt: skip


def _key(schema: list[dict[str, str]], kind: str) -> dynamodb.Attribute | None:
    types = {a["AttributeName"]: a["AttributeType"] for a in TABLE_SPEC["AttributeDefinitions"]}
    for part in schema:
        if part["KeyType"] == kind:
            name = part["AttributeName"]
            return dynamodb.Attribute(name=name, type=_TYPES[types[name]])
    return None


class SessionIndex(Construct):
    def __init__(self, scope: Construct, id: str, *, key: kms.IKey) -> None:
        super().__init__(scope, id)
        # Table, not TableV2: TableV2 cannot render a customer-managed key in a template that
        # is not tied to one region, and synth must work without an account or region.
        self.table = dynamodb.Table(
            self, "Table",
            partition_key=_key(TABLE_SPEC["KeySchema"], "HASH"),  # type: ignore[arg-type]
            sort_key=_key(TABLE_SPEC["KeySchema"], "RANGE"),
            billing_mode=dynamodb.BillingMode.PAY_PER_REQUEST,
            encryption=dynamodb.TableEncryption.CUSTOMER_MANAGED,
            encryption_key=key,
            point_in_time_recovery_specification=dynamodb.PointInTimeRecoverySpecification(
                point_in_time_recovery_enabled=True
            ),
            deletion_protection=True,
            removal_policy=RemovalPolicy.RETAIN,
        )  # fmt: skip
        for gsi in TABLE_SPEC["GlobalSecondaryIndexes"]:
            self.table.add_global_secondary_index(
                index_name=gsi["IndexName"],
                partition_key=_key(gsi["KeySchema"], "HASH"),  # type: ignore[arg-type]
                sort_key=_key(gsi["KeySchema"], "RANGE"),
                projection_type=dynamodb.ProjectionType.ALL,
            )

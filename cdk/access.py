"""Who may read: the auditor role and the managed policy behind it (attach the policy to an IAM
Identity Center permission set to give people the same rights). Auditors read evidence, tables,
the index and the workgroup; they cannot write or delete any of it."""

from __future__ import annotations

from aws_cdk import Duration
from aws_cdk import aws_iam as iam
from aws_cdk import aws_s3 as s3
from constructs import Construct

from cdk.analytics import Analytics
from cdk.index import SessionIndex
from cdk.keys import KeyPair
from cdk.nag import acknowledge, objects_of
from cdk.settings import Settings
from cdk.storage import Storage


class AuditorAccess(Construct):
    def __init__(
        self,
        scope: Construct,
        id: str,
        *,
        settings: Settings,
        storage: Storage,
        index: SessionIndex,
        analytics: Analytics,
        public_keys: list[KeyPair],
        anchors: s3.IBucket | None = None,
    ) -> None:
        super().__init__(scope, id)
        # The session log's anchors too: `tapegate log verify` reads them (docs/LOG.md).
        buckets = [
            storage.evidence,
            storage.curated,
            storage.exports,
            *([anchors] if anchors else []),
        ]
        self.policy = iam.ManagedPolicy(
            self, "ReadPolicy",
            description="tapegate auditor: read evidence, tables, index; run Athena queries",
            statements=[
                iam.PolicyStatement(
                    sid="ReadEvidence",
                    actions=["s3:GetObject", "s3:GetObjectVersion", "s3:ListBucket",
                             "s3:GetBucketLocation"],
                    resources=[r for b in buckets for r in (b.bucket_arn, b.arn_for_objects("*"))],
                ),
                iam.PolicyStatement(
                    sid="QueryResults",
                    actions=["s3:GetObject", "s3:PutObject", "s3:ListBucket",
                             "s3:GetBucketLocation", "s3:AbortMultipartUpload"],
                    resources=[storage.query_results.bucket_arn,
                               storage.query_results.arn_for_objects("*")],
                ),
                iam.PolicyStatement(
                    sid="DecryptAndQueryResultsKey",
                    actions=["kms:Decrypt", "kms:GenerateDataKey", "kms:DescribeKey"],
                    resources=[storage.key.key_arn],
                ),
                iam.PolicyStatement(
                    sid="Index",
                    actions=["dynamodb:GetItem", "dynamodb:Query", "dynamodb:Scan",
                             "dynamodb:DescribeTable"],
                    resources=[index.table.table_arn, f"{index.table.table_arn}/index/*"],
                ),
                iam.PolicyStatement(
                    sid="Athena",
                    actions=["athena:StartQueryExecution", "athena:GetQueryExecution",
                             "athena:GetQueryResults", "athena:StopQueryExecution",
                             "athena:GetWorkGroup", "athena:ListNamedQueries",
                             "athena:GetNamedQuery", "athena:BatchGetNamedQuery",
                             "athena:ListQueryExecutions"],
                    resources=[analytics.workgroup_arn()],
                ),
                iam.PolicyStatement(
                    sid="Catalog",
                    actions=["glue:GetDatabase", "glue:GetDatabases", "glue:GetTable",
                             "glue:GetTables", "glue:GetPartitions"],
                    resources=analytics.catalog_arns(),
                ),
                iam.PolicyStatement(
                    sid="PublicKeys",
                    actions=["ssm:GetParameter"],
                    resources=[k.parameter_arn for k in public_keys],
                ),
            ],
        )  # fmt: skip
        for bucket in [*buckets, storage.query_results]:
            acknowledge(
                self.policy,
                objects_of(bucket),
                "An auditor reads any object of this bucket: that is the job.",
            )
        acknowledge(
            self.policy,
            objects_of(index.table, "/index/*"),
            "Sessions are listed by subject and by target: both GSIs of the index.",
        )
        self.role = iam.Role(
            self, "Role",
            description="tapegate auditor: read-only access to recorded sessions",
            assumed_by=iam.AccountRootPrincipal(),
            managed_policies=[self.policy],
            max_session_duration=Duration.hours(4),
        )  # fmt: skip

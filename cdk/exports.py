"""Compliance exports: an EventBridge Scheduler schedule (daily by default) runs a Lambda that
unloads the previous day with Athena into the export bucket and signs a manifest of the files."""

from __future__ import annotations

from aws_cdk import Duration, TimeZone
from aws_cdk import aws_iam as iam
from aws_cdk import aws_scheduler as scheduler
from aws_cdk import aws_scheduler_targets as targets
from constructs import Construct

from cdk.analytics import Analytics
from cdk.functions import python_function
from cdk.keys import KeyPair
from cdk.settings import Settings
from cdk.storage import Storage


class ComplianceExports(Construct):
    def __init__(
        self,
        scope: Construct,
        id: str,
        *,
        settings: Settings,
        storage: Storage,
        analytics: Analytics,
        export_key: KeyPair,
    ) -> None:
        super().__init__(scope, id)
        self.function = python_function(
            self, "Export",
            description="Unload yesterday's sessions and events with Athena; sign a manifest",
            handler="lambdas.compliance_export.handler.lambda_handler",
            service="tapegate-compliance-export",
            key=storage.key,
            timeout=Duration.minutes(15),
            memory_mb=1024,
            reserved_concurrency=1,  # one run at a time: each writes its own prefix anyway
            environment={
                "TAPEGATE_WORKGROUP": analytics.workgroup_name,
                "TAPEGATE_DATABASE": analytics.database_name,
                "TAPEGATE_EXPORT_BUCKET": storage.exports.bucket_name,
                "TAPEGATE_EXPORT_KEY_SECRET": export_key.secret.secret_arn,
            },
        )  # fmt: skip
        export_key.grant_sign(self.function.role)  # type: ignore[arg-type]
        # Athena reads the tables and writes UNLOAD's output with the caller's credentials.
        self.function.add_to_role_policy(iam.PolicyStatement(
            actions=["athena:StartQueryExecution", "athena:GetQueryExecution",
                     "athena:StopQueryExecution", "athena:GetWorkGroup"],
            resources=[analytics.workgroup_arn()],
        ))  # fmt: skip
        self.function.add_to_role_policy(iam.PolicyStatement(
            actions=["glue:GetDatabase", "glue:GetTable", "glue:GetPartitions"],
            resources=analytics.catalog_arns(),
        ))  # fmt: skip
        storage.allow(
            self.function,
            storage.curated,
            read=True,
            list_keys=True,
            why="Athena reads a day's Parquet files with the caller's credentials.",
        )
        storage.allow(
            self.function,
            storage.exports,
            read=True,
            write=True,
            list_keys=True,
            why="UNLOAD writes a fresh prefix per run; the manifest hashes each file.",
        )
        storage.allow(
            self.function,
            storage.query_results,
            read=True,
            write=True,
            list_keys=True,
            why="Athena's query result and metadata files.",
        )

        self.schedule = scheduler.Schedule(
            self, "Daily",
            description="Export the previous day's tables",
            schedule=scheduler.ScheduleExpression.expression(
                settings.export_schedule, TimeZone.of(settings.export_timezone)
            ),
            target=targets.LambdaInvoke(
                self.function,
                input=scheduler.ScheduleTargetInput.from_object(
                    {"scheduled_time": scheduler.ContextAttribute.scheduled_time}
                ),
                retry_attempts=2,
            ),
        )  # fmt: skip

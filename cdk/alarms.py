"""Alarms that page someone: evidence failing verification or being tampered with, deliveries
the pipeline could not process, Firehose not delivering, and gateway tasks failing health checks."""

from __future__ import annotations

from aws_cdk import Duration
from aws_cdk import aws_cloudwatch as cloudwatch
from aws_cdk import aws_cloudwatch_actions as actions
from aws_cdk import aws_sns as sns
from aws_cdk import aws_sns_subscriptions as subscriptions
from constructs import Construct

from cdk.gateway import Gateway
from cdk.ingest import Ingest
from cdk.pipeline import Pipeline
from cdk.session_log import SessionLog
from cdk.settings import Settings
from cdk.storage import Storage

_ANY = cloudwatch.ComparisonOperator.GREATER_THAN_OR_EQUAL_TO_THRESHOLD


class Alarms(Construct):
    def __init__(
        self,
        scope: Construct,
        id: str,
        *,
        settings: Settings,
        storage: Storage,
        ingest: Ingest,
        pipeline: Pipeline,
        gateway: Gateway,
        export_function_errors: cloudwatch.IMetric,
        session_log: SessionLog,
    ) -> None:
        super().__init__(scope, id)
        self.topic = sns.Topic(self, "Topic", master_key=storage.key, enforce_ssl=True,
                               display_name="tapegate alarms")  # fmt: skip
        if settings.alarm_email:
            self.topic.add_subscription(subscriptions.EmailSubscription(settings.alarm_email))

        def verify_metric(name: str) -> cloudwatch.Metric:
            return cloudwatch.Metric(
                namespace="tapegate", metric_name=name, statistic="Sum",
                dimensions_map={"service": "tapegate-verify-index"}, period=Duration.minutes(5),
            )  # fmt: skip

        rows: list[tuple[str, cloudwatch.IMetric, float, str]] = [
            ("VerificationFailures", verify_metric("VerificationFailures"), 1,
             "Delivered records failed signature or chain checks"),
            ("TamperAlerts", verify_metric("TamperAlerts"), 1,
             "A chunk arrived twice with different contents"),
            ("DeadLetters", pipeline.dlq.metric_approximate_number_of_messages_visible(
                period=Duration.minutes(5), statistic="Maximum"), 1,
             "Delivered objects the pipeline gave up on (see the DLQ)"),
            ("FirehoseDeliveryErrors", ingest.stream.metric(
                "DeliveryToS3.Success", statistic="Minimum", period=Duration.minutes(5)), 1,
             "Firehose failed to deliver to the evidence bucket"),
            ("UnhealthyGatewayTasks", cloudwatch.MathExpression(
                expression=" + ".join(f"tg{i}" for i in range(len(gateway.target_groups))),
                using_metrics={f"tg{i}": tg.metrics.un_healthy_host_count(
                    statistic="Maximum", period=Duration.minutes(1))
                    for i, tg in enumerate(gateway.target_groups.values())},
                period=Duration.minutes(1)), 1,
             "Gateway tasks failing /readyz (archive failing or task unhealthy)"),
            ("ExportErrors", export_function_errors, 1, "The compliance export failed"),
            ("LogProblems", cloudwatch.Metric(
                namespace="tapegate", metric_name="LogProblems", statistic="Maximum",
                dimensions_map={"service": "tapegate-log-anchor"}, period=Duration.days(1)), 1,
             "The session log does not agree with the archive (a session deleted, a gap, a "
             "fork): see the anchor function's log"),
            ("LogErrors", cloudwatch.MathExpression(
                expression="s + a", using_metrics={
                    "s": session_log.sequencer.metric_errors(period=Duration.minutes(15)),
                    "a": session_log.anchor.metric_errors(period=Duration.minutes(15))},
                period=Duration.minutes(15)), 1,
             "The session log's sequencer or anchor failed (leaves wait; see their logs)"),
        ]  # fmt: skip
        self.alarms: dict[str, cloudwatch.Alarm] = {}
        for name, metric, threshold, description in rows:
            below = name == "FirehoseDeliveryErrors"  # success ratio: alarm when it drops
            alarm = cloudwatch.Alarm(
                self, name,
                alarm_description=description,
                metric=metric,
                threshold=threshold,
                evaluation_periods=1,
                comparison_operator=(cloudwatch.ComparisonOperator.LESS_THAN_THRESHOLD
                                     if below else _ANY),
                treat_missing_data=cloudwatch.TreatMissingData.NOT_BREACHING,
            )  # fmt: skip
            alarm.add_alarm_action(actions.SnsAction(self.topic))
            self.alarms[name] = alarm

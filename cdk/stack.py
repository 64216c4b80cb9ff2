"""The tapegate stack: every concern composed, in the order data flows."""

from __future__ import annotations

from typing import Any

from aws_cdk import Annotations, CfnOutput, Stack
from constructs import Construct

from cdk.access import AuditorAccess
from cdk.alarms import Alarms
from cdk.analytics import Analytics
from cdk.exports import ComplianceExports
from cdk.gateway import Gateway
from cdk.index import SessionIndex
from cdk.ingest import Ingest
from cdk.keys import KeyGenerator, KeyPair
from cdk.nag import acknowledge, objects_of
from cdk.pipeline import Pipeline
from cdk.session_log import SessionLog
from cdk.settings import Settings
from cdk.storage import Storage


class TapegateStack(Stack):
    def __init__(self, scope: Construct, id: str, *, settings: Settings, **kwargs: Any) -> None:
        super().__init__(scope, id, **kwargs)
        self.settings = settings
        if not settings.auditor_public_key:
            Annotations.of(self).add_warning_v2(
                "tapegate:no-auditor-key",
                "No auditor_public_key: every task seals session payloads to a key it makes "
                "itself and loses when it stops, so recorded payloads cannot be read. Pass "
                "-c auditor_public_key=<hex> (docs/deploy.md).",
            )
        self.storage = Storage(self, "Storage", settings=settings)
        generator = KeyGenerator(self, "Keys", key=self.storage.key)
        self.gateway_key = KeyPair(
            self, "GatewayKey",
            generator=generator, key=self.storage.key, purpose="tapegate gateway signing key",
            parameter_name=f"/{settings.name}/gateway-public-keys",
            generation=settings.gateway_key_generation,
        )  # fmt: skip
        self.export_key = KeyPair(
            self, "ExportKey",
            generator=generator, key=self.storage.key, purpose="tapegate export manifest key",
            parameter_name=f"/{settings.name}/export-public-keys",
            generation=settings.export_key_generation,
        )  # fmt: skip
        # One SSH host key for every task behind the NLB, or clients would see it change.
        self.ssh_host_key = KeyPair(
            self, "SshHostKey",
            generator=generator, key=self.storage.key, purpose="tapegate gateway SSH host key",
            parameter_name=f"/{settings.name}/ssh-host-public-key",
        ) if "ssh" in settings.listeners else None  # fmt: skip
        self.ingest = Ingest(self, "Ingest", settings=settings, storage=self.storage)
        self.index = SessionIndex(self, "Index", key=self.storage.key)
        self.pipeline = Pipeline(
            self, "Pipeline",
            settings=settings, storage=self.storage, index=self.index,
            gateway_key=self.gateway_key,
        )  # fmt: skip
        self.log = SessionLog(
            self, "Log",
            settings=settings, storage=self.storage, index=self.index, generator=generator,
            gateway_key=self.gateway_key,
        )  # fmt: skip
        self.analytics = Analytics(self, "Analytics", settings=settings, storage=self.storage)
        self.exports = ComplianceExports(
            self, "Exports",
            settings=settings, storage=self.storage, analytics=self.analytics,
            export_key=self.export_key,
        )  # fmt: skip
        self.gateway = Gateway(
            self, "Gateway",
            settings=settings, storage=self.storage, ingest=self.ingest, index=self.index,
            analytics=self.analytics, gateway_key=self.gateway_key,
            ssh_host_key=self.ssh_host_key,
        )  # fmt: skip
        self.access = AuditorAccess(
            self, "Auditors",
            settings=settings, storage=self.storage, index=self.index,
            analytics=self.analytics, anchors=self.log.anchors,
            public_keys=[self.gateway_key, self.export_key, self.log.key],
        )  # fmt: skip
        # Reads are denied to everyone else by the bucket policies, whatever IAM says.
        self.storage.restrict_reads(
            self.storage.evidence,
            # Firehose's delivery role too: its documented permissions include s3:GetObject.
            [
                self.access.role,
                self.pipeline.function.role,  # type: ignore[list-item]
                self.log.sequencer.role,  # type: ignore[list-item]
                self.log.anchor.role,  # type: ignore[list-item]
                self.ingest.stream.grant_principal,
            ],  # type: ignore[list-item]
            settings.auditor_principals,
        )
        self.storage.restrict_reads(
            self.storage.curated,
            [self.access.role, self.exports.function.role],  # type: ignore[list-item]
            settings.auditor_principals,
        )
        self.alarms = Alarms(
            self, "Alarms",
            settings=settings, storage=self.storage, ingest=self.ingest,
            pipeline=self.pipeline, gateway=self.gateway,
            export_function_errors=self.exports.function.metric_errors(),
            session_log=self.log,
        )  # fmt: skip
        self._acknowledge_library_findings()
        outputs = {
            "GatewayEndpoint": self.gateway.nlb.load_balancer_dns_name,
            "EvidenceBucket": self.storage.evidence.bucket_name,
            "CuratedBucket": self.storage.curated.bucket_name,
            "ExportBucket": self.storage.exports.bucket_name,
            "SessionTable": self.index.table.table_name,
            "AthenaWorkGroup": self.analytics.workgroup_name,
            "GlueDatabase": self.analytics.database_name,
            "GatewayPublicKeyParameter": self.gateway_key.parameter_name,
            "ExportPublicKeyParameter": self.export_key.parameter_name,
            "LogPublicKeyParameter": self.log.key.parameter_name,
            "LogOrigin": self.log.origin,
            "AnchorBucket": self.log.anchors.bucket_name,
            "AuditorRoleArn": self.access.role.role_arn,
            "AuditorPolicyArn": self.access.policy.managed_policy_arn,
            "BreakGlassRoleArn": self.storage.break_glass.role_arn,
            "AlarmTopicArn": self.alarms.topic.topic_arn,
        }
        if self.ssh_host_key is not None:
            # The line for clients' known_hosts, after "[<GatewayEndpoint>]:<ssh port> ".
            outputs["SshHostPublicKey"] = self.ssh_host_key.openssh_public_key
        if settings.private_link:
            outputs["EndpointServiceName"] = self.gateway.endpoint_service.vpc_endpoint_service_name
        for name, value in outputs.items():
            CfnOutput(self, name, value=value)

    def _acknowledge_library_findings(self) -> None:
        """Findings on resources the CDK library adds to the stack itself."""
        acknowledge(
            self,
            "CloudFormation-Validate::W7001",
            "The Firehose construct's region "
            "CIDR mapping is only used for HTTP endpoints, which this stack has none of.",
        )
        for child in self.node.children:
            if child.node.id.startswith("BucketNotificationsHandler"):
                acknowledge(
                    child,
                    "AwsSolutions-IAM4[Policy::arn:<AWS::Partition>:iam::aws:"
                    "policy/service-role/AWSLambdaBasicExecutionRole]",
                    "CDK's own handler that sets the evidence bucket's notification at deploy.",
                )
                acknowledge(
                    child,
                    "AwsSolutions-IAM5[Resource::*]",
                    "s3:PutBucketNotification for the bucket CDK configures, as CDK writes it.",
                )
            if child.node.id.startswith("SchedulerRoleForTarget"):
                for function in (self.exports.function, self.log.sequencer, self.log.anchor):
                    acknowledge(
                        child,
                        objects_of(function, ":*"),
                        "A schedule may invoke any version of the function it runs.",
                    )

"""The recording gateway on Fargate, behind a Network Load Balancer.

TCP pass-through listeners, one per protocol: the gateway terminates TLS itself, so the load
balancer never sees a token or a statement. Target groups check the gateway's /readyz on the
health port, which fails while the archive is failing (the gateway refuses sessions then). The
task role may only put records on its own stream and read its signing key, SSH host key and
target secrets.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from aws_cdk import Acknowledgment, Duration, Stack, Validations
from aws_cdk import aws_cloudwatch as cloudwatch
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_ecs as ecs
from aws_cdk import aws_elasticloadbalancingv2 as elbv2
from aws_cdk import aws_iam as iam
from aws_cdk import aws_secretsmanager as secretsmanager
from constructs import Construct

from cdk.analytics import Analytics
from cdk.index import SessionIndex
from cdk.ingest import Ingest
from cdk.keys import KeyPair
from cdk.nag import acknowledge
from cdk.settings import Settings
from cdk.storage import Storage, log_group

ROOT = Path(__file__).resolve().parent.parent
GATEWAY_NAME = "fargate"
DATA_DIR = "/var/lib/tapegate"
CONTAINER = "gateway"


def gateway_config(
    settings: Settings,
    *,
    stream: str,
    region: str,
    signing_key: str,
    archive: dict[str, Any],
    ssh_host_key: str | None = None,
) -> dict[str, Any]:
    """The tapegate.yaml the task runs with (JSON is YAML), tokens resolved at deploy time."""
    config: dict[str, Any] = {
        "data_dir": DATA_DIR,
        "gateway_name": GATEWAY_NAME,
        "identity": {
            "issuer": settings.oidc_issuer,
            "audience": settings.oidc_audience,
            "groups_claim": settings.groups_claim,
        },
        "listen": {
            **{proto: f"0.0.0.0:{port}" for proto, port in settings.listeners.items()},
            "health": f"0.0.0.0:{settings.health_port}",
        },
        "tls": "required",
        "targets": list(settings.targets),
        "sink": {"kind": "firehose", "stream": stream, "region": region},
        "durability": "buffered",
        "archive": {"kind": "aws", "region": region, **archive, "embedded_pipeline": False},
        "keys": {"signing_key": signing_key},
    }
    if settings.auditor_public_key:
        config["keys"]["auditor_public_keys"] = [settings.auditor_public_key]
    if ssh_host_key:
        config["keys"]["ssh_host_key"] = ssh_host_key
    return config


class Gateway(Construct):
    def __init__(
        self,
        scope: Construct,
        id: str,
        *,
        settings: Settings,
        storage: Storage,
        ingest: Ingest,
        index: SessionIndex,
        analytics: Analytics,
        gateway_key: KeyPair,
        ssh_host_key: KeyPair | None = None,
    ) -> None:
        super().__init__(scope, id)
        stack = Stack.of(self)
        self.vpc = self._vpc(settings, storage)
        self.cluster = ecs.Cluster(
            self, "Cluster", vpc=self.vpc, container_insights_v2=ecs.ContainerInsights.ENHANCED
        )
        self.logs = log_group(self, "Logs", storage.key)
        task = ecs.FargateTaskDefinition(
            self, "Task",
            cpu=1024,
            memory_limit_mib=2048,
            runtime_platform=ecs.RuntimePlatform(
                cpu_architecture=ecs.CpuArchitecture.X86_64,
                operating_system_family=ecs.OperatingSystemFamily.LINUX,
            ),
        )  # fmt: skip
        config = gateway_config(
            settings,
            stream=ingest.stream.delivery_stream_name,
            region=stack.region,
            signing_key=gateway_key.secret.secret_arn,
            ssh_host_key=ssh_host_key.secret.secret_arn if ssh_host_key else None,
            archive={
                "evidence_bucket": storage.evidence.bucket_name,
                "curated_bucket": storage.curated.bucket_name,
                "table": index.table.table_name,
                "workgroup": analytics.workgroup_name,
                "database": analytics.database_name,
                "public_key_param": gateway_key.parameter_name,
            },
        )
        secrets = {}
        if settings.targets_secret_arn:
            targets = secretsmanager.Secret.from_secret_complete_arn(
                self, "Targets", settings.targets_secret_arn
            )
            secrets["TAPEGATE_TARGETS"] = ecs.Secret.from_secrets_manager(targets)
        ports = sorted(settings.listeners.values())
        container = task.add_container(
            CONTAINER,
            image=ecs.ContainerImage.from_asset(
                str(ROOT),
                file="gateway_task/Dockerfile",
                build_args={"IMAGE_PACKAGES": " ".join(settings.image_packages)},
            ),
            logging=ecs.LogDrivers.aws_logs(stream_prefix="gateway", log_group=self.logs),
            environment={"TAPEGATE_CONFIG_YAML": stack.to_json_string(config)},
            secrets=secrets or None,
            port_mappings=[
                ecs.PortMapping(container_port=p) for p in [*ports, settings.health_port]
            ],
            health_check=ecs.HealthCheck(
                command=[
                    "CMD",
                    "python",
                    "-c",
                    "import urllib.request; urllib.request."
                    f"urlopen('http://127.0.0.1:{settings.health_port}/healthz')",
                ],
                interval=Duration.seconds(15),
                start_period=Duration.seconds(30),
            ),
            stop_timeout=Duration.seconds(120),  # sessions get two minutes to finish
            readonly_root_filesystem=True,
            user="10001",
        )
        # The data dir (self-signed TLS certificate, spool) and /tmp are the only writable places.
        task.add_volume(name="data")
        task.add_volume(name="tmp")
        container.add_mount_points(
            ecs.MountPoint(container_path=DATA_DIR, source_volume="data", read_only=False),
            ecs.MountPoint(container_path="/tmp", source_volume="tmp", read_only=False),
        )
        Validations.of(task).acknowledge(Acknowledgment(
            id="AwsSolutions-ECS2",
            reason="The environment holds the gateway config: names and ARNs, never a secret "
                   "(the signing key and target credentials are read from Secrets Manager).",
        ))  # fmt: skip
        self._grant(task.task_role, settings, ingest, gateway_key)
        if ssh_host_key is not None:
            ssh_host_key.grant_sign(task.task_role)  # only the task reads the host key's seed
        acknowledge(
            task,
            "AwsSolutions-IAM5[Resource::*]",
            "The execution role's ecr:GetAuthorizationToken has no resource-level permissions.",
        )

        self.security_group = ec2.SecurityGroup(
            self, "TaskSecurityGroup", vpc=self.vpc,
            description="tapegate gateway tasks: listeners and health port from the VPC",
            allow_all_outbound=True,  # OIDC discovery, targets, AWS APIs through NAT
        )  # fmt: skip
        # Clients reach the tasks through the NLB (and PrivateLink) from the NLB's own
        # addresses in the VPC: the VPC's block is the narrowest rule that admits them.
        cidr = self.vpc.vpc_cidr_block if settings.vpc_id else settings.vpc_cidr
        for port in [*ports, settings.health_port]:
            self.security_group.add_ingress_rule(
                ec2.Peer.ipv4(cidr), ec2.Port.tcp(port), "from the NLB"
            )
        self.service = ecs.FargateService(
            self, "Service",
            cluster=self.cluster,
            task_definition=task,
            desired_count=settings.desired_count,
            min_healthy_percent=100,
            max_healthy_percent=200,
            circuit_breaker=ecs.DeploymentCircuitBreaker(rollback=True),
            security_groups=[self.security_group],
            vpc_subnets=ec2.SubnetSelection(subnet_type=ec2.SubnetType.PRIVATE_WITH_EGRESS),
        )  # fmt: skip

        self.nlb = elbv2.NetworkLoadBalancer(
            self, "Nlb",
            vpc=self.vpc,
            internet_facing=settings.internet_facing,
            cross_zone_enabled=True,
        )  # fmt: skip
        Validations.of(self.nlb).acknowledge(Acknowledgment(
            id="AwsSolutions-ELB2",
            reason="NLB access logs cover TLS listeners only; these are TCP pass-through (the "
                   "gateway terminates TLS), so every connection is recorded by the gateway.",
        ))  # fmt: skip
        self.target_groups: dict[str, elbv2.NetworkTargetGroup] = {}
        for proto, port in settings.listeners.items():
            listener = self.nlb.add_listener(f"{proto.title()}Listener", port=port,
                                             protocol=elbv2.Protocol.TCP)  # fmt: skip
            self.target_groups[proto] = listener.add_targets(
                f"{proto.title()}Targets",
                port=port,
                targets=[
                    self.service.load_balancer_target(container_name=CONTAINER, container_port=port)
                ],
                deregistration_delay=Duration.seconds(120),
                health_check=elbv2.HealthCheck(
                    protocol=elbv2.Protocol.HTTP,
                    port=str(settings.health_port),
                    path="/readyz",
                    interval=Duration.seconds(10),
                    healthy_threshold_count=2,
                    unhealthy_threshold_count=2,
                ),
            )
        self._autoscale(settings)
        if settings.private_link:
            self.endpoint_service = ec2.VpcEndpointService(
                self, "EndpointService",
                vpc_endpoint_service_load_balancers=[self.nlb],
                acceptance_required=True,
                allowed_principals=[iam.ArnPrincipal(p) for p in settings.private_link_principals],
            )  # fmt: skip

    def _vpc(self, settings: Settings, storage: Storage) -> ec2.IVpc:
        if settings.vpc_id:
            return ec2.Vpc.from_lookup(self, "Vpc", vpc_id=settings.vpc_id)
        flow_logs = log_group(self, "FlowLogs", storage.key)
        return ec2.Vpc(
            self, "Vpc",
            ip_addresses=ec2.IpAddresses.cidr(settings.vpc_cidr),
            max_azs=2,
            nat_gateways=1,
            flow_logs={"all": ec2.FlowLogOptions(
                destination=ec2.FlowLogDestination.to_cloud_watch_logs(flow_logs))},
        )  # fmt: skip

    def _grant(
        self, role: iam.IRole, settings: Settings, ingest: Ingest, gateway_key: KeyPair
    ) -> None:
        role.add_to_principal_policy(iam.PolicyStatement(
            actions=["firehose:PutRecordBatch"],
            resources=[ingest.stream.delivery_stream_arn],
        ))  # fmt: skip
        gateway_key.grant_sign(role)
        # A login's secret, the header an HTTP or MCP target's credential travels in, or a
        # stdio MCP server's environment.
        target_secrets = sorted({arn for t in settings.targets for arn in _secret_arns(t)})
        if target_secrets:
            role.add_to_principal_policy(iam.PolicyStatement(
                actions=["secretsmanager:GetSecretValue"], resources=target_secrets,
            ))  # fmt: skip
            # Target secrets may use any key; only through Secrets Manager may it decrypt.
            role.add_to_principal_policy(iam.PolicyStatement(
                actions=["kms:Decrypt"], resources=["*"],
                conditions={"StringEquals": {
                    "kms:ViaService": f"secretsmanager.{Stack.of(self).region}.amazonaws.com"}},
            ))  # fmt: skip
            Validations.of(role).acknowledge(Acknowledgment(
                id="AwsSolutions-IAM5[Resource::*]",
                reason="kms:Decrypt for target secrets whose keys are chosen by their owners, "
                       "limited to calls made through Secrets Manager.",
            ))  # fmt: skip

    def _autoscale(self, settings: Settings) -> None:
        scaling = self.service.auto_scale_task_count(
            min_capacity=settings.desired_count, max_capacity=settings.max_count
        )
        scaling.scale_on_cpu_utilization("Cpu", target_utilization_percent=60)
        scaling.scale_to_track_custom_metric(
            "Sessions",
            metric=self.sessions_metric(),
            target_value=settings.sessions_per_task,
            # Scaling in ends the sessions on the task it stops: do it slowly.
            scale_in_cooldown=Duration.minutes(15),
            scale_out_cooldown=Duration.minutes(1),
        )

    def sessions_metric(self) -> cloudwatch.Metric:
        """Open sessions per task: the gateway's EMF gauge, averaged over its tasks."""
        return cloudwatch.Metric(
            namespace="tapegate",
            metric_name="sessions_active",
            dimensions_map={"Gateway": GATEWAY_NAME},
            statistic="Average",
            period=Duration.minutes(1),
        )


def _secret_arns(target: dict[str, Any]) -> list[str]:
    found = [target.get("secret_arn"), (target.get("inject_header") or {}).get("secret_arn")]
    env = target.get("env") if isinstance(target.get("env"), dict) else {}
    found += [v.get("secret_arn") for v in env.values() if isinstance(v, dict)]
    return [arn for arn in found if isinstance(arn, str) and arn]

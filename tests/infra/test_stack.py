"""The synthesized template, checked with aws_cdk.assertions: least-privilege IAM, encryption
everywhere, Object Lock, the S3 → SQS → Lambda wiring, Glue columns and named queries from the
one definition, the gateway's listeners and its config."""

from __future__ import annotations

import json
from typing import Any

import pytest
from aws_cdk.assertions import Match, Template

from cdk.settings import Settings, SettingsError
from tapegate.archive.aws import TABLE_SPEC
from tapegate.config import parse_config
from tapegate.queries import QUERIES
from tapegate.schema import TABLES, glue_columns
from tests.infra.conftest import synth, synth_stack


def resources(template: Template, kind: str) -> dict[str, dict[str, Any]]:
    return template.find_resources(kind)


def statements(template: Template) -> list[tuple[str, dict[str, Any]]]:
    """Every IAM statement in the stack's identity policies, with the policy's logical id."""
    found = []
    for kind in ("AWS::IAM::Policy", "AWS::IAM::ManagedPolicy"):
        for lid, res in resources(template, kind).items():
            for st in res["Properties"]["PolicyDocument"]["Statement"]:
                found.append((lid, st))
    return found


def actions(st: dict[str, Any]) -> list[str]:
    a = st.get("Action", [])
    return [a] if isinstance(a, str) else a


def policy_of(template: Template, prefix: str) -> list[dict[str, Any]]:
    return [st for lid, st in statements(template) if lid.startswith(prefix)]


def flat(value: Any) -> str:
    return json.dumps(value, sort_keys=True)


# -- IAM -------------------------------------------------------------------------------------


def test_no_identity_policy_grants_a_service_wildcard_or_deletes_evidence(template) -> None:
    for lid, st in statements(template):
        for action in actions(st):
            assert action != "*" and not action.endswith(":*"), (lid, action)
            if action.startswith("s3:Delete") or action == "s3:BypassGovernanceRetention":
                assert (
                    lid.startswith("StorageBreakGlass")
                    or "Firehose" in lid
                    or (lid.startswith("IngestStream"))
                ), (lid, action)


def test_the_gateway_task_may_only_put_records_and_read_its_signing_key(template) -> None:
    task_policy = policy_of(template, "GatewayTaskTaskRoleDefaultPolicy")
    granted = sorted(a for st in task_policy for a in actions(st))
    assert granted == sorted(["firehose:PutRecordBatch", "secretsmanager:GetSecretValue",
                              "secretsmanager:DescribeSecret"])  # fmt: skip
    (put,) = [st for st in task_policy if "firehose:PutRecordBatch" in actions(st)]
    assert "IngestStream" in flat(put["Resource"])
    (secret,) = [st for st in task_policy if "secretsmanager:GetSecretValue" in actions(st)]
    assert "GatewayKeySeed" in flat(secret["Resource"])
    # The key policy lets it decrypt that secret, through Secrets Manager only.
    (key,) = [k for lid, k in resources(template, "AWS::KMS::Key").items()
              if lid.startswith("StorageKey")]  # fmt: skip
    (decrypt,) = [st for st in key["Properties"]["KeyPolicy"]["Statement"]
                  if "GatewayTaskTaskRole" in flat(st["Principal"])]  # fmt: skip
    assert decrypt["Action"] == "kms:Decrypt" and "secretsmanager." in flat(decrypt["Condition"])


def test_target_secrets_are_readable_by_the_task_and_nothing_else(tmp_path) -> None:
    arn = "arn:aws:secretsmanager:eu-west-1:111122223333:secret:appdb-AbCdEf"
    target = {"name": "appdb", "protocol": "postgres", "upstream": "db.internal:5432",
              "database": "app", "username": "app", "secret_arn": arn,
              "allow_groups": ["agents"]}  # fmt: skip
    template = synth(tmp_path, targets=[target])
    task_policy = policy_of(template, "GatewayTaskTaskRoleDefaultPolicy")
    (reads,) = [st for st in task_policy if st.get("Resource") == arn]
    assert actions(reads) == ["secretsmanager:GetSecretValue"]
    (decrypt,) = [st for st in task_policy if st.get("Resource") == "*"]
    assert actions(decrypt) == ["kms:Decrypt"] and "kms:ViaService" in flat(decrypt["Condition"])
    others = [st for lid, st in statements(template) if not lid.startswith("GatewayTask")]
    assert arn not in flat(others)


def test_an_mcp_listener_and_its_targets_header_secret(tmp_path) -> None:
    arn = "arn:aws:secretsmanager:eu-west-1:111122223333:secret:tickets-AbCdEf"
    target = {"name": "tickets", "protocol": "mcp", "upstream": "https://mcp.internal/mcp",
              "inject_header": {"name": "Authorization", "prefix": "Bearer ", "secret_arn": arn},
              "allow_groups": ["agents"], "tools": {"deny": ["delete_*"]}}  # fmt: skip
    template = synth(tmp_path, listeners='{"postgres": 5432, "mcp": 8443}', targets=[target])
    ports = sorted(
        ln["Properties"]["Port"]
        for ln in resources(template, "AWS::ElasticLoadBalancingV2::Listener").values()
    )
    assert ports == [5432, 8443]
    (task,) = resources(template, "AWS::ECS::TaskDefinition").values()
    config = flat(task["Properties"]["ContainerDefinitions"][0]["Environment"])
    assert "0.0.0.0:8443" in config and "delete_*" in config
    task_policy = policy_of(template, "GatewayTaskTaskRoleDefaultPolicy")
    (reads,) = [st for st in task_policy if st.get("Resource") == arn]
    assert actions(reads) == ["secretsmanager:GetSecretValue"]


def test_a_stdio_mcp_target_runs_in_the_task_with_its_env_secret_and_packages(tmp_path) -> None:
    arn = "arn:aws:secretsmanager:eu-west-1:111122223333:secret:gh-token-AbCdEf"
    target = {"name": "files", "protocol": "mcp", "allow_groups": ["agents"],
              "command": ["npx", "-y", "@modelcontextprotocol/server-filesystem", "/srv"],
              "env": {"GITHUB_TOKEN": {"secret_arn": arn}, "LOG_LEVEL": "info"}}  # fmt: skip
    template = synth(tmp_path, listeners='{"mcp": 8443}', targets=[target],
                     image_packages='["nodejs", "npm"]')  # fmt: skip
    task_policy = policy_of(template, "GatewayTaskTaskRoleDefaultPolicy")
    (reads,) = [st for st in task_policy if st.get("Resource") == arn]
    assert actions(reads) == ["secretsmanager:GetSecretValue"]
    (task,) = resources(template, "AWS::ECS::TaskDefinition").values()
    config = flat(task["Properties"]["ContainerDefinitions"][0]["Environment"])
    assert "server-filesystem" in config and arn in config  # the ARN, never a value
    (assets,) = tmp_path.glob("*.assets.json")
    images = json.loads(assets.read_text())["dockerImages"].values()
    assert [i["source"].get("dockerBuildArgs") for i in images] == [
        {"IMAGE_PACKAGES": "nodejs npm"}
    ]


def test_the_verifier_reads_evidence_writes_curated_and_touches_only_the_base_table(
    template,
) -> None:
    policy = policy_of(template, "PipelineVerifyIndexRole")
    by_action = {a: st for st in policy for a in actions(st)}
    assert "StorageEvidence" in flat(by_action["s3:GetObject"]["Resource"])
    assert "StorageCurated" in flat(by_action["s3:PutObject"]["Resource"])
    assert "StorageEvidence" not in flat(by_action["s3:PutObject"]["Resource"])
    table = by_action["dynamodb:PutItem"]["Resource"]
    assert "/index/" not in flat(table)
    assert not {"dynamodb:DeleteItem", "dynamodb:Scan", "s3:DeleteObject"} & by_action.keys()


def test_only_the_auditor_and_the_verifier_may_read_evidence(template) -> None:
    (policy,) = [
        p for lid, p in resources(template, "AWS::S3::BucketPolicy").items()
        if "StorageEvidence" in flat(p["Properties"]["Bucket"])
    ]  # fmt: skip
    sts = {st.get("Sid"): st for st in policy["Properties"]["PolicyDocument"]["Statement"]}
    readers = flat(sts["OnlyNamedReaders"]["Condition"]["ArnNotLike"])
    assert "AuditorsRole" in readers and "PipelineVerifyIndexRole" in readers
    assert "Gateway" not in readers and "Exports" not in readers
    deny = sts["OnlyBreakGlassDeletes"]
    assert deny["Effect"] == "Deny" and "s3:DeleteObjectVersion" in deny["Action"]
    assert "StorageBreakGlass" in flat(deny["Condition"])
    tls = [st for st in sts.values() if "aws:SecureTransport" in flat(st.get("Condition", {}))]
    assert tls and tls[0]["Effect"] == "Deny"


def test_the_auditor_policy_reads_and_never_writes_evidence(template) -> None:
    (policy,) = resources(template, "AWS::IAM::ManagedPolicy").values()
    sts = policy["Properties"]["PolicyDocument"]["Statement"]
    writes = [st for st in sts if any(a.startswith("s3:Put") for a in actions(st))]
    assert [st["Sid"] for st in writes] == ["QueryResults"]
    assert "StorageEvidence" not in flat(writes)
    assert not [a for st in sts for a in actions(st) if a.startswith(("dynamodb:Put",
                "dynamodb:Delete", "dynamodb:Update"))]  # fmt: skip


# -- encryption and retention ------------------------------------------------------------------


def test_everything_that_holds_data_is_encrypted(template) -> None:
    for lid, b in resources(template, "AWS::S3::Bucket").items():
        assert b["Properties"]["BucketEncryption"], lid
    for lid, q in resources(template, "AWS::SQS::Queue").items():
        assert "KmsMasterKeyId" in q["Properties"], lid
    for lid, t in resources(template, "AWS::DynamoDB::Table").items():
        assert t["Properties"]["SSESpecification"]["SSEType"] == "KMS", lid
    for lid, g in resources(template, "AWS::Logs::LogGroup").items():
        assert "KmsKeyId" in g["Properties"], lid
    for lid, s in resources(template, "AWS::SecretsManager::Secret").items():
        assert "KmsKeyId" in s["Properties"], lid
    for lid, t in resources(template, "AWS::SNS::Topic").items():
        assert "KmsMasterKeyId" in t["Properties"], lid
    (stream,) = resources(template, "AWS::KinesisFirehose::DeliveryStream").values()
    sse = stream["Properties"]["DeliveryStreamEncryptionConfigurationInput"]
    assert sse["KeyType"] == "CUSTOMER_MANAGED_CMK"
    for key in resources(template, "AWS::KMS::Key").values():
        assert key["Properties"]["EnableKeyRotation"] is True


def test_evidence_and_exports_are_versioned_and_object_locked(template, tmp_path) -> None:
    locked = {
        lid: b["Properties"] for lid, b in resources(template, "AWS::S3::Bucket").items()
        if b["Properties"].get("ObjectLockEnabled")
    }  # fmt: skip
    assert sorted(lid[:14] for lid in locked) == ["LogAnchorsD8BD", "StorageEvidenc",
                                                  "StorageExports"]  # fmt: skip
    for lid, props in locked.items():
        assert props["VersioningConfiguration"] == {"Status": "Enabled"}
        rule = props["ObjectLockConfiguration"]["Rule"]["DefaultRetention"]
        # The session log's anchors are in compliance mode whatever lock_mode says: an anchor
        # is what a rewritten log is caught against, so no one may remove it early.
        mode = "COMPLIANCE" if lid.startswith("LogAnchors") else "GOVERNANCE"
        assert rule == {"Mode": mode, "Days": 365}
    strict = synth(tmp_path, lock_mode="compliance", retention_days="2555")
    modes = [b["Properties"]["ObjectLockConfiguration"]["Rule"]["DefaultRetention"]
             for b in resources(strict, "AWS::S3::Bucket").values()
             if b["Properties"].get("ObjectLockEnabled")]  # fmt: skip
    assert modes == [{"Mode": "COMPLIANCE", "Days": 2555}] * 3


# -- the pipeline ------------------------------------------------------------------------------


def test_delivered_objects_reach_the_verifier_through_sqs(template) -> None:
    (notification,) = resources(template, "Custom::S3BucketNotifications").values()
    (queue_config,) = notification["Properties"]["NotificationConfiguration"]["QueueConfigurations"]
    assert queue_config["Events"] == ["s3:ObjectCreated:*"]
    assert queue_config["Filter"]["Key"]["FilterRules"] == [
        {"Name": "prefix", "Value": "deliveries/"}
    ]
    queue_lid = queue_config["QueueArn"]["Fn::GetAtt"][0]
    queue = resources(template, "AWS::SQS::Queue")[queue_lid]["Properties"]
    assert queue["RedrivePolicy"]["maxReceiveCount"] == 5
    template.has_resource_properties("AWS::Lambda::EventSourceMapping", {
        "EventSourceArn": {"Fn::GetAtt": [queue_lid, "Arn"]},
        "FunctionResponseTypes": ["ReportBatchItemFailures"],
        "FunctionName": {"Ref": Match.string_like_regexp("PipelineVerifyIndex")},
    })  # fmt: skip
    (stream,) = resources(template, "AWS::KinesisFirehose::DeliveryStream").values()
    s3 = stream["Properties"]["ExtendedS3DestinationConfiguration"]
    assert s3["Prefix"].startswith("deliveries/") and s3["ErrorOutputPrefix"].startswith("errors/")
    assert "StorageEvidence" in flat(s3["BucketARN"])
    assert s3["BufferingHints"] == {"IntervalInSeconds": 60, "SizeInMBs": 64}
    assert "ProcessingConfiguration" not in s3, "no transform may divert evidence"


def test_lambdas_are_python_313_traced_and_configured(template) -> None:
    functions = {
        lid: f["Properties"] for lid, f in resources(template, "AWS::Lambda::Function").items()
        if f["Properties"].get("Handler", "").startswith("lambdas.")
    }  # fmt: skip
    handlers = sorted(p["Handler"] for p in functions.values())
    assert handlers == ["lambdas.compliance_export.handler.lambda_handler",
                        "lambdas.keygen.handler.on_event",
                        "lambdas.log_anchor.handler.lambda_handler",
                        "lambdas.sequencer.handler.lambda_handler",
                        "lambdas.verify_index.handler.lambda_handler"]  # fmt: skip
    for props in functions.values():
        assert props["Runtime"] == "python3.13" and props["TracingConfig"]["Mode"] == "Active"
        assert props["Environment"]["Variables"]["POWERTOOLS_METRICS_NAMESPACE"] == "tapegate"
    verify = next(p for p in functions.values() if "verify_index" in p["Handler"])
    assert verify["ReservedConcurrentExecutions"] == 10
    env = verify["Environment"]["Variables"]
    assert set(env) >= {"TAPEGATE_TABLE", "TAPEGATE_CURATED_BUCKET", "TAPEGATE_PUBLIC_KEY_PARAM"}
    assert env["TAPEGATE_PUBLIC_KEY_PARAM"] == "/tapegate/gateway-public-keys"


def test_the_index_is_the_one_the_adapters_use(template) -> None:
    (table,) = resources(template, "AWS::DynamoDB::Table").values()
    props = table["Properties"]
    assert props["KeySchema"] == TABLE_SPEC["KeySchema"]
    assert sorted(props["AttributeDefinitions"], key=flat) == sorted(
        TABLE_SPEC["AttributeDefinitions"], key=flat
    )
    gsis = {g["IndexName"]: g["KeySchema"] for g in props["GlobalSecondaryIndexes"]}
    assert gsis == {g["IndexName"]: g["KeySchema"] for g in TABLE_SPEC["GlobalSecondaryIndexes"]}
    assert props["PointInTimeRecoverySpecification"]["PointInTimeRecoveryEnabled"] is True
    assert props["BillingMode"] == "PAY_PER_REQUEST"


# -- analytics ---------------------------------------------------------------------------------


def test_glue_tables_carry_schema_py_columns_and_day_projection(template) -> None:
    tables = {t["Properties"]["TableInput"]["Name"]: t["Properties"]["TableInput"]
              for t in resources(template, "AWS::Glue::Table").values()}  # fmt: skip
    assert set(tables) == set(TABLES)
    for name, table in tables.items():
        columns = table["StorageDescriptor"]["Columns"]
        assert columns == glue_columns(name)
        assert table["PartitionKeys"] == [{"Name": "dt", "Type": "string"}]
        params = table["Parameters"]
        assert params["projection.enabled"] == "true"
        assert params["projection.dt.type"] == "date"
        assert params["projection.dt.format"] == "yyyy-MM-dd"
        assert params["projection.dt.range"].endswith(",NOW")
        assert f"/{name}/dt=${{dt}}/" in flat(params["storage.location.template"])


def test_the_workgroup_enforces_engine_v3_encryption_and_a_scan_cutoff(template) -> None:
    (wg,) = resources(template, "AWS::Athena::WorkGroup").values()
    config = wg["Properties"]["WorkGroupConfiguration"]
    assert config["EngineVersion"]["SelectedEngineVersion"] == "Athena engine version 3"
    assert config["EnforceWorkGroupConfiguration"] is True
    assert config["BytesScannedCutoffPerQuery"] == 10 * 1024**3
    enc = config["ResultConfiguration"]["EncryptionConfiguration"]
    assert enc["EncryptionOption"] == "SSE_KMS"


def test_named_queries_are_the_ones_tested_on_duckdb(template) -> None:
    saved = {q["Properties"]["Name"]: q["Properties"]
             for q in resources(template, "AWS::Athena::NamedQuery").values()}  # fmt: skip
    assert {n: q["QueryString"] for n, q in saved.items()} == {q.name: q.sql for q in QUERIES}
    assert all(q["WorkGroup"] == "tapegate" for q in saved.values())


def test_exports_run_daily_on_a_schedule(template) -> None:
    (schedule,) = [s for s in resources(template, "AWS::Scheduler::Schedule").values()
                   if "ExportsExport" in flat(s["Properties"]["Target"]["Arn"])]  # fmt: skip
    props = schedule["Properties"]
    assert props["ScheduleExpression"] == "cron(15 1 * * ? *)"
    assert "scheduled_time" in props["Target"]["Input"]
    assert "ExportsExport" in flat(props["Target"]["Arn"])


# -- the gateway -------------------------------------------------------------------------------


def test_nlb_passes_tcp_through_and_checks_readyz_on_the_health_port(tmp_path) -> None:
    template = synth(tmp_path, listeners='{"postgres": 5432, "ssh": 2222}')
    # With an SSH listener every task gets one host key, made at deploy time like the signing
    # key: its seed readable by the task alone, its public line a stack output for known_hosts.
    (task,) = resources(template, "AWS::ECS::TaskDefinition").values()
    config = flat(task["Properties"]["ContainerDefinitions"][0]["Environment"])
    assert "ssh_host_key" in config and "SshHostKeySeed" in config
    outputs = template.to_json()["Outputs"]
    assert "OpenSshPublicKey" in flat(outputs["SshHostPublicKey"]["Value"])
    secret_policies = resources(template, "AWS::SecretsManager::ResourcePolicy").values()
    host_key_policies = [p for p in secret_policies
                         if "SshHostKeySeed" in flat(p["Properties"]["SecretId"])]  # fmt: skip
    assert host_key_policies and '"Deny"' in flat(host_key_policies[0])
    listeners = sorted((ln["Properties"]["Port"], ln["Properties"]["Protocol"])
                       for ln in resources(template, "AWS::ElasticLoadBalancingV2::Listener")
                       .values())  # fmt: skip
    assert listeners == [(2222, "TCP"), (5432, "TCP")]
    for tg in resources(template, "AWS::ElasticLoadBalancingV2::TargetGroup").values():
        props = tg["Properties"]
        assert props["HealthCheckProtocol"] == "HTTP" and props["HealthCheckPath"] == "/readyz"
        assert props["HealthCheckPort"] == "8081" and props["TargetType"] == "ip"


def test_the_task_config_is_one_the_gateway_accepts(template) -> None:
    (task,) = resources(template, "AWS::ECS::TaskDefinition").values()
    (container,) = task["Properties"]["ContainerDefinitions"]
    (env,) = container["Environment"]
    assert env["Name"] == "TAPEGATE_CONFIG_YAML"

    def render(value: Any) -> str:  # CloudFormation's join, with references as placeholders
        if isinstance(value, str):
            return value
        if "Fn::Join" in value:
            sep, parts = value["Fn::Join"]
            return sep.join(render(p) for p in parts)
        return "resolved-at-deploy"

    config = parse_config(json.loads(render(env["Value"])))
    assert config.sink.kind == "firehose" and config.archive.kind == "aws"
    assert not config.archive.embedded_pipeline
    assert config.keys.signing_key == "resolved-at-deploy"
    assert config.keys.ssh_host_key is None  # no SSH listener here: no host key either
    assert config.listen_health is not None and config.listen_health.port == 8081
    assert container["ReadonlyRootFilesystem"] is True and container["User"] == "10001"
    assert "Secrets" not in container
    for value in (v for v in json.loads(render(env["Value"])).values()):
        assert "password" not in flat(value).lower()


def test_autoscaling_on_cpu_and_open_sessions(template) -> None:
    policies = resources(template, "AWS::ApplicationAutoScaling::ScalingPolicy").values()
    configs = [p["Properties"]["TargetTrackingScalingPolicyConfiguration"] for p in policies]
    predefined = [c["PredefinedMetricSpecification"]["PredefinedMetricType"]
                  for c in configs if "PredefinedMetricSpecification" in c]  # fmt: skip
    custom = [c["CustomizedMetricSpecification"] for c in configs
              if "CustomizedMetricSpecification" in c]  # fmt: skip
    assert predefined == ["ECSServiceAverageCPUUtilization"]
    assert [(c["Namespace"], c["MetricName"]) for c in custom] == [("tapegate", "sessions_active")]
    (cluster,) = resources(template, "AWS::ECS::Cluster").values()
    assert {"Name": "containerInsights", "Value": "enhanced"} in cluster["Properties"][
        "ClusterSettings"
    ]


def test_privatelink_only_when_asked(template, tmp_path) -> None:
    assert not resources(template, "AWS::EC2::VPCEndpointService")
    with_link = synth(tmp_path, private_link="true",
                      private_link_principals="arn:aws:iam::111122223333:root")  # fmt: skip
    (service,) = resources(with_link, "AWS::EC2::VPCEndpointService").values()
    assert service["Properties"]["AcceptanceRequired"] is True
    with_link.has_resource_properties(
        "AWS::EC2::VPCEndpointServicePermissions",
        {"AllowedPrincipals": ["arn:aws:iam::111122223333:root"]},
    )


def test_alarms_page_on_tampering_failures_and_unhealthy_tasks(template) -> None:
    alarms = resources(template, "AWS::CloudWatch::Alarm")
    names = sorted(lid.removeprefix("Alarms")[:-8] for lid in alarms)
    assert names == ["DeadLetters", "ExportErrors", "FirehoseDeliveryErrors", "LogErrors",
                     "LogProblems", "TamperAlerts", "UnhealthyGatewayTasks",
                     "VerificationFailures"]  # fmt: skip
    for alarm in alarms.values():
        assert "AlarmsTopic" in flat(alarm["Properties"]["AlarmActions"])


# -- settings and nag --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("context", "message"),
    [
        ({"lock_mode": "forever"}, "lock_mode: one of GOVERNANCE, COMPLIANCE"),
        ({"retention_days": "0"}, "retention_days: must be between 1 and 36500"),
        ({"auditor_public_key": "zz"}, "auditor_public_key: 64 hex digits"),
        ({"oidc_issuer": "http://idp"}, "oidc_issuer: an https:// issuer URL"),
        ({"export_schedule": "daily"}, "export_schedule: rate(...), cron(...) or at(...)"),
        ({"targets": [{"name": "db", "protocol": "postgres", "password_env": "X"}]},
         "targets[0].password_env: use secret_arn on AWS"),
        ({"targets": [{"name": "web", "protocol": "ssh"}]}, "no listener for protocol 'ssh'"),
        ({"targets": [{"name": "web", "protocol": "ssh", "known_hosts": "/etc/kh"}],
          "listeners": {"ssh": 22}}, "targets[0].known_hosts: give the known_hosts lines"),
        ({"vpc_cidr": "10.0.0.0/8"}, "vpc_cidr: a prefix length between /16 and /24"),
        ({"targets": [{"name": "f", "protocol": "mcp", "command": ["x"],
                       "env": {"T": {"value_env": "T"}}}]}, "targets[0].env.T: use secret_arn"),
        ({"image_packages": ["nodejs; rm -rf /"]}, "image_packages: 'nodejs; rm -rf /' is not"),
        ({"log_origin": "my log"}, "log_origin: one word without spaces"),
        ({"anchor_bucket_arn": "anchors"}, "anchor_bucket_arn: an S3 bucket ARN"),
        ({"tsa_url": "tsa.example.com"}, "tsa_url: an http(s):// URL"),
        ({"log_schedule": "often"}, "log_schedule: rate(...), cron(...) or at(...)"),
    ],
)  # fmt: skip
def test_bad_settings_stop_synth_with_the_key_named(context, message) -> None:
    class Node:
        def try_get_context(self, key: str) -> Any:
            return context.get(key)

    with pytest.raises(SettingsError, match=message.replace("(", r"\(").replace(")", r"\)")
                       .replace("[", r"\[").replace("]", r"\]").replace(".", r"\.")):  # fmt: skip
        Settings.from_context(Node())  # type: ignore[arg-type]


def test_an_unacknowledged_nag_finding_fails_synth(tmp_path) -> None:
    from aws_cdk import App, Stack, Validations
    from aws_cdk import aws_s3 as s3
    from cdk_nag import AwsSolutionsChecks

    app = App(outdir=str(tmp_path))
    stack = Stack(app, "Bare")
    s3.Bucket(stack, "Unlogged")  # no access logs, no TLS-only policy
    Validations.of(app).add_plugins(AwsSolutionsChecks(app))
    with pytest.raises(Exception, match=r"(?s)AwsSolutions-S1'.*AwsSolutions-S10") as failure:
        app.synth()
    assert "ValidationFailed" in str(failure.value)


def test_a_missing_auditor_key_is_a_warning_and_a_given_one_reaches_the_task(tmp_path) -> None:
    from aws_cdk.assertions import Annotations

    stack = synth_stack(tmp_path / "a")
    Annotations.from_stack(stack).has_warning(
        "*", Match.string_like_regexp("No auditor_public_key: .* cannot be read")
    )
    key = "cd" * 32
    stack = synth_stack(tmp_path / "b", auditor_public_key=key)
    Annotations.from_stack(stack).has_no_warning("*", Match.string_like_regexp("auditor_public"))
    (task,) = resources(Template.from_stack(stack), "AWS::ECS::TaskDefinition").values()
    (container,) = task["Properties"]["ContainerDefinitions"]
    assert key in flat(container["Environment"])


def test_identity_center_roles_can_be_named_as_evidence_readers(tmp_path) -> None:
    pattern = "arn:aws:iam::*:role/aws-reserved/sso.amazonaws.com/*/AWSReservedSSO_Auditor_*"
    template = synth(tmp_path, auditor_principals=json.dumps([pattern]))
    policies = [p["Properties"]["PolicyDocument"]["Statement"]
                for p in resources(template, "AWS::S3::BucketPolicy").values()]  # fmt: skip
    readers = [st for sts in policies for st in sts if st.get("Sid") == "OnlyNamedReaders"]
    assert len(readers) == 2 and all(pattern in flat(st["Condition"]) for st in readers)


def test_each_seed_is_readable_by_its_signer_alone(template) -> None:
    policies = resources(template, "AWS::SecretsManager::ResourcePolicy").values()
    denies = {
        flat(p["Properties"]["SecretId"]): p["Properties"]["ResourcePolicy"]["Statement"]
        for p in policies
    }
    assert len(denies) == 3
    readers = sorted(
        flat(st["Condition"]["ArnNotEquals"]) for sts in denies.values() for st in sts
        if st["Effect"] == "Deny" and "secretsmanager:GetSecretValue" in actions(st)
    )  # fmt: skip
    assert len(readers) == 3
    assert "ExportsExportRole" in readers[0] and "GatewayTaskTaskRole" in readers[1]
    assert "LogSequencerRole" in readers[2]  # the log key: the sequencer's alone


# -- the session log ---------------------------------------------------------------------------


def test_the_session_log_has_one_sequencer_a_daily_anchor_and_narrow_rights(template) -> None:
    functions = {f["Properties"]["Handler"]: f["Properties"]
                 for f in resources(template, "AWS::Lambda::Function").values()
                 if f["Properties"].get("Handler", "").startswith("lambdas.")}  # fmt: skip
    sequencer = functions["lambdas.sequencer.handler.lambda_handler"]
    assert sequencer["ReservedConcurrentExecutions"] == 1  # the one writer of the log
    env = sequencer["Environment"]["Variables"]
    assert env["TAPEGATE_LOG_ORIGIN"] == "tapegate.tapegate/log"
    anchor = functions["lambdas.log_anchor.handler.lambda_handler"]["Environment"]["Variables"]
    assert anchor["TAPEGATE_LOG_PUBLIC_KEY_PARAM"] == "/tapegate/log-public-keys"
    assert "LogAnchors" in flat(anchor["TAPEGATE_ANCHOR_BUCKET"])
    schedules = {flat(s["Properties"]["Target"]["Arn"]): s["Properties"]["ScheduleExpression"]
                 for s in resources(template, "AWS::Scheduler::Schedule").values()}  # fmt: skip
    assert sorted(schedules.values()) == ["cron(15 1 * * ? *)", "cron(30 0 * * ? *)",
                                          "rate(1 minute)"]  # fmt: skip
    policy = policy_of(template, "LogSequencerRole")
    by_action = {a: st for st in policy for a in actions(st)}
    put = flat(by_action["s3:PutObject"]["Resource"])
    assert "StorageEvidence" in put and "/log/*" in put  # the log's prefix, nothing else
    assert "log/*" in flat(by_action["s3:ListBucket"]["Condition"])
    assert "/index/pending_leaves" in flat(by_action["dynamodb:Query"]["Resource"])
    assert not {"s3:DeleteObject", "dynamodb:DeleteItem", "dynamodb:Scan"} & by_action.keys()
    anchor_policy = {a for st in policy_of(template, "LogAnchorRole") for a in actions(st)}
    assert "s3:PutObject" in anchor_policy and "s3:DeleteObject" not in anchor_policy
    (evidence_policy,) = [
        p for p in resources(template, "AWS::S3::BucketPolicy").values()
        if "StorageEvidence" in flat(p["Properties"]["Bucket"])
    ]  # fmt: skip
    readers = flat(evidence_policy["Properties"]["PolicyDocument"])
    assert "LogSequencerRole" in readers and "LogAnchorRole" in readers
    # The auditor role can run `tapegate log verify`: the log key and the anchors.
    (auditor,) = resources(template, "AWS::IAM::ManagedPolicy").values()
    sts = {st["Sid"]: st for st in auditor["Properties"]["PolicyDocument"]["Statement"]}
    assert "log-public-keys" in flat(sts["PublicKeys"]["Resource"])
    assert "LogAnchors" in flat(sts["ReadEvidence"]["Resource"])


def test_anchors_may_go_to_a_bucket_elsewhere(tmp_path) -> None:
    template = synth(
        tmp_path,
        anchor_bucket_arn="arn:aws:s3:::audit-anchors-elsewhere",
        tsa_url="https://tsa.example.com/",
        log_origin="example.com/tapegate",
    )
    buckets = [lid for lid in resources(template, "AWS::S3::Bucket") if lid.startswith("Log")]
    assert buckets == []
    (anchor,) = [f["Properties"]["Environment"]["Variables"]
                 for f in resources(template, "AWS::Lambda::Function").values()
                 if "log_anchor" in f["Properties"].get("Handler", "")]  # fmt: skip
    assert anchor["TAPEGATE_ANCHOR_BUCKET"] == "audit-anchors-elsewhere"
    assert anchor["TAPEGATE_TSA_URL"] == "https://tsa.example.com/"
    assert anchor["TAPEGATE_LOG_ORIGIN"] == "example.com/tapegate"

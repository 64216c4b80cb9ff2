"""How every tapegate Lambda is built: one code asset, one runtime, X-Ray tracing, Powertools
settings and an encrypted log group with a retention period."""

from __future__ import annotations

from aws_cdk import Duration
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_lambda as lambda_
from constructs import Construct

from cdk import bundling
from cdk.nag import acknowledge
from cdk.storage import log_group

_CODE: dict[int, lambda_.Code] = {}


def code(scope: Construct) -> lambda_.Code:
    """The asset, built once per app however many functions use it."""
    app = id(scope.node.root)
    if app not in _CODE:
        _CODE[app] = bundling.lambda_code()
    return _CODE[app]


def python_function(
    scope: Construct,
    id: str,
    *,
    handler: str,
    service: str,
    key: kms.IKey,
    environment: dict[str, str],
    timeout: Duration,
    memory_mb: int = 1024,
    reserved_concurrency: int | None = None,
    description: str = "",
) -> lambda_.Function:
    logs_ = log_group(scope, f"{id}Logs", key)
    # Our own role rather than the managed basic-execution policy: it may write to its own log
    # group and nothing else until a construct grants it what it needs.
    role = iam.Role(scope, f"{id}Role", assumed_by=iam.ServicePrincipal("lambda.amazonaws.com"))
    logs_.grant_write(role)
    function = lambda_.Function(
        scope, id,
        role=role,
        description=description,
        runtime=bundling.RUNTIME,
        architecture=bundling.ARCHITECTURE,
        code=code(scope),
        handler=handler,
        timeout=timeout,
        memory_size=memory_mb,
        reserved_concurrent_executions=reserved_concurrency,
        tracing=lambda_.Tracing.ACTIVE,
        log_group=logs_,
        environment={
            "POWERTOOLS_SERVICE_NAME": service,
            "POWERTOOLS_METRICS_NAMESPACE": "tapegate",
            **environment,
        },
    )  # fmt: skip
    acknowledge(function, "AwsSolutions-L1", f"Pinned to {bundling.RUNTIME.name}: the bundled "
                "wheels are built for it (cdk/bundling.py); the two move together.")  # fmt: skip
    acknowledge(role, "AwsSolutions-IAM5[Resource::*]", "X-Ray's PutTraceSegments and "
                "PutTelemetryRecords have no resource-level permissions.")  # fmt: skip
    return function

"""Where evidence lives: the KMS key and the buckets (evidence, curated, exports, query results,
access logs), with the bucket policies that keep evidence undeletable and unreadable to all but
the roles named for it."""

from __future__ import annotations

from aws_cdk import Acknowledgment, Duration, RemovalPolicy, Validations
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_logs as logs
from aws_cdk import aws_s3 as s3
from constructs import Construct, IConstruct

from cdk.nag import acknowledge, objects_of
from cdk.settings import Settings

# What no principal but the break-glass role may do to evidence. With Object Lock a locked version
# cannot be deleted anyway until its retention ends (in COMPLIANCE mode not even then by root);
# this also covers delete markers, retention changes and expiring lifecycle rules. Bucket-level
# settings stay with CloudFormation, or a later deploy could not update the stack.
_DESTRUCTIVE = ["s3:DeleteObject", "s3:DeleteObjectVersion", "s3:BypassGovernanceRetention",
                "s3:PutObjectRetention", "s3:PutObjectLegalHold", "s3:PutLifecycleConfiguration",
                "s3:DeleteBucket"]  # fmt: skip
_READS = ["s3:GetObject", "s3:GetObjectVersion"]


def log_group(scope: Construct, id: str, key: kms.IKey) -> logs.LogGroup:
    """Every tapegate log group: a year of retention, the stack's key, kept when the stack goes."""
    return logs.LogGroup(scope, id, retention=logs.RetentionDays.ONE_YEAR, encryption_key=key,
                         removal_policy=RemovalPolicy.RETAIN)  # fmt: skip


class Storage(Construct):
    def __init__(self, scope: Construct, id: str, *, settings: Settings) -> None:
        super().__init__(scope, id)
        self.key = kms.Key(
            self, "Key",
            description=f"{settings.name}: evidence, tables, index, queues and logs",
            enable_key_rotation=True,
            removal_policy=RemovalPolicy.RETAIN,  # evidence outlives the stack; so must its key
        )  # fmt: skip
        # S3 server access logs cannot go to a KMS-encrypted bucket: SSE-S3 here.
        self.access_logs = s3.Bucket(
            self, "AccessLogs",
            encryption=s3.BucketEncryption.S3_MANAGED,
            block_public_access=s3.BlockPublicAccess.BLOCK_ALL,
            enforce_ssl=True,
            versioned=True,
            object_ownership=s3.ObjectOwnership.BUCKET_OWNER_PREFERRED,
            lifecycle_rules=[s3.LifecycleRule(expiration=Duration.days(400))],
            removal_policy=RemovalPolicy.RETAIN,
        )  # fmt: skip
        Validations.of(self.access_logs).acknowledge(Acknowledgment(
            id="AwsSolutions-S1",
            reason="This is the access-log bucket; logging it into itself would loop.",
        ))  # fmt: skip

        self.break_glass = iam.Role(
            self, "BreakGlass",
            description="The only principal allowed to delete evidence (subject to Object Lock)",
            assumed_by=(iam.ArnPrincipal(settings.break_glass_principal)
                        if settings.break_glass_principal else iam.AccountRootPrincipal()),
            max_session_duration=Duration.hours(1),
        )  # fmt: skip
        # Assuming it needs MFA: deleting evidence is a two-person, deliberate act.
        self.break_glass.assume_role_policy.add_statements(  # type: ignore[union-attr]
            iam.PolicyStatement(
                effect=iam.Effect.DENY,
                principals=[iam.AnyPrincipal()],
                actions=["sts:AssumeRole"],
                conditions={"BoolIfExists": {"aws:MultiFactorAuthPresent": "false"}},
            )
        )
        retention = Duration.days(settings.retention_days)
        lock = (s3.ObjectLockRetention.compliance(retention)
                if settings.lock_mode == "COMPLIANCE"
                else s3.ObjectLockRetention.governance(retention))  # fmt: skip
        self.evidence = self._bucket("Evidence", "evidence/", object_lock=lock)
        self.exports = self._bucket("Exports", "exports/", object_lock=lock)
        self.curated = self._bucket("Curated", "curated/")
        self.query_results = self._bucket(
            "QueryResults", "query-results/", expire=Duration.days(30)
        )
        for bucket in (self.evidence, self.exports):
            self._deny_destruction(bucket)
        self.break_glass.add_to_policy(iam.PolicyStatement(
            actions=["s3:DeleteObject", "s3:DeleteObjectVersion", "s3:BypassGovernanceRetention",
                     "s3:ListBucketVersions", "s3:GetObjectRetention"],
            resources=[self.evidence.bucket_arn, self.evidence.arn_for_objects("*")],
        ))  # fmt: skip
        acknowledge(
            self.break_glass,
            objects_of(self.evidence),
            "Break-glass deletion is per object version, named at the time of use.",
        )

    def _bucket(
        self,
        id: str,
        log_prefix: str,
        *,
        object_lock: s3.ObjectLockRetention | None = None,
        expire: Duration | None = None,
        scope: Construct | None = None,
    ) -> s3.Bucket:
        return s3.Bucket(
            scope or self, id,
            encryption=s3.BucketEncryption.KMS,
            encryption_key=self.key,
            bucket_key_enabled=True,
            block_public_access=s3.BlockPublicAccess.BLOCK_ALL,
            enforce_ssl=True,
            versioned=True,
            object_lock_enabled=object_lock is not None or None,
            object_lock_default_retention=object_lock,
            server_access_logs_bucket=self.access_logs,
            server_access_logs_prefix=log_prefix,
            lifecycle_rules=[s3.LifecycleRule(expiration=expire)] if expire else None,
            removal_policy=RemovalPolicy.RETAIN,
        )  # fmt: skip

    def locked_bucket(
        self, scope: Construct, id: str, log_prefix: str, lock: s3.ObjectLockRetention
    ) -> s3.Bucket:
        """A bucket of `scope`'s made like the evidence bucket: the stack's key, TLS only,
        versioned, access-logged, Object Lock with `lock`, deletion denied but to break-glass."""
        bucket = self._bucket(id, log_prefix, object_lock=lock, scope=scope)
        self._deny_destruction(bucket)
        return bucket

    def _deny_destruction(self, bucket: s3.Bucket) -> None:
        bucket.add_to_resource_policy(iam.PolicyStatement(
            sid="OnlyBreakGlassDeletes",
            effect=iam.Effect.DENY,
            principals=[iam.AnyPrincipal()],
            actions=_DESTRUCTIVE,
            resources=[bucket.bucket_arn, bucket.arn_for_objects("*")],
            conditions={"ArnNotEquals": {"aws:PrincipalArn": self.break_glass.role_arn}},
        ))  # fmt: skip

    def restrict_reads(
        self, bucket: s3.Bucket, readers: list[iam.IRole], patterns: tuple[str, ...] = ()
    ) -> None:
        """Nobody outside `readers` (or principals matching `patterns`) gets an object back,
        whatever their IAM policies say."""
        bucket.add_to_resource_policy(iam.PolicyStatement(
            sid="OnlyNamedReaders",
            effect=iam.Effect.DENY,
            principals=[iam.AnyPrincipal()],
            actions=_READS,
            resources=[bucket.arn_for_objects("*")],
            conditions={"ArnNotLike": {
                "aws:PrincipalArn": [*(r.role_arn for r in readers), *patterns]}},
        ))  # fmt: skip

    def allow(
        self,
        grantee: iam.IGrantable,
        bucket: s3.IBucket,
        *,
        read: bool = False,
        write: bool = False,
        list_keys: bool = False,
        why: str,
        scope: IConstruct | None = None,
        prefix: str = "",
    ) -> None:
        """Exactly these object actions on one bucket (and the key use they imply), instead of
        the grant_* helpers' wildcards (s3:GetObject*, s3:DeleteObject*, kms:ReEncrypt*)."""
        actions = (["s3:GetObject"] if read else []) + (
            ["s3:PutObject", "s3:AbortMultipartUpload"] if write else []
        )
        principal = grantee.grant_principal
        principal.add_to_principal_policy(
            iam.PolicyStatement(actions=actions, resources=[bucket.arn_for_objects(prefix + "*")])
        )
        if list_keys:
            principal.add_to_principal_policy(iam.PolicyStatement(
                actions=["s3:ListBucket"], resources=[bucket.bucket_arn],
                conditions={"StringLike": {"s3:prefix": f"{prefix}*"}} if prefix else None,
            ))  # fmt: skip
            principal.add_to_principal_policy(iam.PolicyStatement(
                actions=["s3:GetBucketLocation"], resources=[bucket.bucket_arn]
            ))  # fmt: skip
        # Multipart uploads to an SSE-KMS bucket need Decrypt as well as GenerateDataKey.
        key_actions = ["kms:Decrypt"] + (["kms:GenerateDataKey"] if write else [])
        principal.add_to_principal_policy(
            iam.PolicyStatement(actions=key_actions, resources=[self.key.key_arn])
        )
        # The finding is on the role's policy, which is where the acknowledgement must sit.
        acknowledge(scope or principal, objects_of(bucket, f"/{prefix}*"), why)  # type: ignore[arg-type]

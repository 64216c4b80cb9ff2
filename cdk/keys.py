"""Ed25519 key pairs made at deploy time: the gateway's signing key and the export key.

A custom resource (lambdas/keygen) generates the pair inside the account: the private seed goes
straight into a Secrets Manager secret that only the signer may read, the public key into an SSM
parameter that verifiers and auditors read. Neither CloudFormation nor the template ever holds the
seed. Bumping `generation` rotates: a new seed, and the new public key is put in front of the old
ones in the parameter, so chunks signed before the rotation still verify.
"""

from __future__ import annotations

from aws_cdk import Acknowledgment, CustomResource, Duration, RemovalPolicy, Stack, Validations
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_secretsmanager as secretsmanager
from aws_cdk import custom_resources as cr
from constructs import Construct

from cdk.functions import python_function
from cdk.nag import acknowledge, objects_of


class KeyGenerator(Construct):
    """The one provider behind every KeyPair in the stack."""

    def __init__(self, scope: Construct, id: str, *, key: kms.IKey) -> None:
        super().__init__(scope, id)
        self.function = python_function(
            self, "Function",
            description="Generate Ed25519 key pairs into Secrets Manager and SSM",
            handler="lambdas.keygen.handler.on_event",
            service="tapegate-keygen",
            key=key,
            timeout=Duration.minutes(1),
            memory_mb=256,
            environment={},
        )  # fmt: skip
        self.provider = cr.Provider(self, "Provider", on_event_handler=self.function)
        Validations.of(self.provider).acknowledge(
            Acknowledgment(id="AwsSolutions-L1", reason="The Provider framework's own function "
                           "runtime is chosen by the CDK release, not by this app."),
            Acknowledgment(id="AwsSolutions-IAM4[Policy::arn:<AWS::Partition>:iam::aws:policy/"
                           "service-role/AWSLambdaBasicExecutionRole]", reason="The Provider "
                           "framework's function only writes its own logs."),
        )  # fmt: skip
        acknowledge(
            self.provider,
            objects_of(self.function, ":*"),
            "The framework may invoke any version of the one key-generation function.",
        )


class KeyPair(Construct):
    def __init__(
        self,
        scope: Construct,
        id: str,
        *,
        generator: KeyGenerator,
        key: kms.IKey,
        parameter_name: str,
        purpose: str,
        generation: int = 1,
    ) -> None:
        super().__init__(scope, id)
        stack = Stack.of(self)
        self.parameter_name = parameter_name
        self.parameter_arn = stack.format_arn(
            service="ssm", resource="parameter", resource_name=parameter_name.lstrip("/")
        )
        self.secret = secretsmanager.Secret(
            self, "Seed",
            description=f"{purpose}: Ed25519 private seed (hex), written by the key generator",
            encryption_key=key,
            removal_policy=RemovalPolicy.DESTROY,
        )  # fmt: skip
        Validations.of(self.secret).acknowledge(Acknowledgment(
            id="AwsSolutions-SMG4",
            reason="Rotation is a redeploy with a new key generation (docs/deploy.md), so old "
                   "public keys stay trusted for the chunks they signed.",
        ))  # fmt: skip
        generator.function.add_to_role_policy(iam.PolicyStatement(
            actions=["secretsmanager:PutSecretValue"], resources=[self.secret.secret_arn],
        ))  # fmt: skip
        generator.function.add_to_role_policy(iam.PolicyStatement(
            actions=["kms:GenerateDataKey", "kms:Decrypt"], resources=[key.key_arn],
        ))  # fmt: skip
        generator.function.add_to_role_policy(iam.PolicyStatement(
            actions=["ssm:GetParameter", "ssm:PutParameter"], resources=[self.parameter_arn],
        ))  # fmt: skip
        self.resource = CustomResource(
            self, "Resource",
            service_token=generator.provider.service_token,
            resource_type="Custom::TapegateKeyPair",
            properties={
                "SecretArn": self.secret.secret_arn,
                "ParameterName": parameter_name,
                "Generation": str(generation),
            },
        )  # fmt: skip
        self.public_key = self.resource.get_att_string("PublicKey")
        self.openssh_public_key = self.resource.get_att_string("OpenSshPublicKey")

    def grant_read_public(self, grantee: iam.IGrantable) -> None:
        iam.Grant.add_to_principal(grantee=grantee, actions=["ssm:GetParameter"],
                                   resource_arns=[self.parameter_arn])  # fmt: skip

    def grant_sign(self, role: iam.IRole) -> None:
        """`role` alone may read the seed: the secret's own policy denies everyone else, so an
        administrator's secretsmanager:* does not reach it either."""
        self.secret.grant_read(role)
        self.secret.add_to_resource_policy(iam.PolicyStatement(
            effect=iam.Effect.DENY,
            principals=[iam.AnyPrincipal()],
            actions=["secretsmanager:GetSecretValue"],
            resources=["*"],
            conditions={"ArnNotEquals": {"aws:PrincipalArn": role.role_arn}},
        ))  # fmt: skip

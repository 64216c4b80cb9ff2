"""Helpers for acknowledging cdk-nag findings precisely: one finding, one reason.

Findings about wildcard resources name the resource by its logical id (`<Bucket1234.Arn>/*`), so
an acknowledgement is built from the construct it is about rather than typed by hand.
"""

from __future__ import annotations

from aws_cdk import Acknowledgment, CfnElement, Stack, Validations
from constructs import IConstruct


def logical_id(construct: IConstruct) -> str:
    element = construct.node.default_child
    assert isinstance(element, CfnElement), f"{construct.node.path} has no CloudFormation resource"
    stack = Stack.of(construct)
    return str(stack.resolve(stack.get_logical_id(element)))


def objects_of(construct: IConstruct, suffix: str = "/*") -> str:
    """The IAM5 finding id for `<construct's ARN><suffix>`, e.g. every object of a bucket. A
    bucket imported by ARN (not in this stack) is named by its literal ARN."""
    imported = not isinstance(construct.node.default_child, CfnElement)
    if imported and hasattr(construct, "bucket_arn"):
        return f"AwsSolutions-IAM5[Resource::{construct.bucket_arn}{suffix}]"
    return f"AwsSolutions-IAM5[Resource::<{logical_id(construct)}.Arn>{suffix}]"


def acknowledge(scope: IConstruct, finding: str, reason: str) -> None:
    Validations.of(scope).acknowledge(Acknowledgment(id=finding, reason=reason))

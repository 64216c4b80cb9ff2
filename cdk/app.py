"""Builds the CDK app: the stack plus cdk-nag, used by app.py and by the tests."""

from __future__ import annotations

import os
from typing import Any

from aws_cdk import App, Environment, Validations
from cdk_nag import AwsSolutionsChecks

from cdk.settings import Settings
from cdk.stack import TapegateStack


def build_app(context: dict[str, Any] | None = None, **app_kwargs: Any) -> App:
    app = App(context=context, **app_kwargs)
    settings = Settings.from_context(app.node)
    # An existing VPC is looked up, which needs a concrete account and region; otherwise the
    # template stays environment-agnostic and synth needs no credentials at all.
    env = None
    if settings.vpc_id:
        env = Environment(account=os.environ.get("CDK_DEFAULT_ACCOUNT"),
                          region=os.environ.get("CDK_DEFAULT_REGION"))  # fmt: skip
    TapegateStack(app, settings.name, settings=settings, env=env,
                  description="tapegate: recording gateway for AI agents")  # fmt: skip
    Validations.of(app).add_plugins(AwsSolutionsChecks(app))
    return app

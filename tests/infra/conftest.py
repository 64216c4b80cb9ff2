"""Synthesizes the CDK app in-process once per module (Lambda bundling skipped here; the bundle
and the CLI synth have their own test)."""

from __future__ import annotations

import os
from typing import Any

import pytest

# jsii's Node runtime warns on every start about Node 20's end of life; it runs fine.
os.environ.setdefault("JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION", "20")

from aws_cdk import Stack
from aws_cdk.assertions import Template

from cdk.app import build_app

NO_BUNDLING = {"aws:cdk:bundling-stacks": []}


def synth_stack(tmp: Any, **context: Any) -> Stack:
    app = build_app(context={**NO_BUNDLING, **context}, outdir=str(tmp))
    return app.node.find_child(context.get("name", "tapegate"))  # type: ignore[return-value]


def synth(tmp: Any, **context: Any) -> Template:
    return Template.from_stack(synth_stack(tmp, **context))


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Template:
    return synth(tmp_path_factory.mktemp("cdk"))

#!/usr/bin/env python3
"""The tapegate CDK app: `npx cdk synth`, `npx cdk deploy` (see docs/deploy.md).

Settings come from CDK context (defaults in cdk.json, `-c key=value` to override). cdk-nag's
AwsSolutions checks run through CDK's Validations API: an unacknowledged finding fails synth.
"""

from __future__ import annotations

import sys

from cdk.app import build_app
from cdk.settings import SettingsError

if __name__ == "__main__":
    try:
        app = build_app()
    except SettingsError as exc:
        print(f"tapegate: {exc}", file=sys.stderr)
        sys.exit(2)
    app.synth()

"""`npx cdk synth` as a cloud team runs it: the CLI from the project's npm dependencies, no AWS
credentials, no Docker. The Lambda bundle it builds has the Lambda's wheels and fits the limit."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from cdk import bundling

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_cdk_synth_offline_without_credentials_or_docker(tmp_path: Path) -> None:
    cli = ROOT / "node_modules" / ".bin" / "cdk"
    assert cli.exists(), "the CDK CLI is a project dependency: `make setup` installs it"
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update({
        "AWS_CONFIG_FILE": str(tmp_path / "none"),
        "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none"),
        "AWS_EC2_METADATA_DISABLED": "true", "CDK_DOCKER": str(tmp_path / "no-docker"),
        "JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION": "20", "CDK_DISABLE_CLI_TELEMETRY": "1",
    })  # fmt: skip
    out = tmp_path / "cdk.out"
    result = subprocess.run(
        ["npx", "cdk", "synth", "--quiet", "--no-notices", "--output", str(out)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert (out / "tapegate.template.json").exists()

    (lambda_asset,) = [p for p in out.glob("asset.*") if (p / "lambdas").is_dir()]
    size = sum(p.stat().st_size for p in lambda_asset.rglob("*") if p.is_file())
    assert size < bundling.MAX_UNZIPPED_BYTES, f"{size / 2**20:.0f} MiB"
    for handler in ("verify_index", "compliance_export", "keygen"):
        assert (lambda_asset / "lambdas" / handler / "handler.py").exists()
    assert (lambda_asset / "tapegate" / "pipeline.py").exists()
    # Wheels for the Lambda (CPython 3.13, x86_64), whatever Python ran the synth.
    assert (lambda_asset / "pyarrow" / "lib.cpython-313-x86_64-linux-gnu.so").exists()
    assert list((lambda_asset / "nacl").glob("*.so"))
    assert (lambda_asset / "aws_lambda_powertools").is_dir() and (
        lambda_asset / "aws_xray_sdk"
    ).is_dir()
    assert not (lambda_asset / "botocore").exists(), "the runtime's botocore must not be shadowed"

    (image,) = [p for p in out.glob("asset.*") if (p / "gateway_task" / "Dockerfile").exists()]
    assert (image / "tapegate" / "tape").is_dir() and (image / "pyproject.toml").exists()
    assert not (image / ".venv").exists() and not (image / "tests").exists()

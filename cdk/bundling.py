"""The Lambdas' code asset, built without Docker.

One asset serves every function (verify/index, compliance export, key generation): the `tapegate`
and `lambdas` packages plus the wheels in lambdas/requirements.txt, installed by pip for the
Lambda's platform and Python version rather than the machine's. Both manylinux tags are needed:
with only manylinux2014, pip quietly picks an old pyarrow (new ones ship manylinux_2_28 only).

The asset hash is computed here from what goes in, so a synth with unchanged code finds the bundle
already staged in cdk.out and skips pip entirely.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsii
from aws_cdk import AssetHashType, BundlingOptions, DockerImage, ILocalBundling
from aws_cdk import aws_lambda as lambda_

ROOT = Path(__file__).resolve().parent.parent
REQUIREMENTS = ROOT / "lambdas" / "requirements.txt"
SOURCES = ("tapegate", "lambdas")
PYTHON_VERSION = "3.13"
RUNTIME = lambda_.Runtime.PYTHON_3_13
ARCHITECTURE = lambda_.Architecture.X86_64
PLATFORMS = ("manylinux2014_x86_64", "manylinux_2_28_x86_64")
# Lambda's limit for a function's code unzipped (layers included; we use none).
MAX_UNZIPPED_BYTES = 250 * 1024 * 1024

# The runtime brings boto3 with its own botocore; a second botocore in the bundle would shadow it
# and could mismatch the runtime's boto3. Headers, Cython sources and tests are never imported.
_PRUNE = ("botocore", "urllib3", "jmespath", "bin", "pyarrow/include", "pyarrow/src",
          "pyarrow/tests")  # fmt: skip
_PRUNE_SUFFIXES = (".pyx", ".pxd", ".pyc")


class BundleTooLarge(RuntimeError):
    pass


def source_files() -> list[Path]:
    files = [REQUIREMENTS]
    for package in SOURCES:
        files += sorted(p for p in (ROOT / package).rglob("*.py") if "__pycache__" not in p.parts)
    return files


def asset_hash() -> str:
    digest = hashlib.sha256(f"{PYTHON_VERSION} {' '.join(PLATFORMS)}\n".encode())
    for path in source_files():
        digest.update(str(path.relative_to(ROOT)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def pip_command(target: Path) -> list[str]:
    platforms = [arg for tag in PLATFORMS for arg in ("--platform", tag)]
    return [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
            "--target", str(target), *platforms, "--only-binary=:all:", "--implementation", "cp",
            "--python-version", PYTHON_VERSION, "--requirement", str(REQUIREMENTS)]  # fmt: skip


def build(output_dir: Path) -> int:
    """Fill output_dir with the Lambda code; returns its unzipped size in bytes."""
    output_dir.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(pip_command(output_dir), capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"pip could not install the Lambda wheels:\n{result.stderr.strip()}")
    for name in _PRUNE:
        for path in output_dir.glob(f"{name}*") if "/" not in name else [output_dir / name]:
            shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink()
    for path in list(output_dir.rglob("*")):
        if path.name == "__pycache__" and path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        elif path.suffix in _PRUNE_SUFFIXES and path.is_file():
            path.unlink()
    for package in SOURCES:
        shutil.copytree(ROOT / package, output_dir / package, dirs_exist_ok=True,
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))  # fmt: skip
    size = sum(p.stat().st_size for p in output_dir.rglob("*") if p.is_file())
    if size > MAX_UNZIPPED_BYTES:
        raise BundleTooLarge(
            f"the Lambda bundle is {size / 2**20:.0f} MiB unzipped; Lambda allows "
            f"{MAX_UNZIPPED_BYTES / 2**20:.0f} MiB"
        )
    return size


@jsii.implements(ILocalBundling)
class PipBundling:
    """CDK's hook for bundling on this machine: returning True means Docker is never asked."""

    def try_bundle(self, output_dir: str, options: Any) -> bool:
        build(Path(output_dir))
        return True


def lambda_code() -> lambda_.Code:
    return lambda_.Code.from_asset(
        str(ROOT / "lambdas"),
        asset_hash_type=AssetHashType.CUSTOM,
        asset_hash=asset_hash(),
        bundling=BundlingOptions(
            # Never pulled: PipBundling always succeeds or fails loudly. CDK requires an image.
            image=DockerImage.from_registry("public.ecr.aws/sam/build-python3.13"),
            local=PipBundling(),
        ),
    )

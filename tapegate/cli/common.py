"""What the `tapegate` commands share: usage errors, the --config argument, the archive, verdicts.

Command modules (the archive's here, the auditor's in tapegate/audit/commands.py, the runtime's
in gateway_task/commands.py) import this; nothing here imports them.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from tapegate.config import Config, ConfigError, load_config
from tapegate.tape import Verdict, decode_record
from tapegate.tape.codec import TapeFormatError

DEFAULT_DATA_DIR = Path(".tapegate")


class UsageError(Exception):
    """Bad arguments or unreadable input: exit 2 with one clear line."""


def config_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        metavar="FILE",
        help="config file (default: $TAPEGATE_CONFIG, else ./tapegate.yaml, else built-in)",
    )


def load(args: argparse.Namespace) -> Config:
    try:
        return load_config(args.config)
    except ConfigError as exc:
        raise UsageError(f"config error: {exc}") from None


def parse_duration(text: str) -> int:
    """Seconds in '90s', '15m', '1h', '2d' or a bare number of seconds."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    try:
        value = int(text[:-1]) * units[text[-1]] if text[-1:] in units else int(text)
    except ValueError:
        raise UsageError(f"--ttl {text!r}: use a number with s, m, h or d") from None
    if value <= 0:
        raise UsageError("--ttl must be positive")
    return value


def open_archive(config: Config) -> Any:  # an object with .index and .query_engine
    if config.archive.kind == "aws":
        from tapegate.archive.remote import AwsArchive

        return AwsArchive(config.archive, progress=_progress if sys.stderr.isatty() else None,
                          origin=config.log.origin)  # fmt: skip
    from tapegate.archive.embedded import LocalArchive

    archive = LocalArchive(config)
    archive.scan()  # index whatever was delivered since the last look
    archive.sequence()  # and put the leaves it held into the session log
    return archive


def _progress(state: str, waited: float) -> None:
    print(f"\r  Athena: {state.lower()} … {waited:.0f} s ", end="", file=sys.stderr, flush=True)


def by_session(records: list[bytes]) -> dict[object, list[bytes]]:
    groups: dict[object, list[bytes]] = {}
    for raw in records:
        try:
            sid: object = decode_record(raw).session_id
        except TapeFormatError:
            sid = None  # the verifier reports it as undecodable
        groups.setdefault(sid, []).append(raw)
    return groups


def format_verdict(verdict: Verdict) -> str:
    plural = "chunk" if verdict.chunks == 1 else "chunks"
    who = verdict.session_id or "of unknown id"
    head = f"session {who}: {verdict.chunks} {plural}, "
    if verdict.intact:
        return head + f"intact (signatures, chain and final chunk {verdict.final_seq} all check)"
    lines = [head + f"{verdict.status.upper()} — {len(verdict.problems)} problem(s)"]
    lines += [f"  - {problem}" for problem in verdict.problems]
    return "\n".join(lines)

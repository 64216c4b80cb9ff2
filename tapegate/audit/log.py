"""`tapegate log verify`: is every session still there? (docs/LOG.md)

Exit 0 and "consistent" when the log's checkpoints, its tiles, the leaves' signatures and the
archive agree; 1 with every problem named; 2 for usage errors, as `verify` does.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import time
from pathlib import Path
from typing import Any

from tapegate.cli.common import UsageError, config_arg, load, open_archive, parse_duration
from tapegate.keys import KeyFileError
from tapegate.log.note import NoteError
from tapegate.log.verify import LogVerdict, verify_log


def add_log_commands(sub: Any) -> None:
    log = sub.add_parser("log", help="the session log: proof that no whole session was deleted")
    log_sub = log.add_subparsers(required=True, metavar="COMMAND")
    verify = log_sub.add_parser(
        "verify",
        help="check the log's checkpoints and tiles against each other and the archive",
        description="Check that the log only grew (every checkpoint consistent with the next), "
        "that its tiles hash to the latest checkpoint, that each gateway instance's leaves are "
        "contiguous and its heartbeats on time, that every session in the log exists in the "
        "evidence and verifies, and that every indexed session is in the log. Exit 0 when "
        "consistent, 1 naming each problem, 2 for usage errors.",
    )
    verify.add_argument(
        "--since",
        metavar="DATE",
        help="only sessions and silences since DATE (2026-12-01, an ISO time, "
        "or a duration such as 7d)",
    )
    verify.add_argument(
        "--since-checkpoint",
        metavar="FILE",
        type=Path,
        action="append",
        default=[],
        help="a checkpoint of this log you kept (an anchor, an earlier bundle's): the log must "
        "extend it (repeatable)",
    )
    config_arg(verify)
    verify.set_defaults(func=cmd_log_verify)


def parse_since(text: str) -> int:
    """Unix ns from a date, an ISO 8601 time (UTC unless it says), or a duration back from now."""
    try:
        when = dt.datetime.fromisoformat(text)
    except ValueError:
        try:
            ns = time.time_ns() - parse_duration(text) * 10**9
            if ns < 0:
                raise UsageError(f"--since {text!r}: out of range")
            return ns
        except UsageError:
            raise UsageError(
                f"--since {text!r}: use a date (2026-12-01), an ISO time or a duration (7d)"
            ) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    try:
        ns = int(when.timestamp() * 10**9)
    except (OverflowError, OSError, ValueError):
        ns = -1
    if not 0 <= ns < 2**63:
        raise UsageError(f"--since {text!r}: out of range")
    return ns


def cmd_log_verify(args: argparse.Namespace) -> int:
    config = load(args)
    since = parse_since(args.since) if args.since else None
    archive = open_archive(config)  # locally: indexes and sequences what was delivered
    if not hasattr(archive, "log_sources"):
        raise UsageError("this archive kind has no session log to verify")
    known = []
    for path in args.since_checkpoint:
        try:
            known.append(path.read_bytes())
        except OSError as exc:
            raise UsageError(f"cannot read {path}: {exc.strerror}") from None
    try:
        sources = dataclasses.replace(archive.log_sources(), known=tuple(known))
        verdict = verify_log(sources, now_ns=time.time_ns(), since_ns=since)
    except (KeyFileError, NoteError, OSError) as exc:
        raise UsageError(f"cannot verify the log: {exc}") from None
    except Exception as exc:  # the AWS archive: botocore's errors name what failed
        if not type(exc).__module__.startswith(("botocore", "boto3")):
            raise
        raise UsageError(f"cannot verify the log: {str(exc).splitlines()[0]}") from None
    print(format_log_verdict(verdict, config.log.origin))
    return 0 if verdict.consistent else 1


def format_log_verdict(verdict: LogVerdict, origin: str) -> str:
    when = (
        dt.datetime.fromtimestamp(verdict.latest_ms / 1000, dt.UTC).strftime(
            "%Y-%m-%d %H:%M:%S UTC"
        )
        if verdict.latest_ms
        else "never"
    )
    lines = [
        f"log {origin}: {verdict.checkpoints} checkpoint(s), the latest of {verdict.size} "
        f"leaves signed {when}",
        f"  {verdict.leaves} leaves from {verdict.instances} gateway instance(s), "
        f"{verdict.sessions} session(s) checked against the evidence",
    ]
    if verdict.consistent:
        lines.append("consistent")
    else:
        lines.append(f"INCONSISTENT — {len(verdict.problems)} problem(s)")
        lines += [f"  - {problem}" for problem in verdict.problems]
    return "\n".join(lines)

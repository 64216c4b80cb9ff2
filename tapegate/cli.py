"""The `tapegate` command.

Exit codes follow the verifier's contract: 0 when every check holds, 1 when a check fails,
2 for usage errors (unreadable files, bad arguments).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from tapegate.config import Config, ConfigError, load_config
from tapegate.tape import Verdict, decode_record
from tapegate.tape.codec import TapeFormatError

DEFAULT_DATA_DIR = Path(".tapegate")


class UsageError(Exception):
    """Bad arguments or unreadable input: exit 2 with one clear line."""


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except UsageError as exc:
        print(f"tapegate: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tapegate", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(required=True, metavar="COMMAND")

    up = sub.add_parser(
        "up",
        help="run the gateway in the foreground",
        description="Run the gateway until SIGTERM/SIGINT. Prints a line containing 'ready' "
        "and the listen addresses once it accepts connections.",
    )
    _config_arg(up)
    up.set_defaults(func=cmd_up)

    token = sub.add_parser(
        "token",
        help="print a token from the embedded dev issuer",
        description="Print a token from the embedded dev issuer (identity.issuer: dev), and "
        "nothing else on stdout.",
    )
    token.add_argument("--sub", required=True, help="the subject (who the token names)")
    token.add_argument("--group", action="append", default=[], help="a group; repeatable")
    token.add_argument("--ttl", default="1h", help="lifetime, e.g. 90s, 15m, 1h (default 1h)")
    token.add_argument("--email")
    _config_arg(token)
    token.set_defaults(func=cmd_token)

    sessions = sub.add_parser("sessions", help="list recorded sessions")
    sessions.add_argument("--user", help="only this subject")
    sessions.add_argument("--target", help="only this target")
    sessions.add_argument("--since", help="only sessions started within, e.g. 1h, 7d")
    sessions.add_argument("--status", choices=["open", "closed", "truncated", "tampered"])
    sessions.add_argument("--json", action="store_true", help="a JSON array, for scripts")
    _config_arg(sessions)
    sessions.set_defaults(func=cmd_sessions)

    query = sub.add_parser(
        "query",
        help="SQL over the sessions, events and frames tables",
        description="SQL over sessions/events/frames: DuckDB on the local archive, Athena "
        "(the configured workgroup) on an AWS archive.",
    )
    query.add_argument("sql")
    fmt = query.add_mutually_exclusive_group()
    fmt.add_argument("--json", action="store_true", help="a JSON array of row objects")
    fmt.add_argument("--csv", action="store_true")
    _config_arg(query)
    query.set_defaults(func=cmd_query)

    from tapegate.audit.commands import add_commands  # show, replay, verify, export

    add_commands(sub)

    demo = sub.add_parser("demo", help="run an agent session through the gateway and audit it")
    demo.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR / "demo")
    demo.add_argument(
        "--tape-only",
        action="store_true",
        help="only seal, verify and tamper with a synthetic tape",
    )
    demo.set_defaults(func=cmd_demo)
    return parser


def _config_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        metavar="FILE",
        help="config file (default: $TAPEGATE_CONFIG, else ./tapegate.yaml, else built-in)",
    )


def _load(args: argparse.Namespace) -> Config:
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


def cmd_token(args: argparse.Namespace) -> int:
    config = _load(args)
    if not config.identity.is_dev:
        raise UsageError(
            f"the configured issuer is {config.identity.issuer}: get tokens from it; "
            "tapegate token only mints for the embedded dev issuer"
        )
    from gateway_task.dev_issuer import mint_token

    ttl = parse_duration(args.ttl)
    print(mint_token(config.data_dir, config.identity, args.sub, args.group, ttl, args.email))
    return 0


def cmd_up(args: argparse.Namespace) -> int:
    import asyncio
    import logging

    from gateway_task.server import serve

    config = _load(args)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")

    def ready(addresses: dict[str, str]) -> None:
        listed = " ".join(f"{k}={v}" for k, v in addresses.items())
        print(f"tapegate ready: {listed} (config: {config.source})", flush=True)

    try:
        import uvloop

        run = uvloop.run
    except ImportError:
        run = asyncio.run
    from tapegate.keys import KeyFileError

    try:
        run(serve(config, ready))
    except OSError as exc:
        raise UsageError(f"cannot start: {exc.strerror or exc}") from None
    except KeyFileError as exc:
        raise UsageError(f"cannot start: {exc}") from None
    return 0


SESSION_FIELDS = (
    "session_id", "subject", "groups", "target", "protocol", "client_addr", "started_at",
    "ended_at", "status", "verified", "bytes_client", "bytes_server", "statements", "chunks",
    "end_reason", "problems",
)  # fmt: skip
SESSION_TABLE = ("session_id", "subject", "target", "started_at", "status", "verified",
                 "statements", "bytes_client", "bytes_server", "end_reason")  # fmt: skip


def _archive(config: Config):  # -> an object with .index and .query_engine
    if config.archive.kind == "aws":
        from tapegate.archive.remote import AwsArchive

        return AwsArchive(config.archive, progress=_progress if sys.stderr.isatty() else None)
    from tapegate.archive.embedded import LocalArchive

    archive = LocalArchive(config)
    archive.scan()  # index whatever was delivered since the last look
    return archive


def _progress(state: str, waited: float) -> None:
    print(f"\r  Athena: {state.lower()} … {waited:.0f} s ", end="", file=sys.stderr, flush=True)


def cmd_sessions(args: argparse.Namespace) -> int:
    import datetime as dt

    from tapegate.present import as_json, as_table
    from tapegate.tables import session_row

    config = _load(args)
    since = time.time_ns() - parse_duration(args.since) * 10**9 if args.since else None
    records = _archive(config).index.sessions(
        subject=args.user, target=args.target, since_ns=since, status=args.status
    )
    rows = []
    for record in records:
        row = session_row(record)
        for k in ("started_at", "ended_at"):
            if row[k] is not None:
                row[k] = dt.datetime.fromtimestamp(row[k] / 1000, dt.UTC)
        rows.append(row)
    if args.json:
        print(as_json(SESSION_FIELDS, [[r[f] for f in SESSION_FIELDS] for r in rows]))
    else:
        print(as_table(SESSION_TABLE, [[r[f] for f in SESSION_TABLE] for r in rows]))
    return 0


def cmd_query(args: argparse.Namespace) -> int:
    from tapegate.present import as_csv, as_json, as_table

    config = _load(args)
    archive = _archive(config)
    try:
        columns, rows = archive.query_engine.query(args.sql)
    except Exception as exc:  # the engine's message is what a person needs to fix the SQL
        raise UsageError(f"query failed: {str(exc).splitlines()[0]}") from None
    if args.json:
        print(as_json(columns, rows))
    elif args.csv:
        print(as_csv(columns, rows), end="")
    else:
        print(as_table(columns, rows))
    return 0


def _by_session(records: list[bytes]) -> dict[object, list[bytes]]:
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


def cmd_demo(args: argparse.Namespace) -> int:
    from tapegate.demo import run_demo, run_tape_demo

    return run_tape_demo(args.data_dir) if args.tape_only else run_demo(args.data_dir)


if __name__ == "__main__":
    sys.exit(main())

"""The `tapegate` command.

The archive's commands are here, the auditor's in tapegate/audit/, the runtime's (up, token,
demo) in the gateway's package, which plugs them in when it is installed.

Exit codes follow the verifier's contract: 0 when every check holds, 1 when a check fails,
2 for usage errors (unreadable files, bad arguments).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from importlib.metadata import entry_points

from tapegate.cli.common import (
    UsageError,
    config_arg,
    load,
    open_archive,
    parse_duration,
)


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

    sessions = sub.add_parser("sessions", help="list recorded sessions")
    sessions.add_argument("--user", help="only this subject")
    sessions.add_argument("--target", help="only this target")
    sessions.add_argument("--since", help="only sessions started within, e.g. 1h, 7d")
    sessions.add_argument("--status", choices=["open", "closed", "truncated", "tampered"])
    sessions.add_argument("--json", action="store_true", help="a JSON array, for scripts")
    config_arg(sessions)
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
    config_arg(query)
    query.set_defaults(func=cmd_query)

    from tapegate.audit.commands import add_commands  # show, replay, verify, export

    add_commands(sub)

    # The runtime's commands (up, token, demo) plug in where the gateway is installed: this
    # package never imports it (an import-linter contract says so).
    for entry in sorted(entry_points(group="tapegate.commands"), key=lambda e: e.name):
        entry.load()(sub)
    return parser


SESSION_FIELDS = (
    "session_id", "subject", "groups", "target", "protocol", "client_addr", "started_at",
    "ended_at", "status", "verified", "bytes_client", "bytes_server", "statements", "chunks",
    "end_reason", "problems",
)  # fmt: skip
SESSION_TABLE = ("session_id", "subject", "target", "started_at", "status", "verified",
                 "statements", "bytes_client", "bytes_server", "end_reason")  # fmt: skip


def cmd_sessions(args: argparse.Namespace) -> int:
    import datetime as dt

    from tapegate.present import as_json, as_table
    from tapegate.tables import session_row

    config = load(args)
    since = time.time_ns() - parse_duration(args.since) * 10**9 if args.since else None
    records = open_archive(config).index.sessions(
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

    config = load(args)
    archive = open_archive(config)
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


if __name__ == "__main__":
    sys.exit(main())

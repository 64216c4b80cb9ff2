"""The runtime's `tapegate` commands: `up`, `token` and `demo`.

They plug into the `tapegate` command through the `tapegate.commands` entry point group
(pyproject.toml), so the shared package never imports the gateway: an auditor's install of
tapegate/ alone has the archive and audit commands and no gateway.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from tapegate.cli.common import DEFAULT_DATA_DIR, UsageError, config_arg, load, parse_duration


def register(sub: Any) -> None:
    """Add up, token and demo to the `tapegate` command's subparsers."""
    up = sub.add_parser(
        "up",
        help="run the gateway in the foreground",
        description="Run the gateway until SIGTERM/SIGINT. Prints a line containing 'ready' "
        "and the listen addresses once it accepts connections.",
    )
    config_arg(up)
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
    config_arg(token)
    token.set_defaults(func=cmd_token)

    demo = sub.add_parser("demo", help="run an agent session through the gateway and audit it")
    demo.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR / "demo")
    demo.add_argument(
        "--tape-only",
        action="store_true",
        help="only seal, verify and tamper with a synthetic tape",
    )
    demo.set_defaults(func=cmd_demo)


def cmd_token(args: argparse.Namespace) -> int:
    config = load(args)
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

    from gateway_task.logs import configure
    from gateway_task.server import serve
    from tapegate.keys import KeyFileError

    config = load(args)
    configure(logging.INFO)
    # Everything the gateway creates in the data dir (keys, tapes, spool, index, Parquet) is
    # the operator's alone: files 0600, folders 0700.
    os.umask(0o077)

    def ready(addresses: dict[str, str]) -> None:
        listed = " ".join(f"{k}={v}" for k, v in addresses.items())
        print(f"tapegate ready: {listed} (config: {config.source})", flush=True)

    try:
        import uvloop

        run = uvloop.run
    except ImportError:
        run = asyncio.run
    try:
        run(serve(config, ready))
    except OSError as exc:
        raise UsageError(f"cannot start: {exc.strerror or exc}") from None
    except KeyFileError as exc:
        raise UsageError(f"cannot start: {exc}") from None
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from gateway_task.devtools.demo import run_demo, run_tape_demo

    return run_tape_demo(args.data_dir) if args.tape_only else run_demo(args.data_dir)

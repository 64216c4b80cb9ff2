"""The settings a startup packet makes the server apply, read as the server reads them.

Besides `user` and `database`, every startup parameter is a run-time setting (`role=admin` is
`SET role = admin` before the first statement), and `options` carries command-line switches:
`-c name=value`, `-cname=value` and `--name=value`, split on whitespace with backslash escapes
(PostgreSQL's pg_split_opts), a long option's dashes read as underscores. Guardrails check these
like statements, so a role switch cannot hide in the connection string.
"""

from __future__ import annotations

# Startup parameters that are not settings.
_NOT_SETTINGS = frozenset({"user", "database", "options", "replication"})


def startup_settings(params: dict[str, str]) -> dict[str, str]:
    """Setting name (lower case) → value, in the order the server applies them."""
    settings = {k.lower(): v for k, v in params.items()
                if k not in _NOT_SETTINGS and not k.startswith("_pq_.")}  # fmt: skip
    args = split_options(params.get("options", ""))
    i = 0
    while i < len(args):
        arg = args[i]
        pair: str | None = None
        if arg == "-c" and i + 1 < len(args):
            pair, i = args[i + 1], i + 1
        elif arg.startswith("-c") and len(arg) > 2:
            pair = arg[2:]
        elif arg.startswith("--") and len(arg) > 2:
            name, eq, value = arg[2:].partition("=")
            pair = f"{name.replace('-', '_')}{eq}{value}"
        if pair is not None:
            name, _, value = pair.partition("=")
            settings[name.strip().lower()] = value
        i += 1
    return settings


def split_options(options: str) -> list[str]:
    """`options` split as the server splits it: on whitespace, `\\` escaping the next char."""
    out: list[str] = []
    current: list[str] = []
    pending = False  # a word has started (an escaped space alone is a word)
    escaped = False
    for ch in options:
        if escaped:
            current.append(ch)
            escaped, pending = False, True
        elif ch == "\\":
            escaped = True
        elif ch.isspace():
            if pending:
                out.append("".join(current))
                current, pending = [], False
        else:
            current.append(ch)
            pending = True
    if pending:
        out.append("".join(current))
    return out

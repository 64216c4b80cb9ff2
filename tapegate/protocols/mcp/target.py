"""An MCP target: a Streamable HTTP server, the tools agents may call, the rules on arguments.

It is an HTTP target (the same upstream URL and injected credential) whose exchanges are read as
JSON-RPC: the endpoint is the upstream URL itself, and agents reach it at `/mcp/<name>`. Or it
is a `command:`, an MCP server over stdio that the gateway runs itself (one process per tape
session, see `gateway_task/server/mcp_stdio.py`), its credentials given in its environment;
agents reach it the same way.
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tapegate.config.checks import Address, ConfigError, as_mapping, as_str, check_only
from tapegate.config.targets import opt_path, opt_str
from tapegate.protocols.http import target as http_target
from tapegate.protocols.http.target import HttpTarget

KEYS = frozenset({"inject_header", "upstream_ca_file", "tools", "guardrails", "max_body_bytes",
                  "session_idle_s", "command", "env", "process_lifetime_s",
                  "max_processes"})  # fmt: skip
MAX_BODY_BYTES = 1024 * 1024  # a JSON-RPC request is read whole before it is forwarded
STDIO_URL = "stdio:/mcp"  # a command target's: what the relay's requests to its bridge say
NO_HEADER = http_target.InjectHeader(name="")  # a command target's credentials are its env


@dataclass(frozen=True)
class EnvValue:
    """One variable of a stdio server's environment: a plain value, or a credential's source."""

    name: str
    value: str | None = None
    value_env: str | None = None
    value_file: Path | None = None
    secret_arn: str | None = None

    @property
    def secret(self) -> bool:
        return self.value is None


@dataclass(frozen=True)
class ArgRule:
    """Refuse a call to a tool matching `tool` whose arguments (as JSON text) match `regex`."""

    tool: str
    regex: re.Pattern[str]


@dataclass(frozen=True, kw_only=True)
class McpTarget(HttpTarget):
    tools_allow: tuple[str, ...] = ("*",)  # glob patterns (fnmatch, case-sensitive)
    tools_deny: tuple[str, ...] = ()
    deny_args: tuple[ArgRule, ...] = ()
    max_body_bytes: int = MAX_BODY_BYTES
    session_idle_s: float = 300.0  # an MCP session's tape, with no connection carrying it
    command: tuple[str, ...] = ()  # a stdio server: its argv (the gateway runs it)
    env: tuple[EnvValue, ...] = ()  # ... its environment besides PATH, HOME, LANG
    process_lifetime_s: float = 3600.0  # ... each process ends (with its tape) after this
    max_processes: int = 32  # ... running at once, for all subjects

    @property
    def stdio(self) -> bool:
        return bool(self.command)

    def tool_denied(self, tool: str) -> str | None:
        """Why the tool may not be used here, or None."""
        for pattern in self.tools_deny:
            if fnmatch.fnmatchcase(tool, pattern):
                return f"tools.deny {pattern!r}"
        if not any(fnmatch.fnmatchcase(tool, p) for p in self.tools_allow):
            return "not in tools.allow"
        return None


def build(m: dict[str, Any], key: str, base_dir: Path, common: dict[str, Any]) -> McpTarget:
    if ("command" in m) == ("upstream" in m):
        raise ConfigError(key, "give exactly one of upstream (https://host/mcp, a Streamable HTTP "
                          "server) or command (a stdio server the gateway runs)")  # fmt: skip
    stdio: dict[str, Any] = {}
    if "command" in m:
        for http_only in ("inject_header", "upstream_ca_file"):
            if http_only in m:
                raise ConfigError(f"{key}.{http_only}", "is for an upstream: a command's "
                                  "credentials go in its env")  # fmt: skip
        http = HttpTarget(upstream=Address("stdio", 0), upstream_url=STDIO_URL,
                          inject_header=NO_HEADER, **common)  # fmt: skip
        stdio = _stdio(m, key, base_dir)
    else:
        for stdio_only in ("env", "process_lifetime_s", "max_processes"):
            if stdio_only in m:
                raise ConfigError(f"{key}.{stdio_only}", "is for a command (a stdio server)")
        http = http_target.build(m, key, base_dir, common)
    tools = as_mapping(m.get("tools", {}), f"{key}.tools")
    check_only(tools, f"{key}.tools", {"allow", "deny"})
    rules = as_mapping(m.get("guardrails", {}), f"{key}.guardrails")
    check_only(rules, f"{key}.guardrails", {"deny_args"})
    size = m.get("max_body_bytes", MAX_BODY_BYTES)
    if not isinstance(size, int) or isinstance(size, bool) or not 1024 <= size <= 64 << 20:
        raise ConfigError(f"{key}.max_body_bytes", "an integer from 1024 to 67108864")
    idle = m.get("session_idle_s", 300)
    if not isinstance(idle, (int, float)) or isinstance(idle, bool) or not 0.1 <= idle <= 86_400:
        raise ConfigError(f"{key}.session_idle_s", "seconds, from 0.1 to 86400")
    arg_rules = _list(rules.get("deny_args", []), f"{key}.guardrails.deny_args")
    fields = {f: getattr(http, f) for f in http.__dataclass_fields__}
    return McpTarget(
        **fields,
        tools_allow=_globs(tools.get("allow", ["*"]), f"{key}.tools.allow"),
        tools_deny=_globs(tools.get("deny", []), f"{key}.tools.deny"),
        deny_args=tuple(
            _arg_rule(r, f"{key}.guardrails.deny_args[{i}]") for i, r in enumerate(arg_rules)
        ),
        max_body_bytes=size,
        session_idle_s=float(idle),
        **stdio,
    )


def _stdio(m: dict[str, Any], key: str, base_dir: Path) -> dict[str, Any]:
    argv = m["command"]
    if (not isinstance(argv, list) or not argv
            or not all(isinstance(a, str) and a and "\0" not in a for a in argv)):  # fmt: skip
        raise ConfigError(f"{key}.command", 'a list: the program and its arguments, e.g. '
                          '[npx, -y, "@modelcontextprotocol/server-filesystem", /srv]')  # fmt: skip
    env = as_mapping(m.get("env", {}), f"{key}.env")
    values = []
    for name, raw in env.items():
        ek = f"{key}.env.{name}"
        if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
            raise ConfigError(ek, "an environment variable's name")
        if isinstance(raw, str):
            values.append(EnvValue(name, value=raw))
            continue
        source = as_mapping(raw, ek)
        check_only(source, ek, {"value_env", "value_file", "secret_arn"})
        if len(source) != 1:
            raise ConfigError(ek, "a string, or exactly one of value_env, value_file, secret_arn")
        values.append(EnvValue(name, value_env=opt_str(source, "value_env", ek),
                               value_file=opt_path(source, "value_file", ek, base_dir),
                               secret_arn=opt_str(source, "secret_arn", ek)))  # fmt: skip
    life = m.get("process_lifetime_s", 3600)
    if not isinstance(life, (int, float)) or isinstance(life, bool) or not 1 <= life <= 86_400:
        raise ConfigError(f"{key}.process_lifetime_s", "seconds, from 1 to 86400")
    count = m.get("max_processes", 32)
    if not isinstance(count, int) or isinstance(count, bool) or not 1 <= count <= 1024:
        raise ConfigError(f"{key}.max_processes", "an integer from 1 to 1024")
    return {"command": tuple(argv), "env": tuple(values), "process_lifetime_s": float(life),
            "max_processes": count}  # fmt: skip


def _list(raw: Any, key: str) -> list[Any]:
    if not isinstance(raw, list):
        raise ConfigError(key, "must be a list")
    return raw


def _globs(raw: Any, key: str) -> tuple[str, ...]:
    items = _list(raw, key)
    if not all(isinstance(p, str) and p for p in items):
        raise ConfigError(key, 'a list of tool name patterns, e.g. ["search_*", "get_ticket"]')
    return tuple(items)


def _arg_rule(raw: Any, key: str) -> ArgRule:
    m = as_mapping(raw, key)
    check_only(m, key, {"tool", "regex"})
    if "regex" not in m:
        raise ConfigError(f"{key}.regex", "is required")
    pattern = as_str(m["regex"], f"{key}.regex")
    try:
        regex = re.compile(pattern)
    except re.error as exc:
        raise ConfigError(f"{key}.regex", f"not a regular expression: {exc}") from None
    return ArgRule(as_str(m.get("tool", "*"), f"{key}.tool"), regex)

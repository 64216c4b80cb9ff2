"""How an MCP session reads in a replay: a conversation, each call with its tool, arguments,
outcome and duration; the tool catalogues as they were listed."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from tapegate.protocols.http import replay as http_replay

Attrs = dict[str, Any]
OUTCOME_STYLES = {"ok": "green", "is_error": "yellow", "error": "red", "blocked": "red bold",
                  "input_required": "yellow"}  # fmt: skip
SERVER_ASKS = ("elicitation/", "sampling/", "roots/")  # requests only a server sends


def _short(text: Any, width: int = 120) -> str:
    text = str(text or "").replace("\n", " ")
    return text if len(text) <= width else text[: width - 1] + "…"


def _request(a: Attrs) -> tuple[str, str]:
    if str(a.get("method")).startswith(SERVER_ASKS):  # the server asks the agent, mid-call
        return "yellow", f"asks     #{a.get('id')} {a.get('method')} {_short(a.get('params'), 80)}"
    if a.get("method") == "tools/call":
        return "cyan", f"call     #{a.get('id')} {a.get('tool')}({_short(a.get('arguments'), 100)})"
    return (
        "cyan",
        f"request  #{a.get('id')} {a.get('method')} {_short(a.get('params'), 80)}".rstrip(),
    )


def _response(a: Attrs) -> tuple[str, str]:
    if "status" in a:  # the HTTP exchange's own response event
        return http_replay.VIEWS["response"](a)
    outcome = str(a.get("outcome", "?"))
    ms = (a.get("duration_ns") or 0) / 1e6
    what = a.get("tool") or a.get("method") or ""
    detail = (a.get("reason") or a.get("error") or a.get("text") or a.get("structured")
              or a.get("input_requests") or a.get("action") or "")  # fmt: skip
    code = f" [{a['error_code']}]" if a.get("error_code") is not None else ""
    line = f"result   #{a.get('id')} {what} {outcome}{code} ({ms:.2f} ms) {_short(detail, 100)}"
    return OUTCOME_STYLES.get(outcome, "white"), line.rstrip()


def _notification(a: Attrs) -> tuple[str, str]:
    return "dim", f"notify   {a.get('method')} {_short(a.get('params'), 80)}".rstrip()


def _cancel(a: Attrs) -> tuple[str, str]:
    what = a.get("tool") or a.get("method") or ""
    return "yellow", f"cancel   {what} {_short(a.get('reason') or a.get('params'), 80)}".rstrip()


def _tools(a: Attrs) -> tuple[str, str]:
    names = [t.get("name") for t in a.get("tools", [])]
    line = f"tools    {len(names)} listed: {', '.join(map(str, names))}"
    if a.get("hidden"):
        line += f"; hidden by policy: {', '.join(a['hidden'])}"
    if a.get("tool_changed"):
        return "yellow bold", line + f"; CHANGED: {', '.join(a['tool_changed'])}"
    return "magenta", line


def _server(a: Attrs) -> tuple[str, str]:
    """A stdio server's process: started, stopped, exited."""
    if "command" in a:
        return "dim", f"server   started pid {a.get('pid')}: {' '.join(a['command'])}"
    if "status" in a:
        style = "dim" if a.get("stopped") else "red"
        return style, f"server   exited: {a.get('reason')} ({a.get('stderr_bytes', 0)} B stderr)"
    return "dim", f"server   stopping: {a.get('reason')}"


def _stderr(a: Attrs) -> tuple[str, str]:
    return "dim", f"stderr   {_short(a.get('text') or a.get('truncated'), 110)}"


VIEWS: dict[str, Callable[[Attrs], tuple[str, str]]] = {
    "request": http_replay.VIEWS["request"],
    "response": _response,
    "mcp_request": _request,
    "mcp_response": _response,
    "mcp_notification": _notification,
    "mcp_cancel": _cancel,
    "mcp_tools": _tools,
    "mcp_server_start": _server,
    "mcp_server_stop": _server,
    "mcp_server_exit": _server,
    "mcp_stderr": _stderr,
}

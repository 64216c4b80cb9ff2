"""The usual audit questions as SQL that Athena (Trino) and DuckDB both answer.

The CDK stack saves them as Athena named queries; the tests run them on DuckDB over Parquet the
pipeline wrote. `?` marks a parameter: Athena's console asks for each value when a saved query is
run (strings go in quotes there), DuckDB binds them. Only functions and syntax both engines share:
no JSON functions, no integer division, dates compared as 'YYYY-MM-DD' strings on `dt`, which is
also what lets Athena prune partitions.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class NamedQuery:
    name: str
    description: str
    sql: str
    params: tuple[str, ...]  # what each `?` stands for, in order


QUERIES: tuple[NamedQuery, ...] = (
    NamedQuery(
        "sessions-of-user",
        "Sessions of one user (token subject) between two days, inclusive",
        """SELECT session_id, subject, target, protocol, client_addr, started_at, ended_at,
       status, end_reason, verified, statements, bytes_client, bytes_server
FROM sessions
WHERE subject = ? AND dt BETWEEN ? AND ?
ORDER BY started_at""",
        ("subject", "first day (YYYY-MM-DD)", "last day (YYYY-MM-DD)"),
    ),
    NamedQuery(
        "statements-touching-table",
        "Statements whose text names a table (case-insensitive substring) between two days",
        """SELECT ts, session_id, subject, target, type, outcome, text
FROM events
WHERE type IN ('query', 'execute', 'blocked')
  AND strpos(lower(text), lower(?)) > 0
  AND dt BETWEEN ? AND ?
ORDER BY ts""",
        ("table name", "first day (YYYY-MM-DD)", "last day (YYYY-MM-DD)"),
    ),
    NamedQuery(
        "blocked-statements",
        "Statements the guardrails refused, with the rule that refused them",
        """SELECT ts, session_id, subject, target, outcome AS rule, text
FROM events
WHERE type = 'blocked' AND dt BETWEEN ? AND ?
ORDER BY ts""",
        ("first day (YYYY-MM-DD)", "last day (YYYY-MM-DD)"),
    ),
    NamedQuery(
        "refused-logins",
        "Connections the gateway refused (bad token, wrong group, unknown target), per day",
        """SELECT s.started_at, s.session_id, s.subject, s.target, s.protocol, s.client_addr,
       e.outcome AS code
FROM sessions s
LEFT JOIN events e ON e.session_id = s.session_id AND e.type = 'auth' AND e.dt = s.dt
WHERE s.end_reason = 'refused' AND s.dt BETWEEN ? AND ?
ORDER BY s.started_at""",
        ("first day (YYYY-MM-DD)", "last day (YYYY-MM-DD)"),
    ),
    NamedQuery(
        "mcp-tool-calls",
        "MCP tool calls per day, agent and tool, by outcome (ok, is_error, error, blocked)",
        """SELECT dt, subject, target, text AS tool, count(*) AS calls,
       sum(CASE WHEN outcome = 'ok' THEN 1 ELSE 0 END) AS ok,
       sum(CASE WHEN outcome = 'is_error' THEN 1 ELSE 0 END) AS tool_errors,
       sum(CASE WHEN outcome = 'error' THEN 1 ELSE 0 END) AS rpc_errors,
       sum(CASE WHEN outcome = 'blocked' THEN 1 ELSE 0 END) AS blocked,
       avg(duration_ms) AS avg_ms
FROM events
WHERE type = 'mcp_response' AND protocol = 'mcp' AND text IS NOT NULL AND dt BETWEEN ? AND ?
GROUP BY dt, subject, target, text
ORDER BY dt, subject, target, tool""",
        ("first day (YYYY-MM-DD)", "last day (YYYY-MM-DD)"),
    ),
    NamedQuery(
        "mcp-blocked-and-failed-calls",
        "MCP tool calls the policy blocked or that failed (isError or a JSON-RPC error)",
        """SELECT ts, session_id, subject, target, text AS tool, outcome, duration_ms, event
FROM events
WHERE type = 'mcp_response' AND protocol = 'mcp' AND outcome IN ('blocked', 'is_error', 'error')
  AND dt BETWEEN ? AND ?
ORDER BY ts""",
        ("first day (YYYY-MM-DD)", "last day (YYYY-MM-DD)"),
    ),
    NamedQuery(
        "sessions-not-verified",
        "Ended sessions whose tape is not verified intact (tampered, truncated, or incomplete)",
        """SELECT session_id, subject, target, started_at, ended_at, status, chunks, problems
FROM sessions
WHERE status <> 'open' AND (verified IS NULL OR NOT verified) AND dt BETWEEN ? AND ?
ORDER BY started_at""",
        ("first day (YYYY-MM-DD)", "last day (YYYY-MM-DD)"),
    ),
)

BY_NAME = {q.name: q for q in QUERIES}

"""The named audit queries (saved in Athena by the CDK stack) run on DuckDB over Parquet the
pipeline wrote, with the answers a user would expect."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tapegate.archive.local import DuckDBQuery
from tapegate.queries import BY_NAME, QUERIES
from tests.audit_archive import DAY, build


@pytest.fixture(scope="module")
def duck(tmp_path_factory: pytest.TempPathFactory) -> DuckDBQuery:
    return build(Path(tmp_path_factory.mktemp("archive")))


def run(duck: DuckDBQuery, name: str, *params: str) -> list[dict]:
    query = BY_NAME[name]
    assert query.sql.count("?") == len(query.params) == len(params)
    columns, rows = duck.query(query.sql, list(params))
    return [dict(zip(columns, row, strict=True)) for row in rows]


def test_every_query_is_documented_and_uses_only_shared_sql() -> None:
    assert {q.name for q in QUERIES} == {"sessions-of-user", "statements-touching-table",
                                          "blocked-statements", "refused-logins",
                                          "sessions-not-verified", "mcp-tool-calls",
                                          "mcp-blocked-and-failed-calls"}  # fmt: skip
    for q in QUERIES:
        # Functions that exist in only one of the two engines would make Athena and DuckDB
        # disagree; `dt` compared as a string keeps partition pruning in Athena.
        assert not re.search(r"json_extract|regexp_|date_diff|datediff|::", q.sql), q.name
        assert "dt BETWEEN ? AND ?" in q.sql, q.name


def test_sessions_of_a_user_in_a_time_range(duck: DuckDBQuery) -> None:
    rows = run(duck, "sessions-of-user", "ada", DAY, DAY)
    assert [(r["subject"], r["status"], r["verified"], r["statements"]) for r in rows] == [
        ("ada", "closed", True, 3)
    ]
    assert run(duck, "sessions-of-user", "ada", "2001-01-01", "2001-01-31") == []
    assert run(duck, "sessions-of-user", "nobody", DAY, DAY) == []


def test_statements_touching_a_table_case_insensitively(duck: DuckDBQuery) -> None:
    rows = run(duck, "statements-touching-table", "ORDERS", DAY, DAY)
    assert [(r["subject"], r["type"], r["text"]) for r in rows] == [
        ("ada", "query", "SELECT * FROM orders WHERE id = 1"),
        ("ada", "query", "UPDATE Orders SET paid = true"),
        ("ada", "blocked", "DROP TABLE orders"),
    ]
    rows = run(duck, "statements-touching-table", "customers", DAY, DAY)
    assert [r["subject"] for r in rows] == ["grace"]


def test_blocked_statements_name_their_rule(duck: DuckDBQuery) -> None:
    rows = run(duck, "blocked-statements", DAY, DAY)
    assert [(r["subject"], r["rule"], r["text"]) for r in rows] == [
        ("ada", "kind DROP", "DROP TABLE orders")
    ]


def test_refused_logins_with_their_code(duck: DuckDBQuery) -> None:
    rows = run(duck, "refused-logins", DAY, DAY)
    assert [(r["subject"], r["code"]) for r in rows] == [("linus", "28000")]


def test_sessions_not_verified_intact(duck: DuckDBQuery) -> None:
    rows = run(duck, "sessions-not-verified", DAY, DAY)
    assert [(r["subject"], r["status"]) for r in rows] == [("grace", "truncated")]
    assert "no final chunk" in rows[0]["problems"]


def test_mcp_tool_calls_per_day_agent_and_tool(duck: DuckDBQuery) -> None:
    rows = run(duck, "mcp-tool-calls", DAY, DAY)
    got = [(r["subject"], r["target"], r["tool"], r["calls"], r["ok"], r["tool_errors"],
            r["blocked"]) for r in rows]  # fmt: skip
    assert got == [("hopper", "tickets", "delete_ticket", 1, 0, 0, 1),
                   ("hopper", "tickets", "flaky", 1, 0, 1, 0),
                   ("hopper", "tickets", "get_ticket", 2, 2, 0, 0)]  # fmt: skip
    assert rows[-1]["avg_ms"] == 2.0
    assert run(duck, "mcp-tool-calls", "2001-01-01", "2001-01-31") == []


def test_mcp_blocked_and_failed_calls_say_why(duck: DuckDBQuery) -> None:
    rows = run(duck, "mcp-blocked-and-failed-calls", DAY, DAY)
    assert [(r["tool"], r["outcome"]) for r in rows] == [("flaky", "is_error"),
                                                        ("delete_ticket", "blocked")]  # fmt: skip
    assert "tools.deny" in rows[1]["event"]  # the whole event: the reason it was blocked

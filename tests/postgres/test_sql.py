"""Statement naming for guardrails: what runs is named, what is quoted is not."""

from __future__ import annotations

import pytest

from tapegate.protocols.postgres.sql import matches_kind, statement_kinds

CASES = [
    ("select 1", ["SELECT"]),
    ("DROP TABLE t", ["DROP TABLE"]),
    ("select 1; drop table t;", ["SELECT", "DROP TABLE"]),
    ("SELECT 'DROP TABLE x; DELETE'", ["SELECT"]),
    ("SELECT $$ ; DROP TABLE x $$", ["SELECT"]),
    ("SELECT $tag$ ; DROP $x$ $tag$, 2", ["SELECT"]),
    ('SELECT "drop" FROM t', ["SELECT"]),
    ("-- DROP TABLE x\nSELECT 1", ["SELECT"]),
    ("/* DROP /* nested */ TABLE */ TRUNCATE t", ["TRUNCATE T"]),
    ("SELECT E'\\' ; DROP TABLE x'", ["SELECT"]),
    ("  alter   role bob superuser", ["ALTER ROLE"]),
    ("EXPLAIN ANALYZE DELETE FROM t", ["DELETE FROM"]),
    ("EXPLAIN (ANALYZE, FORMAT JSON) DELETE FROM t", ["DELETE FROM"]),
    ("WITH d AS (DELETE FROM t RETURNING *) SELECT * FROM d", ["DELETE FROM", "SELECT FROM"]),
    ("WITH x AS MATERIALIZED (SELECT 1) UPDATE t SET a = 1", ["SELECT", "UPDATE T"]),
    ("(SELECT 1)", ["SELECT"]),
    ("", []),
    (";;", []),
]


@pytest.mark.parametrize(("sql", "kinds"), CASES)
def test_statement_kinds(sql: str, kinds: list[str]) -> None:
    assert statement_kinds(sql) == kinds


def test_rule_matching() -> None:
    kinds = statement_kinds("select 1; ALTER ROLE app SUPERUSER")
    assert matches_kind(kinds, "ALTER ROLE")
    assert matches_kind(kinds, "ALTER")
    assert not matches_kind(kinds, "ALTER TABLE")
    assert not matches_kind(kinds, "DROP")
    assert not matches_kind(statement_kinds("SELECT 'drop'"), "DROP")


def test_unterminated_quotes_do_not_hang() -> None:
    assert statement_kinds("SELECT 'unterminated") == ["SELECT"]
    assert statement_kinds("SELECT $$ never closed") == ["SELECT"]
    assert statement_kinds("/* never closed") == []

"""Statement naming for guardrails, on PostgreSQL's own parser: what runs is named, what is
quoted is not, and the lexer tricks that fooled a hand-written lexer name what the server runs."""

from __future__ import annotations

import pytest

from tapegate.protocols.postgres.sql import (
    ROLE_SWITCH,
    SqlText,
    Unparsable,
    matches_kind,
    statement_kinds,
)

CASES = [
    ("select 1", ["SELECT"]),
    ("DROP TABLE t", ["DROP TABLE"]),
    ("select 1; drop table t;", ["SELECT", "DROP TABLE"]),
    ("SELECT 'DROP TABLE x; DELETE'", ["SELECT"]),
    ("SELECT $$ ; DROP TABLE x $$", ["SELECT"]),
    ("SELECT $tag$ ; DROP $x$ $tag$, 2", ["SELECT"]),
    ('SELECT "drop" FROM t', ["SELECT"]),
    ("-- DROP TABLE x\nSELECT 1", ["SELECT"]),
    ("/* DROP /* nested */ TABLE */ TRUNCATE t", ["TRUNCATE"]),
    ("SELECT E'\\' ; DROP TABLE x'", ["SELECT"]),
    ("  alter   role bob superuser", ["ALTER ROLE"]),
    ("EXPLAIN ANALYZE DELETE FROM t", ["EXPLAIN", "DELETE"]),
    ("EXPLAIN (ANALYZE, FORMAT JSON) DELETE FROM t", ["EXPLAIN", "DELETE"]),
    ("WITH d AS (DELETE FROM t RETURNING *) SELECT * FROM d", ["SELECT", "DELETE"]),
    ("WITH x AS MATERIALIZED (SELECT 1) UPDATE t SET a = 1", ["UPDATE", "SELECT"]),
    ("COPY (DELETE FROM t RETURNING *) TO STDOUT", ["COPY", "DELETE"]),
    ("PREPARE p AS DELETE FROM t", ["PREPARE", "DELETE"]),
    ("DROP MATERIALIZED VIEW v", ["DROP MATERIALIZED VIEW"]),
    ("CREATE UNIQUE INDEX i ON t (a)", ["CREATE INDEX"]),
    ("GRANT app TO bob", ["GRANT"]),
    ("begin; commit", ["BEGIN", "COMMIT"]),
    ("set search_path = x", ["SET SEARCH_PATH"]),
    ("(SELECT 1)", ["SELECT"]),
    ("", []),
    (";;", []),
]

# Each of these fooled the hand-written lexer into naming a SELECT while PostgreSQL dropped
# the table (issue 15): the server's parser names the DROP.
EVASIONS = [
    "select 1 -- a comment that a carriage return ends\r; drop table t",
    "select 1 --\r;drop table t",
    "select 1 as é$$; drop table t; -- $$",  # é$$ is an identifier, not a dollar quote
    "select 1 as é$x$; drop table t; -- $x$",
]

ROLE_SWITCHES = [
    "SET ROLE admin",
    "set local role admin",
    "SET SESSION ROLE admin",
    'SET "role" = admin',
    "SET role TO 'admin'",
    "RESET ROLE",
    "SET SESSION AUTHORIZATION admin",
    "select set_config('role', 'admin', false)",
    "select pg_catalog.set_config('ROLE', 'admin', true)",
    "select set_config('session_authorization', 'admin', false)",
    "select set_config(current_setting('x'), 'admin', false)",  # cannot tell: counts
    "select 1 from t where set_config($$role$$, 'admin', false) is not null",
]


@pytest.mark.parametrize(("sql", "kinds"), CASES)
def test_statement_kinds(sql: str, kinds: list[str]) -> None:
    assert statement_kinds(sql) == kinds


@pytest.mark.parametrize("sql", EVASIONS)
def test_lexer_evasions_name_the_drop(sql: str) -> None:
    assert "DROP TABLE" in statement_kinds(sql)


@pytest.mark.parametrize("sql", ROLE_SWITCHES)
def test_every_identity_switch_is_one_kind(sql: str) -> None:
    assert ROLE_SWITCH in statement_kinds(sql)
    assert matches_kind(statement_kinds(sql), "SET ROLE")


def test_other_settings_are_not_role_switches() -> None:
    assert not matches_kind(statement_kinds("select set_config('search_path', 'x', false)"),
                            "SET ROLE")  # fmt: skip
    assert statement_kinds("SET statement_timeout = 5") == ["SET STATEMENT_TIMEOUT"]


def test_rule_matching() -> None:
    kinds = statement_kinds("select 1; ALTER ROLE app SUPERUSER")
    assert matches_kind(kinds, "ALTER ROLE")
    assert matches_kind(kinds, "alter")
    assert not matches_kind(kinds, "ALTER TABLE")
    assert not matches_kind(kinds, "DROP")
    assert not matches_kind(statement_kinds("SELECT 'drop'"), "DROP")


def test_what_the_parser_refuses_is_unparsable() -> None:
    for sql in ("SELECT 'unterminated", "SELECT $$ never closed", "/* never closed", "DROP"):
        with pytest.raises(Unparsable):
            statement_kinds(sql)


def test_deep_nesting_is_unparsable_not_a_crash() -> None:
    with pytest.raises(Unparsable):
        statement_kinds("SELECT " + "(" * 100_000 + "1" + ")" * 100_000)


# -- reading the message's bytes as the server will ------------------------------------------


def test_utf8_text_reads_as_is() -> None:
    assert SqlText().read("select 'é'".encode()) == ("select 'é'", None)


def test_invalid_utf8_cannot_be_checked() -> None:
    _, problem = SqlText().read(b"select '\xff'")
    assert problem and "UTF8" in problem


def test_a_multibyte_client_encoding_is_decoded_with_its_codec() -> None:
    # In SJIS the second byte of 表 is 0x5C, a backslash to anyone reading the bytes as ASCII.
    raw = "select E'表'; drop table t".encode("cp932")
    assert b"\\" in raw
    sql, problem = SqlText(encoding="SJIS").read(raw)
    assert problem is None and sql == "select E'表'; drop table t"
    assert "DROP TABLE" in statement_kinds(sql)


def test_an_encoding_tapegate_cannot_read_is_refused_for_non_ascii() -> None:
    assert SqlText(encoding="MULE_INTERNAL").read(b"select 1")[1] is None
    assert SqlText(encoding="MULE_INTERNAL").read(b"select '\x81\x82'")[1]


def test_backslashes_with_standard_conforming_strings_off_cannot_be_checked() -> None:
    # With the setting off, 'a\' ; drop table t; --' is one string to the server.
    raw = b"select 'a\\' ; drop table t; --'"
    _, problem = SqlText(standard_strings=False).read(raw)
    assert problem and "standard_conforming_strings" in problem
    assert SqlText(standard_strings=False).read(b"select 'a'") == ("select 'a'", None)


def test_settings_follow_the_servers_parameter_status() -> None:
    text = SqlText()
    text.parameter("client_encoding", "LATIN1")
    text.parameter("standard_conforming_strings", "off")
    assert (text.encoding, text.standard_strings) == ("LATIN1", False)
    text.parameter("standard_conforming_strings", "on")
    assert text.standard_strings


def test_statements_that_change_how_text_is_read_are_known() -> None:
    from tapegate.protocols.postgres.sql import unsettles_text

    for sql in ("SET standard_conforming_strings = off", "SET NAMES 'SJIS'", "RESET ALL",
                "DISCARD ALL", "select set_config('client_encoding', 'SJIS', false)",
                "DO $$BEGIN NULL; END$$", "RESET client_encoding"):  # fmt: skip
        assert unsettles_text(statement_kinds(sql)), sql
    for sql in ("select 1", "SET search_path = x", "select set_config('search_path', 'x', true)"):
        assert not unsettles_text(statement_kinds(sql)), sql

"""Just enough SQL lexing to name what a statement does: split on top-level semicolons and find
each statement's leading keywords, skipping strings, quoted identifiers, dollar quotes and
comments, so that `SELECT 'DROP TABLE x'` is a SELECT and `select 1; drop table x` is two.

This names statements for guardrails and events; it is a tripwire, not a sandbox. A DO block or
a function body runs code no lexer can see into: the upstream role's privileges are the boundary.
"""

from __future__ import annotations

import re

_DOLLAR_TAG = re.compile(r"\$([A-Za-z_][A-Za-z0-9_]*)?\$")
_WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_$]*")
_EXPLAIN_OPTIONS = {"ANALYZE", "ANALYSE", "VERBOSE"}
_MAIN_VERBS = {"SELECT", "INSERT", "UPDATE", "DELETE", "MERGE", "VALUES", "TABLE"}


def tokens(sql: str) -> list[str]:
    """Upper-cased words and the punctuation ( ) ; — everything else is skipped."""
    out: list[str] = []
    i, n = 0, len(sql)
    while i < n:
        c = sql[i]
        if c in " \t\r\n\f":
            i += 1
        elif c == "-" and sql.startswith("--", i):
            j = sql.find("\n", i)
            i = n if j < 0 else j + 1
        elif c == "/" and sql.startswith("/*", i):
            i = _skip_block_comment(sql, i)
        elif c == "'":
            i = _skip_quoted(sql, i, "'")
        elif c == '"':
            i = _skip_quoted(sql, i, '"')
            out.append('"ident"')
        elif c == "$":
            m = _DOLLAR_TAG.match(sql, i)
            if m:
                end = sql.find(m.group(0), m.end())
                i = n if end < 0 else end + len(m.group(0))
            else:
                i += 1
        elif c in "();":
            out.append(c)
            i += 1
        else:
            m = _WORD.match(sql, i)
            if m:
                word = m.group(0).upper()
                # E'...' / U&'...' / B'...' / X'...' string prefixes
                if m.end() < n and sql[m.end()] == "'" and word in ("E", "B", "X", "N"):
                    i = _skip_quoted(sql, m.end(), "'", backslash=word == "E")
                    continue
                out.append(word)
                i = m.end()
            else:
                i += 1
    return out


def _skip_quoted(sql: str, i: int, quote: str, backslash: bool = False) -> int:
    j = i + 1
    n = len(sql)
    while j < n:
        c = sql[j]
        if backslash and c == "\\":
            j += 2
            continue
        if c == quote:
            if j + 1 < n and sql[j + 1] == quote:  # doubled quote inside
                j += 2
                continue
            return j + 1
        j += 1
    return n


def _skip_block_comment(sql: str, i: int) -> int:
    depth, j, n = 0, i, len(sql)
    while j < n:
        if sql.startswith("/*", j):
            depth += 1
            j += 2
        elif sql.startswith("*/", j):
            depth -= 1
            j += 2
            if depth == 0:
                return j
        else:
            j += 1
    return n


def statements(sql: str) -> list[list[str]]:
    """Token lists of each non-empty statement, split on top-level semicolons."""
    out: list[list[str]] = []
    current: list[str] = []
    depth = 0
    for tok in tokens(sql):
        if tok == "(":
            depth += 1
        elif tok == ")":
            depth = max(0, depth - 1)
        if tok == ";" and depth == 0:
            if current:
                out.append(current)
            current = []
        else:
            current.append(tok)
    if current:
        out.append(current)
    return out


def verbs(statement: list[str]) -> list[str]:
    """The leading keywords (up to two) of a statement and of the statements inside a WITH.

    `EXPLAIN ANALYZE` runs its statement, so the statement under an EXPLAIN is what counts.
    """
    toks = statement
    i = 0
    while i < len(toks) and toks[i] == "(":
        i += 1
    if i < len(toks) and toks[i] == "EXPLAIN":
        i += 1
        if i < len(toks) and toks[i] == "(":
            i = _after_parens(toks, i)
        while i < len(toks) and toks[i] in _EXPLAIN_OPTIONS:
            i += 1
    toks = toks[i:]
    if not toks:
        return []
    if toks[0] != "WITH":
        return [_phrase(toks[:2])]
    found: list[str] = []
    depth = 0
    for j, tok in enumerate(toks):
        if tok == "(":
            depth += 1
            if "AS" in toks[max(0, j - 3) : j] and j + 1 < len(toks) and toks[j + 1].isalpha():
                found.append(_phrase(toks[j + 1 : j + 3]))
        elif tok == ")":
            depth -= 1
        elif depth == 0 and tok in _MAIN_VERBS:
            found.append(_phrase(toks[j : j + 2]))
            break
    return found or ["WITH"]


def _phrase(toks: list[str]) -> str:
    words: list[str] = []
    for t in toks:
        if t in ("(", ")", '"ident"'):
            break
        words.append(t)
    return " ".join(words)


def _after_parens(toks: list[str], i: int) -> int:
    depth = 0
    for j in range(i, len(toks)):
        if toks[j] == "(":
            depth += 1
        elif toks[j] == ")":
            depth -= 1
            if depth == 0:
                return j + 1
    return len(toks)


def statement_kinds(sql: str) -> list[str]:
    """Leading keyword phrases of every statement in `sql`, e.g. ["SELECT 1", "DROP TABLE"]."""
    return [v for stmt in statements(sql) for v in verbs(stmt)]


def first_words(kinds: list[str]) -> list[str]:
    """The one-word kinds for display and indexing: ["SELECT", "DROP"]."""
    return [k.split(" ", 1)[0] for k in kinds]


def matches_kind(kinds: list[str], rule_kind: str) -> bool:
    """Does any statement's leading phrase start with the rule's words (DROP, ALTER ROLE...)?"""
    want = rule_kind.split()
    return any(k.split()[: len(want)] == want for k in kinds)

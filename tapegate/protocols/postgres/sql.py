"""Statements named on PostgreSQL's own grammar, for guardrails and events.

The text is parsed by pglast (libpg_query: the server's parser, lexer included), so comments,
quotes, dollar tags, identifiers and statement boundaries are what the server will see. Each
statement gets a *kind*: a verb and, where it has one, an object type — `SELECT`, `DELETE`,
`DROP TABLE`, `ALTER ROLE`, `CREATE INDEX`, `GRANT`, `SET SEARCH_PATH`. Statements nested inside
another count as well: under `EXPLAIN` (with or without ANALYZE), inside `WITH`, `COPY (...)`,
`PREPARE ... AS`, `CREATE TABLE ... AS`.

Every way to switch the session's identity is the one kind `SET ROLE`: `SET [SESSION | LOCAL]
ROLE`, `SET "role" = ...`, `RESET ROLE`, `SET SESSION AUTHORIZATION`, and a call of
`set_config` whose setting is `role` or `session_authorization`, or is not a constant.

A message the parser cannot read raises `Unparsable`: a target with guardrails refuses it
(nothing is forwarded that could not be checked). What no parser can see into stays a limit: a
`DO` block's or a function's body runs code that is only text here.
"""

from __future__ import annotations

import json
import re
from typing import Any

from pglast import parser

ROLE_SWITCH = "SET ROLE"
ROLE_SETTINGS = frozenset({"role", "session_authorization"})
# Statements that carry a statement of their own to run.
_NESTED = {"ExplainStmt": "query", "CopyStmt": "query", "PrepareStmt": "query",
           "CreateTableAsStmt": "query", "DeclareCursorStmt": "query"}  # fmt: skip
_VERBS = {
    "SelectStmt": "SELECT", "InsertStmt": "INSERT", "UpdateStmt": "UPDATE",
    "DeleteStmt": "DELETE", "MergeStmt": "MERGE", "TruncateStmt": "TRUNCATE",
    "CopyStmt": "COPY", "DoStmt": "DO", "CallStmt": "CALL", "ExplainStmt": "EXPLAIN",
    "ExecuteStmt": "EXECUTE", "PrepareStmt": "PREPARE", "DeallocateStmt": "DEALLOCATE",
    "DeclareCursorStmt": "DECLARE", "FetchStmt": "FETCH", "ClosePortalStmt": "CLOSE",
    "ListenStmt": "LISTEN", "UnlistenStmt": "UNLISTEN", "NotifyStmt": "NOTIFY",
    "LockStmt": "LOCK", "VariableShowStmt": "SHOW", "DiscardStmt": "DISCARD",
    "CheckPointStmt": "CHECKPOINT", "ReindexStmt": "REINDEX", "ClusterStmt": "CLUSTER",
    "LoadStmt": "LOAD", "CommentStmt": "COMMENT", "SecLabelStmt": "SECURITY LABEL",
    "DropdbStmt": "DROP DATABASE", "DropRoleStmt": "DROP ROLE", "DropOwnedStmt": "DROP OWNED",
    "DropTableSpaceStmt": "DROP TABLESPACE", "DropSubscriptionStmt": "DROP SUBSCRIPTION",
    "DropUserMappingStmt": "DROP USER MAPPING", "ReassignOwnedStmt": "REASSIGN OWNED",
    "CreateStmt": "CREATE TABLE", "IndexStmt": "CREATE INDEX", "ViewStmt": "CREATE VIEW",
    "CreateRoleStmt": "CREATE ROLE", "CreatedbStmt": "CREATE DATABASE",
    "CreateSchemaStmt": "CREATE SCHEMA", "CreateExtensionStmt": "CREATE EXTENSION",
    "CreateSeqStmt": "CREATE SEQUENCE", "CreateTrigStmt": "CREATE TRIGGER",
    "CreatePolicyStmt": "CREATE POLICY", "CreateEventTrigStmt": "CREATE EVENT TRIGGER",
    "RuleStmt": "CREATE RULE", "CompositeTypeStmt": "CREATE TYPE", "CreateEnumStmt": "CREATE TYPE",
    "AlterRoleStmt": "ALTER ROLE", "AlterRoleSetStmt": "ALTER ROLE",
    "AlterSystemStmt": "ALTER SYSTEM", "AlterDatabaseStmt": "ALTER DATABASE",
    "AlterDatabaseSetStmt": "ALTER DATABASE", "AlterFunctionStmt": "ALTER FUNCTION",
    "AlterSeqStmt": "ALTER SEQUENCE", "AlterPolicyStmt": "ALTER POLICY",
    "AlterDefaultPrivilegesStmt": "ALTER DEFAULT PRIVILEGES", "VacuumStmt": "VACUUM",
}  # fmt: skip
# Statements whose object type is a field: "DROP " + the type, and so on.
_TYPED = {"DropStmt": ("DROP", "removeType"), "AlterTableStmt": ("ALTER", "objtype"),
          "RenameStmt": ("ALTER", "renameType"), "AlterOwnerStmt": ("ALTER", "objectType"),
          "AlterObjectSchemaStmt": ("ALTER", "objectType")}  # fmt: skip
_TRANSACTION = {"TRANS_STMT_BEGIN": "BEGIN", "TRANS_STMT_START": "BEGIN",
                "TRANS_STMT_COMMIT": "COMMIT", "TRANS_STMT_ROLLBACK": "ROLLBACK",
                "TRANS_STMT_SAVEPOINT": "SAVEPOINT", "TRANS_STMT_RELEASE": "RELEASE",
                "TRANS_STMT_ROLLBACK_TO": "ROLLBACK", "TRANS_STMT_PREPARE": "PREPARE TRANSACTION",
                "TRANS_STMT_COMMIT_PREPARED": "COMMIT PREPARED",
                "TRANS_STMT_ROLLBACK_PREPARED": "ROLLBACK PREPARED"}  # fmt: skip
_OBJECT_WORDS = {"MATVIEW": "MATERIALIZED VIEW", "FDW": "FOREIGN DATA WRAPPER",
                 "TSCONFIGURATION": "TEXT SEARCH CONFIGURATION",
                 "TSDICTIONARY": "TEXT SEARCH DICTIONARY", "OPCLASS": "OPERATOR CLASS",
                 "OPFAMILY": "OPERATOR FAMILY", "TABCONSTRAINT": "CONSTRAINT"}  # fmt: skip
_CAMEL = re.compile(r"(?<!^)(?=[A-Z][a-z])")
# Keys in the parser's JSON. Inside a JSON string every quote is escaped, so a string literal
# in the SQL can never look like one of these.
_ROOT_KEY = re.compile(r'\{"stmt":\{"([A-Za-z]+)":')
# Top-level statements whose kind is their node's name alone (no field to read).
_PLAIN = frozenset(_VERBS) - {"VacuumStmt"}


class Unparsable(Exception):
    """PostgreSQL's parser does not accept the text: it cannot be named, so not checked."""


def statement_kinds(sql: str) -> list[str]:
    """The kind of every statement in `sql`, nested ones after their parent; no duplicates."""
    try:
        text = parser.parse_sql_json(sql)
    except parser.ParseError as exc:
        raise Unparsable(str(exc)) from None
    # Most messages are plain statements (a SELECT, an INSERT): when the JSON names no node
    # beyond its top-level statements and their kinds need no field, the names are enough,
    # without reading the JSON into objects (that was half the cost).
    names = _ROOT_KEY.findall(text)
    nested = text.count('Stmt":{') + text.count('"FuncCall":') > len(names)
    if not nested and all(name in _PLAIN for name in names):
        return list(dict.fromkeys(_VERBS[name] for name in names))
    try:
        tree = json.loads(text)
    except RecursionError:
        raise Unparsable("the statement nests too deeply to be checked") from None
    roots = [raw.get("stmt", {}) for raw in tree.get("stmts", ())]
    kinds: list[str] = []
    for root in roots:
        found = _kinds_of(root) if nested else [_kind(k, v) for k, v in root.items()]
        for kind in found:
            if kind not in kinds:
                kinds.append(kind)
    return kinds


def _kinds_of(root: dict[str, Any]) -> list[str]:
    """Walk one statement's tree (iteratively: trees can be deep) for the statements in it."""
    found: list[str] = []
    stack: list[Any] = [root]
    while stack:
        node = stack.pop()
        if isinstance(node, list):
            stack.extend(reversed(node))
            continue
        if not isinstance(node, dict):
            continue
        for name, body in node.items():
            if isinstance(body, dict | list):
                if name.endswith("Stmt") and isinstance(body, dict):
                    found.append(_kind(name, body))
                elif name == "FuncCall" and isinstance(body, dict):
                    setting = _set_config(body)
                    if setting is not None:
                        found.append(f"SET {setting.upper()}" if setting else ROLE_SWITCH)
                stack.append(body)
    return found


def _kind(name: str, body: dict[str, Any]) -> str:
    if name == "VariableSetStmt":
        setting = str(body.get("name") or "").lower()
        if setting in ROLE_SETTINGS:
            return ROLE_SWITCH
        verb = "RESET" if str(body.get("kind", "")).startswith("VAR_RESET") else "SET"
        return f"{verb} {setting.upper()}".strip()
    if name in ("GrantStmt", "GrantRoleStmt"):
        return "GRANT" if body.get("is_grant") else "REVOKE"
    if name == "TransactionStmt":
        return _TRANSACTION.get(str(body.get("kind")), "TRANSACTION")
    if name == "VacuumStmt" and not body.get("is_vacuumcmd"):
        return "ANALYZE"
    if name == "CreateTableAsStmt" and body.get("objtype") == "OBJECT_MATVIEW":
        return "CREATE MATERIALIZED VIEW"
    if name == "CreateFunctionStmt":
        return "CREATE PROCEDURE" if body.get("is_procedure") else "CREATE FUNCTION"
    if name in _TYPED:
        verb, field = _TYPED[name]
        return f"{verb} {_object_words(str(body.get(field, '')))}".strip()
    if name in _VERBS:
        return _VERBS[name]
    # Not listed: the parser's own node name, in words (CreateForeignServerStmt → CREATE
    # FOREIGN SERVER).
    return _CAMEL.sub(" ", name.removesuffix("Stmt")).upper()


def _object_words(objtype: str) -> str:
    word = objtype.removeprefix("OBJECT_")
    return _OBJECT_WORDS.get(word, word.replace("_", " "))


def _set_config(call: dict[str, Any]) -> str | None:
    """For a `set_config(setting, ...)` call: the setting it changes, as a SET would name it
    ("role" and "session_authorization" are role switches), "" when the setting is not a
    constant (it could be any, a role switch included); None for any other function."""
    names = [n.get("String", {}).get("sval") for n in call.get("funcname", ())]
    if not names or str(names[-1]).lower() != "set_config":
        return None
    args = call.get("args") or []
    if not args:
        return None
    const = args[0].get("A_Const", {}) if isinstance(args[0], dict) else {}
    setting = const.get("sval", {}).get("sval") if isinstance(const.get("sval"), dict) else None
    if setting is None:
        return ""
    name = setting.strip().lower()
    return "" if name in ROLE_SETTINGS else name


# Statements after which the server may read SQL text differently: until it has answered them
# (and reported the settings), what a client pipelines behind them cannot be checked.
TEXT_SETTINGS = frozenset({"client_encoding", "standard_conforming_strings"})
_UNSETTLING = frozenset({*(f"{verb} {name.upper()}" for verb in ("SET", "RESET")
                           for name in TEXT_SETTINGS), "RESET", "DISCARD", "DO",
                         "CALL", ROLE_SWITCH})  # fmt: skip


def unsettles_text(kinds: list[str]) -> bool:
    """Whether a statement of these kinds may change how the server reads later text (RESET
    ALL, DISCARD ALL; a DO block or a procedure can SET anything; a role switch can bring the
    role's settings)."""
    return any(k in _UNSETTLING for k in kinds)


def first_words(kinds: list[str]) -> list[str]:
    """The one-word kinds for display and indexing: ["SELECT", "DROP"]."""
    return [k.split(" ", 1)[0] for k in kinds]


def matches_kind(kinds: list[str], rule_kind: str) -> bool:
    """Does any statement's kind start with the rule's words (DROP, ALTER ROLE, SET ROLE...)?"""
    want = rule_kind.upper().split()
    return any(k.split()[: len(want)] == want for k in kinds)


# -- a message's bytes as the server will read them --------------------------------------------

# PostgreSQL's client encodings and the codec that splits their bytes into the same characters.
# The ones whose second byte can be ASCII (SJIS, BIG5, GBK, UHC, GB18030, JOHAB) are where a
# reader with the wrong codec sees a backslash or a quote that is not there.
_CODECS = {
    "UTF8": "utf-8", "SQL_ASCII": "latin-1", "LATIN1": "latin-1", "LATIN2": "iso8859-2",
    "LATIN3": "iso8859-3", "LATIN4": "iso8859-4", "LATIN5": "iso8859-9", "LATIN6": "iso8859-10",
    "LATIN7": "iso8859-13", "LATIN8": "iso8859-14", "LATIN9": "iso8859-15",
    "LATIN10": "iso8859-16", "ISO_8859_5": "iso8859-5", "ISO_8859_6": "iso8859-6",
    "ISO_8859_7": "iso8859-7", "ISO_8859_8": "iso8859-8", "WIN866": "cp866", "WIN874": "cp874",
    "WIN1250": "cp1250", "WIN1251": "cp1251", "WIN1252": "cp1252", "WIN1253": "cp1253",
    "WIN1254": "cp1254", "WIN1255": "cp1255", "WIN1256": "cp1256", "WIN1257": "cp1257",
    "WIN1258": "cp1258", "KOI8R": "koi8-r", "KOI8U": "koi8-u", "EUC_JP": "euc_jp",
    "EUC_JIS_2004": "euc_jis_2004", "EUC_KR": "euc_kr", "EUC_CN": "gb2312", "SJIS": "cp932",
    "SHIFT_JIS_2004": "shift_jis_2004", "BIG5": "cp950", "GBK": "gbk", "UHC": "cp949",
    "GB18030": "gb18030", "JOHAB": "johab",
}  # fmt: skip


class SqlText:
    """How the server reads the text of a Query or Parse: the session's `client_encoding` and
    `standard_conforming_strings`, kept current from the server's ParameterStatus messages."""

    def __init__(self, encoding: str = "UTF8", standard_strings: bool = True) -> None:
        self.encoding = encoding
        self.standard_strings = standard_strings

    def parameter(self, name: str, value: str) -> None:
        if name == "client_encoding":
            self.encoding = value.upper().replace("-", "_")
        elif name == "standard_conforming_strings":
            self.standard_strings = value.lower() != "off"

    def read(self, raw: bytes) -> tuple[str, str | None]:
        """The text, and why it cannot be checked (None when it can)."""
        codec = _CODECS.get("UTF8" if self.encoding == "UNICODE" else self.encoding)
        if codec is None:
            if raw.isascii():
                return raw.decode("ascii"), None
            return raw.decode("latin-1"), (
                f"tapegate cannot read client_encoding {self.encoding} (use UTF8)"
            )
        try:
            sql = raw.decode(codec)
        except UnicodeDecodeError:
            return raw.decode(codec, "replace"), (
                f"the text is not valid in the session's client_encoding {self.encoding}"
            )
        if not self.standard_strings and "\\" in sql:
            # The server's backslash escapes in '...' then depend on a setting libpg_query
            # does not have: the statement boundaries could differ from what it names.
            return sql, "standard_conforming_strings is off and the text has a backslash"
        return sql, None

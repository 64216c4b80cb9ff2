"""The Athena adapter's request, polling and paging logic, against a scripted client (moto's
Athena returns no real results; the SQL itself is tested on DuckDB)."""

from __future__ import annotations

from typing import Any

import pytest

from tapegate.archive.aws import AthenaQuery


class ScriptedAthena:
    def __init__(self, states: list[str], pages: list[dict[str, Any]]) -> None:
        self.states, self.pages = states, pages
        self.started: dict[str, Any] = {}
        self.result_calls: list[str | None] = []
        self.stopped = False

    def start_query_execution(self, **kwargs: Any) -> dict[str, Any]:
        self.started = kwargs
        return {"QueryExecutionId": "q-1"}

    def get_query_execution(self, QueryExecutionId: str) -> dict[str, Any]:
        state = self.states.pop(0) if len(self.states) > 1 else self.states[0]
        status: dict[str, Any] = {"State": state}
        if state == "FAILED":
            status["StateChangeReason"] = "line 1:8: Column 'nope' cannot be resolved"
        return {"QueryExecution": {"Status": status}}

    def get_query_results(self, QueryExecutionId: str, NextToken: str | None = None) -> dict:
        self.result_calls.append(NextToken)
        return self.pages[len(self.result_calls) - 1]

    def stop_query_execution(self, QueryExecutionId: str) -> None:
        self.stopped = True


def _page(rows: list[list[str | None]], token: str | None = None) -> dict[str, Any]:
    info = [{"Name": "subject", "Type": "varchar"}, {"Name": "n", "Type": "bigint"},
            {"Name": "ok", "Type": "boolean"}]  # fmt: skip
    page: dict[str, Any] = {"ResultSet": {"ResultSetMetadata": {"ColumnInfo": info},
                            "Rows": [{"Data": [{"VarCharValue": v} if v is not None else {}
                                               for v in row]} for row in rows]}}  # fmt: skip
    if token:
        page["NextToken"] = token
    return page


def test_polls_until_done_and_pages_through_results() -> None:
    client = ScriptedAthena(
        ["QUEUED", "RUNNING", "SUCCEEDED"],
        [_page([["subject", "n", "ok"], ["ada", "3", "true"]], token="t2"),
         _page([["linus", "1", "false"], [None, None, None]])],
    )  # fmt: skip
    waits: list[float] = []
    engine = AthenaQuery("tapegate", "tapegate_db", client, sleep=waits.append)
    sql = "SELECT subject, count(*) AS n, true AS ok FROM events"
    columns, rows = engine.query(sql)
    assert client.started == {"QueryString": sql, "WorkGroup": "tapegate",
                              "QueryExecutionContext": {"Database": "tapegate_db"}}  # fmt: skip
    assert columns == ["subject", "n", "ok"]
    assert rows == [("ada", 3, True), ("linus", 1, False), (None, None, None)]
    assert client.result_calls == [None, "t2"]
    assert len(waits) == 2 and waits[1] > waits[0], "polling backs off"


def test_failure_carries_athenas_reason() -> None:
    engine = AthenaQuery("wg", "db", ScriptedAthena(["FAILED"], []), sleep=lambda _: None)
    with pytest.raises(RuntimeError, match="Column 'nope' cannot be resolved"):
        engine.query("SELECT nope FROM events")


def test_timeout_stops_the_query() -> None:
    client = ScriptedAthena(["RUNNING"], [])
    engine = AthenaQuery("wg", "db", client, sleep=lambda _: None, timeout_s=3)
    with pytest.raises(TimeoutError):
        engine.query("SELECT 1")
    assert client.stopped

"""The AWS archive: S3 for objects, DynamoDB for the session index, Athena for SQL.

The DynamoDB table holds two kinds of items under the session's partition key:
    pk = "S#<session>", sk = "C#<seq, 12 digits>"   one per chunk (claimed with a condition)
    pk = "S#<session>", sk = "SESSION"               the summary, with GSI keys:
        by_subject: subject + started_ns          by_target: target + started_ns
    pk = "L#<instance>", sk = "N#<counter, 20 digits>#<digest>"   one per log leaf; until the
        sequencer appends it, it carries `pending` (sparse GSI pending_leaves: pending +
        claimed_ns), afterwards `log_index`
    pk = "S#<session>", sk = "LEAF#<log index, 20 digits>"   where a session's leaves went
TABLE_SPEC is the one definition; the CDK stack and the tests create the table from it.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import asdict
from typing import Any

from tapegate.archive import ChunkEntry, HeldChunk, Index, LeafEntry, SessionRecord
from tapegate.schema import one_day_sql

TABLE_SPEC: dict[str, Any] = {
    "KeySchema": [
        {"AttributeName": "pk", "KeyType": "HASH"},
        {"AttributeName": "sk", "KeyType": "RANGE"},
    ],
    "AttributeDefinitions": [
        {"AttributeName": "pk", "AttributeType": "S"},
        {"AttributeName": "sk", "AttributeType": "S"},
        {"AttributeName": "subject", "AttributeType": "S"},
        {"AttributeName": "target", "AttributeType": "S"},
        {"AttributeName": "started_ns", "AttributeType": "N"},
        {"AttributeName": "pending", "AttributeType": "S"},
        {"AttributeName": "claimed_ns", "AttributeType": "N"},
    ],
    "GlobalSecondaryIndexes": [
        {
            "IndexName": name,
            "KeySchema": [
                {"AttributeName": attr, "KeyType": "HASH"},
                {"AttributeName": "started_ns", "KeyType": "RANGE"},
            ],
            "Projection": {"ProjectionType": "ALL"},
        }
        for name, attr in (("by_subject", "subject"), ("by_target", "target"))
    ]
    + [
        {
            "IndexName": "pending_leaves",
            "KeySchema": [
                {"AttributeName": "pending", "KeyType": "HASH"},
                {"AttributeName": "claimed_ns", "KeyType": "RANGE"},
            ],
            "Projection": {"ProjectionType": "ALL"},
        }
    ],
    "BillingMode": "PAY_PER_REQUEST",
}

_CHUNK_FIELDS = ("digest", "prev_digest", "final", "sealed_ns", "object_key", "bytes_c2s",
                 "bytes_s2c", "statements", "first_ns", "last_ns")  # fmt: skip


class S3ObjectStore:
    def __init__(self, bucket: str, client: Any, prefix: str = "") -> None:
        self.bucket, self.client, self.prefix = bucket, client, prefix

    def put(self, key: str, data: bytes) -> None:
        self.client.put_object(Bucket=self.bucket, Key=self.prefix + key, Body=data)

    def get(self, key: str) -> bytes:
        """The object's bytes; FileNotFoundError when there is none, as the folder store
        says it, so that callers tell "missing" from "failing" in one way."""
        try:
            answer = self.client.get_object(Bucket=self.bucket, Key=self.prefix + key)
        except self.client.exceptions.NoSuchKey:
            raise FileNotFoundError(key) from None
        return answer["Body"].read()

    def list(self, prefix: str = "") -> list[str]:
        keys: list[str] = []
        paginator = self.client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=self.prefix + prefix):
            keys += [o["Key"][len(self.prefix) :] for o in page.get("Contents", [])]
        return keys


class DynamoIndex(Index):
    def __init__(self, table: str, client: Any) -> None:
        self.table, self.client = table, client

    def _insert_chunk(self, entry: ChunkEntry) -> bool:
        item = {"pk": {"S": f"S#{entry.session_id}"}, "sk": {"S": _chunk_sk(entry.seq)}}
        for name in _CHUNK_FIELDS:
            item[name] = _attr(getattr(entry, name))
        try:
            self.client.put_item(
                TableName=self.table, Item=item, ConditionExpression="attribute_not_exists(pk)"
            )
        except self.client.exceptions.ConditionalCheckFailedException:
            return False
        return True

    def _held_chunk(self, session_id: str, seq: int) -> HeldChunk:
        key = {"pk": {"S": f"S#{session_id}"}, "sk": {"S": _chunk_sk(seq)}}
        held = self.client.get_item(TableName=self.table, Key=key, ConsistentRead=True)["Item"]
        return HeldChunk(held["digest"]["S"], held["object_key"]["S"])

    def chunks(self, session_id: str) -> list[ChunkEntry]:
        out = []
        for item in self._query(
            KeyConditionExpression="pk = :pk AND begins_with(sk, :c)",
            ExpressionAttributeValues={":pk": {"S": f"S#{session_id}"}, ":c": {"S": "C#"}},
            ConsistentRead=True,
        ):
            values = {name: _value(item[name]) for name in _CHUNK_FIELDS}
            out.append(ChunkEntry(session_id=session_id, seq=int(item["sk"]["S"][2:]), **values))
        return out

    def claim_leaf(self, entry: LeafEntry) -> bool:
        item = {
            "pk": {"S": f"L#{entry.instance}"},
            "sk": {"S": f"N#{entry.counter:020d}#{entry.digest}"},
            "sealed_ns": {"N": str(entry.sealed_ns)},
            "kind": {"S": entry.kind},
            "object_key": {"S": entry.object_key},
            "raw": {"B": entry.raw},
            "pending": {"S": "P"},
            "claimed_ns": {"N": str(time.time_ns())},
        }
        if entry.session_id:
            item["session_id"] = {"S": entry.session_id}
        try:
            self.client.put_item(
                TableName=self.table, Item=item, ConditionExpression="attribute_not_exists(pk)"
            )
        except self.client.exceptions.ConditionalCheckFailedException:
            return False
        return True

    def pending_leaves(self, limit: int = 10_000) -> list[LeafEntry]:
        items = self._paged("query", {
            "IndexName": "pending_leaves", "KeyConditionExpression": "pending = :p",
            "ExpressionAttributeValues": {":p": {"S": "P"}},
        }, limit=limit)  # fmt: skip
        out = []
        for item in items:
            _, counter, digest = item["sk"]["S"].split("#")
            out.append(LeafEntry(
                instance=item["pk"]["S"][2:], counter=int(counter), digest=digest,
                sealed_ns=int(item["sealed_ns"]["N"]), kind=item["kind"]["S"],
                session_id=item.get("session_id", {}).get("S"),
                object_key=item["object_key"]["S"], raw=bytes(item["raw"]["B"]),
            ))  # fmt: skip
        return out

    def mark_sequenced(self, entries: Sequence[LeafEntry], first_index: int) -> None:
        for i, e in enumerate(entries):
            position = {"N": str(first_index + i)}
            self.client.update_item(
                TableName=self.table,
                Key={"pk": {"S": f"L#{e.instance}"}, "sk": {"S": f"N#{e.counter:020d}#{e.digest}"}},
                UpdateExpression="SET log_index = :i REMOVE pending",
                ExpressionAttributeValues={":i": position},
            )
            if e.session_id:  # where a bundle finds the session's leaves
                self.client.put_item(TableName=self.table, Item={
                    "pk": {"S": f"S#{e.session_id}"}, "sk": {"S": f"LEAF#{first_index + i:020d}"},
                    "kind": {"S": e.kind}, "log_index": position,
                })  # fmt: skip

    def leaf_positions(self, session_id: str) -> list[int]:
        items = self._query(
            KeyConditionExpression="pk = :pk AND begins_with(sk, :l)",
            ExpressionAttributeValues={":pk": {"S": f"S#{session_id}"}, ":l": {"S": "LEAF#"}},
            ConsistentRead=True,
        )
        return sorted(int(i["log_index"]["N"]) for i in items)

    def get_session(self, session_id: str) -> SessionRecord | None:
        item = self.client.get_item(
            TableName=self.table,
            Key={"pk": {"S": f"S#{session_id}"}, "sk": {"S": "SESSION"}},
            ConsistentRead=True,
        ).get("Item")
        return SessionRecord(**json.loads(item["record"]["S"])) if item else None

    def put_session(self, record: SessionRecord) -> None:
        item: dict[str, Any] = {
            "pk": {"S": f"S#{record.session_id}"},
            "sk": {"S": "SESSION"},
            "status": {"S": record.status},
            "record": {"S": json.dumps(asdict(record))},
            "started_ns": {"N": str(record.started_ns or record.last_seen_ns or 0)},
        }
        if record.subject:
            item["subject"] = {"S": record.subject}
        if record.target:
            item["target"] = {"S": record.target}
        self.client.put_item(TableName=self.table, Item=item)

    def sessions(
        self,
        *,
        subject: str | None = None,
        target: str | None = None,
        since_ns: int | None = None,
        status: str | None = None,
    ) -> list[SessionRecord]:
        since = {":since": {"N": str(since_ns or 0)}}
        if subject is not None or target is not None:
            attr, value = ("subject", subject) if subject is not None else ("target", target)
            items = self._query(
                IndexName=f"by_{attr}",
                KeyConditionExpression="#k = :v AND started_ns >= :since",
                ExpressionAttributeNames={"#k": attr},
                ExpressionAttributeValues={":v": {"S": str(value)}, **since},
            )
        else:
            items = self._scan(
                FilterExpression="sk = :s AND started_ns >= :since",
                ExpressionAttributeValues={":s": {"S": "SESSION"}, **since},
            )
        records = [SessionRecord(**json.loads(i["record"]["S"])) for i in items]
        records = [
            r for r in records
            if (target is None or r.target == target) and (status is None or r.status == status)
        ]  # fmt: skip
        return sorted(records, key=lambda r: (r.started_ns or 0, r.session_id))

    def _query(self, **kwargs: Any) -> list[dict[str, Any]]:
        return self._paged("query", kwargs)

    def _scan(self, **kwargs: Any) -> list[dict[str, Any]]:
        return self._paged("scan", kwargs)

    def _paged(
        self, op: str, kwargs: dict[str, Any], limit: int | None = None
    ) -> list[dict[str, Any]]:
        """Every item a query or scan returns, page after page (at most `limit` of them)."""
        items: list[dict[str, Any]] = []
        start: dict[str, Any] | None = None
        while limit is None or len(items) < limit:
            page_limit = {"Limit": min(1000, limit - len(items))} if limit is not None else {}
            page = getattr(self.client, op)(
                TableName=self.table, **kwargs, **page_limit,
                **({"ExclusiveStartKey": start} if start else {}),
            )  # fmt: skip
            items += page.get("Items", [])
            start = page.get("LastEvaluatedKey")
            if not start:
                break
        return items


class AthenaQuery:
    """Runs SQL in an Athena workgroup (engine v3) and pages through the results."""

    def __init__(
        self,
        workgroup: str,
        database: str,
        client: Any,
        *,
        poll_s: float = 0.5,
        timeout_s: float = 600.0,
        sleep: Any = time.sleep,
        progress: Any = None,
    ) -> None:
        self.workgroup, self.database, self.client = workgroup, database, client
        self.poll_s, self.timeout_s, self._sleep, self.progress = poll_s, timeout_s, sleep, progress

    def query(
        self, sql: str, params: Sequence[Any] | None = None
    ) -> tuple[list[str], list[tuple[Any, ...]]]:
        qid = self._run(sql, params)
        columns: list[str] = []
        rows: list[tuple[Any, ...]] = []
        token: str | None = None
        first = True
        while True:
            page = self.client.get_query_results(
                QueryExecutionId=qid, **({"NextToken": token} if token else {})
            )
            info = page["ResultSet"]["ResultSetMetadata"]["ColumnInfo"]
            columns = [c["Name"] for c in info]
            types = [c["Type"] for c in info]
            data = page["ResultSet"]["Rows"]
            if first:  # the first row of the first page repeats the column names
                data = data[1:]
                first = False
            for row in data:
                cells = [d.get("VarCharValue") for d in row["Data"]]
                rows.append(tuple(_athena_value(v, t) for v, t in zip(cells, types, strict=True)))
            token = page.get("NextToken")
            if not token:
                return columns, rows

    def unload(self, table: str, day: str, destination: str) -> None:
        """One day of a table as Parquet under `destination` (s3://...; must be empty)."""
        self._run(
            f"UNLOAD ({one_day_sql(table, day)}) TO '{destination}' "
            "WITH (format = 'PARQUET', compression = 'ZSTD')"
        )

    def _run(self, sql: str, params: Sequence[Any] | None = None) -> str:
        """Start a query and wait for it to succeed; returns its execution id."""
        request: dict[str, Any] = {
            "QueryString": sql,
            "WorkGroup": self.workgroup,
            "QueryExecutionContext": {"Database": self.database},
        }
        if params:
            # Athena splices execution parameters into the SQL as written: quote strings.
            request["ExecutionParameters"] = [_athena_literal(p) for p in params]
        qid = self.client.start_query_execution(**request)["QueryExecutionId"]
        waited = 0.0
        delay = self.poll_s
        while True:
            execution = self.client.get_query_execution(QueryExecutionId=qid)["QueryExecution"]
            state = execution["Status"]["State"]
            if state == "SUCCEEDED":
                return qid
            if state in ("FAILED", "CANCELLED"):
                reason = execution["Status"].get("StateChangeReason", state)
                raise RuntimeError(f"Athena query {state.lower()}: {reason}")
            if waited >= self.timeout_s:
                self.client.stop_query_execution(QueryExecutionId=qid)
                raise TimeoutError(f"Athena query still {state} after {self.timeout_s:.0f} s")
            if self.progress:
                self.progress(state, waited)
            self._sleep(delay)
            waited += delay
            delay = min(delay * 1.5, 5.0)


def _athena_literal(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    return "'" + str(value).replace("'", "''") + "'"


def _athena_value(value: str | None, kind: str) -> Any:
    if value is None:
        return None
    if kind in ("integer", "bigint", "smallint", "tinyint"):
        return int(value)
    if kind in ("double", "float", "real", "decimal"):
        return float(value)
    if kind == "boolean":
        return value == "true"
    return value


def _chunk_sk(seq: int) -> str:
    return f"C#{seq:012d}"


def _attr(value: Any) -> dict[str, Any]:
    if isinstance(value, bool):
        return {"BOOL": value}
    if isinstance(value, int):
        return {"N": str(value)}
    return {"S": str(value)}


def _value(attr: dict[str, Any]) -> Any:
    if "BOOL" in attr:
        return attr["BOOL"]
    if "N" in attr:
        return int(attr["N"])
    return attr["S"]

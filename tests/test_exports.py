"""Compliance exports: a day unloaded with DuckDB's COPY (Athena's UNLOAD on AWS), a manifest of
files, hashes and row counts, its signature, and an offline check that catches changes."""

from __future__ import annotations

from datetime import UTC, date, datetime
from pathlib import Path
from typing import ClassVar

import pytest
from nacl.signing import SigningKey

from lambdas.compliance_export.handler import day_to_export
from tapegate.archive.aws import AthenaQuery
from tapegate.archive.local import LocalObjectStore
from tapegate.exports import MANIFEST, SIGNATURE, ExportError, export_day, verify_export
from tests.audit_archive import DAY, build


@pytest.fixture
def exported(tmp_path: Path):
    duck = build(tmp_path)
    store = LocalObjectStore(tmp_path / "exports")
    signer = SigningKey.generate()

    def unload(table: str, day: str, prefix: str) -> None:
        duck.unload(table, day, store.root / prefix)

    manifest = export_day(date.fromisoformat(DAY), unload=unload, store=store, signer=signer,
                          run_id="r1", now=datetime(2026, 11, 24, tzinfo=UTC))  # fmt: skip
    return manifest, store, signer, unload


def reader(store: LocalObjectStore, prefix: str):
    return lambda path: store.get(prefix + path)


def test_the_manifest_lists_every_file_with_hash_and_rows(exported) -> None:
    manifest, store, signer, _ = exported
    assert manifest["prefix"] == f"dt={DAY}/run=r1/"
    assert manifest["tables"] == {"sessions": 4, "events": 13}
    assert {f["table"] for f in manifest["files"]} == {"sessions", "events"}
    assert manifest["public_key"] == bytes(signer.verify_key).hex()
    assert sorted(store.list(manifest["prefix"])) == sorted(
        [manifest["prefix"] + f["path"] for f in manifest["files"]]
        + [manifest["prefix"] + MANIFEST, manifest["prefix"] + SIGNATURE]
    )
    assert verify_export(reader(store, manifest["prefix"]), bytes(signer.verify_key)) == []


def test_a_changed_file_a_changed_manifest_and_a_foreign_key_are_caught(exported) -> None:
    manifest, store, _signer, _ = exported
    prefix = manifest["prefix"]
    victim = prefix + manifest["files"][0]["path"]
    data = bytearray(store.get(victim))
    data[len(data) // 2] ^= 1
    store.put(victim, bytes(data))
    assert verify_export(reader(store, prefix)) == [
        f"{manifest['files'][0]['path']}: SHA-256 differs from the manifest"
    ]
    body = store.get(prefix + MANIFEST).replace(b'"rows": 4', b'"rows": 3')
    store.put(prefix + MANIFEST, body)
    assert verify_export(reader(store, prefix)) == ["the manifest's signature does not match"]
    other = bytes(SigningKey.generate().verify_key)
    assert verify_export(reader(store, prefix), other) == [
        "the manifest is signed by an untrusted key"
    ]
    store.root.joinpath(prefix + SIGNATURE).unlink()
    assert verify_export(reader(store, prefix))[0].startswith("cannot read the manifest")


def test_a_rerun_gets_a_fresh_prefix_and_never_writes_into_a_used_one(exported) -> None:
    manifest, store, signer, unload = exported
    day = date.fromisoformat(DAY)
    with pytest.raises(ExportError, match="fresh prefix"):
        export_day(day, unload=unload, store=store, signer=signer, run_id="r1")
    again = export_day(day, unload=unload, store=store, signer=signer)
    assert again["prefix"] != manifest["prefix"] and again["tables"] == manifest["tables"]


def test_an_empty_day_exports_empty_tables(tmp_path: Path) -> None:
    duck = build(tmp_path)
    store = LocalObjectStore(tmp_path / "exports")
    manifest = export_day(
        date(2001, 1, 1), store=store, signer=SigningKey.generate(),
        unload=lambda t, d, p: duck.unload(t, d, store.root / p),
    )  # fmt: skip
    assert manifest["tables"] == {"sessions": 0, "events": 0}


def test_athena_unload_statement_and_its_failure() -> None:
    class Client:
        def __init__(self, state: str) -> None:
            self.state, self.started = state, []

        def start_query_execution(self, **kwargs):
            self.started.append(kwargs)
            return {"QueryExecutionId": "q"}

        def get_query_execution(self, QueryExecutionId: str):
            return {
                "QueryExecution": {
                    "Status": {"State": self.state, "StateChangeReason": "HIVE_PATH_ALREADY_EXISTS"}
                }
            }

    ok = Client("SUCCEEDED")
    AthenaQuery("wg", "db", ok).unload("events", DAY, "s3://exports/dt=x/run=y/events/")
    assert ok.started[0]["QueryString"] == (
        f"UNLOAD (SELECT * FROM events WHERE dt = '{DAY}') TO 's3://exports/dt=x/run=y/events/' "
        "WITH (format = 'PARQUET', compression = 'ZSTD')"
    )
    with pytest.raises(RuntimeError, match="HIVE_PATH_ALREADY_EXISTS"):
        AthenaQuery("wg", "db", Client("FAILED")).unload("events", DAY, "s3://e/p/")
    with pytest.raises(ValueError):
        AthenaQuery("wg", "db", ok).unload("events", "2026-11-24' OR 1=1 --", "s3://e/p/")
    with pytest.raises(ValueError):
        AthenaQuery("wg", "db", ok).unload("users", DAY, "s3://e/p/")


def test_named_query_parameters_are_quoted_for_athena() -> None:
    class Client:
        started: ClassVar[dict] = {}

        def start_query_execution(self, **kwargs):
            Client.started = kwargs
            return {"QueryExecutionId": "q"}

        def get_query_execution(self, QueryExecutionId: str):
            return {"QueryExecution": {"Status": {"State": "SUCCEEDED"}}}

        def get_query_results(self, QueryExecutionId: str):
            return {"ResultSet": {"ResultSetMetadata": {"ColumnInfo": []}, "Rows": [{"Data": []}]}}

    AthenaQuery("wg", "db", Client()).query("SELECT ?, ?", ["o'brien", 3])
    assert Client.started["ExecutionParameters"] == ["'o''brien'", "3"]


def test_the_schedule_exports_the_previous_utc_day() -> None:
    assert day_to_export({"scheduled_time": "2026-11-24T01:15:00Z"}) == date(2026, 11, 23)
    assert day_to_export({"day": "2026-02-01"}) == date(2026, 2, 1)

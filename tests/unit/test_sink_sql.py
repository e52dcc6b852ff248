"""The results table's SQL (core.sink_sql) and the sink step on Python's own sqlite3: the table name checked
wherever it comes from (the trigger form, a pipeline file, the run's settings), the DDL and upsert per dialect,
and the rows a record becomes. The real databases (PostgreSQL, SQLite through Airflow's hook, a DAG run) are in
tests/integration/test_sink.py."""

from __future__ import annotations

import datetime as dt
import json
import sqlite3

import pytest
import yaml
from airflow.sdk import Param
from airflow.sdk.exceptions import ParamValidationError

from gemini_batch.core import jsonl, sink_sql
from gemini_batch.core.results import DocumentRecord, DocumentStatus, Usage
from gemini_batch.core.sink_sql import SinkError, Table
from gemini_batch.dag import build_dag, default_params
from gemini_batch.steps import run_settings, sink
from gemini_batch.steps.runs import Run
from support.pipelines import GOOD

GOOD_NAMES = ["gemini_batch_results", "analytics.results_2026", "_t", "Order", "a" * 63 + "." + "b" * 63]
BAD_NAMES = ["", "1results", "results;drop table x", "a.b.c", "a-b", "a b", "a" * 64, '"q"', "a.", ".a", "résultats"]


@pytest.mark.parametrize("name", GOOD_NAMES)
def test_a_table_name_is_one_or_two_plain_identifiers(name):
    table = Table.parse(name)
    assert table.name == name and table.quoted == ".".join(f'"{p}"' for p in name.split("."))


@pytest.mark.parametrize("name", BAD_NAMES)
def test_anything_else_is_refused_by_the_form_the_run_and_the_sql(name, tmp_path):
    with pytest.raises(SinkError, match="is not a table name"):
        Table.parse(name)
    with pytest.raises(ParamValidationError):
        Param(name, **default_params()["sink_table"].schema).resolve()
    params = {"source": str(tmp_path / "in"), "output": str(tmp_path / "out"), "sink_table": name}
    with pytest.raises(run_settings.RunConfigError, match="sink_table must be a table name"):
        run_settings.RunSettings.from_params(params)


def test_the_settings_reach_the_form_the_run_and_pipeline_files(tmp_path, monkeypatch):
    form = default_params()
    assert form["sink_conn_id"].value is None and form["sink_table"].value == "gemini_batch_results"
    settings = run_settings.RunSettings.from_params({"source": str(tmp_path / "in"), "output": str(tmp_path / "o")})
    assert (settings.sink_conn_id, settings.sink_table) == (None, "gemini_batch_results")
    dag = build_dag("sinking", params={"sink_conn_id": "warehouse", "sink_table": "gb.results"})
    assert dag.params["sink_conn_id"] == "warehouse" and dag.params["sink_table"] == "gb.results"
    assert dag.get_task("sink_results").upstream_task_ids == {"publish_results"}
    assert dag.get_task("clean_up").upstream_task_ids == {"sink_results"}

    from gemini_batch.pipelines import PipelineError, pipeline_dag

    good, bad = tmp_path / "good.yaml", tmp_path / "bad.yaml"
    good.write_text(yaml.safe_dump({**GOOD, "sink_conn_id": "warehouse", "sink_table": "gb.receipts"}))
    assert pipeline_dag(good).params["sink_table"] == "gb.receipts"
    bad.write_text(yaml.safe_dump({**GOOD, "sink_table": "receipts; drop table x"}))
    with pytest.raises(PipelineError, match="field sink_table: .* does not match"):
        pipeline_dag(bad)


def test_postgres_ddl_and_a_batch_upsert_in_one_statement_of_arrays():
    table = Table.parse("gb.results")
    ddl = sink_sql.create_table_sql(sink_sql.POSTGRES, table)
    assert ddl.startswith('CREATE TABLE IF NOT EXISTS "gb"."results" (')
    assert "data JSONB," in ddl and "updated_at TIMESTAMPTZ NOT NULL" in ddl and "cost_usd DOUBLE PRECISION" in ddl
    assert ddl.rstrip().endswith("PRIMARY KEY (dag_id, source, document)\n)")
    upsert = sink_sql.upsert_sql(sink_sql.POSTGRES, table)
    assert upsert.count("%s") == len(sink_sql.COLUMNS) and "%s::bigint[]" in upsert and "data::jsonb" in upsert
    assert "FROM unnest(%s::text[]" in upsert and "updated_at::timestamptz FROM" in upsert
    assert sink_sql.postgres_parameters([(1, "a"), (2, None)]) == [[1, 2], ["a", None]]
    assert "ON CONFLICT (dag_id, source, document) DO UPDATE SET status = excluded.status," in upsert
    assert "document = excluded" not in upsert and "updated_at = excluded.updated_at" in upsert


def test_sqlite_upsert_is_one_row_for_executemany():
    upsert = sink_sql.upsert_sql(sink_sql.SQLITE, Table.parse("r"), "?")
    assert upsert.count("?") == len(sink_sql.COLUMNS) and "%s" not in upsert
    assert "TEXT" in sink_sql.create_table_sql(sink_sql.SQLITE, Table.parse("r"))


@pytest.mark.parametrize(
    ("name", "dialect"),
    [("postgresql", "postgresql"), ("postgres", "postgresql"), ("sqlite", "sqlite"), ("mysql", "other"), ("", "other")],
)
def test_dialects(name, dialect):
    assert sink_sql.dialect_of(name) == dialect


def context(**changes) -> sink_sql.RowContext:
    base = {
        "dag_id": "d",
        "source": "gs://b/in",
        "model": "gemini-2.5-flash-lite",
        "request_digest": sink_sql.request_digest("p", {"type": "object"}),
        "run_id": "manual__1",
        "updated_at": dt.datetime(2026, 12, 1, 12, tzinfo=dt.timezone.utc),
        "cost": lambda i, o: (i * 0.1 + o * 0.4) / 1e6 * 0.5,
    }
    return sink_sql.RowContext(**{**base, **changes})


def test_a_record_becomes_a_row():
    record = DocumentRecord("a/é.pdf", DocumentStatus.SUCCEEDED, {"total": 1.5, "v": "ü"}, usage=Usage(1000, 100))
    row = dict(zip(sink_sql.COLUMNS, sink_sql.row_of(record, context()), strict=True))
    assert row["document"] == "a/é.pdf" and row["status"] == "succeeded" and row["error"] is None
    assert json.loads(row["data"]) == {"total": 1.5, "v": "ü"}
    assert (row["input_tokens"], row["output_tokens"], row["cost_usd"]) == (1000, 100, 0.00007)
    assert row["updated_at"] == "2026-12-01T12:00:00.000000+00:00" and len(row["request_digest"]) == 64
    failed = DocumentRecord("b.pdf", DocumentStatus.REJECTED, None, "zero-byte file")
    row = dict(zip(sink_sql.COLUMNS, sink_sql.row_of(failed, context(cost=lambda i, o: None)), strict=True))
    assert row["data"] is None and row["error"] == "zero-byte file" and row["cost_usd"] is None


def test_the_digest_follows_the_prompt_and_schema_not_key_order():
    assert sink_sql.request_digest("p", {"a": 1, "b": 2}) == sink_sql.request_digest("p", {"b": 2, "a": 1})
    assert sink_sql.request_digest("p", None) != sink_sql.request_digest("q", None)


class SqliteHook:
    """What the step uses of a DbApiHook, over Python's sqlite3 (Airflow's own SqliteHook: integration tier)."""

    dialect_name = "sqlite"
    placeholder = "?"
    conn_type = "sqlite"

    def __init__(self, path):
        self.path = str(path)

    def get_conn(self):
        return sqlite3.connect(self.path)

    def get_conn_id(self):
        return "test_sqlite"


def run_with_results(tmp_path, documents, **params) -> Run:
    output = tmp_path / "out"
    output.mkdir(exist_ok=True)
    with jsonl.writer(str(output / "results.jsonl")) as write:
        for n in documents:
            write(DocumentRecord(f"doc-{n}.pdf", DocumentStatus.SUCCEEDED, {"n": n}, usage=Usage(10, n)))
    base = {"source": str(tmp_path / "in"), "output": str(output), **params}
    return Run.from_params(base, f"manual__{params.get('run', 1)}")


def test_the_step_upserts_in_batches_and_a_rerun_updates(tmp_path):
    db = SqliteHook(tmp_path / "results.db")
    run = run_with_results(tmp_path, range(5), sink_table="r")
    assert sink.sink_results(run, db, batch_rows=2) == 5
    again = run_with_results(tmp_path, range(3, 8), sink_table="r")  # 3, 4 again, 5-7 new
    later = dt.datetime(2027, 1, 1, tzinfo=dt.timezone.utc)
    assert sink.sink_results(again, db, batch_rows=2, now=later) == 5
    with sqlite3.connect(db.path) as conn:
        rows = conn.execute('SELECT document, data, updated_at FROM "r" ORDER BY document').fetchall()
    assert [r[0] for r in rows] == [f"doc-{n}.pdf" for n in range(8)]
    assert [r[2].startswith("2027") for r in rows] == [False] * 3 + [True] * 5


def test_a_document_twice_in_one_batch_keeps_its_last_row(tmp_path):
    db = SqliteHook(tmp_path / "results.db")
    run = run_with_results(tmp_path, [1, 2, 1])
    assert sink.sink_results(run, db) == 2
    with sqlite3.connect(db.path) as conn:
        assert conn.execute("SELECT count(*) FROM gemini_batch_results").fetchone() == (2,)


def test_a_database_without_an_upsert_is_named(tmp_path):
    from airflow.providers.common.sql.dialects.dialect import Dialect

    class Other(SqliteHook):
        dialect_name = "oracle"
        conn_type = "oracle"
        dialect = Dialect.__new__(Dialect)

    run = run_with_results(tmp_path, [1])
    with pytest.raises(SinkError, match="connection type 'oracle' .* has no upsert"):
        sink.sink_results(run, Other(tmp_path / "x.db"))

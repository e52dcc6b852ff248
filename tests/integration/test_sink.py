"""Results into the user's database (steps.sink): every record of results.jsonl upserted into a table, through
Airflow's common.sql hooks, on the real PostgreSQL these machines run (127.0.0.1:5432, a fresh database per test)
and on SQLite through Airflow's SqliteHook; and a real ``airflow dags test`` run that sinks into PostgreSQL through
an ``AIRFLOW_CONN_...`` connection, then a re-run that updates the rows and never duplicates them."""

from __future__ import annotations

import datetime as dt
import json
import shutil
import sqlite3
import uuid

import pytest

from gemini_batch.core import jsonl
from gemini_batch.core.results import DocumentRecord, DocumentStatus, PartRecord, Usage
from gemini_batch.core.sink_sql import COLUMNS, SinkError
from gemini_batch.steps import sink
from gemini_batch.steps.runs import Run
from support.dagrun import SAMPLES, developer_conn, read_results, run_dag

PG = {"host": "127.0.0.1", "port": 5432, "user": "postgres"}


def pg_connect(dbname: str):
    import psycopg2

    try:
        return psycopg2.connect(dbname=dbname, connect_timeout=5, **PG)
    except psycopg2.OperationalError as exc:
        pytest.fail(f"PostgreSQL at 127.0.0.1:5432 is missing (user postgres, trust auth): {exc}", pytrace=False)


@pytest.fixture
def postgres_db():
    """A fresh database on the machine's PostgreSQL, dropped after the test; its name."""
    name = f"gb_sink_{uuid.uuid4().hex[:12]}"
    admin = pg_connect("postgres")
    admin.autocommit = True
    with admin.cursor() as cur:
        cur.execute(f'CREATE DATABASE "{name}"')
    try:
        yield name
    finally:
        with admin.cursor() as cur:
            cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


def pg_connection(dbname: str) -> str:
    return json.dumps({"conn_type": "postgres", "host": PG["host"], "port": PG["port"], "login": "postgres",
                       "schema": dbname})  # fmt: skip


def pg_rows(dbname: str, table: str = "gemini_batch_results") -> dict[str, dict]:
    conn = pg_connect(dbname)
    try:
        with conn.cursor() as cur:
            cur.execute(f"SELECT {', '.join(COLUMNS)} FROM {table}")
            return {row[2]: dict(zip(COLUMNS, row, strict=True)) for row in cur.fetchall()}
    finally:
        conn.close()


def pg_count(dbname: str, table: str = "gemini_batch_results") -> int:
    conn = pg_connect(dbname)
    try:
        with conn.cursor() as cur:
            cur.execute(f"SELECT count(*) FROM {table}")
            return cur.fetchone()[0]
    finally:
        conn.close()


def write_results(output, count: int, *, failed_every: int = 7) -> list[DocumentRecord]:
    written = []
    output.mkdir(parents=True, exist_ok=True)
    with jsonl.writer(str(output / "results.jsonl")) as write:
        for n in range(count):
            if n % failed_every == 3:
                record = DocumentRecord(f"docs/{n:05d}.pdf", DocumentStatus.FAILED, None, f"bad answer {n}")
            else:
                data = {"invoice_number": f"INV-{n}", "total": n * 1.25, "lines": [{"q": n, "text": "ü'\"\\"}]}
                part = PartRecord("k" * 64, None, "succeeded", "STOP", None, False)
                record = DocumentRecord(f"docs/{n:05d}.pdf", DocumentStatus.SUCCEEDED, data, None, (part,),
                                        Usage(600 + n, 40))  # fmt: skip
            write(record)
            written.append(record)
    return written


def open_run(tmp_path, run_id: str, **params) -> Run:
    return Run.from_params(
        {"source": str(tmp_path / "in"), "output": str(tmp_path / "out"), **params}, run_id
    )  # the default model, prompt and schema


def test_postgres_rows_match_results_and_a_rerun_updates_them(postgres_db, tmp_path, monkeypatch):
    monkeypatch.setenv("AIRFLOW_CONN_RESULTS_PG", pg_connection(postgres_db))
    hook = sink.sql_hook("results_pg")
    written = write_results(tmp_path / "out", 2_345)
    first = dt.datetime(2026, 12, 1, tzinfo=dt.timezone.utc)
    assert sink.sink_results(open_run(tmp_path, "manual__1"), hook, now=first) == 2_345

    rows = pg_rows(postgres_db)
    assert len(rows) == pg_count(postgres_db) == 2_345
    for record in written:
        row = rows[record.document]
        assert row["status"] == record.status and row["error"] == record.error
        assert row["data"] == record.data  # jsonb, read back as JSON
        assert (row["input_tokens"], row["output_tokens"]) == (record.usage.input_tokens, record.usage.output_tokens)
        assert row["model"] == "gemini-2.5-flash-lite" and row["run_id"] == "manual__1"
        assert row["dag_id"] == "gemini_batch_extract" and row["source"] == str(tmp_path / "in")
        assert row["updated_at"] == first
    priced = rows["docs/00000.pdf"]["cost_usd"]
    assert priced is not None and priced > 0
    assert len({row["request_digest"] for row in rows.values()}) == 1

    # The same source again, another run and prompt: the same rows, updated; none added.
    write_results(tmp_path / "out", 2_345, failed_every=5)
    second = dt.datetime(2026, 12, 2, tzinfo=dt.timezone.utc)
    again = open_run(tmp_path, "manual__2", prompt="Another prompt.")
    assert sink.sink_results(again, hook, batch_rows=500, now=second) == 2_345
    updated = pg_rows(postgres_db)
    assert len(updated) == pg_count(postgres_db) == 2_345
    assert {row["run_id"] for row in updated.values()} == {"manual__2"}
    assert {row["updated_at"] for row in updated.values()} == {second}
    assert updated["docs/00008.pdf"]["status"] == "failed" and rows["docs/00008.pdf"]["status"] == "succeeded"
    assert updated["docs/00000.pdf"]["request_digest"] != rows["docs/00000.pdf"]["request_digest"]

    # Another pipeline (DAG) with the same document names shares the table without touching these rows.
    other = Run.from_params(
        {"source": str(tmp_path / "in"), "output": str(tmp_path / "out")}, "manual__3"
    )  # RunSettings.dag_id is the DAG's: another DAG's run
    object.__setattr__(other.settings, "dag_id", "another_pipeline")
    sink.sink_results(other, hook)
    assert pg_count(postgres_db) == 2 * 2_345


def test_postgres_schema_qualified_table_and_jsonb(postgres_db, tmp_path, monkeypatch):
    conn = pg_connect(postgres_db)
    with conn, conn.cursor() as cur:
        cur.execute("CREATE SCHEMA gb")
    conn.close()
    monkeypatch.setenv("AIRFLOW_CONN_RESULTS_PG", pg_connection(postgres_db))
    write_results(tmp_path / "out", 10)
    assert sink.sink_results(open_run(tmp_path, "r", sink_table="gb.results"), sink.sql_hook("results_pg")) == 10
    conn = pg_connect(postgres_db)
    with conn.cursor() as cur:
        cur.execute("SELECT data->>'invoice_number', pg_typeof(data)::text FROM gb.results WHERE document = %s",
                    ("docs/00001.pdf",))  # fmt: skip
        assert cur.fetchone() == ("INV-1", "jsonb")
    conn.close()


def test_sqlite_through_airflows_hook(tmp_path, monkeypatch):
    db = tmp_path / "results.db"
    monkeypatch.setenv("AIRFLOW_CONN_RESULTS_LITE", json.dumps({"conn_type": "sqlite", "host": str(db)}))
    hook = sink.sql_hook("results_lite")
    assert type(hook).__name__ == "SqliteHook"
    written = write_results(tmp_path / "out", 1_234)
    assert sink.sink_results(open_run(tmp_path, "manual__1"), hook) == 1_234
    assert sink.sink_results(open_run(tmp_path, "manual__2"), hook) == 1_234
    with sqlite3.connect(db) as conn:
        rows = {r[0]: r for r in conn.execute("SELECT document, data, run_id, status FROM gemini_batch_results")}
    assert len(rows) == 1_234 and {r[2] for r in rows.values()} == {"manual__2"}
    for record in written:
        data = rows[record.document][1]
        assert (json.loads(data) if data is not None else None) == record.data
        assert rows[record.document][3] == record.status


def test_a_connection_that_is_not_sql_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("AIRFLOW_CONN_NOT_SQL", json.dumps({"conn_type": "google_cloud_platform"}))
    with pytest.raises(SinkError, match="'google_cloud_platform' is not a SQL database"):
        sink.sql_hook("not_sql")
    with pytest.raises(SinkError, match="no such connection"):
        sink.sql_hook("nowhere_at_all")


def test_a_dag_run_sinks_into_postgres_and_a_rerun_updates(airflow_home, postgres_db, tmp_path, start_emulator):
    server = start_emulator(time_scale=3600)
    source = tmp_path / "source"
    shutil.copytree(SAMPLES, source)
    env = {"AIRFLOW_CONN_RESULTS_PG": pg_connection(postgres_db)}
    conf = {"source": str(source), "output": str(tmp_path / "out1"), "sink_conn_id": "results_pg"}
    run_dag(airflow_home, developer_conn(server.url), conf, "2026-11-01", extra_env=env).check()

    records, _ = read_results(tmp_path / "out1")
    rows = pg_rows(postgres_db)
    assert set(rows) == set(records) and pg_count(postgres_db) == 8
    for document, record in records.items():
        row = rows[document]
        assert (row["status"], row["data"], row["error"]) == (record["status"], record["data"], record["error"])
        assert row["input_tokens"] == record["usage"]["input_tokens"] and row["source"] == str(source)
    [first_run] = {row["run_id"] for row in rows.values()}

    conf2 = {**conf, "output": str(tmp_path / "out2")}  # the same source: the same rows
    run_dag(airflow_home, developer_conn(server.url), conf2, "2026-11-02", extra_env=env).check()
    again = pg_rows(postgres_db)
    assert set(again) == set(rows) and pg_count(postgres_db) == 8
    [second_run] = {row["run_id"] for row in again.values()}
    assert second_run != first_run
    assert all(again[d]["updated_at"] > rows[d]["updated_at"] for d in rows)
    assert all(again[d]["data"] == rows[d]["data"] for d in rows)

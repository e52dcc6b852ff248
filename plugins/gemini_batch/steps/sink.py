"""The sink step: every record of the run's results.jsonl upserted into a table of the user's database.

``sink_results(run, hook)`` takes a common.sql ``DbApiHook`` (any SQL connection's hook: ``sql_hook(conn_id)``),
creates the table when absent and upserts one row per document, keyed on (``dag_id``, ``source``, ``document``):
``document`` alone is relative to the source, and one table may hold the rows of several pipelines and of a
pipeline's daily folders (``core.sink_sql``). A re-run over the same source updates its rows (their ``run_id`` and
``updated_at`` with them) and never adds any.

results.jsonl is streamed and written in batches of ``BATCH_ROWS`` (memory stays flat whatever its size), all in
one transaction: readers see the run's rows together, and a failed sink leaves the table as it was (the task's
retry writes them all again). PostgreSQL and SQLite (3.24 or later) get ``INSERT ... ON CONFLICT DO UPDATE``
(PostgreSQL a batch per statement, an array per column); another database goes through the hook's
``insert_rows(replace=True)`` where its provider's dialect can replace (MySQL's ``REPLACE INTO``, MSSQL's
``MERGE``), else the step fails naming the connection type.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import itertools
import logging
from collections.abc import Iterator
from typing import Any

from gemini_batch.core import jsonl, sink_sql
from gemini_batch.core.locations import uri_of
from gemini_batch.core.results import DocumentRecord
from gemini_batch.core.sink_sql import SinkError, Table
from gemini_batch.steps.runs import Run

log = logging.getLogger(__name__)
BATCH_ROWS = 1_000
REPLACING_DIALECTS = ("mysql", "mariadb")  # REPLACE INTO, common.sql's generic replace statement, is theirs


def sql_hook(conn_id: str) -> Any:
    """The connection's common.sql hook (``Connection.get_hook``); SinkError when there is none."""
    from airflow.providers.common.sql.hooks.sql import DbApiHook
    from airflow.sdk import BaseHook

    try:
        connection = BaseHook.get_connection(conn_id)
    except Exception as exc:  # AirflowNotFoundException: retrying does not create it
        raise SinkError(f"sink_conn_id {conn_id!r}: no such connection ({exc})") from None
    try:
        hook = connection.get_hook()
    except Exception as exc:  # an unknown type, or its provider is not installed
        raise SinkError(
            f"sink_conn_id {conn_id!r}: connection type {connection.conn_type!r} has no hook here ({exc}); "
            "install its provider (apache-airflow-providers-postgres, -sqlite, ...)"
        ) from None
    if not isinstance(hook, DbApiHook):
        raise SinkError(
            f"sink_conn_id {conn_id!r}: connection type {connection.conn_type!r} is not a SQL database "
            f"(its hook {type(hook).__name__} is not a common.sql DbApiHook)"
        )
    return hook


def sink_results(run: Run, hook: Any, *, batch_rows: int = BATCH_ROWS, now: dt.datetime | None = None) -> int:
    """Upsert every record of the run's results.jsonl into ``run.settings.sink_table``; the rows written."""
    settings = run.settings
    table = Table.parse(settings.sink_table)
    dialect = sink_sql.dialect_of(getattr(hook, "dialect_name", ""))
    spec = settings.spec
    context = sink_sql.RowContext(
        dag_id=settings.dag_id,
        source=uri_of(settings.source),
        model=spec.model,
        request_digest=sink_sql.request_digest(spec.prompt, spec.response_schema),
        run_id=run.folder.run_id,
        updated_at=now or dt.datetime.now(dt.timezone.utc),
        cost=lambda input_tokens, output_tokens: run.prices.cost(spec.model, input_tokens, output_tokens),
    )
    results_file = settings.output / "results.jsonl"
    rows = (sink_sql.row_of(record, context) for record in jsonl.read_records(results_file, DocumentRecord))
    if dialect == "other":
        written = _through_insert_rows(hook, table, rows, batch_rows)
    else:
        written = _upsert(hook, dialect, table, rows, batch_rows)
    log.info("%d rows upserted into %s (connection %s)", written, table.name, _conn_id(hook))
    return written


def _upsert(hook: Any, dialect: str, table: Table, rows: Iterator[tuple], batch_rows: int) -> int:
    placeholder = getattr(hook, "placeholder", None) or ("?" if dialect == sink_sql.SQLITE else "%s")
    statement = sink_sql.upsert_sql(dialect, table, placeholder)
    written = 0
    with contextlib.closing(hook.get_conn()) as conn:
        cursor = conn.cursor()
        try:
            cursor.execute(sink_sql.create_table_sql(dialect, table))
            for batch in _batches(rows, batch_rows):
                if dialect == sink_sql.POSTGRES:
                    cursor.execute(statement, sink_sql.postgres_parameters(batch))
                else:
                    cursor.executemany(statement, batch)
                written += len(batch)
            conn.commit()
        except BaseException:
            with contextlib.suppress(Exception):
                conn.rollback()
            raise
        finally:
            cursor.close()
    return written


def _through_insert_rows(hook: Any, table: Table, rows: Iterator[tuple], batch_rows: int) -> int:
    """Another database: the hook's own replace (``insert_rows(replace=True)``), where its dialect has one."""
    from airflow.providers.common.sql.dialects.dialect import Dialect

    name = getattr(hook, "dialect_name", "") or ""
    dialect = getattr(hook, "dialect", None)
    own_replace = dialect is not None and type(dialect).generate_replace_sql is not Dialect.generate_replace_sql
    if not (own_replace or name in REPLACING_DIALECTS):
        raise SinkError(
            f"sink_conn_id {_conn_id(hook)!r}: connection type {getattr(hook, 'conn_type', '?')!r} (dialect "
            f"{name or 'unknown'}) has no upsert this step can use: supported are PostgreSQL, SQLite, and "
            "databases whose provider's dialect replaces rows (MySQL, MSSQL)"
        )
    hook.run(sink_sql.create_table_sql("other", table))
    counted = _Counted(rows)
    hook.insert_rows(
        table.name,
        counted,
        target_fields=list(sink_sql.COLUMNS),
        commit_every=batch_rows,
        replace=True,
        replace_index=list(sink_sql.KEY),
        executemany=True,
    )
    return counted.count


class _Counted:
    """An iterator that counts what it hands on (insert_rows returns nothing)."""

    def __init__(self, rows: Iterator[tuple]):
        self._rows = rows
        self.count = 0

    def __iter__(self) -> Iterator[tuple]:
        for row in self._rows:
            self.count += 1
            yield row


def _batches(rows: Iterator[tuple], size: int) -> Iterator[list[tuple]]:
    """Lists of at most ``size`` rows; a document twice in one batch (never in results.jsonl) keeps its last row,
    as ON CONFLICT cannot update one row twice in a statement."""
    while batch := list(itertools.islice(rows, size)):
        if len({row[:3] for row in batch}) < len(batch):
            batch = list({row[:3]: row for row in batch}.values())
        yield batch


def _conn_id(hook: Any) -> str:
    getter = getattr(hook, "get_conn_id", None)
    return getter() if callable(getter) else getattr(hook, "conn_id", "?")

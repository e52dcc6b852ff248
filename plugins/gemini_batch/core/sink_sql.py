"""The SQL of the results table (``steps.sink``): the table's name checked, its DDL and its upsert per dialect, and
each results.jsonl record as a row. Pure: no Airflow, no database driver.

One row per (``dag_id``, ``source``, ``document``). ``document`` alone is a path relative to the source, so it
names different files in different pipelines (one table may serve all of them: the default name is the same for
every DAG) and in the daily folders of one pipeline (``gs://landing/{{ ds }}/``: yesterday's ``invoice-1.pdf`` is
not today's). A re-run of a DAG over the same source updates its rows in place and never adds any.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from gemini_batch.core import records
from gemini_batch.core.keys import canonical_json
from gemini_batch.core.results import DocumentRecord
from gemini_batch.core.settings import SQL_TABLE_PATTERN

KEY = ("dag_id", "source", "document")
COLUMNS = (
    *KEY,
    "status",
    "data",
    "error",
    "input_tokens",
    "output_tokens",
    "cost_usd",
    "model",
    "request_digest",
    "run_id",
    "updated_at",
)
POSTGRES, SQLITE = "postgresql", "sqlite"
_TYPES: Mapping[str, Mapping[str, str]] = {
    POSTGRES: {
        "text": "TEXT",
        "json": "JSONB",
        "int": "BIGINT",
        "real": "DOUBLE PRECISION",
        "time": "TIMESTAMPTZ",
        "key": "TEXT",
    },
    SQLITE: {"text": "TEXT", "json": "TEXT", "int": "INTEGER", "real": "REAL", "time": "TEXT", "key": "TEXT"},
    # Any other database (written through the hook's insert_rows(replace=True)): portable types, keys of bounded
    # length (MySQL indexes no TEXT). Untested here.
    "other": {
        "text": "TEXT",
        "json": "TEXT",
        "int": "BIGINT",
        "real": "DOUBLE PRECISION",
        "time": "VARCHAR(40)",
        "key": "VARCHAR(700)",
    },
}
_KINDS = {
    "dag_id": "key",
    "source": "key",
    "document": "key",
    "status": "text",
    "data": "json",
    "error": "text",
    "input_tokens": "int",
    "output_tokens": "int",
    "cost_usd": "real",
    "model": "text",
    "request_digest": "text",
    "run_id": "text",
    "updated_at": "time",
}
_NOT_NULL = frozenset(
    {*KEY, "status", "input_tokens", "output_tokens", "model", "request_digest", "run_id", "updated_at"}
)


class SinkError(ValueError):
    """The results table cannot be written as asked: the message names the table or the connection."""


@dataclass(frozen=True)
class Table:
    """A checked table name: ``table`` or ``schema.table``, each part a plain SQL identifier."""

    parts: tuple[str, ...]

    @classmethod
    def parse(cls, name: str) -> Table:
        if not isinstance(name, str) or not re.fullmatch(SQL_TABLE_PATTERN, name):
            raise SinkError(
                f"sink_table {name!r} is not a table name: letters, digits and _ (not first), at most 63 each, "
                "optionally schema.table"
            )
        return cls(tuple(name.split(".")))

    @property
    def name(self) -> str:
        return ".".join(self.parts)

    @property
    def quoted(self) -> str:
        """Quoted as PostgreSQL and SQLite quote identifiers (a reserved word such as ``order`` works too)."""
        return ".".join(f'"{part}"' for part in self.parts)


def dialect_of(name: str) -> str:
    """The dialect this module writes SQL for: ``postgresql``, ``sqlite``, else ``other`` (insert_rows' own)."""
    name = (name or "").lower()
    if name.startswith("postgres"):  # postgres, postgresql, postgresql+psycopg2
        return POSTGRES
    return SQLITE if name == SQLITE else "other"


def create_table_sql(dialect: str, table: Table) -> str:
    """CREATE TABLE IF NOT EXISTS, keyed on KEY."""
    types = _TYPES[dialect]
    name = table.name if dialect == "other" else table.quoted
    columns = ",\n  ".join(
        f"{column} {types[_KINDS[column]]}{' NOT NULL' if column in _NOT_NULL else ''}" for column in COLUMNS
    )
    return f"CREATE TABLE IF NOT EXISTS {name} (\n  {columns},\n  PRIMARY KEY ({', '.join(KEY)})\n)"


_ARRAY_TYPES = {"key": "text", "text": "text", "json": "text", "int": "bigint", "real": "float8", "time": "text"}
_CASTS = {"data": "::jsonb", "updated_at": "::timestamptz"}


def upsert_sql(dialect: str, table: Table, placeholder: str = "%s") -> str:
    """``INSERT ... ON CONFLICT (KEY) DO UPDATE``. PostgreSQL: a whole batch in one statement of one array per
    column (``unnest``, ``postgres_parameters``): one round trip, and a short statement the driver parses once (a
    VALUES list of 13,000 placeholders cost psycopg 3 most of the time). SQLite: one row, for executemany (no
    network to save)."""
    if dialect == POSTGRES:
        arrays = ", ".join(f"{placeholder}::{_ARRAY_TYPES[_KINDS[column]]}[]" for column in COLUMNS)
        selected = ", ".join(column + _CASTS.get(column, "") for column in COLUMNS)
        values = f"SELECT {selected} FROM unnest({arrays}) AS batch ({', '.join(COLUMNS)})"
    elif dialect == SQLITE:
        values = "VALUES (" + ", ".join([placeholder] * len(COLUMNS)) + ")"
    else:
        raise SinkError(f"no upsert statement of ours for dialect {dialect!r}: use the hook's insert_rows")
    updates = ", ".join(f"{column} = excluded.{column}" for column in COLUMNS if column not in KEY)
    return (
        f"INSERT INTO {table.quoted} ({', '.join(COLUMNS)}) {values} "
        f"ON CONFLICT ({', '.join(KEY)}) DO UPDATE SET {updates}"
    )


def postgres_parameters(batch: list[tuple]) -> list[list]:
    """A batch of rows as the PostgreSQL statement's parameters: one list (an array) per column."""
    return [list(column) for column in zip(*batch, strict=True)]


def request_digest(prompt: str, response_schema: Any) -> str:
    """sha256 of the prompt and the schema (canonical JSON): rows answered under the same instructions share it."""
    return hashlib.sha256(canonical_json({"prompt": prompt, "response_schema": response_schema})).hexdigest()


@dataclass(frozen=True)
class RowContext:
    """What every row of one sink shares."""

    dag_id: str
    source: str
    model: str
    request_digest: str
    run_id: str
    updated_at: dt.datetime  # UTC
    cost: Callable[[int, int], float | None]  # (input tokens, output tokens) -> USD, None: no price


def row_of(record: DocumentRecord, context: RowContext) -> tuple:
    """The record as a row of COLUMNS: data as JSON text (NULL without data), updated_at as ISO 8601 UTC text."""
    usage = record.usage
    usd = context.cost(usage.input_tokens, usage.output_tokens)
    return (
        context.dag_id,
        context.source,
        record.document,
        str(record.status),
        None if record.data is None else records.encode(record.data).decode(),
        record.error,
        usage.input_tokens,
        usage.output_tokens,
        None if usd is None else round(usd, 6),
        context.model,
        context.request_digest,
        context.run_id,
        context.updated_at.astimezone(dt.timezone.utc).isoformat(timespec="microseconds"),
    )

"""The results table: 10,000 and 100,000 generated results.jsonl records upserted into PostgreSQL
(127.0.0.1:5432, user postgres; a fresh database per size, dropped after) by the DAG's step
(``steps.sink.sink_results``, through the common.sql PostgresHook of an ``AIRFLOW_CONN_...`` connection), first into
an empty table, then again as a re-run that updates every row. Memory should stay flat: the 100,000 rows' peak
RSS within 1.1x the 10,000 rows'.
"""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path

from bench.common import Row, measure

SIZES = (10_000, 100_000)
PG = {"host": "127.0.0.1", "port": 5432, "user": "postgres"}
CONN_ID = "bench_sink_pg"


def generate(output: str, count: int) -> dict:
    """``count`` invoice records (1 in 10 failed) as ``output``/results.jsonl, written as publish writes them."""
    from gemini_batch.core import jsonl
    from gemini_batch.core.results import DocumentRecord, DocumentStatus, PartRecord, Usage

    Path(output).mkdir(parents=True, exist_ok=True)
    with jsonl.writer(str(Path(output) / "results.jsonl")) as write:
        for n in range(count):
            document = f"batch-{n // 1000:03d}/invoice-{n:06d}.pdf"
            if n % 10 == 3:
                write(DocumentRecord(document, DocumentStatus.FAILED, None, "answer does not match the schema"))
                continue
            data = {
                "invoice_number": f"INV-{n:06d}",
                "date": f"2026-{n % 12 + 1:02d}-{n % 28 + 1:02d}",
                "vendor": f"Vendor {n % 97}",
                "currency": "EUR",
                "total": n * 3.5,
            }
            part = PartRecord(f"{n:064x}", None, "succeeded", "STOP", None, False)
            write(DocumentRecord(document, DocumentStatus.SUCCEEDED, data, None, (part,), Usage(766, 52)))
    return {"bytes": (Path(output) / "results.jsonl").stat().st_size}


def upsert(output: str, dbname: str, run_id: str) -> dict:
    """The sink task's step (without Airflow's task around it): results.jsonl into the table."""
    from gemini_batch.steps import sink
    from gemini_batch.steps.runs import Run

    os.environ[f"AIRFLOW_CONN_{CONN_ID.upper()}"] = json.dumps(
        {"conn_type": "postgres", "host": PG["host"], "port": PG["port"], "login": PG["user"], "schema": dbname}
    )
    run = Run.from_params({"source": str(Path(output).parent / "in"), "output": output}, run_id)
    return {"rows": sink.sink_results(run, sink.sql_hook(CONN_ID))}


def _admin(sql: str) -> None:
    import psycopg2

    try:
        conn = psycopg2.connect(dbname="postgres", connect_timeout=5, **PG)
    except psycopg2.OperationalError as exc:
        raise SystemExit(f"bench sink: PostgreSQL at 127.0.0.1:5432 is missing: {exc}") from None
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute(sql)
    conn.close()


def run(workdir: Path, sizes: tuple[int, ...] = SIZES) -> list[Row]:
    rows: list[Row] = []
    for count in sizes:
        output = workdir / f"sink-{count}" / "out"
        if not (output / "results.jsonl").exists():
            measure("bench.sink.generate", output=str(output), count=count)
        size_mb = (output / "results.jsonl").stat().st_size / 2**20
        dbname = f"gb_bench_sink_{uuid.uuid4().hex[:8]}"
        _admin(f'CREATE DATABASE "{dbname}"')
        try:
            for case, run_id in (("insert into an empty table", "bench__1"), ("re-run: update every row", "bench__2")):
                result = measure("bench.sink.upsert", output=str(output), dbname=dbname, run_id=run_id)
                assert result["rows"] == count, result
                rows.append(
                    Row(
                        "sink",
                        f"PostgreSQL: {case}",
                        f"{count:,} records ({size_mb:.1f} MB of results.jsonl)",
                        round(result["seconds"], 3),
                        f"{count / result['seconds']:,.0f} rows/s",
                        result["peak_rss_mb"],
                        extra={"rows": count, "bytes": int(size_mb * 2**20)},
                    )
                )
        finally:
            _admin(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)')
    _flat(rows, sizes)
    return rows


def _flat(rows: list[Row], sizes: tuple[int, ...], most: float = 1.1) -> None:
    """Each row of the largest size against the same case at the smallest: memory flat as records grow."""
    smallest, largest = f"{min(sizes):,} records", f"{max(sizes):,} records"
    for row in rows:
        if not row.size.startswith(largest) or smallest == largest:
            continue
        base = next(r for r in rows if r.case == row.case and r.size.startswith(smallest))
        if base.peak_rss_mb and row.peak_rss_mb:
            ratio = row.peak_rss_mb / base.peak_rss_mb
            row.compare = f"peak RSS {ratio:.2f}x the {min(sizes):,} run's"
            row.target, row.met = f"peak RSS <={most}x the {min(sizes):,} run's", ratio <= most

"""The gemini_batch_extract DAG end to end: real `airflow dags test` runs
(bin/airflow, SQLite in a temporary AIRFLOW_HOME, deferred tasks run by
dags test's in-process triggerer) against emulator processes, for both
backends, with faults on. What was submitted is read from the emulator's own
record of each job's input, not from anything the DAG says about itself."""

from __future__ import annotations

import datetime as dt
import json
import shutil

import pytest
from fpdf import FPDF

from gemini_emulator.testing import requests_made
from support.dagrun import (
    SAMPLES,
    assert_contract,
    developer_conn,
    read_results,
    round_keys,
    run_dag,
    submitted_jobs,
    submitted_keys,
)
from support.emulators import developer_client, storage_client


@pytest.fixture
def source(tmp_path):
    folder = tmp_path / "source"
    shutil.copytree(SAMPLES, folder)
    return folder


def test_developer_run_over_the_samples(airflow_home, source, tmp_path, start_emulator):
    server = start_emulator(time_scale=600)
    output = tmp_path / "out"
    done = run_dag(
        airflow_home, developer_conn(server.url), {"source": str(source), "output": str(output)}, "2026-11-01"
    )
    done.check()

    records, summary = read_results(output)
    assert_contract(records, summary, source)
    assert records["corrupt.pdf"]["status"] == "rejected" and "corrupt PDF" in records["corrupt.pdf"]["error"]
    assert records["invoice-1.pdf"]["status"] == "succeeded"
    assert records["invoice-1-copy.pdf"]["data"] == records["invoice-1.pdf"]["data"]
    statement = records["statement-120-pages.pdf"]
    assert [p["pages"] for p in statement["parts"]] == [[1, 50], [51, 100], [101, 120]]
    assert statement["status"] == "succeeded"
    assert summary["rejected"] == 1 and summary["succeeded"] == 7 and summary["retry_rounds"] == 0

    # 8 documents, 1 rejected, one duplicate, the statement in 3 parts: 8 requests, each submitted once
    keys = submitted_keys(server)
    assert summary["requests"] == 8 == sum(map(len, keys)) == len({k for job in keys for k in job})
    assert summary["jobs"] == len(keys) == 1
    assert summary["input_tokens"] > 0
    # Every sample is small: each goes inline in its row, so the job's JSONL is the one upload; clean-up
    # (retention "staged", the default) deletes it.
    starts = [r for r in requests_made(server, "POST", "/upload/v1beta/files") if "upload_id=" not in r["query"]]
    assert len(starts) == 1, starts
    client = developer_client(server.url)
    assert [f.source.name for f in client.files.list()] == ["GENERATED"], "only the job's output file is left"

    # Incremental: the same folder again plans and submits nothing, and every record is still there.
    output2 = tmp_path / "out2"
    again = run_dag(
        airflow_home, developer_conn(server.url), {"source": str(source), "output": str(output2)}, "2026-11-02"
    )  # the same (default) ledger
    again.check()
    records2, summary2 = read_results(output2)
    assert_contract(records2, summary2, source)
    assert (summary2["requests"], summary2["jobs"]) == (0, 0)
    assert len(submitted_keys(server)) == 1
    assert summary2["reused"] == 7
    assert records2["invoice-2.pdf"]["data"] == records["invoice-2.pdf"]["data"] and records2["invoice-2.pdf"]["reused"]


def test_faults_retry_only_what_failed(airflow_home, source, tmp_path, start_emulator):
    for n in range(6, 26):  # more documents, so each kind of fault hits some
        pdf = FPDF()
        pdf.set_creation_date(dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc))  # the same keys, the same faults
        pdf.add_page()
        pdf.set_font("helvetica", size=12)
        pdf.cell(text=f"Invoice INV-{n:04d} total {n * 10}.00 EUR")
        pdf.output(str(source / f"more-{n}.pdf"))
    faults = {
        "seed": 7,
        "row_error_rate": 0.15,
        "fenced_rate": 0.2,
        "truncated_rate": 0.1,
        "job_expire_rate": 0.3,
        "job_expiry_hours": 0.5,  # an EXPIRED job ends after 3 s here, with part of its rows answered
        "http": {"get": {"rate": 0.3, "codes": [503]}, "upload": {"burst": 2, "codes": [503]}},
    }
    server = start_emulator(time_scale=600, faults=faults)
    output = tmp_path / "out"
    done = run_dag(
        airflow_home,
        developer_conn(server.url),
        {"source": str(source), "output": str(output), "max_rows_per_job": 10},
        "2026-11-03",
    )
    done.check()
    records, summary = read_results(output)
    assert_contract(records, summary, source)

    first = round_keys(server, 0)
    assert len(first) == len(set(first)) == 28  # 28 requests in 3 shards of at most 10
    sent = sum(len(round_keys(server, r)) for r in range(4))
    assert summary["requests"] == sent > 28, "the summary counts every row this run sent, in every round"
    # The DAG's record of round 0 (every key: answered, failed, or missing from an EXPIRED job's output) ...
    work = next((output / "_work").iterdir())
    outcomes = [json.loads(line) for line in (work / "round-0" / "outcomes.jsonl").read_text().splitlines()]
    assert sorted(o["key"] for o in outcomes) == sorted(first)
    failed_first = {o["key"] for o in outcomes if o["status"] == "failed"}
    assert failed_first and len(failed_first) < len(first)
    # ... matches what the emulator received next: exactly the failed keys, and never a key that succeeded.
    assert sorted(round_keys(server, 1)) == sorted(failed_first)
    later = {k for r in (1, 2, 3) for k in round_keys(server, r)}
    assert later <= failed_first
    assert summary["retry_rounds"] >= 1 and summary["jobs"] == len(submitted_jobs(server))
    assert any("EXPIRED" in (o["error"] or "") for o in outcomes), "an expired job's unfinished rows were retried"
    # the emulator, like the service, answers a resubmitted row afresh: the retries recover most documents
    assert summary["succeeded"] > len(first) - len(failed_first)


def test_budget_gate_fails_before_submitting(airflow_home, source, tmp_path, start_emulator):
    server = start_emulator(time_scale=600)
    output = tmp_path / "out"
    done = run_dag(
        airflow_home,
        developer_conn(server.url),
        {"source": str(source), "output": str(output), "max_cost_usd": 0.000001},
        "2026-11-04",
    )
    assert done.state == "failed"
    assert "exceeds max_cost_usd" in done.log and "estimated cost $" in done.log
    assert submitted_keys(server) == []
    assert not (output / "results.jsonl").exists()


def test_vertex_run_through_gcs(airflow_home, source, tmp_path, start_emulator, gcs):
    """A gs:// source on Vertex: whole documents are referenced where they are (nothing copied), the statement's
    page ranges go inline; the job reads and writes gs://."""
    server = start_emulator(time_scale=600, gcs_endpoint=gcs.url)
    bucket = storage_client(gcs.url).bucket("test-bucket")
    for path in sorted(source.rglob("*")):
        if path.is_file():
            bucket.blob(f"dag-vertex-landing/{path.relative_to(source)}").upload_from_filename(path)
    conn = {
        "conn_type": "generic",
        "extra": {
            "backend": "vertex",
            "base_url": server.url,
            "project": "test-project",
            "location": "us-central1",
            "gcp_conn_id": "gcs_emulator",
        },
    }
    gcp = json.dumps({"conn_type": "google_cloud_platform", "extra": {"is_anonymous": True, "project": "test-project"}})
    output = tmp_path / "out"
    done = run_dag(
        airflow_home,
        conn,
        {
            "source": "gs://test-bucket/dag-vertex-landing",
            "output": str(output),
            "staging_prefix": "gs://test-bucket/dag-vertex",
        },
        "2026-11-05",
        extra_env={"AIRFLOW_CONN_GCS_EMULATOR": gcp, "STORAGE_EMULATOR_HOST": gcs.url},
    )
    done.check()
    records, summary = read_results(output)
    assert_contract(records, summary, source)
    assert summary["succeeded"] == 7 and summary["jobs"] == 1
    assert sum(map(len, submitted_keys(server))) == 8
    jobs_dir = server.log_path.parent / "jobs"
    (job_input,) = jobs_dir.glob("*.input.jsonl")
    documents = [
        row["request"]["contents"][0]["parts"][1] for row in map(json.loads, job_input.read_text().splitlines())
    ]
    in_place = sorted(d["fileData"]["fileUri"] for d in documents if "fileData" in d)
    assert in_place == [
        f"gs://test-bucket/dag-vertex-landing/{name}"
        for name in ("invoice-1-copy.pdf", "invoice-2.pdf", "invoice-3.pdf", "scans/invoice-5.png")
    ], in_place
    # (invoice-1.pdf has the copy's bytes and key: one request, for the first in discovery order)
    assert sum("inlineData" in d for d in documents) == 3  # the statement's three page ranges
    assert not list(bucket.list_blobs(prefix="dag-vertex/documents/")), "nothing was copied to the staging prefix"


def test_dated_source_and_output_follow_the_logical_date(airflow_home, tmp_path, start_emulator):
    """What nightly runs and backfills do: `{{ ds }}` in source and output picks each day's folder."""
    landing, out = tmp_path / "landing", tmp_path / "extracted"
    for day, count in (("2026-11-06", 1), ("2026-11-07", 2)):
        shutil.copytree(SAMPLES, landing / day, ignore=shutil.ignore_patterns("*.pdf", "scans"))  # the Markdown one
        for n in range(1, count):
            (landing / day / f"note-{n}.txt").write_text(f"Invoice T-{n} of {day}, total 12.50 EUR\n")
    server = start_emulator(time_scale=600)
    conf = {"source": f"{landing}/{{{{ ds }}}}/", "output": f"{out}/{{{{ ds }}}}", "state": str(out / "_state")}
    for day in ("2026-11-06", "2026-11-07"):
        run_dag(airflow_home, developer_conn(server.url), conf, day).check()
    first, summary1 = read_results(out / "2026-11-06")
    second, summary2 = read_results(out / "2026-11-07")
    assert sorted(first) == ["invoice-4.md"] and sorted(second) == ["invoice-4.md", "note-1.txt"]
    # the same Markdown invoice on both days: answered once, reused the second day
    assert (summary1["requests"], summary2["requests"]) == (1, 1)
    assert second["invoice-4.md"]["reused"] and second["invoice-4.md"]["data"] == first["invoice-4.md"]["data"]


def test_a_shut_down_model_fails_the_run_before_anything_is_uploaded(airflow_home, source, tmp_path, start_emulator):
    server = start_emulator(time_scale=600)
    output = tmp_path / "out"
    done = run_dag(
        airflow_home,
        developer_conn(server.url),
        {"source": str(source), "output": str(output), "model": "gemini-2.5-flash"},
        "2026-11-06",
    )
    assert done.state == "failed"
    assert (
        "model 'gemini-2.5-flash': the service does not know it (unknown or shut down); batch-capable models:"
        in done.log
    )
    assert "gemini-2.5-flash-lite, " in done.log and "gemini-3.8-flash" in done.log
    assert "up_for_retry" not in done.log.lower(), "a parameter error is not retried"
    sent = requests_made(server)
    assert not [r for r in sent if r["path"].startswith("/upload/") or r["method"] == "POST"], "nothing was uploaded"
    assert [r["path"] for r in sent if r["path"].startswith("/v1beta/models")][:1] == [
        "/v1beta/models/gemini-2.5-flash"
    ]


def test_a_model_without_a_price_runs_at_an_unknown_cost_unless_a_budget_is_set(
    airflow_home, source, tmp_path, start_emulator
):
    server = start_emulator(time_scale=600)
    conf = {"source": str(source), "model": "gemini-3.5-flash-lite"}
    done = run_dag(airflow_home, developer_conn(server.url), {**conf, "output": str(tmp_path / "a")}, "2026-11-07")
    done.check()
    records, summary = read_results(tmp_path / "a")
    assert_contract(records, summary, source)
    assert summary["succeeded"] == 7 and summary["estimated_cost_usd"] is None and summary["input_tokens"] > 0
    assert "The cost of this run is unknown: no price for model 'gemini-3.5-flash-lite'" in done.log

    conf["prompt"] = "Extract the invoice total."  # new keys: the ledger holds the first prompt's answers
    budget = run_dag(
        airflow_home,
        developer_conn(server.url),
        {**conf, "output": str(tmp_path / "b"), "max_cost_usd": 10},
        "2026-11-08",
    )
    assert budget.state == "failed"
    assert "max_cost_usd $10.0000 is set but the cost cannot be estimated" in budget.log
    assert "Variable gemini_batch_prices" in budget.log

    price = {"models": {"gemini-3.5-flash-lite": {"input_per_million": 0.2, "output_per_million": 0.8}}}
    priced = run_dag(
        airflow_home,
        developer_conn(server.url),
        {**conf, "output": str(tmp_path / "c"), "max_cost_usd": 10},
        "2026-11-09",
        extra_env={"AIRFLOW_VAR_GEMINI_BATCH_PRICES": json.dumps(price)},
    )
    priced.check()
    assert read_results(tmp_path / "c")[1]["estimated_cost_usd"] > 0

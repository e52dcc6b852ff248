"""Runs that share one world: the next night's run, two runs of the same documents at once, a run after another
was killed mid-wait. Real `airflow dags test` processes, one ledger (GEMINI_BATCH_STATE), one emulator; what was
requested is counted from the emulator's own record of every job's input."""

from __future__ import annotations

import datetime as dt
import json
import time
from collections import Counter
from pathlib import Path

import pytest
from fpdf import FPDF

from gemini_batch.core.batch_requests import RequestSpec, build_row
from gemini_emulator import responder
from gemini_emulator.testing import requests_made
from support.dagrun import (
    assert_contract,
    developer_conn,
    new_airflow_home,
    read_results,
    run_dag,
    start_dag,
    submitted_jobs,
    submitted_keys,
)


def write_invoices(folder: Path, names: list[str]) -> None:
    """Real one-page PDFs, each with its own text (so its own key). The creation date is fixed, so the same
    names give the same bytes, the same keys and so the same seeded faults on every run of the test."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        pdf = FPDF()
        pdf.set_creation_date(dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc))
        pdf.add_page()
        pdf.set_font("Helvetica", size=12)
        pdf.cell(text=f"Invoice {name}: total 10.00 EUR")
        pdf.output(str(folder / f"{name}.pdf"))


def requested_keys(server) -> list[str]:
    return [key for _, keys in submitted_jobs(server) for key in keys]


def test_the_next_nights_run_over_an_unchanged_folder_requests_nothing(airflow_home, tmp_path, start_emulator):
    """A landing folder without {{ ds }}, the per-day output, no state param: the DAG's ledger carries over."""
    server = start_emulator(time_scale=3600)
    landing = tmp_path / "landing"
    write_invoices(landing, ["a", "b", "c"])
    conf = {"source": str(landing), "output": str(tmp_path / "output" / "{{ ds }}")}
    conn = developer_conn(server.url)

    run_dag(airflow_home, conn, conf, "2026-11-01").check()
    assert len(requested_keys(server)) == 3
    run_dag(airflow_home, conn, conf, "2026-11-02").check()
    assert len(requested_keys(server)) == 3, "the second night sent nothing"
    records, summary = read_results(tmp_path / "output" / "2026-11-02")
    assert_contract(records, summary, landing)
    assert summary["reused"] == summary["succeeded"] == 3 and summary["jobs"] == 0
    assert all(r["reused"] and r["data"] for r in records.values())

    write_invoices(landing, ["d"])
    run_dag(airflow_home, conn, conf, "2026-11-03").check()
    sent = requested_keys(server)
    assert len(sent) == 4 and len(set(sent)) == 4, "only the new document was sent"
    records, summary = read_results(tmp_path / "output" / "2026-11-03")
    assert summary["succeeded"] == 4 and summary["reused"] == 3 and not records["d.pdf"]["reused"]
    print(f"[nightly] requests sent per night: 3, 0, {len(sent) - 3}")


@pytest.fixture
def second_airflow_home(tmp_path_factory):
    """Another Airflow (its own metadata database) whose runs share the first one's ledger."""
    return new_airflow_home(tmp_path_factory.mktemp("airflow-home-2"))


def overlap(tmp_path, start_emulator, pending_seconds: float):
    """An emulator whose jobs pend ``pending_seconds`` (emulated, at 600x), 6 PDFs, the connection, one ledger."""
    server = start_emulator(time_scale=600, faults={"pending_seconds": pending_seconds})
    source = tmp_path / "source"
    write_invoices(source, [f"doc-{n}" for n in range(6)])
    return server, source, developer_conn(server.url), {"GEMINI_BATCH_STATE": str(tmp_path / "ledgers")}


def test_two_runs_started_together_request_each_key_once(airflow_home, second_airflow_home, tmp_path, start_emulator):
    """Both plan the same 6 PDFs at the same moment; the leases decide who requests each key, the other waits."""
    server, source, conn, ledger = overlap(tmp_path, start_emulator, 3000)  # jobs pend 5 s: the runs overlap
    first = start_dag(
        airflow_home, conn, {"source": str(source), "output": str(tmp_path / "out-1")}, "2026-11-05", ledger
    )
    second = start_dag(
        second_airflow_home, conn, {"source": str(source), "output": str(tmp_path / "out-2")}, "2026-11-05", ledger
    )
    runs = [first.wait(), second.wait()]
    for run in runs:
        run.check()

    sent = Counter(requested_keys(server))
    assert len(sent) == 6 and set(sent.values()) == {1}, f"each key requested once in all: {sent}"
    reused, requests = [], []
    for output in ("out-1", "out-2"):
        records, summary = read_results(tmp_path / output)
        assert_contract(records, summary, source)
        assert summary["succeeded"] == 6 and summary["retry_rounds"] == 0, summary
        reused.append(summary["reused"])
        requests.append(summary["requests"])
    assert sum(reused) == 6, f"what one run requested the other reused: {reused}"
    assert sum(requests) == sum(sent.values()) == 6, f"each summary counts only the rows its own jobs sent: {requests}"
    print(f"[overlap, together] requests sent {sum(sent.values())} for 6 documents in 2 runs; reused {reused}")


def test_a_run_triggered_while_another_waits_takes_its_answers(
    airflow_home, second_airflow_home, tmp_path, start_emulator
):
    """The second run starts once the first one's job exists: it waits for that job instead of paying again,
    and the first run's clean-up leaves nothing the second needs missing."""
    server, source, conn, ledger = overlap(tmp_path, start_emulator, 6000)  # 10 s pending
    first = start_dag(
        airflow_home, conn, {"source": str(source), "output": str(tmp_path / "out-1")}, "2026-11-06", ledger
    )
    wait_for_jobs(server, 1)
    second = start_dag(
        second_airflow_home, conn, {"source": str(source), "output": str(tmp_path / "out-2")}, "2026-11-06", ledger
    )
    first.wait().check()
    second.wait().check()

    assert (
        len(submitted_jobs(server)) == 1
        and Counter(requested_keys(server)) == Counter(dict.fromkeys(requested_keys(server), 1))
        and len(requested_keys(server)) == 6
    )
    _records, summary = read_results(tmp_path / "out-2")
    assert summary["succeeded"] == 6 and summary["reused"] == 6 and summary["jobs"] == summary["requests"] == 0
    assert summary["retry_rounds"] == 0 and summary["input_tokens"] == 0, "the first run paid; this one did not"
    print(f"[overlap, while waiting] requests sent {len(requested_keys(server))} for 6 documents in 2 runs")


def test_a_run_after_one_killed_mid_wait_takes_over_and_pays_only_for_what_failed(
    airflow_home, tmp_path, start_emulator
):
    """The first run dies while its job runs. The next waits for that job, keeps every answer it gave, and
    requests again only the rows the job failed (its leases taken over)."""
    server = start_emulator(time_scale=600, faults={"pending_seconds": 6000, "row_error_rate": 0.3, "seed": 5})
    source = tmp_path / "source"
    write_invoices(source, [f"doc-{n}" for n in range(8)])
    conn = developer_conn(server.url)
    conf = {"source": str(source), "output": str(tmp_path / "out-{{ ds }}")}
    killed = start_dag(airflow_home, conn, conf, "2026-11-07")
    wait_for_jobs(server, 1)
    killed.kill()

    run_dag(airflow_home, conn, conf, "2026-11-08").check()
    jobs = submitted_jobs(server)
    first_keys = jobs[0][1]
    failed_first = failed_rows(server, jobs[0][0])
    later = [key for _, keys in jobs[1:] for key in keys]
    assert len(first_keys) == 8
    assert failed_first, "the fault plan failed some rows of the killed run's job"
    assert set(later) <= set(failed_first), "nothing the killed run's job answered was requested again"
    records, summary = read_results(tmp_path / "out-2026-11-08")
    assert_contract(records, summary, source)
    answered_first = set(first_keys) - set(failed_first)
    assert {r["parts"][0]["key"] for r in records.values() if r["reused"]} >= answered_first
    print(
        f"[killed mid-wait] first job {len(first_keys)} rows ({len(failed_first)} failed); "
        f"the next run requested {len(later)} ({summary})"
    )


def wait_for_jobs(server, count: int, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while len(submitted_jobs(server)) < count:
        assert time.monotonic() < deadline, f"no {count} job(s) after {timeout} s"
        time.sleep(0.5)


def failed_rows(server, display_name: str) -> list[str]:
    """Keys of the rows the emulator answered with an error in the job of that display name (its Files API output)."""
    jobs_dir = server.log_path.parent / "jobs"
    job = next(
        json.loads(p.read_text())
        for p in jobs_dir.glob("*.json")
        if json.loads(p.read_text())["display_name"] == display_name
    )
    output = server.log_path.parent / "files" / f"batch-{job['id']}.bin"  # the job's output file
    rows = [json.loads(line) for line in output.read_text().splitlines() if line.strip()]
    return [row["key"] for row in rows if "error" in row]


@pytest.mark.parametrize("stated", [False, True], ids=["quota-unknown", "quota-in-connection"])
def test_a_run_holding_six_times_the_quota_completes_within_it(airflow_home, tmp_path, start_emulator, stated):
    """An account whose model may hold two requests' tokens at once; the run's twelve requests hold six times
    that. Not stated anywhere (one request a shard here): the creates over it are answered 429, the submits
    wait deferred and try again as jobs end. Stated in the connection: the shards are sized to fit it and a
    submit waits until the ledger's jobs in flight leave room, so nothing is refused. Either way the run
    completes, and the emulator's own records show the quota was never exceeded."""
    source = tmp_path / "source"
    write_invoices(source, [f"doc-{n:02d}" for n in range(12)])  # one page each: the same tokens a request
    prompt = "Extract the invoice number and total."
    request = build_row(
        "k", RequestSpec(model="gemini-2.5-flash-lite", prompt=prompt), file_uri="files/x", mime_type="application/pdf"
    )["request"]
    per_job = responder.request_tokens(request, lambda uri: (source / "doc-00.pdf", "application/pdf"))
    limit = 2 * per_job  # the 12 requests hold 6x the quota
    server = start_emulator(time_scale=600, faults={"pending_seconds": 600, "enqueued_token_limit": limit})
    conn, conf = developer_conn(server.url), {"prompt": prompt, "response_schema": None}
    if stated:
        conn["extra"]["enqueued_token_limit"] = limit
    else:
        conf["max_rows_per_job"] = 1
    started = time.monotonic()
    run_dag(airflow_home, conn, {"source": str(source), "output": str(tmp_path / "out"), **conf}, "2026-11-09").check()
    wall = time.monotonic() - started
    records, summary = read_results(tmp_path / "out")
    assert_contract(records, summary, source)
    assert summary["succeeded"] == 12 and summary["jobs"] == 12 and summary["retry_rounds"] == 0, summary

    most, jobs = tokens_in_flight(server)
    assert len(jobs) == 12 and {j["tokens"] for j in jobs} == {per_job}
    refused = [
        r for r in requests_made(server, "POST") if r["path"].endswith(":batchGenerateContent") and r["status"] == 429
    ]
    assert most <= limit, f"{most} tokens in flight over the limit of {limit}"
    if stated:  # admitted by the ledger from the estimate, which errs high: one job at a time here
        assert refused == [] and most >= per_job, "the ledger kept every create within the quota"
    else:
        assert most == limit and refused, "the quota was reached and creates over it were refused"
    print(
        f"[quota, {'stated' if stated else 'unknown'}] {len(jobs)} jobs of {per_job} tokens, limit {limit} "
        f"(6x over in all): at most {most} tokens in "
        f"flight, {len(refused)} creates refused 429, wall {wall:.0f} s"
    )


def write_notes(folder: Path, count: int) -> None:
    """``count`` text documents of about the same length, each its own key."""
    folder.mkdir(parents=True, exist_ok=True)
    for n in range(count):
        (folder / f"note-{n:02d}.txt").write_text(f"Invoice Number: INV-{n:04d}\nTotal: {n}.00 EUR\n" * 20)


def tokens_in_flight(server) -> tuple[int, list[dict]]:
    """The most input tokens the emulator's jobs held at once (its own records), and those jobs."""
    jobs = [json.loads(p.read_text()) for p in (server.log_path.parent / "jobs").glob("*.json")]
    held, most = 0, 0
    for _, change in sorted(
        [(j["create_time"], j["tokens"]) for j in jobs] + [(j["end_time"], -j["tokens"]) for j in jobs],
        key=lambda event: (event[0], event[1]),
    ):  # at one instant an end comes before a start
        held += change
        most = max(most, held)
    return most, jobs


def test_a_shard_alone_over_an_unstated_quota_is_split_until_its_parts_fit(airflow_home, tmp_path, start_emulator):
    """60 text documents in one shard; the model's enqueued-token quota, stated nowhere, is a sixth of their
    tokens, and one more document is over it on its own. The service refuses the shard with nothing else in
    flight, so no wait can help: the submit splits it in halves until a piece is accepted, then submits the
    pieces in turn as quota frees up. Each piece's JSONL is uploaded once, the quota is never exceeded (the
    emulator's own records), the 60 succeed and the one over the quota fails naming it, in every round."""
    source = tmp_path / "source"
    write_notes(source, 60)
    prompt = "Extract the invoice number and total."
    spec = RequestSpec(model="gemini-2.5-flash-lite", prompt=prompt)

    def tokens(path: Path) -> int:
        return responder.request_tokens(build_row("k", spec, text=path.read_text())["request"], lambda uri: None)

    notes_tokens = sum(tokens(p) for p in source.iterdir())
    limit = notes_tokens // 6
    (source / "huge.txt").write_text("Invoice Number: INV-HUGE\n" * (limit // 4))
    assert tokens(source / "huge.txt") > limit
    server = start_emulator(time_scale=600, faults={"pending_seconds": 300, "enqueued_token_limit": limit})
    started = time.monotonic()
    run = run_dag(
        airflow_home,
        developer_conn(server.url),
        {
            "source": str(source),
            "output": str(tmp_path / "out"),
            "prompt": prompt,
            "response_schema": None,
            "retry_rounds": 1,
        },
        "2026-11-10",
    )
    wall = time.monotonic() - started
    run.check()
    records, summary = read_results(tmp_path / "out")
    assert_contract(records, summary, source)
    assert (summary["succeeded"], summary["failed"], summary["requests"], summary["retry_rounds"]) == (60, 1, 60, 1)
    assert "enqueued-token quota" in records["huge.txt"]["error"], records["huge.txt"]

    most, jobs = tokens_in_flight(server)
    assert most <= limit, f"{most} tokens in flight over the quota of {limit}"
    assert sum(j["request_count"] for j in jobs) == 60 == len({k for keys in submitted_keys(server) for k in keys})
    assert summary["jobs"] == len(jobs) and all(j["tokens"] <= limit for j in jobs)
    refused = [
        r for r in requests_made(server, "POST") if r["path"].endswith(":batchGenerateContent") and r["status"] == 429
    ]
    uploads = [r for r in requests_made(server, "POST", "/upload/v1beta/files") if "upload_id=" in r["query"]]
    # Halving gives a binary tree whose leaves are the jobs and the refused request: 2 x leaves - 1 shards and
    # pieces, each uploaded once; the retry round uploads the refused request's shard once more.
    assert len(uploads) == 2 * (len(jobs) + 1) - 1 + 1, f"{len(uploads)} JSONL uploads for {len(jobs)} jobs"
    print(
        f"[quota, shard alone over it] {len(jobs)} jobs for 60 requests, quota {limit} of {notes_tokens} tokens: at "
        f"most {most} in flight, {len(refused)} creates refused 429, {len(uploads)} JSONL uploads, wall {wall:.0f} s"
    )

"""The fault matrix: one real `airflow dags test` run per scenario against an emulator with that fault
switched on, then the four invariants, checked against the emulator's own records rather than the DAG's account:

1. every document under `source` is in results.jsonl exactly once and summary.json adds up;
2. no key is submitted again after it succeeded, at most one job exists per shard and round, and no more
   retry rounds run than configured;
3. every failure carries a reason a person can act on, in results.jsonl and in the task log;
4. the API key (a unique value per run) appears nowhere: not in the task logs, the Airflow database (XCom,
   trigger rows, rendered templates), the output, or the emulator's records of what it was sent.

The Airflow-stack scenarios of the matrix (triggerer restarted mid-wait, worker killed mid-task) are in
tests/test_stack.py; the table in the README gathers both.
"""

from __future__ import annotations

import collections
import datetime as dt
import json
import re
import secrets
import shutil
import threading
import time
from pathlib import Path

import pytest
from fpdf import FPDF

from gemini_emulator.testing import gemini_emulator
from support.dagrun import SAMPLES, assert_contract, read_results, run_dag

REPORT = Path(__file__).resolve().parents[2] / "artifacts" / "reliability.jsonl"
EXTRA_PDFS, EXTRA_NOTES = 40, 152  # with the 8 samples: 200 documents, 200 requests, 8 shards of 25 in round 0
pytestmark = pytest.mark.timeout(600)


class Seen:
    """What one run left to look at: the emulator's jobs and log, the DAG's log and its round-0 outcomes."""

    def __init__(self, jobs: list[dict], emulator_log: str, dag_log: str, round0: list[dict]):
        self.jobs, self.emulator_log, self.dag_log, self.round0 = jobs, emulator_log, dag_log, round0

    def failed_rows(self, text: str = "") -> int:
        return sum(o["status"] != "succeeded" and text in f"{o['error']} {o['finish_reason']}" for o in self.round0)

    def jobs_ended(self, state: str) -> int:
        return sum(job["state"] == state for job in self.jobs)

    def http_faults(self, endpoint: str) -> int:
        return self.emulator_log.count(f"on {endpoint}\n")


# scenario -> (emulator faults, extra DAG params, how many times the fault hit: must be > 0, else the scenario
# proved nothing). Time scale 3600: an emulated hour is a real second.
SCENARIOS = {
    "row errors 1%": ({"row_error_rate": 0.01}, {}, lambda s: s.failed_rows("row error")),
    "row errors 10%": ({"row_error_rate": 0.10}, {}, lambda s: s.failed_rows("row error")),
    "row errors 50%": ({"row_error_rate": 0.50}, {"retry_rounds": 3}, lambda s: s.failed_rows("row error")),
    "fenced, prose-wrapped and truncated JSON": (
        {"fenced_rate": 0.2, "prose_rate": 0.2, "truncated_rate": 0.15},
        {},
        lambda s: s.failed_rows(),
    ),
    "SAFETY and RECITATION finishes": (
        {"safety_rate": 0.1, "recitation_rate": 0.1},
        {},
        lambda s: s.failed_rows("SAFETY") + s.failed_rows("RECITATION"),
    ),
    "rows missing from the output": ({"missing_rate": 0.15}, {}, lambda s: s.failed_rows("no answer")),
    "output corrupted mid-line": ({"corrupt_rate": 0.15}, {}, lambda s: s.failed_rows("no answer")),
    "whole job FAILED": ({"job_fail_rate": 0.5}, {}, lambda s: s.jobs_ended("FAILED")),
    # the service expires a job after 24 h; here after 6 emulated hours (6 s)
    "job EXPIRED (time-scaled)": (
        {"job_expire_rate": 0.5, "job_expiry_hours": 6, "seed": 14},
        {},
        lambda s: s.jobs_ended("EXPIRED"),
    ),
    # the emulator would expire a stuck job after 24 emulated hours (24 s); the DAG's deadline comes first
    "job stuck PENDING past the deadline": (
        {"stuck_pending_rate": 0.5, "seed": 32},
        {"expiry_hours": 0.002},
        lambda s: s.jobs_ended("CANCELLED"),
    ),
    "429/503 burst on create": (
        {"http": {"create": {"burst": 4, "codes": [429, 503]}}},
        {},
        lambda s: s.http_faults("create"),
    ),
    "429/503 burst on get": ({"http": {"get": {"burst": 6, "codes": [429, 503]}}}, {}, lambda s: s.http_faults("get")),
    # every PDF uploaded first (inline_max_mb 0): the burst hits document uploads as well as the JSONL's
    "429/503 burst on upload": (
        {"http": {"upload": {"burst": 6, "codes": [429, 503]}}},
        {"inline_max_mb": 0},
        lambda s: s.http_faults("upload"),
    ),
    "429/503 burst on download": (
        {"http": {"download": {"burst": 4, "codes": [429, 503]}}},
        {},
        lambda s: s.http_faults("download"),
    ),
    # staged documents (inline_max_mb 0: every PDF) live 6 emulated hours (6 s): round 0 reads them, the retry
    # round finds them gone and uploads them again
    "Files API upload expired before a retry round": (
        {"file_ttl_hours": 6, "row_error_rate": 0.3},
        {"inline_max_mb": 0},
        lambda s: s.dag_log.count(" is unusable (state"),
    ),
}


@pytest.fixture(scope="module", autouse=True)
def fresh_report():
    REPORT.unlink(missing_ok=True)


@pytest.fixture(scope="module")
def documents(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("reliability-source")
    shutil.copytree(SAMPLES, folder, dirs_exist_ok=True)
    for n in range(EXTRA_PDFS):
        pdf = FPDF()
        pdf.set_creation_date(dt.datetime(2026, 11, 1, tzinfo=dt.timezone.utc))  # same bytes, same keys, same faults
        pdf.add_page()
        pdf.set_font("helvetica", size=12)
        pdf.cell(
            text=f"Invoice R-{n:04d} from Vendor {n % 7}, total {n * 3 + 1}.25 EUR, dated 2026-10-{n % 28 + 1:02d}"
        )
        pdf.output(str(folder / f"invoice-r{n:03d}.pdf"))
    for n in range(EXTRA_NOTES):
        (folder / f"note-{n:03d}.txt").write_text(f"Invoice N-{n:04d}: {n % 9 + 1} items, total {n * 7 + 3}.10 USD\n")
    return folder


def emulator_jobs(data_dir: Path) -> list[dict]:
    """Every job the emulator created, oldest first, with the keys of its input (its own record)."""
    jobs = []
    for path in (data_dir / "jobs").glob("*.json"):
        job = json.loads(path.read_text())
        lines = (data_dir / "jobs" / f"{job['id']}.input.jsonl").read_text().splitlines()
        jobs.append({**job, "keys": [json.loads(line)["key"] for line in lines if line.strip()]})
    return sorted(jobs, key=lambda j: j["create_time"])


NAME = re.compile(r"^gb-(?P<run>[0-9a-f]+)-r(?P<round>\d+)-shard-(?P<shard>\d+)-[0-9a-f]+$")


def check_invariants(
    source: Path, output: Path, log: str, data_dir: Path, airflow_home: Path, secret: str, retry_rounds: int
) -> dict:
    """Assert the four invariants; return the numbers the README's table reports."""
    # 1. every document once; the summary adds up
    records, summary = read_results(output)
    assert_contract(records, summary, source)

    # 2. per shard and round at most one job; no key after it succeeded; rounds within the configured number
    jobs = emulator_jobs(data_dir)
    names = [NAME.match(job["display_name"]) for job in jobs]
    assert all(names), [job["display_name"] for job in jobs]
    per_slot = collections.Counter((m["run"], int(m["round"]), int(m["shard"])) for m in names)
    assert max(per_slot.values()) == 1, {k: v for k, v in per_slot.items() if v > 1}
    rounds_run = max(int(m["round"]) for m in names)
    assert rounds_run <= retry_rounds and summary["retry_rounds"] <= retry_rounds
    work = next((output / "_work").iterdir())
    succeeded: set[str] = set()
    for round_ in range(rounds_run + 1):
        sent = [k for job, m in zip(jobs, names, strict=False) if int(m["round"]) == round_ for k in job["keys"]]
        assert not succeeded & set(sent), f"round {round_} resent keys that had succeeded"
        assert len(sent) == len(set(sent)), f"round {round_} sent a key twice"
        outcomes = work / f"round-{round_}" / "outcomes.jsonl"
        for line in outcomes.read_text().splitlines() if outcomes.exists() else []:
            outcome = json.loads(line)
            if outcome["status"] == "succeeded":
                succeeded.add(outcome["key"])
    assert summary["jobs"] == len(jobs)

    # 3. a reason for every failure, in results.jsonl and in the task log
    unsucceeded = [r for r in records.values() if r["status"] != "succeeded"]
    for record in unsucceeded:
        assert isinstance(record["error"], str) and len(record["error"]) >= 10, record
        assert f"{record['status'].capitalize()} {record['document']}: " in log, f"{record['document']} not in the log"

    # 4. the API key nowhere
    leaks = places_holding(secret, output, airflow_home, data_dir)
    assert not leaks and secret not in log, f"the API key is in {leaks or 'the task log'}"

    return {
        "documents": summary["documents"],
        "succeeded": summary["succeeded"],
        "failed": summary["failed"],
        "rejected": summary["rejected"],
        "jobs": summary["jobs"],
        "retry_rounds": summary["retry_rounds"],
        "requests_sent": sum(len(j["keys"]) for j in jobs),
    }


def places_holding(secret: str, *folders: Path) -> list[str]:
    """Every file under the folders whose bytes contain the secret (the Airflow database file included)."""
    return [
        str(p) for folder in folders for p in folder.rglob("*") if p.is_file() and secret.encode() in p.read_bytes()
    ]


def report(scenario: str, row: dict) -> None:
    """Append the scenario's numbers to artifacts/reliability.jsonl (the README table is built from it)."""
    REPORT.parent.mkdir(parents=True, exist_ok=True)
    with REPORT.open("a") as out:
        out.write(json.dumps({"scenario": scenario, **row}) + "\n")


def conn_for(url: str, secret: str) -> dict:
    return {"conn_type": "generic", "password": secret, "extra": {"backend": "developer", "base_url": url}}


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_fault(scenario, documents, airflow_home, tmp_path, start_emulator):
    faults, params, hits = SCENARIOS[scenario]
    # uploads live 1000 emulated hours unless the scenario says otherwise (the default 48 h is 48 s here)
    server = start_emulator(time_scale=3600, faults={"seed": 11, "file_ttl_hours": 1000, **faults})
    output, secret = tmp_path / "out", f"AIza-test-{secrets.token_hex(16)}"
    conf = {"source": str(documents), "output": str(output), "max_rows_per_job": 25, "retry_rounds": 2, **params}
    t0 = time.monotonic()
    run = run_dag(airflow_home, conn_for(server.url, secret), conf, "2026-11-10")
    seconds = time.monotonic() - t0
    run.check()
    row = check_invariants(
        documents, output, run.log, server.log_path.parent, airflow_home, secret, conf["retry_rounds"]
    )
    round0 = next((output / "_work").iterdir()) / "round-0" / "outcomes.jsonl"
    seen = Seen(
        emulator_jobs(server.log_path.parent),
        server.log_path.read_text(),
        run.log,
        [json.loads(line) for line in round0.read_text().splitlines()],
    )
    fault_hits = hits(seen)
    report(scenario, {**row, "fault_hits": fault_hits, "seconds": round(seconds, 1)})
    assert fault_hits > 0, "the fault never happened: the scenario proved nothing"


def test_emulator_killed_and_restarted_mid_job(documents, airflow_home, tmp_path):
    """The service goes away while a job runs (connection refused on every poll) and comes back with its state:
    the wait rides it out and the run completes with the same job, nothing resubmitted."""
    data_dir = tmp_path / "emulator"
    # 10 s pending: time to kill it while the job waits; uploads outlive the outage
    slow = {"seed": 11, "pending_seconds": 10 * 3600, "file_ttl_hours": 1000}
    server = gemini_emulator(data_dir, time_scale=3600, faults=slow).start()
    port = server.port
    output, secret = tmp_path / "out", f"AIza-test-{secrets.token_hex(16)}"
    conf = {
        "source": str(documents),
        "output": str(output),
        "max_rows_per_job": 25,
        "retry_rounds": 2,
        "poll_seconds": 0.5,
    }
    outage: dict = {}

    def kill_and_restart():
        deadline = time.monotonic() + 300
        while not list((data_dir / "jobs").glob("*.json")) and time.monotonic() < deadline:
            time.sleep(0.2)
        server.stop(kill=True)  # no clean shutdown
        outage["down_at"] = time.monotonic()
        time.sleep(5)
        outage["server"] = gemini_emulator(data_dir, port=port, time_scale=3600, faults=slow).start()
        outage["up_after"] = time.monotonic() - outage["down_at"]

    killer = threading.Thread(target=kill_and_restart)
    killer.start()
    try:
        t0 = time.monotonic()
        run = run_dag(airflow_home, conn_for(server.url, secret), conf, "2026-11-11")
        seconds = time.monotonic() - t0
    finally:
        killer.join()
        if "server" in outage:
            outage["server"].stop()
    (tmp_path / "dag.log").write_text(run.log)
    run.check()
    assert outage.get("up_after", 0) >= 5
    row = check_invariants(documents, output, run.log, data_dir, airflow_home, secret, conf["retry_rounds"])
    assert row["retry_rounds"] == 0, "the outage cost no retry round: the same jobs finished"
    report("emulator killed and restarted mid-job", {**row, "seconds": round(seconds, 1)})


def test_the_secret_scan_finds_a_planted_secret(documents, airflow_home, tmp_path, start_emulator):
    """Control for invariant 4: a value put where it does not belong (the prompt) is found in the Airflow
    database and in what the emulator was sent, so a clean scan above means something."""
    server = start_emulator(time_scale=3600)
    planted = f"planted-{secrets.token_hex(8)}"
    source = tmp_path / "source"
    shutil.copytree(SAMPLES, source)
    run = run_dag(
        airflow_home,
        conn_for(server.url, "AIza-unused"),
        {"source": str(source), "output": str(tmp_path / "out"), "prompt": f"Extract it. {planted}"},
        "2026-11-12",
    )
    run.check()
    leaks = places_holding(planted, airflow_home, server.log_path.parent)
    assert any(p.endswith(".db") for p in leaks), leaks
    assert any("/jobs/" in p or "/files/" in p for p in leaks), leaks

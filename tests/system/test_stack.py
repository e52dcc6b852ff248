"""The production topology end to end: tests/support/stack.py starts Postgres-backed Airflow with the
CeleryExecutor (two workers), scheduler, dag-processor, triggerer and api-server natively from .venv, and this
test drives gemini_batch_extract through the REST API (/api/v2, a JWT from SimpleAuthManager's /auth/token)
against the emulator, then checks what only a real deployment shows: the deferred waits held by the triggerer,
the pool, XCom sizes, and the run's results.jsonl and summary.json."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from support.dagrun import assert_contract, ledger_root, read_results
from support.stack import DAG, POOL, ApiError, Stack, emulator_jobs, failure_report, q, wait_run

ROOT = Path(__file__).resolve().parents[2]
SAMPLES = ROOT / "include" / "samples"

pytestmark = pytest.mark.timeout(900)


def say(msg: str) -> None:
    print(f"[test_stack] {msg}", file=sys.stderr, flush=True)


def trigger(stack: Stack, run_id: str, logical_date: str, conf: dict) -> dict:
    """Trigger a run; its ledger is its test's own (beside the output) unless the conf names one."""
    conf = {"state": str(ledger_root(conf) / DAG), **conf}
    return stack.api("POST", f"/dags/{DAG}/dagRuns", {"dag_run_id": run_id, "logical_date": logical_date, "conf": conf})


def xcom_sizes(stack: Stack, run_id: str) -> dict[str, int]:
    """Every XCom of the run, read through the API: (task[map_index].key) -> size of its stored value, in bytes."""
    entries = stack.api("GET", f"/dags/{DAG}/dagRuns/{q(run_id)}/taskInstances/~/xcomEntries", limit=1000)
    sizes = {}
    for entry in entries["xcom_entries"]:
        value = stack.api(
            "GET",
            f"/dags/{DAG}/dagRuns/{q(run_id)}/taskInstances/{q(entry['task_id'])}/xcomEntries/{q(entry['key'])}",
            map_index=entry["map_index"],
        )["value"]
        sizes[f"{entry['task_id']}[{entry['map_index']}].{entry['key']}"] = len(json.dumps(value).encode())
    return sizes


@pytest.fixture
def source(tmp_path):
    folder = tmp_path / "source"
    shutil.copytree(SAMPLES, folder)
    return folder


def test_developer_run_through_the_rest_api(stack, source, tmp_path):
    output = tmp_path / "out"
    jobs_before = len(emulator_jobs(stack))
    run_id = f"stack-developer-{int(time.time())}"
    t0 = time.monotonic()
    run = trigger(
        stack, run_id, "2026-11-01T00:00:00Z", {"source": str(source), "output": str(output), "poll_seconds": 1}
    )
    assert run["dag_run_id"] == run_id and run["state"] == "queued"
    state, deferred, max_deferred_slots = wait_run(stack, run_id)
    say(f"developer run {state} in {time.monotonic() - t0:.0f}s (stack start {stack.timings['start']:.0f}s)")
    stack.timings["developer run"] = time.monotonic() - t0
    assert state == "success", failure_report(stack, run_id)

    # results.jsonl and summary.json, and exactly the one job the emulator received
    records, summary = read_results(output)
    assert_contract(records, summary, source)
    assert summary["succeeded"] == 7 and summary["rejected"] == 1 and summary["jobs"] == 1
    jobs = emulator_jobs(stack)[jobs_before:]
    assert len(jobs) == 1 and len(jobs[0][1]) == summary["requests"] == 8

    # The wait was deferred and the triggerer held it: the worker's try logs "Pausing task as DEFERRED" (read
    # through the API), and the triggerer wrote the trigger's own log beside it, named after its TriggererJob.
    ti_path = f"/dags/{DAG}/dagRuns/{q(run_id)}/taskInstances/jobs.wait"
    done = stack.api("GET", f"{ti_path}/0")
    assert done["state"] == "success" and done["try_number"] == 1
    task_log = json.dumps(stack.api("GET", f"{ti_path}/logs/1", map_index=0, full_content="true"))
    assert "Pausing task as DEFERRED" in task_log
    triggerers = {j["id"] for j in stack.api("GET", "/jobs", job_type="TriggererJob", limit=100)["jobs"]}
    task_dir = stack.home / "logs" / f"dag_id={DAG}" / f"run_id={run_id}" / "task_id=jobs.wait" / "map_index=0"
    trigger_logs = {
        int(p.name.split(".trigger.")[1].split(".")[0]): p.read_text()
        for p in task_dir.glob("attempt=1.log.trigger.*.log")
    }
    assert trigger_logs and set(trigger_logs) <= triggerers, (trigger_logs.keys(), triggerers)
    assert any("Trigger fired event" in text and "JOB_STATE_SUCCEEDED" in text for text in trigger_logs.values())
    # seen deferred while polling (a short window with the fast emulator: reported, and checked when seen)
    waits = [ti for ti in deferred if ti["task_id"] == "jobs.wait"]
    say(
        f"jobs.wait seen deferred through the API: {len(waits)}; most pool slots held by deferred tasks: "
        f"{max_deferred_slots}; triggerer jobs {sorted(trigger_logs)}; task ran on {done['hostname']}"
    )
    for ti in waits:
        assert ti["trigger"]["classpath"].startswith("gemini_batch."), ti["trigger"]
        assert ti["triggerer_job"] is None or ti["triggerer_job"]["id"] in trigger_logs
    pool = stack.api("GET", f"/pools/{POOL}")
    assert pool["include_deferred"] is True and pool["slots"] == 10 and max_deferred_slots <= 10

    # XCom holds references, not documents
    sizes = xcom_sizes(stack, run_id)
    assert sizes, "the run pushed XComs"
    assert max(sizes.values()) < 2048, {k: v for k, v in sizes.items() if v >= 2048}


def test_vertex_run_through_gcs(stack, source, tmp_path):
    """The same stack, the Vertex backend: documents staged in the GCS emulator, the job reads and writes gs://."""
    output = tmp_path / "out"
    jobs_before = len(emulator_jobs(stack))
    run_id = f"stack-vertex-{int(time.time())}"
    t0 = time.monotonic()
    trigger(
        stack,
        run_id,
        "2026-11-02T00:00:00Z",
        {
            "source": str(source),
            "output": str(output),
            "poll_seconds": 1,
            "gemini_conn_id": "gemini_vertex",
            "staging_prefix": f"gs://test-bucket/{run_id}",
        },
    )
    state, _deferred, _ = wait_run(stack, run_id)
    say(f"vertex run {state} in {time.monotonic() - t0:.0f}s")
    stack.timings["vertex run"] = time.monotonic() - t0
    assert state == "success", failure_report(stack, run_id)
    records, summary = read_results(output)
    assert_contract(records, summary, source)
    assert summary["succeeded"] == 7 and summary["jobs"] == 1
    jobs = emulator_jobs(stack)[jobs_before:]
    assert len(jobs) == 1 and len(jobs[0][1]) == 8
    assert max(xcom_sizes(stack, run_id).values()) < 2048


def wait_deferred(stack: Stack, run_id: str, timeout: float = 180) -> dict:
    """Poll until jobs.wait[0] is deferred and a triggerer has taken its trigger."""
    ti_path = f"/dags/{DAG}/dagRuns/{q(run_id)}/taskInstances/jobs.wait/0"
    deadline = time.monotonic() + timeout
    while True:
        try:
            ti = stack.api("GET", ti_path)
        except ApiError as exc:  # not mapped yet
            if exc.code != 404:
                raise
            ti = {"state": None}
        if ti["state"] == "deferred" and ti.get("triggerer_job"):
            return ti
        assert ti["state"] not in ("success", "failed", "up_for_retry"), ti["state"]
        assert time.monotonic() < deadline, f"jobs.wait never deferred to a triggerer: {ti}"
        time.sleep(0.5)


def test_triggerer_restart_while_deferred(stack, source, tmp_path):
    """A clean triggerer restart while the wait is deferred: the new triggerer takes the trigger over and the run
    completes with exactly one emulator job."""
    output = tmp_path / "out"
    jobs_before = len(emulator_jobs(stack))
    run_id = f"stack-restart-{int(time.time())}"
    t0 = time.monotonic()
    trigger(stack, run_id, "2026-11-03T00:00:00Z", {"source": str(source), "output": str(output), "poll_seconds": 1})
    ti = wait_deferred(stack, run_id)
    first = ti["triggerer_job"]["id"]
    stack.restart("triggerer")
    state, _, _ = wait_run(stack, run_id)
    say(f"triggerer restart run {state} in {time.monotonic() - t0:.0f}s")
    stack.timings["triggerer restart run"] = time.monotonic() - t0
    assert state == "success", failure_report(stack, run_id)
    records, summary = read_results(output)
    assert_contract(records, summary, source)
    assert summary["jobs"] == 1 and len(emulator_jobs(stack)[jobs_before:]) == 1
    task_dir = stack.home / "logs" / f"dag_id={DAG}" / f"run_id={run_id}" / "task_id=jobs.wait" / "map_index=0"
    holders = {
        int(p.name.split(".trigger.")[1].split(".")[0]): p.read_text()
        for p in task_dir.glob("attempt=1.log.trigger.*.log")
    }
    # the restarted triggerer (a new TriggererJob) ran the trigger to its event
    assert any(job != first and "Trigger fired event" in text for job, text in holders.items()), (first, list(holders))


def wait_running(stack: Stack, run_id: str, task_id: str, timeout: float = 120) -> dict:
    """Poll until the task instance runs on a worker with a known process; the instance."""
    path = f"/dags/{DAG}/dagRuns/{q(run_id)}/taskInstances/{task_id}"
    deadline = time.monotonic() + timeout
    while True:
        ti = stack.api("GET", path)
        if ti["state"] == "running" and ti.get("pid") and stack.component_of(ti["pid"]):
            return ti
        assert ti["state"] not in ("success", "failed", "up_for_retry"), f"{task_id} ended before it was seen: {ti}"
        assert time.monotonic() < deadline, f"{task_id} never seen running: {ti}"
        time.sleep(0.2)


def test_worker_killed_inside_a_task(stack, source, tmp_path):
    """SIGKILL the Celery worker (its whole process group) that is running stage_documents, mid-upload: the
    scheduler sees the task's heartbeat stop, fails that try and retries it on the other worker, which reuses the
    uploads already made; the run completes with one emulator job and every document accounted for."""
    if stack.executor != "CeleryExecutor":
        pytest.skip("no Celery workers in the LocalExecutor fallback")
    output = tmp_path / "out"
    jobs_before = len(emulator_jobs(stack))
    run_id = f"stack-worker-kill-{int(time.time())}"
    t0 = time.monotonic()
    trigger(stack, run_id, "2026-11-04T00:00:00Z", {"source": str(source), "output": str(output), "poll_seconds": 1})
    ti = wait_running(stack, run_id, "stage_documents")
    victim = stack.component_of(ti["pid"])
    assert victim and victim.startswith("worker-"), victim
    say(f"stage_documents try {ti['try_number']} running in {victim} (pid {ti['pid']}): killing {victim}")
    stack.kill(victim)
    try:
        state, _, _ = wait_run(stack, run_id, timeout=420)
        say(f"killed-worker run {state} in {time.monotonic() - t0:.0f}s")
        stack.timings["killed-worker run"] = time.monotonic() - t0
        assert state == "success", failure_report(stack, run_id)
    finally:
        stack.restart(victim)
    staged = stack.api("GET", f"/dags/{DAG}/dagRuns/{q(run_id)}/taskInstances/stage_documents")
    assert staged["state"] == "success" and staged["try_number"] == 2, staged
    survivor = "worker-2" if victim == "worker-1" else "worker-1"
    survivor_log = (stack.logs / f"{survivor}.log").read_text(errors="replace")
    assert f"run_id={run_id}/task_id=stage_documents" in survivor_log, "the other worker ran the retry"
    records, summary = read_results(output)
    assert_contract(records, summary, source)
    assert summary["succeeded"] == 7 and summary["jobs"] == 1 and len(emulator_jobs(stack)[jobs_before:]) == 1


def emulator_job_spans(stack: Stack, names: set[str]) -> list[tuple[float, float]]:
    """(create, end) times of the named jobs, from the emulator's own records."""
    jobs = (json.loads(path.read_text()) for path in (stack.emulator_dir / "jobs").glob("*.json"))
    return [(job["create_time"], job["end_time"]) for job in jobs if job["name"] in names]


def most_overlapping(spans: list[tuple[float, float]]) -> int:
    events = sorted([(start, 1) for start, _ in spans] + [(end, -1) for _, end in spans], key=lambda e: (e[0], e[1]))
    most = live = 0
    for _, step in events:
        live += step
        most = max(most, live)
    return most


def test_jobs_in_flight_are_capped_exactly(stack, source, tmp_path):
    """Two requests per job (4 shards) with max_jobs_in_flight 2: the emulator never has more than 2 of the run's
    jobs in flight at once, and does reach 2 (the cap binds, not something else). The slots are leases in the
    ledger, so the cap holds across the gap between a shard's submit and its sensor, and across runs."""
    output = tmp_path / "out"
    run_id = f"stack-cap-{int(time.time())}"
    t0 = time.monotonic()
    trigger(
        stack,
        run_id,
        "2026-11-05T00:00:00Z",
        {
            "source": str(source),
            "output": str(output),
            "poll_seconds": 1,
            "max_rows_per_job": 2,
            "max_jobs_in_flight": 2,
        },
    )
    state, _, _ = wait_run(stack, run_id, timeout=600)
    stack.timings["capped run"] = time.monotonic() - t0
    assert state == "success", failure_report(stack, run_id)
    records, summary = read_results(output)
    assert_contract(records, summary, source)
    assert summary["requests"] == 8 and summary["jobs"] == 4
    for task_id in ("jobs.submit", "jobs.wait"):
        mapped = stack.api("GET", f"/dags/{DAG}/dagRuns/{q(run_id)}/taskInstances", task_id=task_id, limit=100)[
            "task_instances"
        ]
        assert len(mapped) == 4 and {ti["pool"] for ti in mapped} == {POOL}
    xcom = f"/dags/{DAG}/dagRuns/{q(run_id)}/taskInstances/jobs.submit/xcomEntries/job_name"
    names = {stack.api("GET", xcom, map_index=ti["map_index"])["value"] for ti in mapped}
    spans = emulator_job_spans(stack, names)
    assert len(names) == len(spans) == 4, "each shard's job, as the emulator recorded it"
    most = most_overlapping(spans)
    say(f"capped run: 4 jobs with max_jobs_in_flight 2 in {stack.timings['capped run']:.0f}s; at most {most} in flight")
    assert most == 2


DAYS = ("2026-11-06", "2026-11-07", "2026-11-08")


def wait_backfill(stack: Stack, backfill_id: int, timeout: float = 420) -> list[dict]:
    """Poll until the backfill is complete; its runs, by logical date."""
    deadline = time.monotonic() + timeout
    while stack.api("GET", f"/backfills/{backfill_id}")["completed_at"] is None:
        assert time.monotonic() < deadline, (
            f"backfill {backfill_id} not done after {timeout:.0f}s; logs in {stack.logs}"
        )
        time.sleep(2)
    runs = stack.api("GET", f"/dags/{DAG}/dagRuns", run_type="backfill", limit=100, order_by="logical_date")["dag_runs"]
    return [r for r in runs if r["logical_date"][:10] in DAYS]


def test_backfill_processes_each_dated_folder_once(stack, tmp_path):
    """`airflow backfill create` (the CLI, against the stack's database) over three dated folders runs each day
    once; a second backfill over the same dates (through the REST API, reprocessing completed runs) submits nothing."""
    landing, out = tmp_path / "landing", tmp_path / "extracted"
    for n, day in enumerate(DAYS, start=1):  # day n: n documents of its own
        (landing / day).mkdir(parents=True)
        for k in range(n):
            (landing / day / f"note-{k}.txt").write_text(f"Invoice {day}-{k}, total {10 * n + k}.50 EUR\n")
    conf = {
        "source": f"{landing}/{{{{ ds }}}}/",
        "output": f"{out}/{{{{ ds }}}}",
        "state": str(out / "_state"),
        "poll_seconds": 1,
    }
    jobs_before = len(emulator_jobs(stack))
    t0 = time.monotonic()
    done = subprocess.run(
        [
            str(ROOT / "bin" / "airflow"),
            "backfill",
            "create",
            "--dag-id",
            DAG,
            "--from-date",
            DAYS[0],
            "--to-date",
            f"{DAYS[-1]}T23:59:59+00:00",
            "--dag-run-conf",
            json.dumps(conf),
            "--max-active-runs",
            "3",
        ],
        env=stack.env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    first = max(b["id"] for b in stack.api("GET", "/backfills", dag_id=DAG)["backfills"])
    runs = wait_backfill(stack, first)
    say(f"backfill of {len(DAYS)} days done in {time.monotonic() - t0:.0f}s")
    stack.timings["backfill"] = time.monotonic() - t0
    assert sorted(r["logical_date"][:10] for r in runs) == list(DAYS)
    assert all(r["state"] == "success" for r in runs), [(r["dag_run_id"], r["state"]) for r in runs]
    submitted = [k for _, keys in emulator_jobs(stack)[jobs_before:] for k in keys]
    assert len(submitted) == len(set(submitted)) == 6, "each document submitted once"
    for n, day in enumerate(DAYS, start=1):
        records, summary = read_results(out / day)
        assert_contract(records, summary, landing / day)
        assert (summary["documents"], summary["requests"], summary["reused"]) == (n, n, 0)

    jobs_before = len(emulator_jobs(stack))
    t1 = time.monotonic()
    again = stack.api(
        "POST",
        "/backfills",
        {
            "dag_id": DAG,
            "from_date": f"{DAYS[0]}T00:00:00Z",
            "to_date": f"{DAYS[-1]}T23:59:59Z",
            "dag_run_conf": conf,
            "reprocess_behavior": "completed",
            "max_active_runs": 3,
        },
    )
    runs = wait_backfill(stack, again["id"])
    say(f"second backfill done in {time.monotonic() - t1:.0f}s")
    assert all(r["state"] == "success" for r in runs), [(r["dag_run_id"], r["state"]) for r in runs]
    assert emulator_jobs(stack)[jobs_before:] == [], "the second backfill submitted nothing"
    for n, day in enumerate(DAYS, start=1):
        records, summary = read_results(out / day)
        assert_contract(records, summary, landing / day)
        # the rerun of a completed run takes its answers from its own earlier round (not the state store), so
        # `reused` stays 0 and `jobs` counts that earlier job; what matters here: nothing planned, nothing sent
        assert summary["requests"] == 0 and summary["succeeded"] == n


def test_two_overlapping_runs_on_celery_request_each_key_once(stack, tmp_path):
    """Two runs of the same documents triggered together through the REST API, one ledger, CeleryExecutor
    workers: the leases let exactly one run request each key, the other waits for that job (deferred), and both
    publish every document without a retry round."""
    from fpdf import FPDF

    source = tmp_path / "source"
    source.mkdir()
    for n in range(6):
        pdf = FPDF()
        pdf.add_page()
        pdf.set_font("Helvetica", size=12)
        pdf.cell(text=f"Overlap invoice {n}: total {n}.00 EUR")
        pdf.output(str(source / f"overlap-{n}.pdf"))
    jobs_before = len(emulator_jobs(stack))
    stamp = int(time.time())
    runs = {f"stack-overlap-{i}-{stamp}": tmp_path / f"out-{i}" for i in (1, 2)}
    t0 = time.monotonic()
    for (run_id, output), day in zip(runs.items(), ("2026-11-20T00:00:00Z", "2026-11-21T00:00:00Z"), strict=False):
        trigger(
            stack,
            run_id,
            day,
            {"source": str(source), "output": str(output), "poll_seconds": 1, "state": str(tmp_path / "ledger")},
        )
    for run_id in runs:
        state, _, _ = wait_run(stack, run_id, timeout=600)
        assert state == "success", failure_report(stack, run_id)
    stack.timings["overlap runs"] = time.monotonic() - t0

    sent = [key for _, keys in emulator_jobs(stack)[jobs_before:] for key in keys]
    assert len(sent) == len(set(sent)) == 6, f"each key requested once in all: {sent}"
    reused = []
    for output in runs.values():
        records, summary = read_results(output)
        assert_contract(records, summary, source)
        assert summary["succeeded"] == 6 and summary["retry_rounds"] == 0, summary
        reused.append(summary["reused"])
    assert sum(reused) == 6, reused
    say(
        f"overlap on celery: 2 runs, {len(sent)} requests for 6 documents, reused {reused}, "
        f"{stack.timings['overlap runs']:.0f}s"
    )


def wait_awaiting_input(stack: Stack, run_id: str, task_id: str, timeout: float = 240) -> dict:
    path = f"/dags/{DAG}/dagRuns/{q(run_id)}/taskInstances/{task_id}"
    deadline = time.monotonic() + timeout
    while (ti := stack.api("GET", path))["state"] != "awaiting_input":
        assert ti["state"] not in ("success", "failed", "skipped"), ti
        assert time.monotonic() < deadline, f"{task_id} never asked for input: {ti}"
        time.sleep(1)
    return ti


def test_a_run_over_the_approval_threshold_waits_for_a_person(stack, tmp_path):
    """approve_above_usd: the run asks in the UI (Airflow's human-in-the-loop) before anything is uploaded;
    approved through the REST API it completes, rejected it fails with the estimate in the message."""
    source = tmp_path / "source"
    source.mkdir()
    for name in ("invoice-1.pdf", "invoice-2.pdf", "invoice-4.md"):
        shutil.copy(SAMPLES / name, source)
    jobs_before = len(emulator_jobs(stack))
    runs = {}
    for answer in ("Approve", "Reject"):
        run_id = f"stack-approval-{answer.lower()}-{int(time.time())}"
        trigger(
            stack,
            run_id,
            None,
            {
                "source": str(source),
                "output": str(tmp_path / answer),
                "poll_seconds": 1,
                "approve_above_usd": 0,
                "state": str(tmp_path / "ledger" / answer),
            },
        )
        runs[answer] = run_id
    t0 = time.monotonic()
    for _answer, run_id in runs.items():
        wait_awaiting_input(stack, run_id, "approve_cost")
        detail = stack.api("GET", f"/dags/{DAG}/dagRuns/{q(run_id)}/taskInstances/approve_cost/-1/hitlDetails")
        assert detail["options"] == ["Approve", "Reject"] and "$" in detail["subject"], detail
        assert "3 requests" in detail["subject"] and "approve_above_usd" in detail["body"], detail
        staged = stack.api("GET", f"/dags/{DAG}/dagRuns/{q(run_id)}/taskInstances/stage_documents")
        assert staged["state"] is None, staged  # staging waits for the answer too
    say(f"both runs asked for approval within {time.monotonic() - t0:.0f}s")
    assert len(emulator_jobs(stack)) == jobs_before  # nothing submitted while waiting

    for answer, run_id in runs.items():
        stack.api(
            "PATCH",
            f"/dags/{DAG}/dagRuns/{q(run_id)}/taskInstances/approve_cost/-1/hitlDetails",
            {"chosen_options": [answer]},
        )
    approved, _, _ = wait_run(stack, runs["Approve"])
    assert approved == "success", failure_report(stack, runs["Approve"])
    _records, summary = read_results(tmp_path / "Approve")
    assert summary["documents"] == 3 and summary["succeeded"] == 3
    rejected, _, _ = wait_run(stack, runs["Reject"])
    assert rejected == "failed"
    ti = stack.api("GET", f"/dags/{DAG}/dagRuns/{q(runs['Reject'])}/taskInstances/approve_cost")
    assert ti["state"] == "failed", ti
    task_log = json.dumps(
        stack.api(
            "GET",
            f"/dags/{DAG}/dagRuns/{q(runs['Reject'])}/taskInstances/approve_cost/logs/{ti['try_number']}",
            full_content="true",
        )
    )
    assert "rejected the run: estimated $" in task_log and "nothing was submitted" in task_log, task_log[-2000:]
    assert not (tmp_path / "Reject" / "results.jsonl").exists()
    assert len(emulator_jobs(stack)) == jobs_before + 1  # the approved run's one job only

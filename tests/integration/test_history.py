"""A run in an account with a long job history: one real `airflow dags test` of gemini_batch_extract against an
emulator that already holds 3,000 earlier batch jobs. The Developer API cannot filter its job list, so a submit
that looked for its earlier job by name would page through all of them; with Airflow's task state store a first
try looks up nothing. List calls are counted from the emulator's own request log."""

from __future__ import annotations

import contextlib
import json
import sqlite3

from support.dagrun import developer_conn, read_results, run_dag
from support.emulators import list_calls, seed_job_history

HISTORY = 3000


def test_a_run_does_not_page_through_the_account_s_job_history(airflow_home, tmp_path, start_emulator):
    data_dir = tmp_path / "emulator"
    seed_job_history(data_dir, HISTORY)
    server = start_emulator(data_dir=data_dir, time_scale=600)
    source = tmp_path / "source"
    source.mkdir()
    for n in range(1, 4):
        (source / f"note-{n}.txt").write_text(f"Invoice H-{n}, total {n * 10}.00 EUR\n")
    output = tmp_path / "out"
    conf = {"source": str(source), "output": str(output), "state": str(tmp_path / "state")}

    run_dag(airflow_home, developer_conn(server.url), conf, "2027-02-01").check()

    records, summary = read_results(output)
    assert sorted(records) == ["note-1.txt", "note-2.txt", "note-3.txt"]
    assert summary["succeeded"] == 3 and summary["jobs"] == 1
    calls = list_calls(server)
    print(f"job list calls in a run over an account with {HISTORY} earlier jobs: {calls}")
    assert calls <= 3  # a first try needs none; even a search without a bound reads 3,000 jobs in 3 pages of 1000

    # What made that possible: the submit task kept its job in the run's task state store.
    jobs = (json.loads(path.read_bytes()) for path in (data_dir / "jobs").glob("*.json"))  # the emulator's records
    (job_name,) = [job["name"] for job in jobs if not job["display_name"].startswith("history-")]
    with contextlib.closing(sqlite3.connect(f"file:{airflow_home / 'airflow.db'}?mode=ro", uri=True, timeout=30)) as db:
        stored = db.execute(
            "SELECT value FROM task_state_store WHERE dag_id = 'gemini_batch_extract' AND "
            "task_id = 'jobs.submit' AND key = 'job_name'"
        ).fetchall()
    assert job_name in [json.loads(value) for (value,) in stored]

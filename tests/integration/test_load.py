"""Load: many documents, many deferred waits, many consecutive runs.

CI-sized by default (the whole file takes a few minutes on 2 cores); the full set is one command:

    GEMINI_BATCH_LOAD_DOCS=100000 GEMINI_BATCH_LOAD_WAITS=500 GEMINI_BATCH_SOAK_RUNS=20 bin/test -m load

1. Many documents: GEMINI_BATCH_LOAD_DOCS (default 2,000) distinct small documents, 98% one-line text files
   and 2% one-page PDFs (one made with fpdf2, copied with a different invoice number each), all sent inline
   in their rows (the default inline_max_mb), through one real `airflow dags test` run on the emulator at 3600x.
   Checked: the run succeeds, every document is in results.jsonl once, the peak memory of the `dags test` process tree
   stays under 1 GB, the run's XCom stays under 64 KB, and every job the emulator received (its own record:
   request_count and input file) respects max_rows_per_job and max_mb_per_job.
2. Many deferred waits: `dags test` does not hold deferred waits together (it runs each task's trigger inline,
   to its end, one task after another), so this test uses the production topology of tests/support/stack.py (one
   triggerer, scheduler, Celery workers or the LocalExecutor) with GEMINI_BATCH_LOAD_WAITS (default 10)
   one-request shards, the pool and max_jobs_in_flight raised to that many. The emulator keeps every job PENDING
   until all the waits are deferred at once; the triggerer's CPU and memory are measured over a hold of
   GEMINI_BATCH_LOAD_HOLD seconds, then the emulator is restarted with jobs that finish at once, and every
   wait must resolve (the run succeeds, one job per document, every document succeeded).
3. Soak: GEMINI_BATCH_SOAK_RUNS (default 5) consecutive `dags test` runs over the same small source, each to
   its own output. After each: no process left behind, no file left in the runs' TMPDIR, no connection to the
   emulator still open, no staged upload left in the emulator's Files API (retention "staged"), which grows
   by at most the runs' job output files, and the emulator's open file descriptors do not grow.

Sizes and knobs (environment): GEMINI_BATCH_LOAD_DOCS (2000), GEMINI_BATCH_LOAD_ROWS (max_rows_per_job; default
docs/10, at most 10,000: about 10 shards), GEMINI_BATCH_LOAD_MB (max_mb_per_job, 100), GEMINI_BATCH_LOAD_WAITS (10),
GEMINI_BATCH_LOAD_POLL (the waits' poll_seconds, 10), GEMINI_BATCH_LOAD_HOLD (seconds measured with every wait
deferred, 20), GEMINI_BATCH_SOAK_RUNS (5). Each test prints a table to stderr and appends its numbers as JSON lines
to artifacts/load.jsonl.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from support.dagrun import assert_contract, dags_test, developer_conn, read_results
from support.emulators import developer_client
from support.load import MB, Sampler, emulator_jobs, make_documents, mb, report, tree

DOCS = int(os.environ.get("GEMINI_BATCH_LOAD_DOCS", "2000"))
SOAK_RUNS = int(os.environ.get("GEMINI_BATCH_SOAK_RUNS", "5"))
MAX_RSS_BYTES = 1024 * MB
MAX_XCOM_BYTES = 64 * 1024

pytestmark = pytest.mark.load


# ------------------------------------------------------------------ a measured `dags test` run


# The wrapper reports the peak RSS of the largest process under it (getrusage of its reaped children).
RUSAGE_WRAPPER = """
import resource, subprocess, sys
code = subprocess.call(sys.argv[2:])
usage = resource.getrusage(resource.RUSAGE_CHILDREN)
open(sys.argv[1], "w").write(f"{usage.ru_maxrss * 1024} {usage.ru_utime + usage.ru_stime}")
sys.exit(code)
"""


class MeasuredRun:
    def __init__(self, state, log_path, wall, peak_tree_rss, peak_process_rss, cpu_seconds, peak_procs, run_id):
        self.state, self.log_path, self.wall = state, log_path, wall
        self.peak_tree_rss, self.peak_process_rss, self.cpu_seconds = peak_tree_rss, peak_process_rss, cpu_seconds
        self.peak_procs, self.run_id = peak_procs, run_id

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def check(self) -> None:
        assert self.state == "success", self.log[-6000:]


def run_measured(
    airflow_home: Path,
    conn: dict,
    conf: dict,
    logical_date: str,
    log_path: Path,
    *,
    extra_env: dict | None = None,
    timeout: float = 900,
) -> MeasuredRun:
    """`bin/airflow dags test` (as support.dagrun's run_dag) under a getrusage wrapper, its tree sampled."""
    command, env = dags_test(airflow_home, conn, conf, logical_date, extra_env)
    usage_file = log_path.with_suffix(".rusage")
    argv = [sys.executable, "-c", RUSAGE_WRAPPER, str(usage_file), *command]
    start = time.monotonic()
    with log_path.open("wb") as out:
        proc = psutil.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        with Sampler(proc) as sampler:
            try:
                proc.wait(timeout=timeout)
            except psutil.TimeoutExpired:
                for p in reversed(tree(proc)):
                    with contextlib.suppress(psutil.Error):
                        p.kill()
                proc.wait(timeout=30)
                raise
    wall = time.monotonic() - start
    peak_process_rss, cpu = (float(v) for v in usage_file.read_text().split())
    tail = _tail(log_path, 256 * 1024)
    finished = re.findall(r"DagRun Finished: .*? state=(\w+)", tail)
    run_ids = re.findall(r"DagRun Finished: .*? run_id=([^,\s]+)", tail)
    return MeasuredRun(
        finished[-1] if finished else None,
        log_path,
        wall,
        sampler.peak_rss,
        int(peak_process_rss),
        cpu,
        sampler.peak_procs,
        run_ids[-1] if run_ids else None,
    )


def _tail(path: Path, nbytes: int) -> str:
    with path.open("rb") as fh:
        fh.seek(max(0, path.stat().st_size - nbytes))
        return fh.read().decode(errors="replace")


# ------------------------------------------------------------------ what a run left behind


def xcom_of_run(airflow_home: Path, run_id: str) -> tuple[int, int, dict]:
    """(bytes, rows, bytes per task) of one run's XCom in the airflow_home's SQLite database."""
    db = sqlite3.connect(f"file:{airflow_home / 'airflow.db'}?mode=ro", uri=True, timeout=30)
    try:
        columns = {row[1] for row in db.execute("PRAGMA table_info(xcom)")}
        assert {"run_id", "dag_id", "task_id", "value"} <= columns, columns
        rows = db.execute(
            "SELECT task_id, length(CAST(value AS BLOB)) FROM xcom WHERE dag_id = ? AND run_id = ?",
            ("gemini_batch_extract", run_id),
        ).fetchall()
    finally:
        db.close()
    per_task: dict[str, int] = {}
    for task_id, size in rows:
        per_task[task_id] = per_task.get(task_id, 0) + (size or 0)
    return sum(per_task.values()), len(rows), per_task


def files_api(server) -> list:
    client = developer_client(server.url)  # held until the pager has read every page
    files = list(client.files.list(config={"page_size": 100}))
    client.close()
    return files


def emulator_connections(port: int) -> dict[str, int]:
    """TCP connections to or from ``port`` on this machine, by state (the listening socket left out)."""
    states: dict[str, int] = {}
    for conn in psutil.net_connections(kind="tcp"):
        if conn.status == psutil.CONN_LISTEN:
            continue
        if (conn.laddr and conn.laddr.port == port) or (conn.raddr and conn.raddr.port == port):
            states[conn.status] = states.get(conn.status, 0) + 1
    return states


def processes_of(airflow_home: Path, keep: set[int]) -> list[str]:
    """Processes still running with this AIRFLOW_HOME, or under this test process (emulators in ``keep`` aside)."""
    me = psutil.Process()
    found = {p.pid: p for p in me.children(recursive=True) if p.pid not in keep}
    for p in psutil.process_iter(["pid", "environ"]):
        with contextlib.suppress(psutil.Error, TypeError):
            if (
                p.pid not in keep
                and p.pid != me.pid
                and (p.info["environ"] or {}).get("AIRFLOW_HOME") == str(airflow_home)
            ):
                found[p.pid] = p
    described = []
    for pid, p in found.items():
        with contextlib.suppress(psutil.Error):
            if p.status() != psutil.STATUS_ZOMBIE:
                described.append(f"{pid} {' '.join(p.cmdline())[:200]}")
    return described


def count_files(folder: Path) -> int:
    return sum(1 for _ in folder.rglob("*")) if folder.exists() else 0


# ------------------------------------------------------------------ 1. many documents


@pytest.mark.timeout(600 + DOCS // 20)
def test_many_documents_in_one_run(airflow_home, tmp_path, start_emulator):
    source, output = tmp_path / "source", tmp_path / "out"
    t0 = time.monotonic()
    made = make_documents(source, DOCS)
    generate_s = time.monotonic() - t0
    max_rows = int(os.environ.get("GEMINI_BATCH_LOAD_ROWS") or min(10_000, math.ceil(DOCS / 10)))  # ~10 shards
    max_mb = int(os.environ.get("GEMINI_BATCH_LOAD_MB", "100"))
    server = start_emulator(time_scale=3600)
    conf = {
        "source": str(source),
        "output": str(output),
        "max_rows_per_job": max_rows,
        "max_mb_per_job": max_mb,
        "poll_seconds": 1,
    }
    # Outputs parsed in worker processes from the first one (past 64 MB otherwise): both pools spawn inside the task
    done = run_measured(
        airflow_home,
        developer_conn(server.url),
        conf,
        "2027-01-01",
        tmp_path / "dag.log",
        extra_env={"GEMINI_BATCH_PARSE_PROCESSES_AFTER_MB": "0"},
        timeout=540 + DOCS // 20,
    )
    done.check()
    log = (tmp_path / "dag.log").read_text()
    assert "Inspecting documents in" in log and "Parsing outputs in" in log

    records, summary = read_results(output)
    assert_contract(records, summary, source)
    assert summary["documents"] == DOCS and summary["requests"] == DOCS
    assert summary["succeeded"] == DOCS, {k: summary[k] for k in ("succeeded", "failed", "rejected")}

    jobs = emulator_jobs(server)
    assert sum(j["request_count"] for j in jobs) == DOCS == summary["requests"], "every request submitted once"
    assert all(j["request_count"] <= max_rows for j in jobs), [j["request_count"] for j in jobs]
    assert all(j["input_bytes"] <= max_mb * MB for j in jobs), [j["input_bytes"] for j in jobs]
    xcom_bytes, xcom_rows, per_task = xcom_of_run(airflow_home, done.run_id)
    report(
        "many_documents",
        [
            {
                **made,
                "generate_s": round(generate_s, 1),
                "wall_s": round(done.wall, 1),
                "cpu_s": round(done.cpu_seconds, 1),
                "peak_tree_rss_mb": mb(done.peak_tree_rss),
                "peak_process_rss_mb": mb(done.peak_process_rss),
                "processes": done.peak_procs,
                "xcom_bytes": xcom_bytes,
                "xcom_rows": xcom_rows,
                "jobs": len(jobs),
                "max_rows_per_job": max_rows,
                "max_rows_seen": max(j["request_count"] for j in jobs),
                "max_mb_per_job": max_mb,
                "max_input_mb_seen": round(max(j["input_bytes"] for j in jobs) / MB, 2),
                "results_mb": mb((output / "results.jsonl").stat().st_size),
            }
        ],
    )
    print("[load] XCom bytes per task: " + json.dumps(per_task), file=sys.stderr)
    assert max(done.peak_tree_rss, done.peak_process_rss) < MAX_RSS_BYTES
    assert xcom_bytes < MAX_XCOM_BYTES, per_task
    assert len(jobs) >= math.ceil(DOCS / max_rows)


# ------------------------------------------------------------------ 3. soak: consecutive runs leave nothing behind


def make_soak_source(folder: Path) -> None:
    """12 documents, 13 requests: text, one-page PDFs, and a 3-page PDF split in two parts (max_pages 2),
    so staging writes temporary page-range PDFs."""
    from fpdf import FPDF

    make_documents(folder, 11, pdf_every=4)
    pdf = FPDF()
    pdf.set_font("helvetica", size=12)
    for page in range(1, 4):
        pdf.add_page()
        pdf.cell(text=f"Statement S-0042, page {page} of 3, balance {page * 100}.00 EUR")
    pdf.output(str(folder / "statement-3-pages.pdf"))


@pytest.mark.timeout(240 + 90 * SOAK_RUNS)
def test_soak_consecutive_runs_leave_nothing_behind(airflow_home, tmp_path, start_emulator):
    source, tmpdir = tmp_path / "source", tmp_path / "run-tmp"
    make_soak_source(source)
    tmpdir.mkdir()
    server = start_emulator(time_scale=600)  # files live 48 emulated hours: 288 s, longer than a run
    emulator = psutil.Process(server.proc.pid)
    # what the session already runs (session-scoped emulators of other tests) is not the runs' to leave behind
    keep = {server.proc.pid} | {p.pid for p in psutil.Process().children(recursive=True)}
    rows, problems = [], []
    generated_before = 0
    for n in range(SOAK_RUNS):
        output = tmp_path / f"out-{n:02d}"
        # a ledger per run: each run does the whole work again, rather than reuse the one before
        conf = {
            "source": str(source),
            "output": str(output),
            "max_rows_per_job": 5,
            "max_pages": 2,
            "state": str(tmp_path / f"ledger-{n:02d}"),
        }
        done = run_measured(
            airflow_home,
            developer_conn(server.url),
            conf,
            f"2027-02-{n + 1:02d}",
            tmp_path / f"dag-{n:02d}.log",
            extra_env={"TMPDIR": str(tmpdir)},
            timeout=600,
        )
        done.check()
        records, summary = read_results(output)
        assert_contract(records, summary, source)
        assert summary["succeeded"] == 12 and summary["requests"] == 13, summary
        time.sleep(1)  # let the emulator's side of closed connections close
        files = files_api(server)
        generated = sum(f.source.name == "GENERATED" for f in files)
        row = {
            "run": n + 1,
            "wall_s": round(done.wall, 1),
            "peak_rss_mb": mb(max(done.peak_tree_rss, done.peak_process_rss)),
            "jobs": summary["jobs"],
            "left_processes": len(processes_of(airflow_home, keep)),
            "tmp_files": count_files(tmpdir),
            "open_conns": sum(v for k, v in emulator_connections(server.port).items() if k != psutil.CONN_TIME_WAIT),
            "time_wait": emulator_connections(server.port).get(psutil.CONN_TIME_WAIT, 0),
            "uploaded_files": sum(f.source.name != "GENERATED" for f in files),
            "output_files": generated,
            "new_output_files": generated - generated_before,
            "emulator_fds": emulator.num_fds(),
            "emulator_rss_mb": mb(emulator.memory_info().rss),
            "db_mb": mb((airflow_home / "airflow.db").stat().st_size),
        }
        generated_before = generated
        rows.append(row)
        if row["left_processes"]:
            problems.append(f"run {n + 1} left processes: {processes_of(airflow_home, keep)}")
        if row["tmp_files"]:
            problems.append(f"run {n + 1} left files in TMPDIR: {sorted(map(str, tmpdir.rglob('*')))[:20]}")
        if row["open_conns"]:
            problems.append(f"run {n + 1}: connections to the emulator still open: {emulator_connections(server.port)}")
        if row["uploaded_files"]:
            problems.append(f"run {n + 1}: staged uploads or job inputs left in the Files API: {row['uploaded_files']}")
        if row["new_output_files"] > summary["jobs"]:
            problems.append(f"run {n + 1}: {row['new_output_files']} new files for {summary['jobs']} jobs")
    report("soak", rows, runs=SOAK_RUNS)
    assert not problems, problems
    # no growth trend in what the emulator holds open (a client that never closes would show here)
    assert rows[-1]["emulator_fds"] <= rows[0]["emulator_fds"] + 3, [r["emulator_fds"] for r in rows]

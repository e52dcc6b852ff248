"""Benchmark "orchestration": what Airflow adds around our steps, and what one deferred wait costs.

1. The demo run. ``bin/airflow dags test gemini_batch_extract`` over include/samples, with the emulator in
   instant mode (queueing, running and file processing take ~0 s) and 1 s polls, in a throwaway AIRFLOW_HOME
   migrated beforehand (not timed). The same steps the tasks call (gemini_batch.steps and the submit operator,
   its trigger run to its event as ``dags test`` runs it) then run in one plain Python process against the
   same kind of emulator: that is "our steps", and Airflow's overhead is the ``dags test`` wall time minus it.
   The task instances in the home's SQLite database show where that overhead goes: before the first task
   starts (CLI start-up, parsing, the run's creation), between tasks, and inside the task instances.
   The first run on the fresh home is "cold", a second one "warm"; each gets its own output folder, so both
   do the whole work.
2. The triggerer's cost of a deferred wait: many GeminiBatchJobTrigger instances in one asyncio loop, in a
   process of their own, polling emulator jobs that stay PENDING at the DAG's default poll interval. Their
   CPU time over a hold (minus the idle loop's) per poll, times the polls of a job-hour, is the CPU cost of
   one job-hour of waiting. The interval is not shortened to get more polls: a poll costs more when it is
   rare (an idle connection is closed, after 5 s by the emulator's uvicorn and 15 s by the client's aiohttp,
   so a rare poll opens a new one), so 300 waits give the polls instead. The emulator's CPU is not counted;
   what the production triggerer's own loop adds (heartbeats, the trigger table sync) is measured by
   tests/test_load.py.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import re
import resource
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from bench.common import ROOT, Row, emulator_connection, measure

DAG_ID = "gemini_batch_extract"
DEMO_SOURCE = "include/samples"  # the DAG's default source (without GEMINI_BATCH_LANDING), given explicitly
DEMO_POLL_SECONDS = 1  # the demo's poll interval (bin/demo uses 1 too); the DAG's default is 30
POOL = "gemini_batch_jobs"
MODEL = "gemini-2.5-flash-lite"
# 1e6 emulated seconds per real second: the 1 s queue, run and file processing take a microsecond. The
# default 24 h job expiry and 48 h file lifetime would then pass in 0.09 s and 0.17 s: make them ~6 minutes.
INSTANT_TIME_SCALE = 1e6
INSTANT_FAULTS = {"job_expiry_hours": 100_000, "file_ttl_hours": 100_000}
PENDING_FAULTS = {"pending_seconds": 10**8}  # at time scale 1 a job stays PENDING for years
HELD_WAITS = 300  # at 30 s polls: 10 polls a second
IDLE_SECONDS = 3.0  # the loop with no trigger, for the baseline


def run(workdir: Path, quick: bool = False) -> list[Row]:
    """Both measurements, each with an emulator of its own (instant jobs; jobs that never leave PENDING).

    quick: one ``dags test`` run (cold) instead of two, and a 30 s hold instead of 60 s.
    """
    from gemini_emulator.testing import gemini_emulator

    folder = workdir / "orchestration"
    shutil.rmtree(folder, ignore_errors=True)
    home = folder / "airflow-home"
    home.mkdir(parents=True)
    _prepare_airflow_home(home)
    dag_runs = 1 if quick else 2
    with gemini_emulator(folder / "emulator-instant", time_scale=INSTANT_TIME_SCALE, faults=INSTANT_FAULTS) as server:
        dag_test = measure(f"{__name__}.dag_test", home=str(home), url=server.url, folder=str(folder), runs=dag_runs)
        steps = [
            measure(f"{__name__}.our_steps", home=str(home), url=server.url, output=str(folder / f"steps-output-{i}"))
            for i in range(dag_runs)
        ]
    with gemini_emulator(folder / "emulator-pending", time_scale=1, faults=PENDING_FAULTS) as server:
        held = measure(
            f"{__name__}.hold_waits", home=str(home), url=server.url, waits=HELD_WAITS, hold_seconds=30 if quick else 60
        )
    return [*_dag_rows(dag_test, steps), _wait_row(held)]


def _prepare_airflow_home(home: Path) -> None:
    """The database and the pool, as bin/setup makes them; not timed."""
    env = {**os.environ, "AIRFLOW_HOME": str(home)}
    airflow = str(ROOT / "bin" / "airflow")
    subprocess.run([airflow, "db", "migrate"], env=env, check=True, capture_output=True)
    subprocess.run(
        [airflow, "pools", "set", POOL, "10", "bench", "--include-deferred"], env=env, check=True, capture_output=True
    )


def _use_emulator(home: str, url: str) -> None:
    """This process reads the Gemini connection from the environment, with Airflow's home the throwaway one."""
    os.environ["AIRFLOW_HOME"] = home
    os.environ["AIRFLOW_CONN_GEMINI_DEFAULT"] = emulator_connection(url)


def _dag_module():
    """The DAG file, imported as parsing it does: its params' defaults are what the benchmark runs with."""
    sys.path.insert(0, str(ROOT / "dags"))
    import gemini_batch_extract

    return gemini_batch_extract


# ------------------------------------------------------------------ 1. the demo run


def dag_test(home: str, url: str, folder: str, runs: int) -> dict:
    """``runs`` consecutive ``dags test`` runs over the demo input; each one's wall time and task instances."""
    env = {**os.environ, "AIRFLOW_HOME": home, "AIRFLOW_CONN_GEMINI_DEFAULT": emulator_connection(url)}
    measured = []
    for i in range(runs):
        output = Path(folder) / f"dag-output-{i}"
        # A ledger of its own per run: each run measures the whole pipeline, not a reuse of the one before.
        conf = {
            "source": DEMO_SOURCE,
            "output": str(output),
            "poll_seconds": DEMO_POLL_SECONDS,
            "state": str(output / "ledger"),
        }
        launched, start = time.time(), time.perf_counter()
        done = subprocess.run(
            [str(ROOT / "bin" / "airflow"), "dags", "test", DAG_ID, "-c", json.dumps(conf)],
            env=env,
            capture_output=True,
            text=True,
        )
        wall, exited = time.perf_counter() - start, time.time()
        log_path = Path(folder) / f"dag-test-{i}.log"
        log = done.stdout + done.stderr
        log_path.write_text(log)
        finished = re.findall(r"DagRun Finished: .*? run_id=([^,\s]+), .*? state=(\w+)", log)
        if not finished or finished[-1][1] != "success":
            raise RuntimeError(f"dags test run {i} did not succeed (exit {done.returncode}); see {log_path}")
        measured.append(
            {
                "wall_s": round(wall, 3),
                **_task_instances(Path(home) / "airflow.db", finished[-1][0], launched, exited),
                # dags test sleeps 1 s whenever a loop finds nothing to run (here: after each empty retry round)
                "idle_sleeps": log.count("No tasks to run"),
                "summary": json.loads((output / "summary.json").read_text()),
                "log": str(log_path),
            }
        )
    # the largest child reaped: the dags test process (bin/airflow execs it)
    peak_child_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return {"runs": measured, "dags_test_peak_rss_mb": round(peak_child_kb / 1024, 1)}


def _task_instances(database: Path, run_id: str, launched: float, exited: float) -> dict:
    """Where the run's time went, from its task instances: before the first, inside them, between them, after."""
    db = sqlite3.connect(f"file:{database}?mode=ro", uri=True)
    try:
        rows = db.execute(
            "SELECT task_id, map_index, state, start_date, end_date FROM task_instance "
            "WHERE dag_id = ? AND run_id = ? ORDER BY start_date",
            (DAG_ID, run_id),
        ).fetchall()
    finally:
        db.close()

    def epoch(stamp: str) -> float:
        return dt.datetime.fromisoformat(stamp).replace(tzinfo=dt.timezone.utc).timestamp()

    ran = [(task_id, map_index, epoch(start), epoch(end)) for task_id, map_index, _, start, end in rows if start]
    durations = {
        f"{task_id}[{map_index}]" if map_index >= 0 else task_id: round(end - start, 3)
        for task_id, map_index, start, end in ran
    }
    inside = sum(end - start for *_, start, end in ran)
    first_start, last_end = min(start for *_, start, _ in ran), max(end for *_, end in ran)
    return {
        "task_instances": len(rows),
        "task_instances_run": len(ran),
        "task_instances_skipped": sum(state == "skipped" for _, _, state, *_ in rows),
        "task_instances_s": round(inside, 3),
        "to_first_task_s": round(first_start - launched, 3),  # CLI start-up, parsing, serializing, the run's creation
        "between_tasks_s": round(last_end - first_start - inside, 3),  # the dags test loop (tasks run one at a time)
        "after_last_task_s": round(exited - last_end, 3),
        "task_instance_durations_s": durations,
    }


def our_steps(home: str, url: str, output: str) -> dict:
    """The DAG's task bodies called in order in one plain process: the work of the tasks, with no Airflow around.

    Each step opens the run as its task does (``Run``: settings, folder, ledger, hook). The shard is submitted by the
    submit operator itself; its deferral runs the trigger to its event in this process and resumes the operator,
    as ``dags test`` does. The imports the DAG file makes are timed apart: in ``dags test`` they are parsing.
    """
    _use_emulator(home, url)
    started = time.perf_counter()
    dag_file = _dag_module()
    from airflow.sdk.exceptions import TaskDeferred

    from gemini_batch.core import records
    from gemini_batch.hooks.gemini import GeminiBatchHook
    from gemini_batch.operators.batch import GeminiBatchSubmitOperator
    from gemini_batch.steps import budget, build, collection, planning, publish, retry, runs, staging
    from gemini_batch.steps.clean_up import clean_up as clean_up_run

    imports_s = time.perf_counter() - started
    params = {name: param.value for name, param in dag_file.PARAMS.items()}
    params.update(source=DEMO_SOURCE, output=output, poll_seconds=DEMO_POLL_SECONDS, state=f"{output}/ledger")
    run_id = f"manual__{dt.datetime.now(dt.timezone.utc).isoformat()}"
    ti = _TaskInstance(DAG_ID, run_id)
    context = {"ti": ti}
    step_s: dict[str, float] = {}

    def open_run() -> runs.Run:
        return runs.Run.from_params(params, run_id, GeminiBatchHook(params["gemini_conn_id"]))

    def timed(name: str, step, *args):
        start = time.perf_counter()
        result = step(*args)
        step_s[name] = round(step_s.get(name, 0.0) + time.perf_counter() - start, 3)
        return result

    def submit_and_wait(manifest_uri: str) -> dict:
        operator = GeminiBatchSubmitOperator(
            task_id="submit_and_wait",
            manifest_uri=manifest_uri,
            model=params["model"],
            gemini_conn_id=params["gemini_conn_id"],
            expiry_hours=params["expiry_hours"],
            poll_interval=params["poll_seconds"],
        )
        try:
            return operator.execute(context)
        except TaskDeferred as deferred:
            trigger = deferred.trigger
            event = timed("trigger_wait", lambda: asyncio.run(_first_event(trigger)))
            return getattr(operator, deferred.method_name)(context, event=event)  # no kwargs back, as in dags test

    def plan_documents():
        return records.to_builtins(planning.plan_documents(open_run()))

    def check_budget(planned):
        budget.check_budget(open_run(), planned)

    def stage_documents():
        return staging.stage_documents(open_run())

    def build_requests():
        return build.build_requests(open_run(), 0)

    def collect_results(round_, jobs):
        return collection.collect_results(open_run(), round_, jobs)

    def prepare_retry(round_):
        return retry.prepare_retry(open_run(), round_)

    def publish_results(collected):
        return publish.publish_results(open_run(), collected)

    def clean_up():
        return clean_up_run(open_run())

    start = time.perf_counter()
    planned = timed("plan_documents", plan_documents)
    timed("check_budget", check_budget, planned)
    timed("stage_documents", stage_documents)
    manifests = timed("build_requests", build_requests)
    jobs = [timed("submit_and_wait", submit_and_wait, uri) for uri in manifests]
    collected = [timed("collect_results", collect_results, 0, jobs)]
    for round_ in range(1, dag_file.MAX_RETRY_ROUNDS + 1):
        retry_manifests = timed("prepare_retry", prepare_retry, round_)
        jobs = [timed("submit_and_wait", submit_and_wait, uri) for uri in retry_manifests]
        collected.append(timed("collect_results", collect_results, round_, jobs))
    summary = timed("publish_results", publish_results, collected)
    timed("clean_up", clean_up)
    return {
        "seconds": round(time.perf_counter() - start, 3),
        "imports_s": round(imports_s, 3),
        "step_s": step_s,
        "jobs": len(ti.pushed("job_name")),
        "summary": summary,
    }


class _TaskInstance:
    """What the submit operator uses of its task instance: ids and XCom pushes."""

    def __init__(self, dag_id: str, run_id: str):
        self.dag_id, self.run_id = dag_id, run_id
        self._pushes: list[tuple[str, object]] = []

    def xcom_push(self, key: str, value) -> None:
        self._pushes.append((key, value))

    def pushed(self, key: str) -> list:
        return [value for pushed_key, value in self._pushes if pushed_key == key]


async def _first_event(trigger) -> dict:
    async for event in trigger.run():
        return event.payload
    raise RuntimeError(f"{trigger!r} ended without an event")


def _dag_rows(dag_test: dict, steps: list[dict]) -> list[Row]:
    rows = []
    labels = ["cold: first run on a fresh AIRFLOW_HOME", "warm: second run"]
    for label, dag_run, step in zip(labels, dag_test["runs"], steps, strict=False):
        wall, ours = dag_run["wall_s"], step["seconds"]
        airflow = wall - ours
        per_task = airflow / dag_run["task_instances_run"]
        summary = dag_run["summary"]
        size = f"{summary['documents']} documents, {summary['requests']} requests, {summary['jobs']} batch job(s)"
        rows.append(
            Row(
                bench="orchestration",
                case=f"demo DAG, dags test ({label}); emulator instant, poll_seconds {DEMO_POLL_SECONDS}",
                size=size,
                seconds=wall,
                rate=f"{per_task:.2f} s Airflow overhead per task instance",
                peak_rss_mb=dag_test["dags_test_peak_rss_mb"],
                compare=f"Airflow {airflow:.1f} s + tasks {ours:.1f} s",
                extra={
                    **dag_run,
                    "our_steps_s": ours,
                    "airflow_overhead_s": round(airflow, 3),
                    "airflow_overhead_per_task_instance_s": round(per_task, 3),
                    # what the task runner adds inside the task instances (task API calls, XCom, rendering)
                    "inside_task_instances_overhead_s": round(dag_run["task_instances_s"] - ours, 3),
                    "poll_seconds": DEMO_POLL_SECONDS,
                    "time_scale": INSTANT_TIME_SCALE,
                    "faults": INSTANT_FAULTS,
                },
            )
        )
    step = steps[-1]
    rows.append(
        Row(
            bench="orchestration",
            case="demo DAG's steps in one plain Python process, no Airflow (the split's 'tasks')",
            size=rows[-1].size,
            seconds=step["seconds"],
            peak_rss_mb=step["peak_rss_mb"],
            compare=f"dags test {rows[-1].seconds:.1f} s",
            extra={**step, "runs_s": [s["seconds"] for s in steps], "poll_seconds": DEMO_POLL_SECONDS},
        )
    )
    return rows


# ------------------------------------------------------------------ 2. the triggerer's cost of a deferred wait


def hold_waits(home: str, url: str, waits: int, hold_seconds: float) -> dict:
    """``waits`` triggers polling PENDING jobs at the DAG's default interval in one loop: CPU per poll and job-hour."""
    _use_emulator(home, url)
    poll_seconds = float(_dag_module().PARAMS["poll_seconds"].value)
    from google.genai import batches, types

    from gemini_batch.hooks.gemini import GeminiBatchHook
    from gemini_batch.triggers.gemini import GeminiBatchJobTrigger

    client = GeminiBatchHook().get_conn()
    names = [
        client.batches.create(
            model=MODEL, src=[types.InlinedRequest(contents="Invoice Number: 1", metadata={"key": f"held-{i}"})]
        ).name
        for i in range(waits)
    ]
    deadline = (dt.datetime.now(dt.timezone.utc) + dt.timedelta(days=1)).isoformat()
    polls = 0
    unpatched_get = batches.AsyncBatches.get

    async def counted_get(self, **kwargs):
        nonlocal polls
        polls += 1
        return await unpatched_get(self, **kwargs)

    batches.AsyncBatches.get = counted_get

    async def wait(name: str, delay: float) -> None:
        await asyncio.sleep(delay)  # spread over one interval, as waits deferred at different times are
        trigger = GeminiBatchJobTrigger(
            job_name=name, gemini_conn_id="gemini_default", deadline=deadline, poll_interval=poll_seconds
        )
        async for event in trigger.run():
            raise RuntimeError(f"{name} ended while held: {event.payload}")

    async def hold() -> dict:
        cpu, wall = time.process_time(), time.perf_counter()
        await asyncio.sleep(IDLE_SECONDS)
        idle_cpu_per_s = (time.process_time() - cpu) / (time.perf_counter() - wall)
        rss_before = _rss_mb()
        tasks = [asyncio.create_task(wait(name, i * poll_seconds / waits)) for i, name in enumerate(names)]
        await asyncio.sleep(poll_seconds + 1)  # every wait started, built its client and polled once
        polls_at, cpu, wall = polls, time.process_time(), time.perf_counter()
        await asyncio.sleep(hold_seconds)
        held_cpu, held_wall, held_polls = time.process_time() - cpu, time.perf_counter() - wall, polls - polls_at
        rss_held = _rss_mb()
        failed = [t.exception() for t in tasks if t.done()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if failed:
            raise RuntimeError(f"{len(failed)} wait(s) ended during the hold; first: {failed[0]!r}")
        net_cpu = max(0.0, held_cpu - idle_cpu_per_s * held_wall)
        cpu_per_poll = net_cpu / held_polls
        return {
            "waits": waits,
            "poll_seconds": poll_seconds,
            "hold_s": round(held_wall, 2),
            "polls": held_polls,
            "held_cpu_s": round(held_cpu, 3),
            "idle_cpu_s_per_s": round(idle_cpu_per_s, 5),
            "net_cpu_s": round(net_cpu, 3),
            "cpu_ms_per_poll": round(cpu_per_poll * 1000, 3),
            "core_share": round(held_cpu / held_wall, 4),
            "cpu_s_per_job_hour": round(cpu_per_poll * 3600 / poll_seconds, 4),
            "rss_mb_before": rss_before,
            "rss_kb_per_wait": round((rss_held - rss_before) * 1024 / waits, 1),
        }

    return asyncio.run(hold())


def _rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return round(int(line.split()[1]) / 1024, 1)
    raise RuntimeError("VmRSS not found in /proc/self/status")


def _wait_row(held: dict) -> Row:
    per_hour = held["cpu_s_per_job_hour"]
    return Row(
        bench="orchestration",
        case=f"deferred wait: triggerer CPU s per job-hour at {held['poll_seconds']:g} s polls (seconds = CPU s)",
        size=f"{held['waits']} waits in one event loop, {held['polls']:,} polls every {held['poll_seconds']:g} s",
        seconds=per_hour,
        rate=f"{held['cpu_ms_per_poll']:.2f} ms CPU per poll",
        peak_rss_mb=held["peak_rss_mb"],
        compare=(
            f"{per_hour / 36:.4f}% of a core per wait; 1,000 waits ≈ {per_hour * 1000 / 36:.1f}% "
            "of a core (emulator excluded; triggerer loop overhead: tests/test_load.py)"
        ),
        extra=held,
    )

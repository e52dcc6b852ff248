"""Many deferred waits in one triggerer, on the production topology (tests/support/stack.py)."""

from __future__ import annotations

import os
import signal
import time

import psutil
import pytest

from gemini_emulator.testing import gemini_emulator
from support.dagrun import assert_contract, read_results
from support.load import Sampler, emulator_jobs, make_documents, mb, report, tree_usage

WAITS = int(os.environ.get("GEMINI_BATCH_LOAD_WAITS", "10"))
HOLD_SECONDS = float(os.environ.get("GEMINI_BATCH_LOAD_HOLD", "20"))  # all waits deferred: measure this long
POLL_SECONDS = float(os.environ.get("GEMINI_BATCH_LOAD_POLL", "10"))  # the triggers' poll interval in test 2

pytestmark = pytest.mark.load


# ------------------------------------------------------------------ 2. many deferred waits in one triggerer


def _task_states(stack, run_id: str) -> dict[str, int]:
    """How many task instances of the run (mapped ones each counted) are in each state."""
    states = {}
    for state in ("deferred", "queued", "scheduled", "running", "success", "failed", "up_for_retry"):
        page = stack.api("GET", f"/dags/gemini_batch_extract/dagRuns/{run_id}/taskInstances", state=state, limit=1)
        states[state] = page["total_entries"]
    return states


def _wait_for(what: str, check, timeout: float, interval: float = 2.0):
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not after {timeout:.0f}s")
        time.sleep(interval)


@pytest.mark.timeout(420 + 8 * WAITS + HOLD_SECONDS)
def test_many_deferred_waits_in_one_triggerer(tmp_path):
    from support.stack import Stack

    source, output = tmp_path / "source", tmp_path / "out"
    make_documents(source, WAITS, pdf_every=0)
    # every job stays PENDING (time scale 1, ~4 months) until the emulator is restarted below
    faults = {"pending_seconds": 10**7, "file_processing_seconds": 0, "running_seconds": 0}
    m: dict = {"waits": WAITS, "poll_s": POLL_SECONDS, "hold_s": HOLD_SECONDS, "outcome": "failed"}
    released = None
    t0 = time.monotonic()
    try:
        with Stack(tmp_path / "stack", time_scale=1, faults=faults, pool_slots=WAITS) as stack:
            m.update(executor=stack.state["executor"], stack_start_s=round(time.monotonic() - t0, 1))
            try:
                stack.wait_parsed("gemini_batch_extract")
                stack.api("PATCH", "/dags/gemini_batch_extract", {"is_paused": False})
                triggerer = psutil.Process(stack.state["procs"]["triggerer"]["pid"])
                # the idle triggerer, for comparison
                _, cpu0, _ = tree_usage(triggerer)
                time.sleep(10)
                rss_idle, cpu1, _ = tree_usage(triggerer)
                idle_cpu_per_min = (cpu1 - cpu0) * 6
                m.update(idle_cpu_s_per_min=round(idle_cpu_per_min, 2), idle_rss_mb=mb(rss_idle))

                conf = {
                    "source": str(source),
                    "output": str(output),
                    "max_rows_per_job": 1,
                    "poll_seconds": POLL_SECONDS,
                    "max_jobs_in_flight": WAITS,
                }
                run = stack.api("POST", "/dags/gemini_batch_extract/dagRuns", {"logical_date": None, "conf": conf})
                run_id = run["dag_run_id"]
                t_run = time.monotonic()

                def all_deferred():
                    state = stack.api("GET", f"/dags/gemini_batch_extract/dagRuns/{run_id}")["state"]
                    assert state not in ("failed", "success"), (
                        f"the run ended {state} before its waits were all deferred"
                    )
                    return _task_states(stack, run_id)["deferred"] >= WAITS

                _wait_for(f"{WAITS} deferred waits", all_deferred, timeout=300 + 6 * WAITS)
                m["all_deferred_after_s"] = round(time.monotonic() - t_run, 1)

                # the hold: every wait deferred in the one triggerer, each polling its PENDING job
                _, cpu_a, _ = tree_usage(triggerer)
                with Sampler(triggerer, interval=1.0) as hold:
                    time.sleep(HOLD_SECONDS)
                _, cpu_b, _ = tree_usage(triggerer)
                hold_cpu = cpu_b - cpu_a
                cpu_per_min = hold_cpu * 60 / HOLD_SECONDS
                polls = WAITS * HOLD_SECONDS / POLL_SECONDS
                # what the waits add to the idle triggerer's own loop (heartbeats, trigger table sync), per poll
                net_ms_per_poll = max(0.0, hold_cpu - idle_cpu_per_min * HOLD_SECONDS / 60) * 1000 / polls
                m.update(
                    {
                        "hold_cpu_s": round(hold_cpu, 2),
                        "cpu_s_per_min": round(cpu_per_min, 2),
                        "cpu_ms_per_wait_min": round(cpu_per_min * 1000 / WAITS, 1),
                        "cpu_ms_per_poll": round(hold_cpu * 1000 / polls, 2),
                        "net_cpu_ms_per_poll": round(net_ms_per_poll, 2),
                        "hold_peak_rss_mb": mb(hold.peak_rss),
                        "rss_kb_per_wait": round((hold.peak_rss - rss_idle) / 1024 / WAITS, 1),
                    }
                )
                still = _task_states(stack, run_id)
                assert still["deferred"] == WAITS, still

                # release: the same emulator (port, records) restarted with jobs that run and finish at once, and
                # files (the jobs' outputs) that live long enough for every collect however slow the resumes are
                stack.kill("gemini-emulator", signal.SIGTERM)
                released = gemini_emulator(
                    stack.emulator_dir,
                    port=stack.state["emulator_port"],
                    time_scale=3600,
                    gcs_endpoint=stack.state["gcs_url"],
                    faults={
                        "pending_seconds": 0,
                        "running_seconds": 0,
                        "file_processing_seconds": 0,
                        "job_expiry_hours": 10**5,
                        "file_ttl_hours": 10**5,
                    },
                ).start()
                t_release = time.monotonic()
                with Sampler(triggerer, interval=1.0) as resolving:
                    _wait_for(
                        "every wait resolved",
                        lambda: _task_states(stack, run_id)["deferred"] == 0,
                        timeout=120 + 2 * WAITS,
                    )
                    m["resolve_s"] = round(time.monotonic() - t_release, 1)
                    _, cpu_c, _ = tree_usage(triggerer)
                m.update(resolve_cpu_s=round(cpu_c - cpu_b, 2), resolve_peak_rss_mb=mb(resolving.peak_rss))

                def finished():
                    state = stack.api("GET", f"/dags/gemini_batch_extract/dagRuns/{run_id}")["state"]
                    return state if state in ("success", "failed") else None

                final = _wait_for("the run to finish", finished, timeout=300 + 6 * WAITS)
                m["run_s"] = round(time.monotonic() - t_run, 1)
                assert final == "success", (final, _task_states(stack, run_id))
                records, summary = read_results(output)
                assert_contract(records, summary, source)
                assert summary["succeeded"] == WAITS and summary["jobs"] == WAITS, summary
                jobs = emulator_jobs(released)
                assert len(jobs) == WAITS and all(j["request_count"] == 1 for j in jobs)
                assert all(j["state"] == "SUCCEEDED" for j in jobs), {j["state"] for j in jobs}
                m["outcome"] = "success"
            finally:
                if released is not None:
                    released.stop()
    finally:
        report("many_deferred_waits", [m])
    # low: a poll costs the triggerer a few milliseconds, and all the waits together well under half a core
    assert net_ms_per_poll < 15 and cpu_per_min < 30, (net_ms_per_poll, cpu_per_min)

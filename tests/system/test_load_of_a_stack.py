"""Many deferred waits in one triggerer, on the production topology (tests/support/stack.py)."""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest

from gemini_emulator.testing import gemini_emulator
from support.dagrun import assert_contract, read_results

ROOT = Path(__file__).resolve().parents[2]
REPORT = ROOT / "artifacts" / "load.jsonl"
MB = 2**20

WAITS = int(os.environ.get("GEMINI_BATCH_LOAD_WAITS", "20"))
HOLD_SECONDS = float(os.environ.get("GEMINI_BATCH_LOAD_HOLD", "20"))  # all waits deferred: measure this long
POLL_SECONDS = float(os.environ.get("GEMINI_BATCH_LOAD_POLL", "10"))  # the triggers' poll interval in test 2
PDF_EVERY = 50  # one document in 50 is a PDF

pytestmark = pytest.mark.load


# ------------------------------------------------------------------ documents


def make_documents(folder: Path, count: int, *, pdf_every: int = PDF_EVERY) -> dict:
    """``count`` distinct small documents, 1000 per sub-folder: one-line invoices as text, every
    ``pdf_every``-th a one-page PDF (one fpdf2 file, its invoice number rewritten in place)."""
    from fpdf import FPDF

    pdf = FPDF()
    pdf.set_compression(False)  # the page text stays literal: the number can be rewritten in place
    pdf.add_page()
    pdf.set_font("helvetica", size=12)
    pdf.cell(text="Invoice INV-#######, dated 2026-11-01, total 125.50 EUR, ACME GmbH")
    template = bytes(pdf.output())
    assert template.count(b"#######") == 1
    pdfs = 0
    for i in range(count):
        sub = folder / f"batch-{i // 1000:03d}"
        if i % 1000 == 0:
            sub.mkdir(parents=True, exist_ok=True)
        if pdf_every and i % pdf_every == pdf_every - 1:
            (sub / f"invoice-{i:06d}.pdf").write_bytes(template.replace(b"#######", f"{i:07d}".encode()))
            pdfs += 1
        else:
            (sub / f"note-{i:06d}.txt").write_text(
                f"Invoice T-{i:06d} dated 2026-{i % 12 + 1:02d}-{i % 28 + 1:02d}, total {i % 997 + 0.5:.2f} EUR\n"
            )
    return {"documents": count, "pdfs": pdfs, "texts": count - pdfs}


# ------------------------------------------------------------------ measuring a process tree


def tree(proc: psutil.Process) -> list[psutil.Process]:
    try:
        return [proc, *proc.children(recursive=True)]
    except psutil.Error:
        return []


def tree_usage(proc: psutil.Process) -> tuple[int, float, int]:
    """RSS bytes and CPU seconds (user + system, including reaped children) of a process and its descendants."""
    rss, cpu, n = 0, 0.0, 0
    for p in tree(proc):
        try:
            with p.oneshot():
                rss += p.memory_info().rss
                t = p.cpu_times()
                cpu += t.user + t.system + t.children_user + t.children_system
                n += 1
        except psutil.Error:
            pass
    return rss, cpu, n


class Sampler:
    """Samples a process tree's RSS (sum over the tree) and CPU in a thread until stopped."""

    def __init__(self, proc: psutil.Process, interval: float = 0.25):
        self.proc, self.interval = proc, interval
        self.peak_rss = self.peak_procs = 0
        self.rss_sum, self.samples, self.cpu = 0, 0, 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            rss, cpu, n = tree_usage(self.proc)
            if n:
                self.peak_rss, self.peak_procs = max(self.peak_rss, rss), max(self.peak_procs, n)
                self.rss_sum, self.samples, self.cpu = self.rss_sum + rss, self.samples + 1, max(self.cpu, cpu)
            self._stop.wait(self.interval)

    @property
    def mean_rss(self) -> float:
        return self.rss_sum / max(self.samples, 1)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


# ------------------------------------------------------------------ what a run left behind


def emulator_jobs(server) -> list[dict]:
    """The emulator's own record of every job, with the size of the input it received."""
    jobs_dir = server.log_path.parent / "jobs"
    jobs = [json.loads(p.read_text()) for p in jobs_dir.glob("*.json")]
    for job in jobs:
        job["input_bytes"] = (jobs_dir / f"{job['id']}.input.jsonl").stat().st_size
    return sorted(jobs, key=lambda j: j["create_time"])


# ------------------------------------------------------------------ reporting


def report(test: str, rows: list[dict], **fields) -> None:
    """A table to stderr, and one JSON line per row in artifacts/load.jsonl."""
    at = time.strftime("%Y-%m-%dT%H:%M:%S")
    REPORT.parent.mkdir(exist_ok=True)
    with REPORT.open("a") as out:
        for row in rows:
            out.write(json.dumps({"test": test, "at": at, **fields, **row}) + "\n")
    keys = list(dict.fromkeys(k for row in rows for k in row))
    width = {k: max(len(k), *(len(_fmt(r.get(k))) for r in rows)) for k in keys}
    lines = [
        f"[load] {test} " + " ".join(f"{k}={v}" for k, v in fields.items()),
        "  ".join(k.rjust(width[k]) for k in keys),
    ]
    lines += ["  ".join(_fmt(r.get(k)).rjust(width[k]) for k in keys) for r in rows]
    print("\n" + "\n".join(lines), file=sys.stderr, flush=True)


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.1f}" if abs(value) >= 10 else f"{value:.2f}"
    return "-" if value is None else str(value)


def mb(n: float) -> float:
    return round(n / MB, 1)


# ------------------------------------------------------------------ 1. many documents


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


# ------------------------------------------------------------------ 3. soak: consecutive runs leave nothing behind

"""What the load tests share: many small documents, a measured process tree, the emulator's jobs, the report."""

from __future__ import annotations

import json
import sys
import threading
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[2]
REPORT = ROOT / "artifacts" / "load.jsonl"
MB = 2**20
PDF_EVERY = 50  # one document in 50 is a PDF


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

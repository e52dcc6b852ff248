"""What every benchmark shares: generated inputs, measuring a step in a fresh process, the result rows.

Each measured step runs in a child process of its own (``measure``), so its
peak resident memory (VmHWM) is its own and not what an earlier step or the
harness itself left behind. A step is any function ``bench.<module>.<name>``
taking JSON arguments and returning a JSON object.
"""

from __future__ import annotations

import datetime as dt
import importlib
import json
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PYTHONPATH = f"{ROOT / 'plugins'}:{ROOT}"
MB = 2**20
CREATED = dt.datetime(2026, 11, 1, tzinfo=dt.timezone.utc)


@dataclass
class Row:
    """One line of the results table."""

    bench: str  # preparation | collection | orchestration | scaling
    case: str  # what was measured, e.g. "ours", "sequential baseline", "orjson floor"
    size: str  # e.g. "10,000 PDFs", "1.00 GB"
    seconds: float | None
    rate: str = ""  # throughput with its unit, e.g. "1,234 docs/s"
    peak_rss_mb: float | None = None
    compare: str = ""  # ratios to the baseline or floor
    target: str = ""  # the target for this row, if any
    met: bool | None = None  # None where the row has no target
    extra: dict = field(default_factory=dict)  # everything else measured, for artifacts/bench/results.jsonl

    def to_json(self) -> dict:
        return asdict(self)


def measure(step: str, **kwargs) -> dict:
    """Run ``bench.<module>.<function>`` in a fresh process; its result plus wall ``seconds`` and ``peak_rss_mb``."""
    done = subprocess.run(
        [sys.executable, "-m", "bench.common", step, json.dumps(kwargs)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        # Airflow configured as bin/airflow configures it (examples off: their plugins load on first file I/O)
        env={"AIRFLOW__CORE__LOAD_EXAMPLES": "False", **os.environ, "PYTHONPATH": PYTHONPATH},
    )
    if done.returncode != 0:
        raise RuntimeError(f"benchmark step {step} failed (exit {done.returncode}):\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def emulator_connection(url: str) -> str:
    """AIRFLOW_CONN_GEMINI_DEFAULT for the emulator at ``url`` (it takes any key; this one guards nothing)."""
    return json.dumps({"conn_type": "generic", "password": "bench", "extra": {"backend": "developer", "base_url": url}})


def peak_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return round(int(line.split()[1]) / 1024, 1)
    raise RuntimeError("VmHWM not found in /proc/self/status")


def generate_pdfs(folder: Path, count: int) -> int:
    """``count`` one-page invoice PDFs with distinct text, 1,000 per subfolder; returns their total bytes."""
    from fpdf import FPDF

    total = 0
    for i in range(count):
        sub = folder / f"batch-{i // 1000:03d}"
        target = sub / f"invoice-{i:06d}.pdf"
        if not target.exists():
            pdf = FPDF()
            pdf.set_creation_date(CREATED)  # the same bytes on every run
            pdf.add_page()
            pdf.set_font("helvetica", size=12)
            pdf.cell(text=f"Invoice Number: INV-{i:06d}")
            pdf.ln()
            pdf.cell(
                text=f"Date: 2026-{i % 12 + 1:02d}-{i % 28 + 1:02d}  Vendor: Vendor {i % 97}  Total: {i * 3.5:.2f} EUR"
            )
            sub.mkdir(parents=True, exist_ok=True)
            pdf.output(str(target))
        total += target.stat().st_size
    return total


def pdf_source(workdir: Path, count: int) -> tuple[Path, int]:
    """A folder of ``count`` generated PDFs under ``workdir``, made once and reused by later runs."""
    source = workdir / f"pdfs-{count}"
    done = source / ".complete"
    if not done.exists():
        start = time.perf_counter()
        generate_pdfs(source, count)
        done.write_text("")
        print(f"  generated {count:,} PDFs in {time.perf_counter() - start:.0f} s", file=sys.stderr)
    return source, sum(p.stat().st_size for p in source.rglob("*.pdf"))


def _child(step: str, kwargs: str) -> None:
    module, function = step.rsplit(".", 1)
    start = time.perf_counter()
    result = getattr(importlib.import_module(module), function)(**json.loads(kwargs))
    result.setdefault("seconds", round(time.perf_counter() - start, 6))
    result["peak_rss_mb"] = peak_rss_mb()
    print(json.dumps(result))


if __name__ == "__main__":
    _child(*sys.argv[1:3])

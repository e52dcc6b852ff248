"""Benchmark: prepare N small PDFs into validated shards against the emulator.

    .venv/bin/python bench/prepare_documents.py [--documents 10000] [--workdir DIR]

Generates N one-page PDFs (distinct text each), starts the Gemini emulator,
then times each preparation step in a child process (plan, stage through the
Files API, build shards, validate) and reports the child's wall time per step
and its peak resident memory (VmHWM). Run twice with different N to see that
memory stays flat as inputs grow.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "plugins")]


def generate_pdfs(folder: Path, count: int) -> None:
    from fpdf import FPDF

    for i in range(count):
        pdf = FPDF()
        pdf.add_page()
        pdf.set_font("helvetica", size=12)
        pdf.cell(text=f"Invoice {i:06d} dated 2026-{i % 12 + 1:02d}-{i % 28 + 1:02d}, total {i * 3.5:.2f} EUR")
        sub = folder / f"batch-{i // 1000:02d}"
        sub.mkdir(parents=True, exist_ok=True)
        pdf.output(str(sub / f"invoice-{i:06d}.pdf"))


def peak_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("VmHWM not found")


def prepare(source: Path, work: Path, base_url: str) -> dict:
    """The measured part, run in a fresh process so its peak memory is its own."""
    from google import genai
    from google.genai import types

    from gemini_batch import documents, plan
    from gemini_batch.batch_requests import RequestSpec
    from gemini_batch.cost import load_prices
    from gemini_batch.locations import as_path
    from gemini_batch.staging import FilesApiStager, StagedPart
    from gemini_batch.validate import validate_jsonl

    spec = RequestSpec(model="gemini-2.5-flash", prompt="Extract the invoice number, date and total.",
                       response_schema={"type": "object", "properties": {"number": {"type": "string"}}})
    client = genai.Client(api_key="bench", http_options=types.HttpOptions(base_url=base_url))
    src, out = as_path(source), as_path(work)
    timings: dict[str, float] = {}

    start = time.perf_counter()
    summary = plan.plan_run(src, spec, out / "plan.jsonl", prices=load_prices())
    timings["plan_s"] = time.perf_counter() - start

    start = time.perf_counter()
    staged: dict[str, StagedPart] = {}
    failures = 0
    for result in FilesApiStager(client, documents.open_part).stage(plan.parts_to_stage(out / "plan.jsonl", src)):
        if isinstance(result, StagedPart):
            staged[result.key] = result
        else:
            failures += 1
    timings["stage_s"] = time.perf_counter() - start

    start = time.perf_counter()
    manifests, unstaged = plan.build_shards(out / "plan.jsonl", src, staged, spec, out / "shards")
    timings["build_s"] = time.perf_counter() - start

    start = time.perf_counter()
    reports = [validate_jsonl(m.uri, backend="developer") for m in manifests]
    timings["validate_s"] = time.perf_counter() - start

    return {
        "documents": summary.documents, "requests": summary.requests, "staged": len(staged),
        "stage_failures": failures, "unstaged": len(unstaged), "shards": len(manifests),
        "rows": sum(r.rows for r in reports), "valid": all(r.ok for r in reports),
        "estimated_cost_usd": round(summary.estimate.usd, 4),
        **{k: round(v, 2) for k, v in timings.items()},
        "total_s": round(sum(timings.values()), 2), "peak_rss_mb": round(peak_rss_mb(), 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--documents", type=int, default=10_000)
    parser.add_argument("--workdir", type=Path)
    parser.add_argument("--child", nargs=3, metavar=("SOURCE", "WORK", "URL"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(prepare(Path(args.child[0]), Path(args.child[1]), args.child[2])))
        return

    from gemini_emulator.testing import gemini_emulator

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="bench-prepare-"))
    source = workdir / "source"
    if not source.exists():
        start = time.perf_counter()
        generate_pdfs(source, args.documents)
        print(f"generated {args.documents} PDFs in {time.perf_counter() - start:.1f} s", file=sys.stderr)
    with gemini_emulator(workdir / "emulator", time_scale=3600) as server:
        child = subprocess.run(
            [sys.executable, __file__, "--child", str(source), str(workdir / "work"), server.url],
            check=True, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": f"{ROOT / 'plugins'}:{ROOT}"},
        )
    print(child.stdout.strip().splitlines()[-1])


if __name__ == "__main__":
    main()

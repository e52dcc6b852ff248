"""Planning against a ledger's history: 1,000 new PDFs planned against ledgers of 0, 100,000 and 1,000,000
answered keys (target: within 2x of the empty ledger's time).

Each ledger is built once under the work folder the way runs build it (one
segment per run of 10,000 answers, then a compaction into a snapshot, then
a few newer segments the snapshot does not hold), and reused by later runs.
The timed step is the DAG's plan task (``planning.plan_documents``), in a fresh
process: the view of the ledger is opened, every document is inspected and
keyed, and every key is looked up.
"""

from __future__ import annotations

import hashlib
import shutil
import time
from pathlib import Path

from bench.common import Row, measure, pdf_source

SIZES = (0, 100_000, 1_000_000)
PER_SEGMENT = 10_000
UNFOLDED_SEGMENTS = 4  # newer than the snapshot, as between two compactions (ledger.COMPACT_AFTER_EVENTS)
PROMPT = "Extract the invoice number, date, vendor and total."


def build(folder: str, keys: int) -> dict:
    """A ledger of ``keys`` answered keys: segments of 10,000, compacted, plus a few segments after."""
    from gemini_batch.coordination.ledger import Ledger, LedgerEvent, now_iso
    from gemini_batch.core.locations import as_path

    ledger = Ledger(as_path(folder))
    at = now_iso()

    def events(start: int, count: int):
        for n in range(start, start + count):
            key = hashlib.sha256(f"history-{n}".encode()).hexdigest()
            outcome = {
                "key": key,
                "status": "succeeded",
                "error": None,
                "finish_reason": "STOP",
                "data": {
                    "invoice_number": f"INV-{n:07d}",
                    "date": "2026-01-01",
                    "vendor": f"Vendor {n % 97}",
                    "currency": "EUR",
                    "total": n * 1.5,
                },
                "input_tokens": 600,
                "output_tokens": 40,
                "model_version": "gemini-2.5-flash-lite",
                "raw_text": None,
                "reused": False,
            }
            yield LedgerEvent(key, "answered", f"history-{n // PER_SEGMENT}", at, outcome)

    segments = -(-keys // PER_SEGMENT)
    folded = max(segments - UNFOLDED_SEGMENTS, 0)
    for segment in range(segments):
        ledger.append(
            events(segment * PER_SEGMENT, min(PER_SEGMENT, keys - segment * PER_SEGMENT)),
            writer=f"history-{segment:05d}",
        )
        if segment + 1 == folded:
            ledger.compact(writer="history", force=True)
    return {"keys": keys, "segments": segments, "folded": folded}


def plan(source: str, work: str, ledger: str) -> dict:
    """The plan task's step against ``ledger``."""
    from gemini_batch.steps import planning, runs

    run = runs.Run.from_params(
        {
            "source": source,
            "output": work,
            "model": "gemini-2.5-flash-lite",
            "prompt": PROMPT,
            "response_schema": None,
            "state": ledger,
        },
        "bench-ledger",
    )
    start = time.perf_counter()
    summary = planning.plan_documents(run)
    return {
        "documents": summary.documents,
        "requests": summary.requests,
        "reused": summary.reused_parts,
        "seconds": round(time.perf_counter() - start, 6),
    }


def run(workdir: Path, documents: int = 1_000, sizes: tuple[int, ...] = SIZES) -> list[Row]:
    source, _ = pdf_source(workdir, documents)
    rows, baseline = [], None
    for keys in sizes:
        ledger = workdir / f"ledger-{keys}"
        if not (ledger / ".complete").exists():
            shutil.rmtree(ledger, ignore_errors=True)
            made = measure("bench.ledger.build", folder=str(ledger), keys=keys)
            (ledger / ".complete").parent.mkdir(parents=True, exist_ok=True)
            (ledger / ".complete").write_text("")
            print(f"  built a ledger of {keys:,} keys in {made['seconds']:.0f} s", flush=True)
        work = workdir / f"ledger-plan-{keys}"
        shutil.rmtree(work, ignore_errors=True)
        planned = measure("bench.ledger.plan", source=str(source), work=str(work), ledger=str(ledger))
        if planned["requests"] != documents:
            raise AssertionError(f"planning against {keys:,} keys requested {planned['requests']} of {documents}")
        baseline = baseline or planned["seconds"]
        ratio = planned["seconds"] / baseline
        rows.append(
            Row(
                "ledger",
                f"plan {documents:,} new PDFs",
                f"ledger of {keys:,} keys",
                planned["seconds"],
                f"{documents / planned['seconds']:,.0f} docs/s",
                planned["peak_rss_mb"],
                f"{ratio:.2f}x the empty ledger's time",
                "<=2x empty" if keys else "",
                ratio <= 2 if keys else None,
                extra=planned,
            )
        )
    return rows

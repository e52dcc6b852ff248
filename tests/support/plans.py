"""What the plan tests share: the request spec, a landing folder with every case, and planning it."""

from __future__ import annotations

import shutil

from gemini_batch.core.batch_requests import RequestSpec
from gemini_batch.core.cost import load_prices
from gemini_batch.core.locations import as_path
from gemini_batch.core.planned import Routing
from gemini_batch.steps import plan
from support.documents import write_dated_pdf

SCHEMA = {"type": "object", "properties": {"invoice_number": {"type": "string"}, "date": {"type": "string"}}}
SPEC = RequestSpec(model="gemini-2.5-flash-lite", prompt="Extract the invoice number and date.", response_schema=SCHEMA)
STAGE_ALL = Routing(inline_max_bytes=0)  # every part but text uploaded first


def landing_folder(root):
    """A folder at ``root`` with the cases a real landing folder has."""
    write_dated_pdf(root / "a.pdf", 1, "Invoice A-1")
    write_dated_pdf(root / "sub" / "long.pdf", 120, "Report")
    write_dated_pdf(root / "b.pdf", 1, "Invoice B-2")
    shutil.copy(root / "a.pdf", root / "copy-of-a.pdf")  # same bytes: one request, two records
    (root / "notes.md").write_text("# Notes\nInvoice N-3 dated 2026-05-01\n")
    (root / "broken.pdf").write_bytes((root / "b.pdf").read_bytes()[:300])
    (root / "empty.txt").write_bytes(b"")
    (root / ".DS_Store").write_bytes(b"\0\1")
    return root


def run_plan(source, work, finished=frozenset(), routing=STAGE_ALL):
    return plan.plan_run(
        as_path(source), SPEC, as_path(work) / "plan.jsonl", finished=finished, routing=routing, prices=load_prices()
    )

"""The opt-in live check (``GEMINI_API_KEY=... bin/test -m live``): the smallest real run, against Google's
Developer API itself, not the emulator. Three short documents, each sent its own way: text inline in the
JSONL, a one-page PDF inline (base64 ``inlineData``), and a longer PDF uploaded to the Files API first (an
inline threshold of 2 KB sorts the two PDFs); the cheapest model; results.jsonl and summary.json checked
on what it publishes.
It costs well under a cent (three requests of a few hundred tokens each at Batch Mode prices) and can take
minutes to hours: batch jobs have no promised turnaround. Without a key, or without ``-m live``, it is
reported as not run, with the reason."""

from __future__ import annotations

import os

import pytest
from fpdf import FPDF

from support.dagrun import assert_contract, read_results, run_dag

pytestmark = [pytest.mark.live, pytest.mark.timeout(6 * 3600)]


def test_the_smallest_real_run_on_the_developer_api(airflow_home, tmp_path):
    key = os.environ.get("GEMINI_API_KEY")
    if not key:
        pytest.skip("not run: GEMINI_API_KEY is not set (the live check calls the real Developer API)")
    source = tmp_path / "source"
    source.mkdir()
    (source / "note.txt").write_text("Invoice Number: LIVE-1\nTotal: 12.50 EUR\n")
    pdf = FPDF()
    pdf.add_page()
    pdf.set_font("Helvetica", size=12)
    pdf.cell(text="Invoice Number: LIVE-2   Total: 99.00 EUR")
    pdf.output(str(source / "invoice.pdf"))
    report = FPDF()
    for page in range(1, 7):
        report.add_page()
        report.set_font("Helvetica", size=10)
        report.multi_cell(0, 5, text=f"Report page {page}. " + "Quarterly figures, unchanged. " * 60)
    report.cell(text="Invoice Number: LIVE-3   Total: 7.00 EUR")
    report.output(str(source / "report.pdf"))
    inline_max_mb = 0.002
    assert (source / "invoice.pdf").stat().st_size <= inline_max_mb * 2**20 < (source / "report.pdf").stat().st_size, (
        "the inline threshold must sort the two PDFs"
    )
    schema = {
        "type": "object",
        "properties": {"invoice_number": {"type": ["string", "null"]}, "total": {"type": ["number", "null"]}},
        "required": ["invoice_number", "total"],
    }
    conn = {"conn_type": "generic", "password": key, "extra": {"backend": "developer"}}
    output = tmp_path / "out"
    done = run_dag(
        airflow_home,
        conn,
        {
            "source": str(source),
            "output": str(output),
            "model": "gemini-2.5-flash-lite",
            "response_schema": schema,
            "poll_seconds": 30,
            "retry_rounds": 1,
            "inline_max_mb": inline_max_mb,
        },
        "2026-12-02",
    )
    done.check()
    records, summary = read_results(output)
    assert_contract(records, summary, source)
    assert summary["documents"] == 3 and summary["succeeded"] == 3, summary
    assert records["note.txt"]["data"]["invoice_number"] == "LIVE-1"
    assert records["invoice.pdf"]["data"]["invoice_number"] == "LIVE-2"
    assert records["report.pdf"]["data"]["invoice_number"] == "LIVE-3"

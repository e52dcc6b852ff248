"""What the batch-request tests share: the invoice schema and a one-page invoice PDF to ask it of."""

from __future__ import annotations

from pathlib import Path

from fpdf import FPDF

SCHEMA = {
    "type": "object",
    "properties": {"invoice_number": {"type": "string"}, "total": {"type": "number"}},
    "required": ["invoice_number", "total"],
}


def write_invoice_pdf(path: Path) -> Path:
    """A one-page PDF at ``path`` with an invoice number and a total."""
    pdf = FPDF()
    pdf.add_page()
    pdf.set_font("helvetica", size=12)
    pdf.multi_cell(0, 10, text="Invoice number: INV-42\nTotal: 1,234.50\n")
    pdf.output(str(path))
    return path

"""Write the demo's sample documents into include/samples/ (committed; rerun to regenerate).

The set covers what a real landing folder holds: one-page invoices, a
120-page statement that is split into three requests, an exact copy of an
invoice (requested once), an invoice as Markdown text and as a PNG scan, and
a corrupt PDF that is rejected with its reason.
"""

from __future__ import annotations

import io
import shutil
from pathlib import Path

from fpdf import FPDF
from PIL import Image, ImageDraw

SAMPLES = Path(__file__).resolve().parent / "samples"

INVOICES = [
    ("INV-2026-0001", "2026-03-02", "Acme Industrial Supply", "EUR", 1249.50),
    ("INV-2026-0002", "2026-03-09", "Northwind Traders", "USD", 87.20),
    ("INV-2026-0003", "2026-03-17", "Globex Logistics", "GBP", 15400.00),
]


def invoice_lines(number: str, date: str, vendor: str, currency: str, total: float) -> list[str]:
    return [
        vendor,
        "INVOICE",
        f"Vendor: {vendor}",
        f"Invoice number: {number}",
        f"Issue date: {date}",
        f"Currency: {currency}",
        "Description                 Qty     Amount",
        f"Services rendered            1   {total:>10.2f}",
        f"Total due: {currency} {total:,.2f}",
    ]


def write_pdf(path: Path, pages: list[list[str]]) -> None:
    pdf = FPDF()
    pdf.set_font("helvetica", size=12)
    for lines in pages:
        pdf.add_page()
        for line in lines:
            pdf.cell(text=line, new_x="LMARGIN", new_y="NEXT")
    pdf.output(str(path))


def main() -> None:
    shutil.rmtree(SAMPLES, ignore_errors=True)
    (SAMPLES / "scans").mkdir(parents=True)
    for n, invoice in enumerate(INVOICES, start=1):
        write_pdf(SAMPLES / f"invoice-{n}.pdf", [invoice_lines(*invoice)])
    shutil.copy(SAMPLES / "invoice-1.pdf", SAMPLES / "invoice-1-copy.pdf")

    statement = [invoice_lines("STMT-2026-Q1", "2026-03-31", "Initech Bank", "USD", 98765.43)]
    statement += [[f"Statement line {page:03d}: transfer {page * 17 % 1000:>6}.00"] for page in range(2, 121)]
    write_pdf(SAMPLES / "statement-120-pages.pdf", statement)

    (SAMPLES / "invoice-4.md").write_text(
        "# Invoice\n\nInvoice number: INV-2026-0004  \nVendor: Umbrella Office Goods  \nIssue date: 2026-04-01  \n"
        "Currency: CHF  \nTotal due: CHF 432.10\n"
    )

    image = Image.new("RGB", (800, 400), "white")
    draw = ImageDraw.Draw(image)
    for row, line in enumerate(invoice_lines("INV-2026-0005", "2026-04-03", "Stark Parts", "USD", 310.0)):
        draw.text((40, 30 + row * 40), line, fill="black")
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    (SAMPLES / "scans" / "invoice-5.png").write_bytes(buffer.getvalue())

    whole = (SAMPLES / "invoice-2.pdf").read_bytes()
    (SAMPLES / "corrupt.pdf").write_bytes(whole[: len(whole) // 3])  # cut off mid-file, as a failed transfer leaves it


if __name__ == "__main__":
    main()

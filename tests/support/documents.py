"""What the document tests share: PDFs made with fpdf2, images from Pillow, and reading them back."""

from __future__ import annotations

import io
from collections.abc import Sequence

from fpdf import FPDF
from PIL import Image
from pypdf import PdfReader

from gemini_batch.core import documents
from gemini_batch.core.documents import SourceFile, inline_text, open_part


def write_pdf(path, *pages: str) -> None:
    """A PDF at ``path`` (its folder made) with one line of text on each page."""
    pdf = FPDF()
    for text in pages:
        pdf.add_page()
        pdf.set_font("helvetica", size=12)
        pdf.cell(text=text)
    path.parent.mkdir(parents=True, exist_ok=True)
    pdf.output(str(path))


def write_dated_pdf(path, pages: int, text: str = "Invoice") -> None:
    """A PDF whose every page reads ``text``, its page number and a date."""
    write_pdf(path, *(f"{text} page {page} dated 2026-03-{page % 28 + 1:02d}" for page in range(1, pages + 1)))


def pdf_bytes(pages: int, images: Sequence[bytes] = ()) -> bytes:
    """A PDF whose page i reads "Page i of N"; images[i], when given, fills page i+1."""
    pdf = FPDF()
    pdf.set_font("helvetica", size=12)
    for number in range(1, pages + 1):
        pdf.add_page()
        if number <= len(images):
            pdf.image(io.BytesIO(images[number - 1]), x=0, y=20, w=200)
        pdf.cell(text=f"Page {number} of {pages}")
    return bytes(pdf.output())


def image_bytes(kind: str) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (16, 16), "red").save(buffer, kind)
    return buffer.getvalue()


def page_texts(stream) -> list[str]:
    reader = PdfReader(stream)
    return [page.extract_text() for page in reader.pages]


def text_of(location) -> str:
    with open_part(location, None) as stream:
        return inline_text(stream.read())


def where(file: SourceFile):
    """Where a discovered file is read from (its OS path when local)."""
    return documents.locate(file.source, file.path)

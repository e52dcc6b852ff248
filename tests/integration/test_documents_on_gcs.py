"""Discovery and inspection of documents under a gs:// source (the GCS emulator)."""

from __future__ import annotations

import hashlib
import io
from collections.abc import Sequence

import pytest
from fpdf import FPDF
from PIL import Image
from pypdf import PdfReader

from gemini_batch.core import documents
from gemini_batch.core.documents import Limits, SourceError, SourceFile, discover, inline_text, inspect, open_part
from gemini_batch.core.locations import as_path
from support.emulators import storage_client


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


# --- PDFs --------------------------------------------------------------------


# --- content decides the type ------------------------------------------------


def text_of(location) -> str:
    with open_part(location, None) as stream:
        return inline_text(stream.read())


def where(file: SourceFile):
    """Where a discovered file is read from (its OS path when local)."""
    return documents.locate(file.source, file.path)


# --- discovery ---------------------------------------------------------------


# --- Google Cloud Storage ----------------------------------------------------


def test_discover_and_inspect_on_gcs(gcs, gcs_root):
    source = gcs_root / "documents" / "test_discover_and_inspect_on_gcs"
    pdf = pdf_bytes(7)
    for relative, data in [
        ("b/report.pdf", pdf),
        ("a.txt", b"hello\n"),
        ("z.png", image_bytes("PNG")),
        (".hidden", b"x"),
        ("sub/.git/config", b"x"),
    ]:
        (source / relative).write_bytes(data)
    (gcs_root / "documents" / "test_discover_and_inspect_on_gcs-sibling.txt").write_bytes(b"not under the source")
    bucket = storage_client(gcs.url).bucket("test-bucket")
    for placeholder in ["documents/test_discover_and_inspect_on_gcs/empty-folder/", "documents/placeholder-only/"]:
        bucket.blob(placeholder).upload_from_string(b"")
    assert list(discover(gcs_root / "documents" / "placeholder-only")) == []

    found = list(discover(source))
    assert [(file.path, file.size, file.rejected) for file in found] == [
        ("a.txt", 6, None),
        ("b/report.pdf", len(pdf), None),
        ("z.png", len(image_bytes("PNG")), None),
    ]
    assert str(where(found[1])) == f"{source}/b/report.pdf"

    result = inspect(found[1], Limits(max_pages=3))
    assert result.rejected is None
    assert (result.uri, result.mime_type, result.page_count) == (f"{source}/b/report.pdf", "application/pdf", 7)
    assert result.sha256 == hashlib.sha256(pdf).hexdigest()
    assert [part.pages for part in result.parts] == [(1, 3), (4, 6), (7, 7)]
    with open_part(where(found[1]), (4, 6)) as stream:
        assert page_texts(stream) == ["Page 4 of 7", "Page 5 of 7", "Page 6 of 7"]
    with open_part(where(found[1]), None) as stream:
        assert stream.read() == pdf
    assert text_of(where(found[0])) == "hello\n"
    assert inspect(found[2]).mime_type == "image/png"


def test_gcs_source_errors_name_the_source(gcs_root):
    (gcs_root / "documents/errors/file.txt").write_bytes(b"x")
    for uri, cause in [
        ("gs://no-such-bucket-xyz/docs", "cannot be read: bucket no-such-bucket-xyz does not exist"),
        ("gs://test-bucket/documents/errors/missing", r"cannot be read: no such folder \(nothing is stored under it\)"),
        ("gs://test-bucket/documents/errors/file.txt", "is a file, not a folder"),
    ]:
        with pytest.raises(SourceError, match=f"^source {uri} {cause}$"):
            discover(as_path(uri))

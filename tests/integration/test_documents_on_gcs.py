"""Discovery and inspection of documents under a gs:// source (the GCS emulator)."""

from __future__ import annotations

import hashlib

import pytest

from gemini_batch.core.documents import Limits, SourceError, discover, inspect, open_part
from gemini_batch.core.locations import as_path
from support.documents import image_bytes, page_texts, pdf_bytes, text_of, where
from support.emulators import storage_client


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

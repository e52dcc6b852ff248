"""Discovery and inspection over real files: PDFs from fpdf2, images from Pillow, a GCS emulator."""

from __future__ import annotations

import hashlib
import io
import os
import tracemalloc
import zipfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from pypdf import PdfReader, PdfWriter

from gemini_batch.core import documents
from gemini_batch.core.documents import (
    Limits,
    PartSpec,
    SourceChanged,
    SourceError,
    SourceFile,
    discover,
    inspect,
    open_part,
    read_inline,
)
from gemini_batch.core.locations import as_path
from support.documents import image_bytes, page_texts, pdf_bytes, text_of, where

SUPPORTED = "(supported: PDF, PNG, JPEG, WEBP, text, Markdown, HTML)"


def noise_jpeg(side: int) -> bytes:
    """Random noise barely compresses: a side x side JPEG is about side**2 * 1.1 bytes."""
    buffer = io.BytesIO()
    Image.frombytes("RGB", (side, side), os.urandom(side * side * 3)).save(buffer, "JPEG", quality=95)
    return buffer.getvalue()


def rewritten(data: bytes, **encrypt) -> bytes:
    """The PDF written again by pypdf, optionally encrypted."""
    writer = PdfWriter(clone_from=PdfReader(io.BytesIO(data)))
    if encrypt:
        writer.encrypt(**encrypt, algorithm="AES-256")
    buffer = io.BytesIO()
    writer.write(buffer)
    return buffer.getvalue()


def inspect_bytes(tmp_path: Path, name: str, data: bytes, limits: Limits = Limits()) -> documents.Inspection:
    (tmp_path / name).write_bytes(data)
    return inspect(SourceFile(name, as_path(tmp_path), len(data)), limits)


def covered_pages(parts: tuple[PartSpec, ...]) -> list[int]:
    return [page for part in parts for page in range(part.pages[0], part.pages[1] + 1)]


@pytest.fixture(scope="module")
def big_pdf(tmp_path_factory) -> Path:
    """A real 61 MB PDF: five pages, each a distinct 12 MB noise image."""
    path = tmp_path_factory.mktemp("big") / "scan.pdf"
    path.write_bytes(pdf_bytes(5, [noise_jpeg(3300) for _ in range(5)]))
    return path


# --- PDFs --------------------------------------------------------------------


def test_one_page_pdf_is_sent_as_is(tmp_path):
    data = pdf_bytes(1)
    result = inspect_bytes(tmp_path, "one.pdf", data)
    assert result.rejected is None
    assert (result.mime_type, result.page_count, result.size) == ("application/pdf", 1, len(data))
    assert result.parts == (PartSpec(None, len(data)),)
    assert result.sha256 == hashlib.sha256(data).hexdigest()
    assert result.uri == str(tmp_path / "one.pdf")
    with open_part(as_path(tmp_path / "one.pdf"), None) as stream:
        assert stream.read() == data


def test_long_pdf_splits_into_fifty_page_parts(tmp_path):
    result = inspect_bytes(tmp_path, "long.pdf", pdf_bytes(120))
    assert result.page_count == 120
    assert [part.pages for part in result.parts] == [(1, 50), (51, 100), (101, 120)]
    assert covered_pages(result.parts) == list(range(1, 121))
    for part in result.parts:
        with open_part(as_path(tmp_path / "long.pdf"), part.pages) as stream:
            assert len(stream.read()) == part.size
            stream.seek(0)
            first, last = part.pages
            assert page_texts(stream) == [f"Page {number} of 120" for number in range(first, last + 1)]


def test_open_part_is_deterministic_and_exact(tmp_path):
    (tmp_path / "doc.pdf").write_bytes(pdf_bytes(9))
    location = as_path(tmp_path / "doc.pdf")
    with open_part(location, (4, 6)) as first, open_part(location, (4, 6)) as second:
        written = first.read()
        assert written == second.read()
    assert page_texts(io.BytesIO(written)) == ["Page 4 of 9", "Page 5 of 9", "Page 6 of 9"]


def test_byte_limit_cuts_ranges_that_fit(tmp_path):
    images = [noise_jpeg(300) for _ in range(8)]  # about 100 KB per page
    limits = Limits(max_pages=50, max_part_bytes=300 * 2**10)
    result = inspect_bytes(tmp_path, "scans.pdf", pdf_bytes(8, images), limits)
    assert result.rejected is None and result.page_count == 8
    assert covered_pages(result.parts) == list(range(1, 9))
    assert len(result.parts) in (3, 4)  # two or three pages per part
    for part in result.parts:
        with open_part(as_path(tmp_path / "scans.pdf"), part.pages) as stream:
            assert len(stream.read()) == part.size <= limits.max_part_bytes


def test_single_page_above_the_byte_limit_rejects_the_document(tmp_path):
    images = [noise_jpeg(100), noise_jpeg(500), noise_jpeg(100)]  # page 2 is about 280 KB
    result = inspect_bytes(tmp_path, "scans.pdf", pdf_bytes(3, images), Limits(max_part_bytes=200 * 2**10))
    assert result.parts == ()
    assert result.rejected.startswith("page 2 alone is ")
    assert result.rejected.endswith(" KB, above the 200 KB part limit")
    assert result.sha256 is not None and result.mime_type == "application/pdf"


def test_real_sixty_megabyte_pdf_is_split_by_bytes(big_pdf):
    size = big_pdf.stat().st_size
    assert size > 60 * 2**20
    result = inspect(SourceFile(big_pdf.name, as_path(big_pdf.parent), size))
    assert result.rejected is None and result.page_count == 5
    assert len(result.parts) > 1
    assert covered_pages(result.parts) == [1, 2, 3, 4, 5]
    assert all(part.size <= 50 * 2**20 for part in result.parts)
    with open_part(as_path(big_pdf), result.parts[-1].pages) as stream:
        first, last = result.parts[-1].pages
        assert page_texts(stream) == [f"Page {number} of 5" for number in range(first, last + 1)]


def test_memory_stays_below_a_part_while_splitting(tmp_path):
    """Hashing streams and each measured range is freed before the next: memory tracks the part, not the file."""
    data = pdf_bytes(20, [noise_jpeg(700) for _ in range(20)])  # about 11 MB
    (tmp_path / "scans.pdf").write_bytes(data)
    file = SourceFile("scans.pdf", as_path(tmp_path), len(data))
    limits = Limits(max_part_bytes=2 * 2**20)
    inspect(file, limits)  # the first open imports storage modules: keep that out of the measurement
    tracemalloc.start()
    try:
        result = inspect(file, limits)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert len(result.parts) >= 5
    assert peak < 2 * limits.max_part_bytes < len(data) / 2


@given(
    page_sizes=st.lists(st.integers(1, 50), min_size=1, max_size=130),
    pages_per_part=st.integers(1, 60),
    max_part_bytes=st.integers(100, 1000),
)
@settings(max_examples=200, deadline=None)
def test_split_covers_every_page_once_in_order(page_sizes, pages_per_part, max_part_bytes):
    """Whatever the page sizes: parts are consecutive, within both limits, and cover each page once."""
    overhead = 50  # a written PDF's fixed cost besides its pages: a single page always fits

    def measure(first: int, last: int) -> int:
        return overhead + sum(page_sizes[first - 1 : last])

    parts = list(documents._split_pages(len(page_sizes), pages_per_part, max_part_bytes, measure))
    assert covered_pages(tuple(parts)) == list(range(1, len(page_sizes) + 1))
    for part in parts:
        first, last = part.pages
        assert last - first + 1 <= pages_per_part
        assert part.size == measure(first, last) <= max_part_bytes


def test_split_halves_a_range_until_it_fits():
    sizes = [10, 10, 10, 10, 100, 10, 10]
    parts = documents._split_pages(7, 7, 105, lambda first, last: sum(sizes[first - 1 : last]))
    assert [part.pages for part in parts] == [(1, 4), (5, 5), (6, 6), (7, 7)]  # 1-7, then 5-7, then 5-6 were too big


def test_split_rejects_the_first_page_that_cannot_fit_alone():
    sizes = [10, 10, 500, 10]
    with pytest.raises(documents._Rejected, match="^page 3 alone is 510 bytes, above the 400 bytes part limit$"):
        list(documents._split_pages(4, 50, 400, lambda first, last: 10 + sum(sizes[first - 1 : last])))


def test_pdf_needing_a_password_is_rejected(tmp_path):
    data = rewritten(pdf_bytes(2), user_password="secret", owner_password="owner")
    result = inspect_bytes(tmp_path, "locked.pdf", data)
    assert result.rejected == "encrypted PDF (password required)"
    assert result.parts == () and result.sha256 == hashlib.sha256(data).hexdigest()


def test_owner_password_only_pdf_is_sent_decrypted(tmp_path):
    data = rewritten(pdf_bytes(2), user_password="", owner_password="owner")
    result = inspect_bytes(tmp_path, "restricted.pdf", data)
    assert result.rejected is None and result.page_count == 2
    assert [part.pages for part in result.parts] == [(1, 2)]
    with open_part(as_path(tmp_path / "restricted.pdf"), (1, 2)) as stream:
        reader = PdfReader(stream)
        assert not reader.is_encrypted
        assert [page.extract_text() for page in reader.pages] == ["Page 1 of 2", "Page 2 of 2"]


@pytest.mark.parametrize("fraction", [0.3, 0.5, 0.9])
def test_pdf_cut_short_is_rejected(tmp_path, fraction):
    data = pdf_bytes(120)
    result = inspect_bytes(tmp_path, "cut.pdf", data[: int(len(data) * fraction)])
    assert result.rejected.startswith("corrupt PDF: ")
    assert result.parts == () and result.page_count is None


def test_pdf_cut_short_behind_an_intact_early_trailer_is_rejected(tmp_path):
    """Linearized files keep a trailer near the start; cut after it, pypdf alone would read fewer pages."""
    data = rewritten(pdf_bytes(120))
    root = PdfReader(io.BytesIO(data)).root_object.indirect_reference.idnum
    cut = data[: len(data) // 2] + b"\ntrailer\n<< /Root %d 0 R >>\nstartxref\n0\n%%%%EOF\n" % root
    assert 0 < len(PdfReader(io.BytesIO(cut), strict=False).pages) < 120
    result = inspect_bytes(tmp_path, "cut.pdf", cut)
    assert result.rejected.startswith("corrupt PDF: the page tree declares 120 pages but only ")


def test_pdf_without_pages_is_rejected(tmp_path):
    buffer = io.BytesIO()
    PdfWriter().write(buffer)
    assert inspect_bytes(tmp_path, "empty.pdf", buffer.getvalue()).rejected == "PDF has no pages"


def test_garbage_after_pdf_marker_is_corrupt(tmp_path):
    result = inspect_bytes(tmp_path, "fake.pdf", b"%PDF-1.7\nnot really a pdf\n" * 10)
    assert result.mime_type == "application/pdf"
    assert result.rejected.startswith("corrupt PDF: ")


# --- content decides the type ------------------------------------------------


def test_pdf_named_txt_is_a_pdf(tmp_path):
    result = inspect_bytes(tmp_path, "notes.txt", pdf_bytes(1))
    assert (result.mime_type, result.page_count, result.rejected) == ("application/pdf", 1, None)


def test_pdf_marker_after_leading_junk_is_found(tmp_path):
    result = inspect_bytes(tmp_path, "junk.pdf", b"\r\n" * 100 + pdf_bytes(1))
    assert (result.mime_type, result.rejected) == ("application/pdf", None)


@pytest.mark.parametrize(("kind", "mime_type"), [("PNG", "image/png"), ("JPEG", "image/jpeg"), ("WEBP", "image/webp")])
def test_images_are_one_part_whatever_their_name(tmp_path, kind, mime_type):
    data = image_bytes(kind)
    result = inspect_bytes(tmp_path, "scan.pdf", data)
    assert (result.mime_type, result.page_count, result.rejected) == (mime_type, None, None)
    assert result.parts == (PartSpec(None, len(data)),)


def test_image_above_the_part_limit_is_rejected(tmp_path):
    data = noise_jpeg(200)
    result = inspect_bytes(tmp_path, "photo.jpg", data, Limits(max_part_bytes=10 * 2**10))
    assert result.mime_type == "image/jpeg" and result.parts == ()
    assert result.rejected.startswith("image is ") and result.rejected.endswith(" KB, above the 10 KB part limit")


@pytest.mark.parametrize(
    ("name", "data", "mime_type"),
    [
        ("notes.txt", b"plain words\n", "text/plain"),
        ("README", b"no extension\n", "text/plain"),
        ("notes.md", b"# Title\n", "text/markdown"),
        ("notes.MARKDOWN", b"# Title\n", "text/markdown"),
        ("page.htm", b"<p>fragment</p>", "text/html"),
        ("page.txt", b"\xef\xbb\xbf \n<!DOCTYPE HTML><title>x</title>", "text/html"),
        ("page", b"<html><body>x</body></html>", "text/html"),
        ("utf8.txt", "caf\u00e9 \u2014 \U0001f600\n".encode(), "text/plain"),
    ],
)
def test_text_kinds(tmp_path, name, data, mime_type):
    result = inspect_bytes(tmp_path, name, data)
    assert (result.mime_type, result.rejected, result.parts) == (mime_type, None, (PartSpec(None, len(data)),))


def test_inline_text_strips_the_bom_and_keeps_line_endings(tmp_path):
    (tmp_path / "win.txt").write_bytes(b"\xef\xbb\xbfline one\r\nline two\r\n")
    assert text_of(as_path(tmp_path / "win.txt")) == "line one\r\nline two\r\n"


def test_an_inline_part_is_what_open_part_sends_and_only_while_the_file_is_unchanged(tmp_path):
    path = tmp_path / "long.pdf"
    path.write_bytes(pdf_bytes(6))
    (inspection,) = [inspect(f, Limits(max_pages=2)) for f in discover(as_path(tmp_path))]
    source, location = as_path(tmp_path), as_path(path)
    for part in inspection.parts:
        with open_part(location, part.pages) as stream:
            assert read_inline(source, "long.pdf", part.pages, inspection.sha256) == stream.read()
    assert read_inline(source, "long.pdf", None, inspection.sha256) == path.read_bytes()

    path.write_bytes(pdf_bytes(7))  # edited after the plan
    for pages in (None, (1, 2)):
        with pytest.raises(SourceChanged, match="^long.pdf changed since the run planned it"):
            read_inline(source, "long.pdf", pages, inspection.sha256)
    path.unlink()
    with pytest.raises(FileNotFoundError):
        read_inline(source, "long.pdf", None, inspection.sha256)


def test_non_utf8_text_is_rejected_with_the_offending_byte(tmp_path):
    result = inspect_bytes(tmp_path, "latin1.txt", "Le caf\u00e9 est chaud".encode("latin-1"))
    assert result.rejected == "text is not valid UTF-8 (byte 0xE9 at offset 6)"
    assert result.mime_type == "text/plain" and result.parts == ()


def test_utf8_is_checked_across_chunk_boundaries(tmp_path):
    euro = "\u20ac".encode()  # three bytes, placed to straddle the first 1 MiB chunk boundary
    valid = b"a" * (documents.CHUNK_BYTES - 1) + euro + b"b" * 10
    assert inspect_bytes(tmp_path, "valid.txt", valid).rejected is None
    invalid = valid + b"\xff" + b"c" * 10
    assert inspect_bytes(tmp_path, "invalid.txt", invalid).rejected == (
        f"text is not valid UTF-8 (byte 0xFF at offset {len(valid)})"
    )
    truncated = b"a" * 10 + euro[:2]
    assert inspect_bytes(tmp_path, "cut.txt", truncated).rejected == "text is not valid UTF-8 (byte 0xE2 at offset 10)"


def test_text_above_the_inline_limit_is_rejected(tmp_path):
    data = b"x" * (5 * 2**20 + 2**19)
    assert inspect_bytes(tmp_path, "huge.md", data).rejected == "text is 5.5 MB, above the 4 MB inline text limit"


def test_zero_byte_file_is_rejected(tmp_path):
    result = inspect_bytes(tmp_path, "empty.pdf", b"")
    assert result.rejected == "zero-byte file"
    assert result.sha256 == hashlib.sha256(b"").hexdigest() and result.parts == ()


def zip_bytes(*names: str) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name in names:
            archive.writestr(name, "content")
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("data", "name"),
    [
        (zip_bytes("a.pdf", "b.pdf"), "ZIP archive"),
        (zip_bytes("[Content_Types].xml", "word/document.xml"), "Word document (DOCX)"),
        (image_bytes("GIF"), "GIF image"),
        (image_bytes("TIFF"), "TIFF image"),
        (image_bytes("BMP"), "BMP image"),
        (b"\x1f\x8b\x08\x00" + bytes(20), "gzip archive"),
        ("hello".encode("utf-16"), "UTF-16 text (save it as UTF-8)"),
        (b"\x00\x01\x02binary", "unrecognised binary content"),
    ],
    ids=lambda value: value if isinstance(value, str) else "content",  # a zip's bytes hold the time it was made
)
def test_unsupported_types_are_named(tmp_path, data, name):
    result = inspect_bytes(tmp_path, "document.pdf", data)
    assert result.rejected == f"unsupported file type: {name} {SUPPORTED}"
    assert result.mime_type is None and result.parts == ()


def test_file_that_vanished_is_rejected_as_unreadable(tmp_path):
    result = inspect(SourceFile("gone.pdf", as_path(tmp_path), 10))
    assert result.rejected.startswith("unreadable: ") and "gone.pdf" in result.rejected
    assert result.sha256 is None


def test_sha256_streams_the_whole_file(tmp_path):
    data = os.urandom(2 * documents.CHUNK_BYTES).hex().encode()[: 3 * documents.CHUNK_BYTES + 123]  # text: sent
    assert inspect_bytes(tmp_path, "blob.txt", b"text " + data).sha256 == hashlib.sha256(b"text " + data).hexdigest()


# --- discovery ---------------------------------------------------------------


def write(root: Path, relative: str, data: bytes = b"text\n") -> None:
    (root / relative).parent.mkdir(parents=True, exist_ok=True)
    (root / relative).write_bytes(data)


def test_discover_sorts_by_relative_path_and_skips_hidden_names(tmp_path):
    hidden = [".DS_Store", ".git/config", "a/.hidden.txt"]
    for relative in ["b.txt", "a/z.txt", "a-b.txt", "A.txt", "a/b/c.txt", "é.txt", *hidden]:
        write(tmp_path, relative)
    found = list(discover(as_path(tmp_path)))
    assert [file.path for file in found] == ["A.txt", "a-b.txt", "a/b/c.txt", "a/z.txt", "b.txt", "é.txt"]
    assert all(file.rejected is None and file.size == 5 for file in found)
    assert where(found[2]) == str(tmp_path / "a/b/c.txt")


def test_discover_an_empty_folder(tmp_path):
    assert list(discover(as_path(tmp_path))) == []


def test_symlinks_inside_are_followed_and_others_rejected(tmp_path):
    source, outside = tmp_path / "source", tmp_path / "outside"
    write(source, "docs/report.txt", b"report\n")
    write(outside, "secret.txt")
    (source / "alias.txt").symlink_to(source / "docs/report.txt")
    (source / "mirror").symlink_to("docs")
    (source / "escape.txt").symlink_to(outside / "secret.txt")
    (source / "escape-folder").symlink_to(outside)
    (source / "broken.txt").symlink_to(source / "missing.txt")
    (source / "docs/loop").symlink_to("..")
    (source / "docs/self").symlink_to(".")
    found = {file.path: file for file in discover(as_path(source))}
    assert sorted(found) == [
        "alias.txt",
        "broken.txt",
        "docs/loop",
        "docs/report.txt",
        "docs/self",
        "escape-folder",
        "escape.txt",
        "mirror/loop",
        "mirror/report.txt",
        "mirror/self",
    ]
    for followed in ["alias.txt", "mirror/report.txt", "docs/report.txt"]:
        assert found[followed].rejected is None and found[followed].size == 7
        assert text_of(where(found[followed])) == "report\n"
    assert found["escape.txt"].rejected == f"symlink to {outside / 'secret.txt'}, outside the source: not followed"
    assert found["escape-folder"].rejected == f"symlink to {outside}, outside the source: not followed"
    assert found["broken.txt"].rejected == "broken symlink: No such file or directory"
    assert found["docs/loop"].rejected == f"symlink to {source}, a folder that contains it: not followed (cycle)"
    assert found["docs/self"].rejected.endswith("a folder that contains it: not followed (cycle)")
    assert inspect(found["escape.txt"]).rejected == found["escape.txt"].rejected


def test_symlink_loop_between_links_is_rejected(tmp_path):
    (tmp_path / "ping").symlink_to("pong")
    (tmp_path / "pong").symlink_to("ping")
    reasons = {file.rejected for file in discover(as_path(tmp_path))}
    assert reasons == {"broken symlink: Too many levels of symbolic links"}


def test_special_files_are_rejected_and_undecodable_names_read(tmp_path):
    os.mkfifo(tmp_path / "pipe")
    (Path(os.fsdecode(os.fsencode(tmp_path) + b"/caf\xe9.txt"))).write_bytes(b"x")
    found = list(discover(as_path(tmp_path)))
    assert [(file.path, file.rejected) for file in found] == [
        ("caf\udce9.txt", None),  # its exact bytes, as surrogate escapes; JSON shows it as caf\xe9.txt
        ("pipe", "not a regular file (device, FIFO or socket)"),
    ]
    assert text_of(where(found[0])) == "x"


def test_source_errors_name_the_source(tmp_path):
    write(tmp_path, "file.txt")
    with pytest.raises(SourceError, match=f"^source {tmp_path / 'missing'} cannot be read: No such file or directory$"):
        discover(as_path(tmp_path / "missing"))
    with pytest.raises(SourceError, match=f"^source {tmp_path / 'file.txt'} cannot be read: Not a directory$"):
        discover(as_path(tmp_path / "file.txt"))


def test_limits_must_be_positive():
    with pytest.raises(ValueError, match="Limits.max_pages must be a positive integer, got 0"):
        Limits(max_pages=0)


# --- Google Cloud Storage ----------------------------------------------------


def test_a_local_walk_yields_whole_paths_in_code_point_order_lazily(tmp_path):
    """Folders are walked one listing at a time, yet the order is that of sorting every relative path:
    ``a-b`` (0x2D) before the files of folder ``a`` ("a/" is 0x2F), ``a0`` after them."""
    names = [
        "a/x.txt",
        "a/b/y.txt",
        "a-b.txt",
        "a.txt",
        "a0.txt",
        "Z.txt",
        "b/a/a.txt",
        "b/a-.txt",
        "é.txt",
        "a/a b.txt",
    ]
    for name in names:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("x")
    (tmp_path / "loop").symlink_to(tmp_path)  # a cycle: rejected under its own name, in its place in the order
    walk = discover(as_path(tmp_path))
    assert not isinstance(walk, list)
    found = [f.path for f in walk]
    assert found == sorted([*names, "loop"]) and found[found.index("loop")] == "loop"

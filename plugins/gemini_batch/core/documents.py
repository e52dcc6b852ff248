"""Find the documents under a source and decide how each one is sent.

Discovery lists every file (local folder or ``gs://`` prefix) in a stable
order; inspection recognises each file's type by its first bytes and judges
its listed size against that type's limit, and only then reads a file that
can be sent, once, streaming, to hash it and plan its request parts (a large
PDF becomes page ranges). A bad file never stops a run: it comes back with a
precise ``rejected`` reason so it still gets its line in the results; one of
an unknown type or too large for any route is never read past its first bytes.

Rules users can rely on:

- Names starting with ``.`` (files and folders: ``.DS_Store``, ``.git``) are
  not documents and are skipped.
- Local symlinks are followed when they resolve inside the source; a symlink
  that is broken, leaves the source or points back to a folder containing it
  is reported as rejected and not followed (an absolute target is judged the
  same way: only where it resolves to counts).
- Any other name the filesystem allows is a document: newlines, ``..`` inside a
  name, 255-byte names. A local name that is not UTF-8 is read like any other;
  the paths kept internally hold its bytes exactly (surrogate escapes), and
  what is written to JSON shows them as ``\\xNN`` (``locations.printable``).
- An object name with an empty segment (``docs//a.pdf``) names no path
  inside the source: it is rejected, never read through a path that would
  resolve to another object. (``.`` and ``..`` segments start with ``.``:
  such objects are skipped like every hidden name.)
- The content decides the type, never the extension; the extension only
  tells Markdown (``.md``, ``.markdown``) and HTML (``.html``, ``.htm``) text
  from plain text.
- A part is sent only as its document was planned (``open_planned``): one
  edited, replaced, or made a link out of the source since the plan fails.
- PDFs protected by an owner password only (they open without a password in
  any viewer) are accepted; the service refuses encrypted files, so they are
  always sent as decrypted copies written by pypdf. PDFs that need a password
  to open are rejected.
"""

from __future__ import annotations

import codecs
import errno
import gc
import hashlib
import os
import re
import shutil
import stat
import tempfile
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from functools import partial
from itertools import chain
from pathlib import PurePosixPath
from typing import TYPE_CHECKING, BinaryIO

from pypdf import PasswordType, PdfReader, PdfWriter

from gemini_batch.core import locations
from gemini_batch.core.locations import printable, uri_of
from gemini_batch.core.settings import DEFAULTS

if TYPE_CHECKING:  # not imported at run time: inspect_local's worker processes import no Airflow
    from airflow.sdk import ObjectStoragePath

    Location = ObjectStoragePath | str  # where a document is read from: a path object, or a local file's OS path

PDF = "application/pdf"
TEXT_TYPES = frozenset({"text/plain", "text/markdown", "text/html"})
SUPPORTED_TYPES = frozenset({PDF, "image/png", "image/jpeg", "image/webp"}) | TEXT_TYPES

CHUNK_BYTES = 2**20
SNIFF_BYTES = 64 * 2**10  # how much of the start decides the type
PDF_MARKER_WINDOW = 1024  # "%PDF-" may follow some junk, within the first 1024 bytes (as readers allow)

_SUPPORTED_NAMES = "PDF, PNG, JPEG, WEBP, text, Markdown, HTML"
_IMAGE_SIGNATURES = (
    (re.compile(rb"\x89PNG\r\n\x1a\n"), "image/png"),
    (re.compile(rb"\xff\xd8\xff"), "image/jpeg"),
    (re.compile(rb"RIFF.{4}WEBP", re.DOTALL), "image/webp"),
)
# Well-known formats users drop into document folders, named in the rejection
# so they know what to convert. First match wins: Office documents before ZIP.
_UNSUPPORTED_SIGNATURES = tuple(
    (re.compile(pattern, re.DOTALL), name)
    for pattern, name in (
        (rb"PK\x03\x04(?=.*?word/)", "Word document (DOCX)"),
        (rb"PK\x03\x04(?=.*?xl/)", "Excel workbook (XLSX)"),
        (rb"PK\x03\x04(?=.*?ppt/)", "PowerPoint presentation (PPTX)"),
        (rb"PK(?:\x03\x04|\x05\x06|\x07\x08)", "ZIP archive"),
        (rb"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1", "legacy Office document (DOC, XLS or PPT)"),
        (rb"GIF8[79]a", "GIF image"),
        (rb"II\*\x00|MM\x00\*", "TIFF image"),
        (rb"BM.{4}\x00{4}", "BMP image"),
        (rb".{4}ftyp(?:hei|hev|mif1|msf1|avi)", "HEIC/AVIF image"),
        (rb".{4}ftyp", "MP4/QuickTime video"),
        (rb"\x1f\x8b", "gzip archive"),
        (rb"7z\xbc\xaf\x27\x1c", "7-Zip archive"),
        (rb"Rar!\x1a\x07", "RAR archive"),
        (rb"\xff\xfe|\xfe\xff", "UTF-16 text (save it as UTF-8)"),
    )
)
_HTML_STARTS = (b"<!doctype html", b"<html")
_TEXT_SUFFIXES = {".md": "text/markdown", ".markdown": "text/markdown", ".html": "text/html", ".htm": "text/html"}


class SourceChanged(Exception):
    """A document's bytes are no longer those it was planned from: its key no longer describes what would be sent."""


class SourceError(Exception):
    """The source as a whole cannot be read (missing folder or bucket, not a folder, permission denied).

    Individual bad files never raise: they are yielded or inspected as rejected.
    """


@dataclass(frozen=True)
class Limits:
    max_pages: int = DEFAULTS["max_pages"]  # pages per PDF part
    max_part_bytes: int = DEFAULTS["max_part_mb"] * 2**20  # bytes per PDF or image part
    max_text_bytes: int = 4 * 2**20  # text goes inline in the request; larger text is rejected
    max_file_bytes: int = 2 * 2**30  # the largest PDF read at all: what the Files API takes as one file

    def __post_init__(self) -> None:
        for name, value in vars(self).items():
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"Limits.{name} must be a positive integer, got {value!r}")


@dataclass(frozen=True)
class SourceFile:
    """A file discovery found; it is read at ``locate(source, path)`` (no path object is made per file)."""

    path: str  # relative to the source, "/"-separated: the document's identity (bytes not UTF-8 as surrogate escapes)
    source: ObjectStoragePath  # the folder or prefix it was found under
    size: int
    rejected: str | None = None  # discovery already knows it cannot be read


@dataclass(frozen=True)
class PartSpec:
    pages: tuple[int, int] | None  # 1-based inclusive page range of a PDF; None: the whole file as is
    size: int  # bytes this part sends


@dataclass(frozen=True)
class Inspection:
    path: str
    uri: str
    size: int
    mime_type: str | None  # sniffed from the content; None when not recognised
    sha256: str | None  # of the file bytes; None unless read whole (not when judged by its first bytes or size)
    page_count: int | None  # PDFs only
    parts: tuple[PartSpec, ...]  # empty when rejected
    rejected: str | None


class _Rejected(Exception):
    """A reason to reject the file being inspected (the message is the reason)."""


# --- discovery ---------------------------------------------------------------


def discover(source: ObjectStoragePath) -> Iterator[SourceFile]:
    """Every file under ``source``, recursively, sorted by relative path (code point order, the same everywhere).

    Raises SourceError, naming the source, at the call when the source itself
    cannot be listed; bad files inside it are yielded with ``rejected`` set.
    """
    if is_local(source):
        return _walk_local(source)  # lazily, already in order: memory holds one listing per folder level
    return iter(sorted(_walk_store(source), key=lambda file: file.path))


def locate(source: ObjectStoragePath, path: str) -> Location:
    """Where the document ``path`` under ``source`` is read from: its OS path when local (what reading it needs,
    at a hundredth of a path object's cost, which matters once per document), else its ObjectStoragePath."""
    return os.path.join(source.path, path) if is_local(source) else source / path


def is_local(path: Location) -> bool:
    return isinstance(path, str) or locations.is_local(path)


def _open_binary(location: Location) -> BinaryIO:
    """The file's own stream, an io.IOBase as upload clients require: the OS's buffered file when local.

    Not ObjectStoragePath's file wrapper: pypdf reads a PDF in many small
    reads and seeks, each ten times slower through it.
    """
    if isinstance(location, str):
        return open(location, "rb")
    return open(location.path, "rb") if is_local(location) else location.fs.open(location.path, "rb")


def _is_hidden(relative: str) -> bool:
    return any(name.startswith(".") for name in relative.split("/"))


def _walk_local(source: ObjectStoragePath) -> Iterator[SourceFile]:
    root = os.path.realpath(source.path)
    try:
        listing = _listing(root, root, frozenset({root}))
    except OSError as error:
        raise SourceError(f"source {uri_of(source)} cannot be read: {error.strerror}") from error
    return _walk_folder(source, root, listing, "", frozenset({root}))


def _listing(folder: str, root: str, ancestors: frozenset[str]) -> list[tuple]:
    """The visible entries of ``folder`` as (sort key, name, is_link, target, stat or OSError), in the order of
    their whole paths: a folder to walk sorts as ``name/``, so ``a-b`` comes before the files in folder ``a``."""
    listed = []
    with os.scandir(folder) as entries:
        for entry in entries:
            if entry.name.startswith("."):
                continue
            is_link = entry.is_symlink()
            target = os.path.realpath(entry.path) if is_link else entry.path  # folders walked are real paths already
            try:
                status: os.stat_result | OSError = os.stat(target)
            except OSError as error:
                status = error
            walked = (
                isinstance(status, os.stat_result)
                and stat.S_ISDIR(status.st_mode)
                and target not in ancestors
                and not (is_link and os.path.commonpath([root, target]) != root)
            )
            listed.append((entry.name + "/" if walked else entry.name, entry.name, is_link, target, status))
    listed.sort(key=lambda item: item[0])
    return listed


def _walk_folder(
    source: ObjectStoragePath, root: str, listing: list[tuple], prefix: str, ancestors: frozenset[str]
) -> Iterator[SourceFile]:
    """Files of a folder's ``listing`` and below; ``ancestors`` (real paths of the folders above) stop symlink
    cycles."""
    for _, name, is_link, target, status in listing:
        relative = prefix + name
        rejected = partial(SourceFile, relative, source, 0)
        if isinstance(status, OSError):
            yield rejected(f"{'broken symlink' if is_link else 'cannot be read'}: {status.strerror}")
        elif is_link and os.path.commonpath([root, target]) != root:
            yield rejected(f"symlink to {printable(target)}, outside the source: not followed")
        elif stat.S_ISDIR(status.st_mode):
            if target in ancestors:
                yield rejected(f"symlink to {printable(target)}, a folder that contains it: not followed (cycle)")
                continue
            try:
                inner = _listing(target, root, ancestors | {target})
            except OSError as error:
                yield rejected(f"folder cannot be listed: {error.strerror}")
                continue
            yield from _walk_folder(source, root, inner, relative + "/", ancestors | {target})
        elif stat.S_ISREG(status.st_mode):
            yield SourceFile(relative, source, status.st_size)
        else:
            yield rejected("not a regular file (device, FIFO or socket)")


def _walk_store(source: ObjectStoragePath) -> list[SourceFile]:
    """An object store: one fresh listing of every object under the prefix; "folder/" placeholders are not files.

    Object stores have no folders: a prefix with nothing under it (not even a
    placeholder) is reported missing, so a mistyped source fails loudly
    instead of finding no documents.
    """
    uri = uri_of(source)
    try:
        objects = source.fs.find(source.path, detail=True)
    except FileNotFoundError as error:
        raise SourceError(f"source {uri} cannot be read: bucket {source.drive} does not exist") from error
    except OSError as error:
        raise SourceError(f"source {uri} cannot be read: {error}") from error
    prefix = source.path.rstrip("/") + "/"
    inside = {name.removeprefix(prefix): entry for name, entry in objects.items() if name.startswith(prefix)}
    if objects and not inside:
        raise SourceError(f"source {uri} is a file, not a folder")
    if not objects and prefix != f"{source.drive}/":
        raise SourceError(f"source {uri} cannot be read: no such folder (nothing is stored under it)")
    return [
        SourceFile(relative, source, int(entry["size"]), _unsafe_object_name(relative))
        for relative, entry in inside.items()
        if relative and not relative.endswith("/") and not _is_hidden(relative)
    ]


def _unsafe_object_name(relative: str) -> str | None:
    """Why an object name cannot be joined to the source as a path ("a//b" would read "a/b"), or None."""
    if "" in relative.split("/"):
        return "object name has an empty segment ('//'): it names no path inside the source"
    return None


# --- inspection --------------------------------------------------------------


def inspect(file: SourceFile, limits: Limits = Limits()) -> Inspection:
    """Hash, type and part plan of one file. Never raises for a bad file: the reason goes into ``rejected``."""
    location = locate(file.source, file.path)
    uri = printable(location if isinstance(location, str) else uri_of(location))
    if file.rejected:
        return Inspection(file.path, uri, file.size, None, None, None, (), file.rejected)
    return _inspect(file.path, uri, file.size, partial(_open_binary, location), is_local(location), limits)


def local_item(file: SourceFile) -> tuple[str, str, int]:
    """What ``inspect_local`` needs of a local file: plain strings, cheap to send to another process."""
    return file.path, os.path.join(file.source.path, file.path), file.size


def inspect_local(items: list[tuple[str, str, int]], limits: Limits = Limits()) -> list[Inspection]:
    """``inspect`` of local files given as ``local_item``s: what the planner's worker processes run, many files
    a call (one call a file would cost more in messages than pypdf costs), importing nothing of Airflow."""
    return [
        _inspect(path, printable(os_path), size, partial(_open_binary, os_path), True, limits)
        for path, os_path, size in items
    ]


def _inspect(
    path: str, uri: str, size: int, open_stream: Callable[[], BinaryIO], local: bool, limits: Limits
) -> Inspection:
    try:
        with ExitStack() as cleanup:
            return _inspect_readable(path, uri, size, cleanup.enter_context(open_stream()), local, limits, cleanup)
    except OSError as error:
        return Inspection(path, uri, size, None, None, None, (), f"unreadable: {error}")


def _inspect_readable(
    path: str, uri: str, listed_size: int, stream: BinaryIO, local: bool, limits: Limits, cleanup: ExitStack
) -> Inspection:
    """The first bytes and the listed size judge the file; only one that can be sent is read on, in one streaming
    pass that hashes it and, as its type needs, spools a remote PDF or checks UTF-8."""
    chunks = iter(partial(stream.read, CHUNK_BYTES), b"")
    head = next(chunks, b"")
    mime_type, rejected = _sniff(head, path)
    if rejected and len(head) < CHUNK_BYTES:  # the first bytes are the whole file: its hash costs nothing
        return Inspection(path, uri, len(head), mime_type, hashlib.sha256(head).hexdigest(), None, (), rejected)
    if rejected:
        return Inspection(path, uri, listed_size, mime_type, None, None, (), rejected)
    limit, subject, limit_name = _size_limit(mime_type, limits)
    if listed_size > limit:
        return Inspection(
            path, uri, listed_size, mime_type, None, None, (), _too_large(subject, listed_size, limit, limit_name)
        )
    digest = hashlib.sha256()
    remote_pdf = mime_type == PDF and not local
    spool = cleanup.enter_context(tempfile.TemporaryFile()) if remote_pdf else None  # noqa: SIM115 - entered in the ExitStack
    utf8 = _Utf8Check() if mime_type in TEXT_TYPES else None
    size = 0
    for chunk in chain([head], chunks):
        digest.update(chunk)
        size += len(chunk)
        if size > limit:  # grown since it was listed: the rest would be read for nothing
            return Inspection(path, uri, size, mime_type, None, None, (), _too_large(subject, size, limit, limit_name))
        if spool:
            spool.write(chunk)
        if utf8:
            utf8.feed(chunk)
    inspection = partial(Inspection, path, uri, size, mime_type, digest.hexdigest())
    if mime_type == PDF:
        pdf = spool or stream  # a local file is read again in place; a remote one from its local copy
        pdf.seek(0)
        try:
            page_count, parts = _pdf_parts(pdf, size, limits)
        except _Rejected as rejected:
            return inspection(None, (), str(rejected))
        return inspection(page_count, parts, None)
    if utf8 and (reason := utf8.finish()):
        return inspection(None, (), reason)
    return inspection(None, (PartSpec(None, size),), None)


def _size_limit(mime_type: str | None, limits: Limits) -> tuple[int, str, str]:
    """(bytes, subject, limit name): the most of a file of this type any route can send (a PDF is split)."""
    if mime_type in TEXT_TYPES:
        return limits.max_text_bytes, "text", "inline text"
    if mime_type == PDF:
        return limits.max_file_bytes, "PDF", "file"
    return limits.max_part_bytes, "image", "part"


def _sniff(head: bytes, path: str) -> tuple[str | None, str | None]:
    """(mime type, rejection reason) from the first bytes; the extension only picks the kind of text."""
    if not head:
        return None, "zero-byte file"
    if b"%PDF-" in head[:PDF_MARKER_WINDOW]:
        return PDF, None
    for signature, mime_type in _IMAGE_SIGNATURES:
        if signature.match(head):
            return mime_type, None
    sample = head[:SNIFF_BYTES]
    for signature, name in _UNSUPPORTED_SIGNATURES:
        if signature.match(sample):
            return None, f"unsupported file type: {name} (supported: {_SUPPORTED_NAMES})"
    if b"\x00" in sample:
        return None, f"unsupported file type: unrecognised binary content (supported: {_SUPPORTED_NAMES})"
    # Anything else is taken as text; text that is not UTF-8 is rejected with the offending byte.
    if sample.removeprefix(codecs.BOM_UTF8).lstrip()[:16].lower().startswith(_HTML_STARTS):
        return "text/html", None
    return _TEXT_SUFFIXES.get(PurePosixPath(path).suffix.lower(), "text/plain"), None


class _Utf8Check:
    """Validates UTF-8 chunk by chunk, so text is checked in the same pass that hashes it."""

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")()
        self._fed = 0
        self._error: str | None = None

    def feed(self, chunk: bytes, final: bool = False) -> None:
        if self._error:
            return
        pending = len(self._decoder.getstate()[0])  # bytes of an incomplete character held from the last chunk
        try:
            self._decoder.decode(chunk, final)
        except UnicodeDecodeError as error:
            offset = self._fed - pending + error.start
            self._error = f"text is not valid UTF-8 (byte 0x{error.object[error.start]:02X} at offset {offset})"
        self._fed += len(chunk)

    def finish(self) -> str | None:
        """The reason the text is not UTF-8, or None."""
        self.feed(b"", final=True)
        return self._error


def _pdf_parts(stream: BinaryIO, size: int, limits: Limits) -> tuple[int, tuple[PartSpec, ...]]:
    """(page count, parts) of a PDF, or _Rejected with the reason it cannot be sent."""
    try:
        page_count, encrypted = _check_pdf(stream)
        if page_count <= limits.max_pages and size <= limits.max_part_bytes and not encrypted:
            return page_count, (PartSpec(None, size),)
        # First ranges hold as many pages as fit at the average page size,
        # so measuring one never loads much more than a part.
        pages_per_part = min(limits.max_pages, max(1, limits.max_part_bytes * page_count // size))
        measure = partial(_written_size, stream)
        return page_count, tuple(_split_pages(page_count, pages_per_part, limits.max_part_bytes, measure))
    except (_Rejected, OSError):
        raise
    except Exception as error:  # pypdf reports malformed files through many exception types
        raise _Rejected(f"corrupt PDF: {error or type(error).__name__}") from error


def _open_pdf(stream: BinaryIO) -> PdfReader:
    """A reader over a PDF, unlocked when only an owner password protects it (the empty user password opens it)."""
    reader = PdfReader(stream, strict=False)
    if reader.is_encrypted and reader.decrypt("") == PasswordType.NOT_DECRYPTED:
        raise _Rejected("encrypted PDF (password required)")
    return reader


def _check_pdf(stream: BinaryIO) -> tuple[int, bool]:
    """(page count, encrypted) of a PDF whose pages can all be read.

    Catches truncated or damaged files that pypdf's lenient reading would
    pass off as fewer or blank pages.
    """
    reader = _open_pdf(stream)
    page_count = len(reader.pages)
    if page_count == 0:
        raise _Rejected("PDF has no pages")
    declared = reader.root_object["/Pages"].get("/Count")  # type: ignore[attr-defined]
    if isinstance(declared, int) and declared > page_count:
        raise _Rejected(f"corrupt PDF: the page tree declares {declared} pages but only {page_count} can be read")
    for number, page in enumerate(reader.pages, 1):
        if "/Contents" in page and page.get_contents() is None:
            raise _Rejected(f"corrupt PDF: the content of page {number} is missing")
    return page_count, reader.is_encrypted


def _split_pages(
    page_count: int, pages_per_part: int, max_part_bytes: int, measure: Callable[[int, int], int]
) -> Iterator[PartSpec]:
    """Consecutive ranges of pages_per_part pages, each halved until its written size fits max_part_bytes."""
    starts = range(1, page_count + 1, pages_per_part)
    pending = [(first, min(first + pages_per_part - 1, page_count)) for first in reversed(starts)]
    while pending:  # a stack: the next range in page order is on top
        first, last = pending.pop()
        size = measure(first, last)
        if size <= max_part_bytes:
            yield PartSpec((first, last), size)
        elif first == last:
            raise _Rejected(_too_large(f"page {first} alone", size, max_part_bytes, "part"))
        else:
            middle = (first + last) // 2
            pending += [(middle + 1, last), (first, middle)]


def _write_pages(source: BinaryIO, pages: tuple[int, int], sink: BinaryIO | _ByteCounter) -> None:
    """Write pages first..last of the PDF in ``source`` to ``sink``, holding no more than that range in memory.

    Each call reads with a fresh reader (a reader caches every object it
    parses). pypdf's readers and writers are reference cycles that would keep
    the range's bytes until a full collection; a young-generation collection
    frees them now, at a fraction of a full one's cost.
    """
    first, last = pages
    reader, writer = _open_pdf(source), PdfWriter()
    for index in range(first - 1, last):
        writer.add_page(reader.pages[index])
    writer.write_stream(sink)  # type: ignore[arg-type]  # a writable stream is all it needs
    del reader, writer
    gc.collect(1)


class _ByteCounter:
    """Stands in for a file to learn a written PDF's size without keeping its bytes."""

    def __init__(self) -> None:
        self.size = 0

    def write(self, data: bytes) -> int:
        self.size += len(data)
        return len(data)

    def tell(self) -> int:
        return self.size


def _written_size(source: BinaryIO, first: int, last: int) -> int:
    counter = _ByteCounter()
    _write_pages(source, (first, last), counter)
    return counter.size


def _too_large(subject: str, size: int, limit: int, limit_name: str) -> str:
    return f"{subject} is {_size_text(size)}, above the {_size_text(limit)} {limit_name} limit"


def _size_text(size: int) -> str:
    """5 GB, 61.2 MB, 50 MB, 300 KB: sizes in reasons, in the same binary units as the limits."""
    for unit, scale in (("GB", 2**30), ("MB", 2**20), ("KB", 2**10)):
        if size >= scale:
            return f"{size / scale:.1f}".removesuffix(".0") + f" {unit}"
    return f"{size} bytes"


# --- reading parts -----------------------------------------------------------


@contextmanager
def open_part(location: Location, pages: tuple[int, int] | None) -> Iterator[BinaryIO]:
    """Exactly what a part sends: the file itself, streamed, or a PDF of pages first..last written by pypdf.

    Not checked against any plan: what is sent is read through ``open_planned``.
    """
    if pages is None:
        with _open_binary(location) as stream:
            yield stream
        return
    with _random_access(location) as source, tempfile.TemporaryFile() as part:
        _write_pages(source, pages, part)
        part.seek(0)
        yield part


@contextmanager
def _random_access(location: Location) -> Iterator[BinaryIO]:
    """pypdf seeks all over a file: local files are opened in place, remote ones copied to a local temporary file."""
    with _open_binary(location) as stream:
        if is_local(location):
            yield stream
            return
        with tempfile.TemporaryFile() as spool:
            shutil.copyfileobj(stream, spool, CHUNK_BYTES)
            spool.seek(0)
            yield spool


@contextmanager
def open_planned(
    source: ObjectStoragePath, path: str, pages: tuple[int, int] | None, sha256: str
) -> Iterator[BinaryIO]:
    """What a part of the planned document ``path`` sends, and only while the document is the one planned: every
    part, inline or staged, is read through here, since its key stands for the bytes the plan hashed.

    The document is opened without following a link out of the source, hashed in one streaming pass and
    refused (SourceChanged) unless it hashes to ``sha256``; the part is then cut from exactly what was hashed:
    a remote document's local copy, or a local file's open descriptor, which a swap cannot redirect. A local
    file written to in the meantime (seen by its size and change times) raises SourceChanged on leaving,
    after the caller sent it: the caller takes back what it sent. OSError when it is gone or unreadable.
    """
    local = is_local(source)
    with _open_source(source, path) as stream, ExitStack() as cleanup:
        copy = None if local else cleanup.enter_context(tempfile.TemporaryFile())
        before = os.fstat(stream.fileno()) if local else None
        digest = hashlib.sha256()
        for chunk in iter(partial(stream.read, CHUNK_BYTES), b""):
            digest.update(chunk)
            if copy is not None:
                copy.write(chunk)
        if digest.hexdigest() != sha256:
            raise SourceChanged(
                f"{printable(path)} changed since the run planned it (sha256 "
                f"{digest.hexdigest()[:12]}..., planned {sha256[:12]}...); the next run plans it again"
            )
        hashed = copy if copy is not None else stream
        hashed.seek(0)
        if pages is None:
            yield hashed
        else:
            with tempfile.TemporaryFile() as part:
                _write_pages(hashed, pages, part)
                part.seek(0)
                yield part
        if before is not None and _written(before, os.fstat(stream.fileno())):
            raise SourceChanged(
                f"{printable(path)} changed since the run planned it (written to while it was "
                "read); the next run plans it again"
            )


def _open_source(source: ObjectStoragePath, path: str) -> BinaryIO:
    """The document ``path`` under ``source`` opened for reading; a local one only as a regular file inside the
    source (its real path inside, the last step no link), never through a link out, nor as a FIFO, which blocks."""
    if not is_local(source):
        return _open_binary(locate(source, path))
    root, target = os.path.realpath(source.path), os.path.realpath(os.path.join(source.path, path))
    refused = f"{printable(path)} changed since the run planned it: it is now {{}}; not read"
    if os.path.commonpath([root, target]) != root:
        raise SourceChanged(refused.format(f"a link to {printable(target)}, outside the source"))
    try:
        fd = os.open(target, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as error:
        if error.errno == errno.ELOOP:  # a link put in its place after its real path was found
            raise SourceChanged(refused.format("a link")) from error
        raise
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise SourceChanged(refused.format("no longer a regular file"))
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def _written(before: os.stat_result, after: os.stat_result) -> bool:
    """Whether a file was written between two looks at it: its change time moves with every write, even one that
    sets the modification time back."""
    return (before.st_size, before.st_mtime_ns, before.st_ctime_ns) != (
        after.st_size,
        after.st_mtime_ns,
        after.st_ctime_ns,
    )


def read_inline(source: ObjectStoragePath, path: str, pages: tuple[int, int] | None, sha256: str) -> bytes:
    """Exactly what an inline part sends, whole (such parts fit in a request): ``open_planned``, read."""
    with open_planned(source, path, pages, sha256) as stream:
        return stream.read()


def inline_text(data: bytes) -> str:
    """The text a text document sends: UTF-8 without its BOM, line endings as written."""
    return data.decode("utf-8-sig")

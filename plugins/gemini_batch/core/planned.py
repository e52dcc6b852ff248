"""The plan's records: each discovered document, its parts, their keys and how each reaches the service."""

from __future__ import annotations

import urllib.parse
from dataclasses import dataclass
from typing import ClassVar

from gemini_batch.core import documents
from gemini_batch.core.locations import printable
from gemini_batch.core.records import Record, StrEnum
from gemini_batch.core.settings import DEFAULT_INLINE_MB


class Route(StrEnum):
    """How a part reaches the service (``Routing``)."""

    INLINE = "inline"
    IN_PLACE = "in_place"
    STAGED = "staged"


@dataclass(frozen=True)
class Routing:
    """How each part reaches the service, decided once, in the plan.

    inline: in its own request (text as text, other parts as base64 ``inlineData``): no upload, no 48 h
    expiry, no storage quota, nothing to delete; up to ``inline_max_bytes``. in_place: referenced where it is
    (Vertex AI reads a whole document under a gs:// source itself). staged: uploaded first (Files API, or the
    GCS staging prefix), for larger parts and page ranges nobody else can read.
    """

    inline_max_bytes: int = DEFAULT_INLINE_MB * 2**20
    in_place: bool = False

    def route(self, mime_type: str | None, part: documents.PartSpec) -> Route:
        if mime_type in documents.TEXT_TYPES:
            return Route.INLINE  # text is always sent as text (its size is limited at inspection)
        if self.in_place and part.pages is None:
            return Route.IN_PLACE
        return Route.INLINE if part.size <= self.inline_max_bytes else Route.STAGED


class PlannedPart(Record, frozen=True):
    kind: ClassVar[str] = "plan part"

    key: str
    pages: tuple[int, int] | None
    size: int
    reused: bool  # the ledger holds the key as answered by an earlier run
    route: Route = Route.STAGED  # Routing.route; plans written before routing staged every part but text


class PlannedDocument(Record, frozen=True, omit_defaults=True):
    """One plan line. ``document`` is the path in printable form; a path that is not UTF-8 also keeps its exact
    bytes, percent-encoded, in ``path_quoted`` (written only then). ``planned`` makes one from the exact path."""

    kind: ClassVar[str] = "plan line"

    document: str
    uri: str
    size: int
    mime_type: str | None
    sha256: str | None
    page_count: int | None
    parts: tuple[PlannedPart, ...]
    rejected: str | None
    path_quoted: str | None = None

    @classmethod
    def planned(
        cls,
        path: str,
        uri: str,
        size: int,
        mime_type: str | None,
        sha256: str | None,
        page_count: int | None,
        parts: tuple[PlannedPart, ...],
        rejected: str | None,
    ) -> PlannedDocument:
        """The plan line of the document at ``path`` (exact, as discovered)."""
        document = printable(path)
        quoted = urllib.parse.quote(path, errors="surrogateescape") if document != path else None
        return cls(document, uri, size, mime_type, sha256, page_count, parts, rejected, quoted)

    @property
    def path(self) -> str:
        """The document's exact path, as discovered."""
        if self.path_quoted:
            return urllib.parse.unquote(self.path_quoted, errors="surrogateescape")
        return self.document

    @property
    def read_as(self) -> tuple[str, str]:
        """(mime type, sha256) of a document that has parts: one that was read, so both are known."""
        if self.mime_type is None or self.sha256 is None:
            raise ValueError(f"{self.document} was not read: it has no parts")
        return self.mime_type, self.sha256

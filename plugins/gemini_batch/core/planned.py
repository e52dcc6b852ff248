"""The plan's records: each discovered document, its parts, their keys and how each reaches the service."""

from __future__ import annotations

import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass

from gemini_batch.core import documents
from gemini_batch.core.locations import printable
from gemini_batch.core.settings import DEFAULT_INLINE_MB

INLINE, IN_PLACE, STAGED = "inline", "in_place", "staged"  # how a part reaches the service (Routing)


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

    def route(self, mime_type: str | None, part: documents.PartSpec) -> str:
        if mime_type in documents.TEXT_TYPES:
            return INLINE  # text is always sent as text (its size is limited at inspection)
        if self.in_place and part.pages is None:
            return IN_PLACE
        return INLINE if part.size <= self.inline_max_bytes else STAGED


@dataclass(frozen=True)
class PlannedPart:
    key: str
    pages: tuple[int, int] | None
    size: int
    reused: bool  # the ledger holds the key as answered by an earlier run
    route: str = STAGED  # Routing.route; plans written before routing staged every part but text

    def to_json(self) -> dict:
        return {
            "key": self.key,
            "pages": list(self.pages) if self.pages else None,
            "size": self.size,
            "reused": self.reused,
            "route": self.route,
        }

    @classmethod
    def from_json(cls, data: Mapping) -> PlannedPart:
        return cls(
            data["key"],
            tuple(data["pages"]) if data["pages"] else None,
            data["size"],
            data["reused"],
            data.get("route", STAGED),
        )


@dataclass(frozen=True)
class PlannedDocument:
    path: str  # exact, as discovered; ``document`` in JSON is its printable form
    uri: str
    size: int
    mime_type: str | None
    sha256: str | None
    page_count: int | None
    parts: tuple[PlannedPart, ...]
    rejected: str | None

    @property
    def read_as(self) -> tuple[str, str]:
        """(mime type, sha256) of a document that has parts: one that was read, so both are known."""
        if self.mime_type is None or self.sha256 is None:
            raise ValueError(f"{printable(self.path)} was not read: it has no parts")
        return self.mime_type, self.sha256

    def to_json(self) -> dict:
        """The plan line; a name that is not UTF-8 also keeps its exact bytes, percent-encoded, in ``path_quoted``."""
        data = {
            "document": printable(self.path),
            "uri": self.uri,
            "size": self.size,
            "mime_type": self.mime_type,
            "sha256": self.sha256,
            "page_count": self.page_count,
            "parts": [part.to_json() for part in self.parts],
            "rejected": self.rejected,
        }
        if data["document"] != self.path:
            data["path_quoted"] = urllib.parse.quote(self.path, errors="surrogateescape")
        return data

    @classmethod
    def from_json(cls, data: Mapping) -> PlannedDocument:
        quoted = data.get("path_quoted")
        return cls(
            urllib.parse.unquote(quoted, errors="surrogateescape") if quoted else data["document"],
            data["uri"],
            data["size"],
            data["mime_type"],
            data["sha256"],
            data["page_count"],
            tuple(PlannedPart.from_json(part) for part in data["parts"]),
            data["rejected"],
        )

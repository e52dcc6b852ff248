"""What staging records per part: where it was staged and until when, or why it could not be."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from airflow.sdk import ObjectStoragePath


@dataclass(frozen=True)
class StageItem:
    """One part to stage: the document it comes from (``path`` under ``source``, which hashed to ``sha256`` when
    planned) and, for a split PDF, its pages."""

    key: str
    source: ObjectStoragePath
    path: str
    pages: tuple[int, int] | None
    mime_type: str
    size: int
    sha256: str


@dataclass(frozen=True)
class StagedPart:
    key: str
    uri: str
    mime_type: str
    expires_at: str | None  # ISO 8601 UTC; None where the staged copy does not expire (GCS)

    def to_json(self) -> dict:
        return {"key": self.key, "uri": self.uri, "mime_type": self.mime_type, "expires_at": self.expires_at}

    @classmethod
    def from_json(cls, data: Mapping) -> StagedPart:
        return cls(data["key"], data["uri"], data["mime_type"], data["expires_at"])


@dataclass(frozen=True)
class StageFailure:
    """A part that could not be staged (or, for a text part sent inline, read) and why: its document fails."""

    key: str
    error: str

    def to_json(self) -> dict:
        return {"key": self.key, "error": self.error}


def stage_record(data: Mapping) -> StagedPart | StageFailure:
    """A staging log line read back: a failure carries ``error``, a staged part its ``uri``."""
    if "error" in data:
        return StageFailure(data["key"], data["error"])
    return StagedPart.from_json(data)

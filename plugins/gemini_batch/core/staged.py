"""What staging records per part: where it was staged and until when, or why it could not be."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

from gemini_batch.core import records
from gemini_batch.core.records import Record

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


class StagedPart(Record, frozen=True):
    kind: ClassVar[str] = "staged part record"

    key: str
    uri: str
    mime_type: str
    expires_at: str | None  # ISO 8601 UTC; None where the staged copy does not expire (GCS)


class StageFailure(Record, frozen=True):
    """A part that could not be staged (or, for a text part sent inline, read) and why: its document fails."""

    kind: ClassVar[str] = "staging failure record"

    key: str
    error: str


def stage_record(data: Mapping) -> StagedPart | StageFailure:
    """A staging log line read back: a failure carries ``error``, a staged part its ``uri``."""
    if "error" in data:
        return records.convert(data, StageFailure)
    return records.convert(data, StagedPart)

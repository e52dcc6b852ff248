"""The latest staging record of each key of a run, through an on-disk index: a run may stage millions of parts."""

from __future__ import annotations

from collections.abc import Iterator, Mapping

from gemini_batch.core import records
from gemini_batch.core.record_index import RecordIndex
from gemini_batch.core.staged import StagedPart


class Staging:
    """The latest staging record of each key, through an on-disk index (a run may stage millions of parts)."""

    def __init__(self, index: RecordIndex):
        self._index = index
        self.parts = StagedParts(index)

    def failures(self) -> Iterator[tuple[str, str]]:
        """(key, why) for each key whose latest pass could not stage (or read) it."""
        for record in self._index.records("failed"):
            yield record["key"], record["error"]


class StagedParts(Mapping[str, StagedPart]):
    """The keys whose latest pass staged them, with where."""

    def __init__(self, index: RecordIndex):
        self._index = index

    def __getitem__(self, key: str) -> StagedPart:
        record = self._index.get(key)
        if record is None or record["status"] != "staged":
            raise KeyError(key)
        return records.convert(record, StagedPart)

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and self.get(key) is not None

    def __iter__(self) -> Iterator[str]:
        return self._index.keys("staged")

    def __len__(self) -> int:
        return sum(1 for _ in self)

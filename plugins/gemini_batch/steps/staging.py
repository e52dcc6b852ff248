"""The stage step (the parts to upload first, uploaded in one pass), and the latest staging record of each key of a
run, through an on-disk index: a run may stage millions of parts."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING

from gemini_batch.core import documents, jsonl, records
from gemini_batch.core.record_index import RecordIndex
from gemini_batch.core.staged import StagedPart
from gemini_batch.hooks.uploads import FilesApiStager, GcsStager
from gemini_batch.steps import plan

if TYPE_CHECKING:  # runs imports this module's Staging
    from gemini_batch.steps.runs import Run


def stage_documents(run: Run, *, only: set[str] | None = None) -> dict:
    """Stage every part to request (or the keys in ``only``) in one pass, recording each part's result; the counts
    of parts staged and failed."""
    items = (i for i in plan.parts_to_stage(run.folder.plan, run.settings.source) if only is None or i.key in only)
    stager: GcsStager | FilesApiStager
    if run.service.backend == "vertex":
        stager = GcsStager(run.folder.documents_prefix(), documents.open_planned)
    else:
        stager = FilesApiStager(run.service.get_conn(), documents.open_planned)
    counts = {"staged": 0, "failed": 0}
    with jsonl.writer(run.folder.next_pass()) as write:
        for result in stager.stage(items):
            write(result)
            counts["staged" if isinstance(result, StagedPart) else "failed"] += 1
    return counts


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

"""The durable store of finished keys that makes runs incremental.

A folder (local or ``gs://``) of JSONL segments, one per publishing run, each
line the record of a key the service answered successfully. Segments are
only ever added, never rewritten, so two runs publishing at once cannot lose
each other's keys, and a half-written segment never becomes visible.
"""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Iterable, Iterator, Mapping

import orjson
from airflow.sdk import ObjectStoragePath

from gemini_batch.locations import is_gcs
from gemini_batch.record_index import RecordIndex

log = logging.getLogger(__name__)

SEGMENT_SUFFIX = ".jsonl"
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


class FinishedStore:
    def __init__(self, folder: ObjectStoragePath):
        self.folder = folder

    @contextlib.contextmanager
    def index(self) -> Iterator[RecordIndex]:
        """Every finished key and its record, indexed on disk (the store outgrows memory); a later segment (by
        name) wins over an earlier one.

        A corrupt line is skipped with a warning naming the segment and line,
        so one damaged segment costs at most a re-request of its keys.
        """
        with RecordIndex() as index:
            if self.folder.exists():
                segments = sorted(p for p in self.folder.iterdir() if p.name.endswith(SEGMENT_SUFFIX) and p.is_file())
                for segment in segments:
                    index.put(_segment_records(segment))
            yield index

    def add(self, records: Iterable[Mapping], *, segment: str) -> int:
        """Write ``records`` as the segment ``segment`` (replacing a segment of that name); return how many."""
        name = _UNSAFE.sub("_", segment).strip("._") or "segment"
        target = self.folder / f"{name}{SEGMENT_SUFFIX}"
        # A GCS object appears only when its upload completes; a local file needs a rename for that.
        partial = target if is_gcs(self.folder) else self.folder / f".{name}{SEGMENT_SUFFIX}.partial"
        self.folder.mkdir(parents=True, exist_ok=True)
        count = 0
        try:
            with partial.open("wb") as out:
                for record in records:
                    if "key" not in record:
                        raise ValueError(f"Finished store: a record without a key cannot be stored: {dict(record)!r:.200}")
                    out.write(orjson.dumps(record) + b"\n")
                    count += 1
        except BaseException:
            partial.unlink(missing_ok=True)  # closing the file committed what was written so far
            raise
        if partial != target:
            partial.rename(target)
        return count


def _segment_records(segment: ObjectStoragePath) -> Iterator[dict]:
    with segment.open("rb") as fh:
        for number, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                record = orjson.loads(line)
                if not isinstance(record, dict) or not isinstance(record.get("key"), str):
                    raise TypeError("not a record with a key")
            except (orjson.JSONDecodeError, TypeError) as exc:
                log.warning("Finished store: skipping %s line %d (%s)", segment, number, exc)
                continue
            yield record

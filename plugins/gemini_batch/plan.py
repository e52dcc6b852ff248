"""Plan a run: discover the source, inspect and key every part, decide what to request.

The plan is a JSONL file, one line per discovered document in discovery order,
so every later step (stage, build, collect, publish) reads the same list of
documents and nothing is lost: a rejected document stays in the plan with its
reason. Only the file's URI and a few counts travel through XCom.
"""

from __future__ import annotations

import collections
import concurrent.futures
import itertools
import urllib.parse
from collections.abc import Container, Iterable, Iterator, Mapping
from dataclasses import dataclass, field

from airflow.sdk import ObjectStoragePath

from gemini_batch import documents, jsonl, keys
from gemini_batch.batch_requests import RequestSpec, ShardManifest, ShardWriter, build_row
from gemini_batch.cost import CostEstimate, PriceTable, estimate_input_tokens, estimate_request
from gemini_batch.locations import printable, uri_of
from gemini_batch.record_index import RecordIndex
from gemini_batch.staging import StagedPart, StageItem


@dataclass(frozen=True)
class PlannedPart:
    key: str
    pages: tuple[int, int] | None
    size: int
    reused: bool  # the key is in the finished store: answered by an earlier run

    def to_json(self) -> dict:
        return {"key": self.key, "pages": list(self.pages) if self.pages else None, "size": self.size, "reused": self.reused}

    @classmethod
    def from_json(cls, data: Mapping) -> PlannedPart:
        return cls(data["key"], tuple(data["pages"]) if data["pages"] else None, data["size"], data["reused"])


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

    def to_json(self) -> dict:
        """The plan line; a name that is not UTF-8 also keeps its exact bytes, percent-encoded, in ``path_quoted``."""
        data = {
            "document": printable(self.path), "uri": self.uri, "size": self.size, "mime_type": self.mime_type,
            "sha256": self.sha256, "page_count": self.page_count,
            "parts": [part.to_json() for part in self.parts], "rejected": self.rejected,
        }
        if data["document"] != self.path:
            data["path_quoted"] = urllib.parse.quote(self.path, errors="surrogateescape")
        return data

    @classmethod
    def from_json(cls, data: Mapping) -> PlannedDocument:
        quoted = data.get("path_quoted")
        return cls(
            urllib.parse.unquote(quoted, errors="surrogateescape") if quoted else data["document"], data["uri"],
            data["size"], data["mime_type"], data["sha256"], data["page_count"],
            tuple(PlannedPart.from_json(part) for part in data["parts"]), data["rejected"],
        )


@dataclass(frozen=True)
class PlanSummary:
    """What XCom carries for a plan: its URI and counts, never the documents."""

    plan_uri: str
    documents: int
    rejected: int
    parts: int
    reused_parts: int
    duplicate_parts: int  # parts whose key another document already brings (same bytes): requested once
    requests: int  # unique keys that must be requested
    estimate: CostEstimate = field(default_factory=CostEstimate.zero)

    def to_json(self) -> dict:
        data = {name: getattr(self, name) for name in self.__dataclass_fields__ if name != "estimate"}
        data["estimate"] = self.estimate.to_json()
        return data


def plan_run(
    source: ObjectStoragePath,
    spec: RequestSpec,
    plan_file: ObjectStoragePath,
    *,
    finished: Container[str] = frozenset(),
    limits: documents.Limits = documents.Limits(),
    prices: PriceTable,
    workers: int = 4,
) -> PlanSummary:
    """Inspect every document under ``source`` and write the plan to ``plan_file``.

    Raises ``documents.SourceError`` when the source itself is unreadable;
    a bad file is a rejected line in the plan, never an exception.
    """
    counts = dict.fromkeys(("documents", "rejected", "parts", "reused_parts", "duplicate_parts", "requests"), 0)
    estimate = CostEstimate.zero()
    with jsonl.writer(plan_file) as write, RecordIndex() as requested:
        for inspection in _inspect_in_order(documents.discover(source), limits, workers):
            planned = _plan_document(inspection, spec, finished)
            write(planned)
            counts["documents"] += 1
            counts["rejected"] += planned.rejected is not None
            for part in planned.parts:
                counts["parts"] += 1
                if part.reused:
                    counts["reused_parts"] += 1
                elif not requested.add(part.key):
                    counts["duplicate_parts"] += 1
                else:
                    counts["requests"] += 1
                    estimate += estimate_request(
                        spec, mime_type=planned.mime_type, pages=_page_span(part, planned), size=part.size, prices=prices,
                    )
    return PlanSummary(plan_uri=uri_of(plan_file), estimate=estimate, **counts)


def read_plan(plan_file: ObjectStoragePath) -> Iterator[PlannedDocument]:
    if not plan_file.exists():
        raise FileNotFoundError(f"{uri_of(plan_file)}: the run has no plan (its plan_documents task has not run)")
    for data in jsonl.read(plan_file):
        yield PlannedDocument.from_json(data)


def parts_to_stage(plan_file: ObjectStoragePath, source: ObjectStoragePath) -> Iterator[StageItem]:
    """Each key to request once (first document wins), except text parts, which go inline."""
    with RecordIndex() as seen:
        for doc in read_plan(plan_file):
            if doc.mime_type in documents.TEXT_TYPES:
                continue
            for part in doc.parts:
                if not part.reused and seen.add(part.key):
                    yield StageItem(part.key, source / doc.path, part.pages, doc.mime_type, part.size)


def keys_to_request(plan_file: ObjectStoragePath, only: Container[str] | None = None) -> Iterator[str]:
    """Each key the plan requests (not answered before), once, in plan order; only those in ``only`` if given."""
    with RecordIndex() as seen:
        for doc in read_plan(plan_file):
            for part in doc.parts:
                if not part.reused and (only is None or part.key in only) and seen.add(part.key):
                    yield part.key


def build_shards(
    plan_file: ObjectStoragePath,
    source: ObjectStoragePath,
    staged: Mapping[str, StagedPart],
    spec: RequestSpec,
    folder: ObjectStoragePath,
    *,
    max_rows: int = 10_000,
    max_bytes: int = 100 * 2**20,
    max_tokens: int | None = None,
    only: Container[str] | None = None,
    prefix: str = "shard",
    claim: str | None = None,
    ledger: str | None = None,
) -> tuple[list[ShardManifest], dict[str, str | None]]:
    """Write one row per key to request (or per key in ``only``, for a retry) into shards under ``folder``.

    Returns the manifests and the keys that could not be built: with the
    reason for a text part that cannot be read now (its file went away or
    changed since the plan), None for a part whose staging failed (the
    staging failure says why). Their documents fail; the others go on.
    """
    unbuilt: dict[str, str | None] = {}
    with (ShardWriter(folder, max_rows=max_rows, max_bytes=max_bytes, max_tokens=max_tokens, prefix=prefix, claim=claim,
                      ledger=ledger) as writer,
          RecordIndex() as seen):
        for doc in read_plan(plan_file):
            for part in doc.parts:
                if part.reused or (only is not None and part.key not in only) or not seen.add(part.key):
                    continue
                tokens = estimate_input_tokens(spec, mime_type=doc.mime_type, pages=_page_span(part, doc), size=part.size)
                if doc.mime_type in documents.TEXT_TYPES:
                    try:
                        text = documents.read_text(source / doc.path)
                    except (OSError, UnicodeDecodeError) as error:
                        unbuilt[part.key] = f"{printable(doc.path)} cannot be read any more: {error}"
                        continue
                    writer.add(build_row(part.key, spec, text=text), tokens)
                elif part.key in staged:
                    stage = staged[part.key]
                    writer.add(build_row(part.key, spec, file_uri=stage.uri, mime_type=stage.mime_type), tokens)
                else:
                    unbuilt[part.key] = None
    return writer.manifests, unbuilt


def _inspect_in_order(
    files: Iterable[documents.SourceFile], limits: documents.Limits, workers: int,
) -> Iterator[documents.Inspection]:
    """Inspect concurrently, yield in discovery order, with a bounded window so memory stays flat."""
    files = iter(files)
    with concurrent.futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="inspect") as pool:
        window = collections.deque(pool.submit(documents.inspect, f, limits) for f in itertools.islice(files, workers * 4))
        while window:
            inspection = window.popleft().result()
            window.extend(pool.submit(documents.inspect, f, limits) for f in itertools.islice(files, 1))
            yield inspection


def _plan_document(inspection: documents.Inspection, spec: RequestSpec, finished: Container[str]) -> PlannedDocument:
    parts = tuple(
        PlannedPart(key, part.pages, part.size, key in finished)
        for part in inspection.parts
        for key in [keys.request_key(
            inspection.sha256, part.pages, prompt=spec.prompt, model=spec.model,
            response_schema=spec.response_schema, options=spec.key_options(),
        )]
    )
    return PlannedDocument(
        inspection.path, inspection.uri, inspection.size, inspection.mime_type, inspection.sha256,
        inspection.page_count, parts, inspection.rejected,
    )


def _page_span(part: PlannedPart, doc: PlannedDocument) -> int | None:
    if part.pages:
        return part.pages[1] - part.pages[0] + 1
    return doc.page_count

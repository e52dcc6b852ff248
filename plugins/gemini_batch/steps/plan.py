"""Plan a run: discover the source, inspect and key every part, decide what to request.

The plan is a JSONL file, one line per discovered document in discovery order,
so every later step (stage, build, collect, publish) reads the same list of
documents and nothing is lost: a rejected document stays in the plan with its
reason. Only the file's URI and a few counts travel through XCom.
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import itertools
import logging
from collections.abc import Container, Iterable, Iterator, Mapping
from typing import ClassVar

import msgspec
from airflow.sdk import ObjectStoragePath

from gemini_batch.core import documents, jsonl, keys
from gemini_batch.core.batch_requests import RequestSpec, ShardManifest, ShardWriter, build_row
from gemini_batch.core.cost import CostEstimate, PriceTable, estimate_input_tokens, estimate_request
from gemini_batch.core.locations import uri_of
from gemini_batch.core.planned import PlannedDocument, PlannedPart, Route, Routing
from gemini_batch.core.processes import cores, worker_pool
from gemini_batch.core.record_index import RecordIndex
from gemini_batch.core.records import Record
from gemini_batch.core.settings import DEFAULTS
from gemini_batch.core.staged import StagedPart, StageItem

log = logging.getLogger(__name__)

PROCESSES_AFTER = 64  # local files inspected in this process before a process pool is worth its start-up
LOCAL_BATCH = 32  # local files a worker process inspects per message
REMOTE_INSPECT_THREADS = 8  # remote files: mostly waiting on the store


class PlanSummary(Record, frozen=True):
    """What XCom carries for a plan: its URI and counts, never the documents."""

    kind: ClassVar[str] = "plan summary"

    plan_uri: str
    documents: int
    rejected: int
    parts: int
    reused_parts: int
    duplicate_parts: int  # parts whose key another document already brings (same bytes): requested once
    requests: int  # unique keys that must be requested
    routes: dict[Route, int] = msgspec.field(default_factory=dict)  # requests by route
    estimate: CostEstimate = msgspec.field(default_factory=CostEstimate.zero)  # usd rounded


def plan_run(
    source: ObjectStoragePath,
    spec: RequestSpec,
    plan_file: ObjectStoragePath,
    *,
    finished: Container[str] = frozenset(),
    limits: documents.Limits = documents.Limits(),
    routing: Routing = Routing(),
    prices: PriceTable,
    workers: int | None = None,
) -> PlanSummary:
    """Inspect every document under ``source`` and write the plan to ``plan_file``.

    Raises ``documents.SourceError`` when the source itself is unreadable;
    a bad file is a rejected line in the plan, never an exception.
    """
    counts = dict.fromkeys(("documents", "rejected", "parts", "reused_parts", "duplicate_parts", "requests"), 0)
    estimate = CostEstimate.zero()
    routes = dict.fromkeys(Route, 0)
    with jsonl.writer(plan_file) as write, RecordIndex() as requested:
        for inspection in _inspect_in_order(documents.discover(source), limits, workers):
            planned = _plan_document(inspection, spec, finished, routing)
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
                    routes[part.route] += 1
                    estimate += estimate_request(
                        spec,
                        mime_type=planned.read_as[0],
                        pages=page_span(part, planned),
                        size=part.size,
                        prices=prices,
                    )
    return PlanSummary(plan_uri=uri_of(plan_file), estimate=estimate.rounded(), routes=routes, **counts)


def read_plan(plan_file: ObjectStoragePath) -> Iterator[PlannedDocument]:
    if not plan_file.exists():
        raise FileNotFoundError(f"{uri_of(plan_file)}: the run has no plan (its plan_documents task has not run)")
    yield from jsonl.read_records(plan_file, PlannedDocument)


def parts_to_stage(plan_file: ObjectStoragePath, source: ObjectStoragePath) -> Iterator[StageItem]:
    """Each key to request once (first document wins) whose route is ``Route.STAGED``."""
    with RecordIndex() as seen:
        for doc in read_plan(plan_file):
            if doc.mime_type in documents.TEXT_TYPES:
                continue
            for part in doc.parts:
                if part.route == Route.STAGED and not part.reused and seen.add(part.key):
                    mime_type, sha256 = doc.read_as
                    yield StageItem(part.key, source, doc.path, part.pages, mime_type, part.size, sha256)


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
    max_rows: int = DEFAULTS["max_rows_per_job"],
    max_bytes: int = DEFAULTS["max_mb_per_job"] * 2**20,
    max_tokens: int | None = None,
    only: Container[str] | None = None,
    skip: Container[str] = frozenset(),
    prefix: str = "shard",
    claim: str | None = None,
    ledger: str | None = None,
) -> tuple[list[ShardManifest], dict[str, str | None]]:
    """Write one row per key to request (or per key in ``only``, for a retry; none in ``skip``, the keys another
    claim requests) into shards under ``folder``.

    Each part as its route says: inline parts are read from the source now
    (a retry reads them again), in-place ones referenced there, staged ones
    by their upload. Returns the manifests and the keys that could not be
    built: with the reason for an inline part that cannot be read now (its
    file went away or changed since the plan), None for a part whose staging
    failed (the staging failure says why). Their documents fail; the others go on.
    """
    unbuilt: dict[str, str | None] = {}
    with (
        ShardWriter(
            folder,
            max_rows=max_rows,
            max_bytes=max_bytes,
            max_tokens=max_tokens,
            prefix=prefix,
            claim=claim,
            ledger=ledger,
        ) as writer,
        RecordIndex() as seen,
    ):
        for doc in read_plan(plan_file):
            location = documents.locate(source, doc.path)
            inline = InlineReader(source, doc)
            for part in doc.parts:
                if (
                    part.reused
                    or (only is not None and part.key not in only)
                    or part.key in skip
                    or not seen.add(part.key)
                ):
                    continue
                tokens = estimate_input_tokens(
                    spec, mime_type=doc.read_as[0], pages=page_span(part, doc), size=part.size
                )
                if part.route == Route.INLINE or doc.mime_type in documents.TEXT_TYPES:
                    row = inline.row(part, spec)
                    if isinstance(row, str):
                        unbuilt[part.key] = row
                    else:
                        writer.add(row, tokens)
                elif part.route == Route.IN_PLACE:
                    uri = location if isinstance(location, str) else uri_of(location)
                    writer.add(build_row(part.key, spec, file_uri=uri, mime_type=doc.mime_type), tokens)
                elif part.key in staged:
                    stage = staged[part.key]
                    writer.add(build_row(part.key, spec, file_uri=stage.uri, mime_type=stage.mime_type), tokens)
                else:
                    unbuilt[part.key] = None
    return writer.manifests, unbuilt


class InlineReader:
    """One document's inline parts, read from its source as the plan hashed it (``documents.open_planned``); once
    one has failed, its other parts fail with the same reason without reading it again."""

    def __init__(self, source: ObjectStoragePath, doc: PlannedDocument):
        self.source, self.doc = source, doc
        self.problem: str | None = None

    def row(self, part: PlannedPart, spec: RequestSpec) -> dict | str:
        """The part's row, or why it cannot be built."""
        doc = self.doc
        if self.problem is None:
            try:
                data = documents.read_inline(self.source, doc.path, part.pages, doc.read_as[1])
                if doc.mime_type in documents.TEXT_TYPES:
                    return build_row(part.key, spec, text=documents.inline_text(data))
                return build_row(part.key, spec, data=data, mime_type=doc.mime_type)
            except documents.SourceChanged as error:
                self.problem = str(error)
            except (OSError, UnicodeDecodeError) as error:
                self.problem = f"{doc.document} cannot be read any more: {error}"
        return self.problem


def _inspect_in_order(
    files: Iterable[documents.SourceFile],
    limits: documents.Limits,
    workers: int | None,
) -> Iterator[documents.Inspection]:
    """Inspect in parallel, yield in discovery order, with a bounded window so memory stays flat.

    Local files go to spawned processes, one per core (pypdf parses in Python: threads would share one core),
    ``LOCAL_BATCH`` files a message, once there are more than a few (a process takes a fraction of a second to
    start: ``processes.worker_pool``); remote ones to threads here, which hold the storage connection (a
    process spawned inside a task cannot ask the task runner for it).
    """
    workers = workers or cores()
    threads_wanted = max(workers, REMOTE_INSPECT_THREADS)
    with contextlib.ExitStack() as pools:
        threads = pools.enter_context(
            concurrent.futures.ThreadPoolExecutor(max_workers=threads_wanted, thread_name_prefix="inspect")
        )
        processes = None
        local_seen = 0

        def submit(batch: list[documents.SourceFile]) -> concurrent.futures.Future:
            """One future for a list of inspections: a batch of local files, or one remote or rejected file."""
            nonlocal processes, local_seen
            first = batch[0]
            if not documents.is_local(first.source) or first.rejected:
                return threads.submit(lambda: [documents.inspect(first, limits)])
            local_seen += len(batch)
            if processes is None and local_seen > PROCESSES_AFTER and workers > 1:
                processes = pools.enter_context(worker_pool(workers))
                log.info("Inspecting documents in %d worker processes from here (%d inspected)", workers, local_seen)
            return (processes or threads).submit(
                documents.inspect_local, [documents.local_item(f) for f in batch], limits
            )

        batches = _batches(files, LOCAL_BATCH)
        window = collections.deque(submit(b) for b in itertools.islice(batches, threads_wanted * 2))
        while window:
            inspections = window.popleft().result()
            window.extend(submit(b) for b in itertools.islice(batches, 1))
            yield from inspections


def _batches(files: Iterable[documents.SourceFile], size: int) -> Iterator[list[documents.SourceFile]]:
    """Runs of up to ``size`` readable local files; every remote or rejected file alone."""
    batch: list[documents.SourceFile] = []
    for file in files:
        if documents.is_local(file.source) and not file.rejected:
            batch.append(file)
            if len(batch) < size:
                continue
        else:
            if batch:
                yield batch
            batch = [file]
        yield batch
        batch = []
    if batch:
        yield batch


def _plan_document(
    inspection: documents.Inspection, spec: RequestSpec, finished: Container[str], routing: Routing
) -> PlannedDocument:
    parts = tuple(
        PlannedPart(key, part.pages, part.size, key in finished, routing.route(inspection.mime_type, part))
        for part in inspection.parts
        for key in [
            keys.request_key(
                str(inspection.sha256),  # a document with parts was read whole
                part.pages,
                prompt=spec.prompt,
                model=spec.model,
                response_schema=spec.response_schema,
                options=spec.key_options(),
            )
        ]
    )
    return PlannedDocument.planned(
        inspection.path,
        inspection.uri,
        inspection.size,
        inspection.mime_type,
        inspection.sha256,
        inspection.page_count,
        parts,
        inspection.rejected,
    )


def page_span(part: PlannedPart, doc: PlannedDocument) -> int | None:
    if part.pages:
        return part.pages[1] - part.pages[0] + 1
    return doc.page_count

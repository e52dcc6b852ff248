"""The preview step: a few planned documents answered online before the batch (``preview_documents``), their
records in ``<output>/preview.jsonl``, what they cost and what they project for the run in ``<output>/preview.json``
(the method: ``gemini_batch.core.preview``).

Each sampled part is sent as the batch would send it (the same row, ``plan.request_row``) through
``models.generate_content`` and its answer parsed by the same code as a batch output row. Answers go into the ledger
as collection records them, and the plan marks their parts answered (``reused``): the batch does not send them
again, and publish takes them from the ledger, as it takes any earlier answer. A part another run answered already
is taken from the ledger, not sent. A retried preview samples the plan as it was before the first try (kept in
``<work>/preview/plan-before.jsonl``) and finds its earlier answers in the ledger: it pays for each part once.
"""

from __future__ import annotations

import concurrent.futures
import logging
import shutil
from collections.abc import Iterator, Mapping

import msgspec
import orjson
from airflow.sdk import ObjectStoragePath

from gemini_batch.coordination.ledger import EventKind, LedgerEvent, now_iso
from gemini_batch.core import documents, jsonl, preview, records, results
from gemini_batch.core.batch_requests import build_row, inline_budget
from gemini_batch.core.cost import CostEstimate, estimate_input_tokens, estimate_request
from gemini_batch.core.locations import open_file, replace_whole, uri_of, writing_whole
from gemini_batch.core.planned import PlannedDocument, PlannedPart, Route
from gemini_batch.hooks.errors import OnlineRequestFailed
from gemini_batch.steps import plan
from gemini_batch.steps.run_settings import RunConfigError
from gemini_batch.steps.runs import Run

log = logging.getLogger(__name__)

ONLINE_REQUEST_BYTES = 20 * 2**20  # what one online request may carry: a larger part is not previewed
ONLINE_WORKERS = 4


def preview_documents(run: Run, planned: Mapping, n: int | None = None) -> dict | None:
    """Preview ``n`` (default: the ``preview_documents`` setting) planned documents; return the report (what
    preview.json holds, plus a few documents' data for a person), or None when there is nothing to preview."""
    n = run.settings.preview_documents if n is None else n
    if n <= 0:
        return None
    work = run.folder.work / "preview"
    done = work / "report.json"
    if done.exists():  # a retry after the preview finished: nothing is sent again
        return orjson.loads(done.read_bytes())
    summary = records.convert(planned, plan.PlanSummary)
    before = work / "plan-before.jsonl"
    if not before.exists():
        work.mkdir(parents=True, exist_ok=True)
        _copy(run.folder.plan, before)
    spec = run.settings.spec
    budget = min(inline_budget(spec, ONLINE_REQUEST_BYTES), ONLINE_REQUEST_BYTES)
    picked = set(preview.sample(_candidates(before, spec, budget), n))
    docs = [doc for index, doc in enumerate(plan.read_plan(before)) if index in picked]
    if not docs:
        return None
    _check_spend(run, docs)

    outcomes: dict[str, results.RowOutcome] = {}  # key -> this preview's outcome (reused: from the ledger)
    with run.ledger.view() as ledger:
        for doc in docs:
            for part in doc.parts:
                if part.key not in outcomes and (stored := ledger.finished(part.key)) is not None:
                    outcome = records.convert(stored, results.RowOutcome)
                    outcomes[part.key] = msgspec.structs.replace(outcome, reused=True)
    to_send = {part.key: (doc, part) for doc in docs for part in doc.parts if part.key not in outcomes}
    log.info("Preview: %d document(s), %d request(s) online", len(docs), len(to_send))
    with concurrent.futures.ThreadPoolExecutor(ONLINE_WORKERS, thread_name_prefix="preview") as pool:
        for outcome in pool.map(lambda item: _ask(run, *item), to_send.values()):
            outcomes[outcome.key] = outcome
    sent = [outcome for key, outcome in outcomes.items() if key in to_send]
    slug = run.folder.slug
    run.ledger.append(
        (
            LedgerEvent(
                o.key,
                EventKind.ANSWERED if o.status == results.OutcomeStatus.SUCCEEDED else EventKind.FAILED,
                slug,
                now_iso(),
                o,
            )
            for o in sent
        ),
        writer=f"{slug}-preview",
    )
    answered = {key for key, o in outcomes.items() if o.status == results.OutcomeStatus.SUCCEEDED}
    _mark_answered(before, run.folder.plan, answered)

    report = _report(run, docs, outcomes, set(to_send), summary.estimate)
    output = run.settings.output
    output.mkdir(parents=True, exist_ok=True)
    recorded = [results.document_record(doc, outcomes, {}) for doc in docs]
    with jsonl.writer(output / "preview.jsonl") as write:
        for record in recorded:
            write(record)
    report = msgspec.structs.replace(report, shown=preview.shown_records(records.to_builtins(recorded)))
    body = records.to_builtins(report)
    (output / "preview.json").write_bytes(
        orjson.dumps({k: v for k, v in body.items() if k != "shown"}, option=orjson.OPT_INDENT_2)
    )
    replace_whole(done, orjson.dumps(body))  # a retry trusts it: never half written
    projection = report.projection
    log.info(
        "Preview of %d document(s) cost %s online; projected for the run: %s (%d requests left for the batch: %s; "
        "estimate before the preview %s)",
        len(docs),
        preview.money(projection.preview_cost_usd),
        preview.money(projection.run_cost_usd),
        projection.remaining_requests,
        preview.money(projection.remaining_batch_cost_usd),
        preview.money(projection.estimate_usd),
    )
    return body


def _ask(run: Run, doc: PlannedDocument, part: PlannedPart) -> results.RowOutcome:
    """One part answered online, parsed as a batch output row."""
    row = request_row(run, doc, part)
    if isinstance(row, str):
        return results.missing_outcome(part.key, f"not previewed: {row}")
    try:
        response = run.service.generate_content(run.settings.spec.model, row["request"])
    except OnlineRequestFailed as exc:
        return results.missing_outcome(part.key, f"online request failed: {exc}")
    return results.parse_output_row({"key": part.key, "response": response}, run.settings.spec.response_schema)


def request_row(run: Run, doc: PlannedDocument, part: PlannedPart) -> dict | str:
    """The part's batch row, its document inline (or, read in place on Vertex AI, referenced); or why it cannot be
    built now (its file changed or went away since the plan)."""
    source, spec = run.settings.source, run.settings.spec
    if part.route == Route.IN_PLACE:
        location = documents.locate(source, doc.path)
        uri = location if isinstance(location, str) else uri_of(location)
        return build_row(part.key, spec, file_uri=uri, mime_type=doc.read_as[0])
    return plan.InlineReader(source, doc).row(part, spec)


def _candidates(plan_file: ObjectStoragePath, spec, budget: int) -> Iterator[preview.Candidate]:
    """The documents the preview may pick: read, with parts, each of them small enough for one online request."""
    for index, doc in enumerate(plan.read_plan(plan_file)):
        if doc.rejected is not None or not doc.parts:
            continue
        if any(p.route == Route.STAGED and p.size > budget for p in doc.parts):
            continue
        mime_type = doc.read_as[0]
        tokens = sum(
            estimate_input_tokens(spec, mime_type=mime_type, pages=plan.page_span(p, doc), size=p.size)
            for p in doc.parts
        )
        yield preview.Candidate(index, tokens, doc.size)


def _check_spend(run: Run, docs: list[PlannedDocument]) -> None:
    """With ``max_cost_usd`` set, the preview does not start when its own estimate (online price) is above it."""
    limit, spec = run.settings.max_cost_usd, run.settings.spec
    if limit is None:
        return
    estimate = CostEstimate.zero()
    for doc in docs:
        for part in doc.parts:
            estimate += estimate_request(
                spec, mime_type=doc.read_as[0], pages=plan.page_span(part, doc), size=part.size, prices=run.prices
            )
    cost = None if estimate.usd is None else estimate.usd / run.prices.batch_discount
    if cost is not None and cost > limit:
        raise RunConfigError(
            f"the preview of {len(docs)} document(s) alone is estimated at ${cost:.4f} (online price), above "
            f"max_cost_usd ${limit:.4f}; nothing was sent. Lower preview_documents or raise max_cost_usd"
        )


def _report(
    run: Run,
    docs: list[PlannedDocument],
    outcomes: Mapping[str, results.RowOutcome],
    online: set[str],
    estimate: CostEstimate,
) -> preview.PreviewReport:
    spec, prices, model = run.settings.spec, run.prices, run.settings.spec.model
    parts, lines = [], []
    for doc in docs:
        mime_type = doc.read_as[0]
        tokens_in = tokens_out = requests = 0
        for part in doc.parts:
            outcome = outcomes[part.key]
            parts.append(
                preview.SampledPart(
                    part.key,
                    estimate_input_tokens(spec, mime_type=mime_type, pages=plan.page_span(part, doc), size=part.size),
                    outcome.input_tokens,
                    outcome.output_tokens,
                    requested=not part.reused,
                    online=part.key in online,
                )
            )
            if part.key in online:
                requests += 1
                tokens_in += outcome.input_tokens
                tokens_out += outcome.output_tokens
        status = "succeeded" if all(outcomes[p.key].status == "succeeded" for p in doc.parts) else "failed"
        cost = preview.online_cost(prices, model, tokens_in, tokens_out)
        lines.append(
            preview.PreviewDocument(doc.document, status, len(doc.parts), tokens_in, tokens_out, requests, _round(cost))
        )
    return preview.PreviewReport(prices.model_id(model), lines, preview.project(parts, estimate, prices, model))


def _round(usd: float | None) -> float | None:
    return None if usd is None else round(usd, 6)


def _copy(source: ObjectStoragePath, target: ObjectStoragePath) -> None:
    """Whole or not at all: a retry samples from the copy once it exists."""
    with open_file(source) as src, writing_whole(target) as out:
        shutil.copyfileobj(src, out, 2**20)


def _mark_answered(before: ObjectStoragePath, plan_file: ObjectStoragePath, answered: set[str]) -> None:
    """The plan again, from its copy before the preview, with the parts the preview answered marked ``reused``."""
    with jsonl.writer(plan_file) as write:
        for doc in plan.read_plan(before):
            if any(part.key in answered and not part.reused for part in doc.parts):
                parts = tuple(
                    msgspec.structs.replace(part, reused=True) if part.key in answered else part for part in doc.parts
                )
                doc = msgspec.structs.replace(doc, parts=parts)
            write(doc)

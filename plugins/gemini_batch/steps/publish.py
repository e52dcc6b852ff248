"""The publish step: results.jsonl (one record per document) and summary.json written from the run's latest
outcomes, the ledger compacted, and the run's lineage reported."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping

import orjson
from airflow.providers.common.compat.lineage.hook import get_hook_lineage_collector

from gemini_batch.core import jsonl, records, results
from gemini_batch.core.locations import is_gcs, uri_of
from gemini_batch.steps import plan
from gemini_batch.steps.collection import RoundCounts
from gemini_batch.steps.runs import Run

log = logging.getLogger(__name__)
LINEAGE_EXTRA = "gemini_batch"  # the hook-lineage extra of a run's totals, read by operators.lineage_run_facets
FAILURES_LOGGED = 100  # the task log names this many failed documents with their reason; results.jsonl has all


def publish_results(run: Run, collected: Iterable[Mapping]) -> dict:
    """Write results.jsonl and summary.json from the rounds ``collection.collect_results`` returned; return the
    summary.

    The summary's requests, jobs, tokens and cost are what this run sent and pays for: rows of its own
    jobs in every round; answers taken from the ledger or another run's job count in ``reused`` only.

    Lineage (hook-level: what a TaskFlow task can report; a no-op without the OpenLineage listener): the
    source folder in, results.jsonl out, and the run's totals (jobs, tokens) and job ids as extra
    ``LINEAGE_EXTRA``.
    """
    settings, ledger = run.settings, run.ledger
    rounds_read = [records.convert(counts, RoundCounts) for counts in collected]
    job_names = [name for counts in rounds_read for name in counts.job_names]
    requests = sum(counts.requests for counts in rounds_read)
    results_file = settings.output / "results.jsonl"  # one object for its writes and its lineage: one dataset
    rounds = run.last_round()
    totals = results.RunTotals()
    unsucceeded = 0
    with run.latest_outcomes(rounds) as (outcomes, tokens), ledger.view() as finished, run.staging() as staged:
        # A key whose latest staging (or inline read) failed was not requested after it: that failure is its
        # latest news, unless another run's job answered it meanwhile.
        unstaged = [
            records.to_builtins(results.missing_outcome(key, f"not requested: {error}"))
            for key, error in staged.failures()
            if (outcome := outcomes.get(key)) is None or outcome["status"] != results.OutcomeStatus.SUCCEEDED
        ]
        outcomes.put(unstaged)
        with jsonl.writer(results_file) as write:
            for doc in plan.read_plan(run.folder.plan):
                answered = {
                    p.key: records.convert(o, results.RowOutcome) for p in doc.parts if (o := outcomes.get(p.key))
                }
                reused = {p.key: r for p in doc.parts if p.reused and (r := finished.finished(p.key)) is not None}
                record = results.document_record(doc, answered, reused)
                totals.add(record)
                write(record)
                if record.status != results.DocumentStatus.SUCCEEDED:
                    unsucceeded += 1
                    if unsucceeded <= FAILURES_LOGGED:
                        log.warning("%s %s: %s", record.status.capitalize(), record.document, record.error)
        if unsucceeded > FAILURES_LOGGED:
            log.warning(
                "... and %d more documents failed or were rejected; all are in %s",
                unsucceeded - FAILURES_LOGGED,
                uri_of(results_file),
            )
    ledger.compact(writer=run.folder.slug)
    report = records.to_builtins(
        totals.summary(
            requests=requests,
            jobs=len(job_names),
            retry_rounds=rounds,
            **tokens,
            estimated_cost_usd=_rounded(run.prices.cost(settings.spec.model, **tokens)),  # None: no price
        )
    )
    (settings.output / "summary.json").write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2))
    lineage = get_hook_lineage_collector()
    for add, path in ((lineage.add_input_asset, settings.source), (lineage.add_output_asset, results_file)):
        add(path, uri=uri_of(path) if is_gcs(path) else f"file://{path.path}")
    lineage.add_extra(settings.output, LINEAGE_EXTRA, {**report, "job_names": job_names})
    return report


def _rounded(usd: float | None) -> float | None:
    return None if usd is None else round(usd, 6)

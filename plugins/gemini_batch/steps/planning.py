"""The plan step: the model (and Vertex AI's staging bucket) checked, then every document planned into the run's
plan file (``steps.plan``)."""

from __future__ import annotations

import logging

from gemini_batch.core.batch_requests import inline_budget
from gemini_batch.core.locations import is_gcs, uri_of
from gemini_batch.core.planned import Route, Routing
from gemini_batch.hooks.errors import StagingBucketUnusable, UnknownModel
from gemini_batch.steps import plan
from gemini_batch.steps.run_settings import RunConfigError
from gemini_batch.steps.runs import Run

log = logging.getLogger(__name__)


def plan_documents(run: Run) -> plan.PlanSummary:
    """Every document, keyed; a key the ledger holds as answered (by any earlier run) is reused, not requested.

    First the service is asked for the model: an unknown or shut-down one fails the run before anything else;
    so does, on Vertex AI, a staging bucket the connection's region cannot use.
    """
    if run.hook is not None:
        try:
            run.hook.check_model(run.settings.spec.model)
            if run.settings.staging_prefix is not None:
                run.hook.check_staging_bucket(uri_of(run.settings.staging_prefix))
        except (UnknownModel, StagingBucketUnusable) as exc:
            raise RunConfigError(str(exc)) from None
    settings = run.settings
    routing = Routing(
        inline_max_bytes=min(settings.inline_max_bytes, inline_budget(settings.spec, settings.max_bytes)),
        in_place=run.hook is not None and run.hook.backend == "vertex" and is_gcs(settings.source),
    )
    with run.ledger.view() as finished:
        summary = plan.plan_run(
            settings.source,
            settings.spec,
            run.folder.plan,
            finished=finished,
            limits=settings.limits,
            routing=routing,
            prices=run.prices,
        )
    log.info(
        "Planned %d requests: %d inline, %d referenced in place, %d to upload first",
        summary.requests,
        summary.routes[Route.INLINE],
        summary.routes[Route.IN_PLACE],
        summary.routes[Route.STAGED],
    )
    return summary

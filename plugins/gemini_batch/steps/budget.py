"""The budget step: a run over its ``max_cost_usd``, or with a budget it cannot price, fails before anything is
submitted."""

from __future__ import annotations

import logging
from collections.abc import Mapping

from gemini_batch.core import records
from gemini_batch.core.preview import Projection
from gemini_batch.steps.plan import PlanSummary
from gemini_batch.steps.run_settings import RunConfigError
from gemini_batch.steps.runs import Run

log = logging.getLogger(__name__)


def check_budget(run: Run, summary: Mapping, preview: Mapping | None = None) -> None:
    """Over ``max_cost_usd``, or a budget set for a model without a price: fail (RunConfigError) before anything
    is submitted. ``summary``: the plan's summary as XCom carries it; ``preview``: the preview's report, whose
    projection (the batch still to send plus what the preview cost) replaces the estimate when there is one."""
    planned = records.convert(summary, PlanSummary)
    estimate, limit = planned.estimate, run.settings.max_cost_usd
    if preview is not None:
        projection = records.convert(preview["projection"], Projection)
        if projection.run_cost_usd is not None:
            if limit is not None and projection.run_cost_usd > limit:
                raise RunConfigError(
                    f"projected cost ${projection.run_cost_usd:.4f} (the preview's ${projection.preview_cost_usd:.4f} "
                    f"online + {projection.remaining_requests} batch requests, {projection.remaining_input_tokens:,} "
                    f"input + {projection.remaining_output_tokens:,} output tokens, projected from "
                    f"{projection.sample_requests} previewed) exceeds max_cost_usd ${limit:.4f}; nothing was submitted"
                )
            return
    if estimate.usd is None:
        message = run.prices.no_price(run.settings.spec.model)
        if limit is not None:
            raise RunConfigError(f"max_cost_usd ${limit:.4f} is set but the cost cannot be estimated: {message}")
        log.warning("The cost of this run is unknown: %s", message)
        return
    if limit is not None and estimate.usd > limit:
        raise RunConfigError(
            f"estimated cost ${estimate.usd:.4f} for {planned.requests} requests "
            f"({estimate.input_tokens:,} input + {estimate.output_tokens:,} output tokens) exceeds "
            f"max_cost_usd ${limit:.4f}; nothing was submitted"
        )

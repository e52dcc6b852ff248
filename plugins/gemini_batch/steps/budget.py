"""The budget step: a run over its ``max_cost_usd``, or with a budget it cannot price, fails before anything is
submitted."""

from __future__ import annotations

import logging
from collections.abc import Mapping

from gemini_batch.core import records
from gemini_batch.steps.plan import PlanSummary
from gemini_batch.steps.run_settings import RunConfigError
from gemini_batch.steps.runs import Run

log = logging.getLogger(__name__)


def check_budget(run: Run, summary: Mapping) -> None:
    """Over ``max_cost_usd``, or a budget set for a model without a price: fail (RunConfigError) before anything
    is submitted. ``summary``: the plan's summary as XCom carries it."""
    planned = records.convert(summary, PlanSummary)
    estimate, limit = planned.estimate, run.settings.max_cost_usd
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

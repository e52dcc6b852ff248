"""The optional cost approval: above a threshold, a person approves the estimate in the Airflow UI first.

Built on the standard provider's human-in-the-loop ``ApprovalOperator``: the
task waits for a response without holding a worker. Approve lets the run
submit; Reject fails it with the estimate in the message (where the stock
operator would only skip what follows). ``max_cost_usd`` stays the hard limit.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from airflow.providers.standard.operators.hitl import ApprovalOperator, HITLOperator
from airflow.sdk.exceptions import AirflowFailException

from gemini_batch.core.preview import describe as describe_preview


def _threshold(value: Any) -> float | None:
    """``threshold_usd`` as rendered: None (never ask), a number, or a number in a string."""
    return None if value is None or value == "" else float(value)


def cost_to_approve(planned: Mapping, preview: Mapping | None) -> float | None:
    """What the threshold is compared with: the preview's projection of the whole run when there is one (the
    batch still to send plus what the preview cost), else the plan's estimate."""
    if preview is not None and preview["projection"]["run_cost_usd"] is not None:
        return preview["projection"]["run_cost_usd"]
    return planned["estimate"]["usd"]


def describe_cost(planned: Mapping, preview: Mapping | None) -> str:
    """The cost in a phrase: projected from the preview when there is one, else estimated."""
    if preview is not None and preview["projection"]["run_cost_usd"] is not None:
        projection = preview["projection"]
        return (
            f"${projection['run_cost_usd']:.4f} projected from a preview of {len(preview['documents'])} document(s) "
            f"({projection['remaining_requests']:,} batch requests left)"
        )
    return describe_estimate(planned)


def approval_body(planned: Mapping, preview: Mapping | None, threshold: float) -> str:
    """The approval prompt: the cost against the threshold, and the preview (a few documents' data, trimmed, and
    what the whole run will cost) when there is one."""
    body = (
        f"This run would submit {describe_cost(planned, preview)}, above the approval threshold "
        f"(approve_above_usd) of ${threshold:.4f}.\n\n"
    )
    if preview is not None:
        body += describe_preview(preview) + "\n\n"
    return body + "Approve submits it; Reject fails the run before anything is uploaded."


def describe_estimate(planned: Mapping) -> str:
    estimate = planned["estimate"]
    cost = "an unknown cost" if estimate["usd"] is None else f"${estimate['usd']:.4f}"
    return (
        f"{cost} for {planned['requests']:,} requests ({estimate['input_tokens']:,} input + "
        f"{estimate['output_tokens']:,} output tokens)"
    )


class CostApprovalOperator(ApprovalOperator):
    """Asks for approval when the plan's estimate is above ``threshold_usd`` (or unknown with a threshold set);
    below it, or with no threshold, it passes without asking."""

    template_fields = (*ApprovalOperator.template_fields, "planned", "threshold_usd", "preview")

    def __init__(self, *, planned: Any, threshold_usd: Any = None, preview: Any = None, **kwargs):
        super().__init__(subject="Approve the cost of this Gemini batch run", **kwargs)
        self.planned = planned
        self.threshold_usd = threshold_usd
        self.preview = preview  # the preview's report (None: no preview ran)

    def execute(self, context):
        threshold, estimate = _threshold(self.threshold_usd), cost_to_approve(self.planned, self.preview)
        described = describe_cost(self.planned, self.preview)
        if self.preview is None:
            described = f"estimated {described}"
        if threshold is None or (estimate is not None and estimate <= threshold):
            self.log.info(
                "No approval needed: %s, approval threshold %s",
                described,
                "not set" if threshold is None else f"${threshold:.4f}",
            )
            return None
        self.subject = f"Approve {describe_cost(self.planned, self.preview)}?"
        self.body = approval_body(self.planned, self.preview, threshold)
        return super().execute(context)

    def execute_complete(self, context, event: dict[str, Any]):
        response = HITLOperator.execute_complete(self, context=context, event=event)
        chosen = response["chosen_options"][0]
        self.hitl_summary_extra["approved"] = chosen == self.APPROVE
        if chosen != self.APPROVE:
            by = response.get("responded_by_user") or {}
            who = by.get("name") or by.get("id") or "a user"
            raise AirflowFailException(
                f"{who} rejected the run: {'' if self.preview else 'estimated '}"
                f"{describe_cost(self.planned, self.preview)} is above approve_above_usd "
                f"${_threshold(self.threshold_usd):.4f}; nothing was submitted"
            )
        self.log.info("Approved by %s: submitting", (response.get("responded_by_user") or {}).get("name"))
        return response

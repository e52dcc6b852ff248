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


def _threshold(value: Any) -> float | None:
    """``threshold_usd`` as rendered: None (never ask), a number, or a number in a string."""
    return None if value is None or value == "" else float(value)


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

    template_fields = (*ApprovalOperator.template_fields, "planned", "threshold_usd")

    def __init__(self, *, planned: Any, threshold_usd: Any = None, **kwargs):
        super().__init__(subject="Approve the cost of this Gemini batch run", **kwargs)
        self.planned = planned
        self.threshold_usd = threshold_usd

    def execute(self, context):
        threshold, estimate = _threshold(self.threshold_usd), self.planned["estimate"]["usd"]
        described = describe_estimate(self.planned)
        if threshold is None or (estimate is not None and estimate <= threshold):
            self.log.info(
                "No approval needed: estimated %s, approval threshold %s",
                described,
                "not set" if threshold is None else f"${threshold:.4f}",
            )
            return None
        self.subject = f"Approve {described}?"
        self.body = (
            f"This run would submit {described}, above the approval threshold "
            f"(approve_above_usd) of ${threshold:.4f}.\n\nApprove submits it; Reject fails the run "
            "before anything is uploaded."
        )
        return super().execute(context)

    def execute_complete(self, context, event: dict[str, Any]):
        response = HITLOperator.execute_complete(self, context=context, event=event)
        chosen = response["chosen_options"][0]
        self.hitl_summary_extra["approved"] = chosen == self.APPROVE
        if chosen != self.APPROVE:
            by = response.get("responded_by_user") or {}
            who = by.get("name") or by.get("id") or "a user"
            raise AirflowFailException(
                f"{who} rejected the run: estimated {describe_estimate(self.planned)} is above approve_above_usd "
                f"${_threshold(self.threshold_usd):.4f}; nothing was submitted"
            )
        self.log.info("Approved by %s: submitting", (response.get("responded_by_user") or {}).get("name"))
        return response

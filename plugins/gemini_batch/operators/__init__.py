"""The Airflow-facing operators: thin, idempotent, their work done by the steps and the hook below."""

# The public names, where Airflow and users' DAGs import them from.
from gemini_batch.operators.approval import CostApprovalOperator
from gemini_batch.operators.batch import (
    GeminiBatchJobLink,
    GeminiBatchJobSensor,
    GeminiBatchOutputLink,
    GeminiBatchSubmitOperator,
    lineage_run_facets,
)

__all__ = [
    "CostApprovalOperator",
    "GeminiBatchJobLink",
    "GeminiBatchJobSensor",
    "GeminiBatchOutputLink",
    "GeminiBatchSubmitOperator",
    "lineage_run_facets",
]

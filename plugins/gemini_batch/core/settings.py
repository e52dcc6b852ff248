"""Every run setting, declared once: its name, type and bounds (JSON schema), default, title, description, and
whether it is a location rendered per run. The DAG's trigger form (Params), the pipeline files' schema and the
run's checked settings are all made from ``SETTINGS``; nothing else writes a default."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from gemini_batch.core.records import StrEnum

RUN, LIMIT = "run", "limit"  # a pipeline file names a run field at its top level, a limit under ``limits``
MAX_RETRY_ROUNDS = 3  # task groups in the graph; the retry_rounds setting decides how many run
DEFAULT_INLINE_MB = 10  # base64 makes it 13.4 MB: well within the 20 MB a request may carry
MAX_PREVIEW_DOCUMENTS = 50  # documents a preview answers online at most
MAX_INLINE_MB = 14  # 18.7 MB in base64: the largest that leaves the prompt and schema room under 20 MB
# A table name the sink writes into: one or two (schema.table) plain SQL identifiers, nothing to escape.
SQL_TABLE_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]{0,62}(\.[A-Za-z_][A-Za-z0-9_]{0,62})?$"


class Retention(StrEnum):
    """What a run's clean-up deletes (the ``retention`` setting)."""

    KEEP = "keep"  # nothing
    STAGED = "staged"  # the staged uploads and the jobs' input files
    ALL = "all"  # also the jobs' output files and the run's work folders


RETENTIONS = tuple(retention.value for retention in Retention)

DEFAULT_PROMPT = (
    "Extract the invoice from this document: the invoice number, the issue date (YYYY-MM-DD), the vendor name, "
    "the currency and the total amount due. Use null for anything the document does not state."
)
DEFAULT_SCHEMA = {
    "type": "object",
    "properties": {
        "invoice_number": {"type": ["string", "null"]},
        "date": {"type": ["string", "null"]},
        "vendor": {"type": ["string", "null"]},
        "currency": {"type": ["string", "null"]},
        "total": {"type": ["number", "null"]},
    },
    "required": ["invoice_number", "date", "vendor", "currency", "total"],
}


@dataclass(frozen=True)
class Setting:
    name: str
    title: str
    default: Any
    schema: Mapping[str, Any]  # JSON schema: type, bounds, enum, format, examples
    kind: str  # RUN or LIMIT
    description: str = ""
    templated: bool = False  # a location: rendered per run from its dates and params (steps.templating)


SETTINGS: tuple[Setting, ...] = (
    Setting(
        "source",
        "Source",
        "include/samples",
        {"type": "string"},
        RUN,
        "Local folder or gs://bucket/prefix with the documents. Relative paths resolve against "
        "$GEMINI_BATCH_HOME, else $AIRFLOW_HOME. Jinja works: gs://landing/{{ ds }}/ reads the run's day.",
        templated=True,
    ),
    Setting(
        "output",
        "Output",
        "output/{{ ds }}",
        {"type": "string"},
        RUN,
        "Local folder or gs:// prefix for results.jsonl and summary.json (Jinja works).",
        templated=True,
    ),
    Setting(
        "prompt",
        "Prompt",
        DEFAULT_PROMPT,
        {"type": "string", "minLength": 1, "format": "multiline"},
        RUN,
        "One extraction prompt, sent with every document.",
    ),
    Setting(
        "response_schema",
        "Response JSON schema",
        DEFAULT_SCHEMA,
        {"type": ["object", "null"]},
        RUN,
        "JSON schema every answer must match; null for free JSON.",
    ),
    Setting(
        "model",
        "Model",
        "gemini-2.5-flash-lite",
        {
            "type": "string",
            "examples": [
                "gemini-2.5-flash-lite",
                "gemini-3.8-flash",
                "gemini-3-flash-preview",
                "gemini-3.5-flash-lite",
            ],
        },
        RUN,
        "A model the service serves for batch jobs; the run checks it before anything is uploaded. Prices: "
        "gemini_batch/prices.json, overridden by the Variable gemini_batch_prices.",
    ),
    Setting(
        "gemini_conn_id",
        "Gemini connection",
        "gemini_default",
        {"type": "string"},
        RUN,
        "A Gemini Batch (or generic) connection: API key, backend, base URL, project.",
    ),
    Setting(
        "max_cost_usd",
        "Budget (USD)",
        None,
        {"type": ["number", "null"], "minimum": 0},
        LIMIT,
        "Fail before submitting when the estimated cost is above this; null: no limit.",
    ),
    Setting(
        "approve_above_usd",
        "Ask for approval above (USD)",
        None,
        {"type": ["number", "null"], "minimum": 0},
        LIMIT,
        "Above this estimate the run waits for a person to approve it in the UI (Reject fails it); null: never ask.",
    ),
    Setting(
        "retry_rounds",
        "Retry rounds",
        2,
        {"type": "integer", "minimum": 0, "maximum": MAX_RETRY_ROUNDS},
        LIMIT,
        "How many times failed or unanswered requests are resubmitted.",
    ),
    Setting(
        "preview_documents",
        "Preview documents",
        0,
        {"type": "integer", "minimum": 0, "maximum": MAX_PREVIEW_DOCUMENTS},
        LIMIT,
        "Before the batch, answer this many documents online (the largest, the smallest, the rest at random; "
        "online price, twice the batch one) into <output>/preview.jsonl and project the run's cost from them "
        "(preview.json); the budget and the approval use that projection, and the batch reuses their answers. "
        "0: no preview.",
    ),
    Setting(
        "max_pages",
        "Pages per PDF part",
        50,
        {"type": "integer", "minimum": 1},
        LIMIT,
        "Longer PDFs are split into page ranges of at most this many pages.",
    ),
    Setting(
        "max_part_mb",
        "MB per document part",
        50,
        {"type": "integer", "minimum": 1},
        LIMIT,
        "",
    ),
    Setting(
        "inline_max_mb",
        "Inline parts up to (MB)",
        DEFAULT_INLINE_MB,
        {"type": "number", "minimum": 0, "maximum": MAX_INLINE_MB},
        LIMIT,
        "Parts up to this size travel inside their request (base64): no upload, no Files API expiry, nothing "
        "to delete. Larger ones are uploaded first; 0: upload every part but text.",
    ),
    Setting(
        "max_rows_per_job",
        "Requests per batch job",
        10000,
        {"type": "integer", "minimum": 1},
        LIMIT,
        "",
    ),
    Setting(
        "max_mb_per_job",
        "MB of JSONL per batch job",
        100,
        {"type": "integer", "minimum": 1},
        LIMIT,
        "",
    ),
    Setting(
        "max_jobs_in_flight",
        "Jobs in flight",
        10,
        {"type": "integer", "minimum": 1},
        LIMIT,
        "At most this many batch jobs of this DAG's runs (all that share the ledger) run at once; a shard "
        "waits, deferred, for one to end.",
    ),
    Setting(
        "thinking",
        "Thinking",
        "low",
        {"enum": ["low", "model-default"]},
        RUN,
        "low: the least thinking the model allows (best for extraction).",
    ),
    Setting(
        "expiry_hours",
        "Job expiry (hours)",
        24,
        {"type": "number", "minimum": 0.001},
        LIMIT,
        "A job not finished this long after submission is cancelled and its rows retried.",
    ),
    Setting(
        "quota_wait_hours",
        "Quota wait (hours)",
        24.0,
        {"type": "number", "minimum": 0},
        LIMIT,
        "A shard the service refuses while other jobs of the model hold its enqueued-token quota waits for "
        "them at most this long without progress, then the run fails naming what to set.",
    ),
    Setting(
        "poll_seconds",
        "Poll interval (seconds)",
        30,
        {"type": "number", "minimum": 0.1},
        LIMIT,
        "",
    ),
    Setting(
        "staging_prefix",
        "Vertex staging prefix",
        None,
        {"type": ["string", "null"]},
        RUN,
        "Vertex AI only: gs://bucket/prefix for documents, requests and outputs.",
        templated=True,
    ),
    Setting(
        "state",
        "Ledger",
        None,
        {"type": ["string", "null"]},
        RUN,
        "Folder (or gs:// prefix) of the ledger every run of this DAG shares: what was answered, and which "
        "run requests what now. Default: $GEMINI_BATCH_STATE/<dag id>, else "
        "$AIRFLOW_HOME/gemini_batch/ledger/<dag id>.",
        templated=True,
    ),
    Setting(
        "retention",
        "Clean-up",
        Retention.STAGED.value,
        {"enum": [retention.value for retention in Retention]},
        RUN,
        "keep: keep everything; staged: delete staged uploads; all: also the work files.",
    ),
    Setting(
        "sink_conn_id",
        "Results database connection",
        None,
        {"type": ["string", "null"]},
        RUN,
        "An Airflow SQL connection (PostgreSQL, SQLite, ...): after publishing, every document's record is "
        "upserted into sink_table there; null: results.jsonl only.",
    ),
    Setting(
        "sink_table",
        "Results table",
        "gemini_batch_results",
        {"type": "string", "pattern": SQL_TABLE_PATTERN},
        RUN,
        "The table (or schema.table) of sink_conn_id, created when absent; one row per DAG, source and document.",
    ),
)

BY_NAME: dict[str, Setting] = {setting.name: setting for setting in SETTINGS}
DEFAULTS: dict[str, Any] = {setting.name: setting.default for setting in SETTINGS}
TEMPLATED: tuple[str, ...] = tuple(setting.name for setting in SETTINGS if setting.templated)


def setting_value(params: Mapping[str, Any], name: str) -> Any:
    """The run's value of setting ``name``: the param given (null where the setting allows it), else its default."""
    return params[name] if name in params else DEFAULTS[name]

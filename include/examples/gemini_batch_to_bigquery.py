"""gemini_batch_to_bigquery: an example of loading each published results.jsonl into BigQuery.

Scheduled on the results Asset of ``gemini_batch_extract`` (``gemini_batch.dag.results_asset``): every time a
run publishes, this DAG reads the output URI from the Asset event and loads ``<output>/results.jsonl`` with the
Google provider's ``GCSToBigQueryOperator`` (newline-delimited JSON, an explicit schema matching the records,
appended: one load per published run). The extract DAG's ``output`` must be a ``gs://`` prefix. Set
``GEMINI_BATCH_BQ_TABLE`` (``project.dataset.table``) and, if not the default, ``GEMINI_BATCH_BQ_GCP_CONN``.
For upserts instead of appends (one row per document, updated by re-runs), use the ``sink_conn_id`` param.
"""

from __future__ import annotations

import os

from airflow.providers.google.cloud.transfers.gcs_to_bigquery import GCSToBigQueryOperator
from airflow.sdk import DAG, get_current_context, task

from gemini_batch.dag import results_asset

SOURCE_DAG_ID = "gemini_batch_extract"
TABLE = os.environ.get("GEMINI_BATCH_BQ_TABLE", "my-project.gemini_batch.results")
GCP_CONN_ID = os.environ.get("GEMINI_BATCH_BQ_GCP_CONN", "google_cloud_default")

_PART = [
    {"name": "key", "type": "STRING", "mode": "REQUIRED"},
    {"name": "pages", "type": "INTEGER", "mode": "REPEATED"},  # [first, last] of a split PDF's part; else empty
    {"name": "status", "type": "STRING", "mode": "REQUIRED"},
    {"name": "finish_reason", "type": "STRING", "mode": "NULLABLE"},
    {"name": "error", "type": "STRING", "mode": "NULLABLE"},
    {"name": "reused", "type": "BOOLEAN", "mode": "NULLABLE"},
]
SCHEMA_FIELDS = [  # a line of results.jsonl (gemini_batch.core.results.DocumentRecord)
    {"name": "document", "type": "STRING", "mode": "REQUIRED"},
    {"name": "status", "type": "STRING", "mode": "REQUIRED"},
    {"name": "data", "type": "JSON", "mode": "NULLABLE"},  # the extracted answer, whatever the response schema
    {"name": "error", "type": "STRING", "mode": "NULLABLE"},
    {"name": "parts", "type": "RECORD", "mode": "REPEATED", "fields": _PART},
    {
        "name": "usage",
        "type": "RECORD",
        "mode": "NULLABLE",
        "fields": [
            {"name": "input_tokens", "type": "INTEGER", "mode": "NULLABLE"},
            {"name": "output_tokens", "type": "INTEGER", "mode": "NULLABLE"},
        ],
    },
    {"name": "reused", "type": "BOOLEAN", "mode": "NULLABLE"},
]


def results_location(extra: dict) -> dict:
    """The bucket and object of results.jsonl from a results Asset event's extra (``output``: a gs:// prefix)."""
    output = str(extra.get("output") or "")
    if not output.startswith("gs://"):
        raise ValueError(f"{SOURCE_DAG_ID} published to {output!r}: BigQuery loads from gs:// only")
    bucket, _, prefix = output[len("gs://") :].partition("/")
    return {"bucket": bucket, "object": f"{prefix.rstrip('/')}/results.jsonl".lstrip("/")}


@task
def locate_results() -> dict:
    """The latest triggering event's output (several publishes may be folded into one run: the last one)."""
    events = get_current_context()["triggering_asset_events"][results_asset(SOURCE_DAG_ID)]
    return results_location(events[-1].extra)


with DAG(
    dag_id="gemini_batch_to_bigquery",
    schedule=[results_asset(SOURCE_DAG_ID)],
    catchup=False,
    tags=["gemini", "batch", "bigquery", "example"],
    doc_md=__doc__,
) as dag:
    location = locate_results()
    load = GCSToBigQueryOperator(
        task_id="load_results",
        gcp_conn_id=GCP_CONN_ID,
        bucket="{{ ti.xcom_pull(task_ids='locate_results')['bucket'] }}",
        source_objects=["{{ ti.xcom_pull(task_ids='locate_results')['object'] }}"],
        destination_project_dataset_table=TABLE,
        source_format="NEWLINE_DELIMITED_JSON",
        schema_fields=SCHEMA_FIELDS,
        autodetect=False,
        ignore_unknown_values=True,  # fields a later version adds to the records
        create_disposition="CREATE_IF_NEEDED",
        write_disposition="WRITE_APPEND",
    )
    location >> load

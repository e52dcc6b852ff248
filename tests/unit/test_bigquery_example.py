"""The BigQuery example (include/examples/gemini_batch_to_bigquery.py): scheduled on the extract DAG's results
Asset, it loads results.jsonl with the Google provider's GCSToBigQueryOperator. Its load configuration is checked
here, with no network: the format, the dispositions, and a schema naming every field of a results.jsonl record."""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest
from airflow.dag_processing.dagbag import DagBag
from airflow.providers.google.cloud.transfers.gcs_to_bigquery import GCSToBigQueryOperator

from gemini_batch.core.results import DocumentRecord, PartRecord, Usage
from gemini_batch.dag import results_asset

EXAMPLE = Path(__file__).resolve().parents[2] / "include" / "examples" / "gemini_batch_to_bigquery.py"


@pytest.fixture(scope="module")
def dag():
    bag = DagBag(dag_folder=str(EXAMPLE))
    assert not bag.import_errors, bag.import_errors
    return bag.dags["gemini_batch_to_bigquery"]


def names(fields) -> set[str]:
    return {field["name"] for field in fields}


def test_it_runs_on_the_results_asset_and_loads_with_the_providers_operator(dag):
    [asset] = dag.timetable.asset_condition.objects
    assert (asset.name, asset.uri) == (
        results_asset("gemini_batch_extract").name,
        "gemini-batch://gemini_batch_extract/results",
    )
    load = dag.get_task("load_results")
    assert isinstance(load, GCSToBigQueryOperator)
    assert load.upstream_task_ids == {"locate_results"}
    assert load.source_format == "NEWLINE_DELIMITED_JSON"
    assert load.write_disposition == "WRITE_APPEND" and load.create_disposition == "CREATE_IF_NEEDED"
    assert load.autodetect is False and load.ignore_unknown_values is True
    assert "locate_results" in load.bucket and "locate_results" in load.source_objects[0]


def test_the_schema_names_every_field_of_a_record(dag):
    schema = {field["name"]: field for field in dag.get_task("load_results").schema_fields}
    assert set(schema) == {f.name for f in msgspec.structs.fields(DocumentRecord)}
    assert names(schema["parts"]["fields"]) == {f.name for f in msgspec.structs.fields(PartRecord)}
    assert names(schema["usage"]["fields"]) == {f.name for f in msgspec.structs.fields(Usage)}
    assert schema["data"]["type"] == "JSON" and schema["parts"]["mode"] == "REPEATED"


def test_the_results_object_comes_from_the_asset_events_output():
    from importlib import util

    spec = util.spec_from_file_location("bq_example", EXAMPLE)
    module = util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.results_location({"output": "gs://results/invoices/2026-12-01"}) == {
        "bucket": "results",
        "object": "invoices/2026-12-01/results.jsonl",
    }
    assert module.results_location({"output": "gs://results"})["object"] == "results.jsonl"
    with pytest.raises(ValueError, match="gs:// only"):
        module.results_location({"output": "/local/output"})

"""Pipelines as config: each YAML file of a pipelines folder is a DAG; a file with a mistake is named, with its
field, in the loader's import error, and the others still load (Airflow's own DagBag parses the folder)."""

from __future__ import annotations

import time
import tracemalloc
from pathlib import Path

import pytest
import yaml
from airflow.dag_processing.dagbag import DagBag

from gemini_batch.core.settings import DEFAULT_SCHEMA
from gemini_batch.dag import build_dag
from gemini_batch.pipelines import ERRORS_DAG_ID
from support.pipelines import GOOD, billion_laughs, loader_folders

ROOT = Path(__file__).resolve().parents[2]


def bag(tmp_path: Path, monkeypatch, files: dict[str, object]) -> DagBag:
    """The loader DAG file alone in a DAG folder, reading ``files`` (name -> YAML data, or raw text)."""
    dags, pipelines = loader_folders(tmp_path)
    for name, content in files.items():
        (pipelines / name).write_text(content if isinstance(content, str) else yaml.safe_dump(content))
    monkeypatch.setenv("GEMINI_BATCH_PIPELINES", str(pipelines))
    return DagBag(dag_folder=str(dags))


def test_the_repositorys_pipelines_load_with_their_own_defaults():
    dags = DagBag(dag_folder=str(ROOT / "dags"))
    assert not dags.import_errors
    assert {"gemini_batch_extract", "invoices_nightly", "contracts_weekly"} <= set(dags.dags)
    contracts = dags.dags["contracts_weekly"]
    assert contracts.timetable.expression == "0 3 * * 1"
    assert set(contracts.params["response_schema"]["properties"]) == {
        "parties",
        "effective_date",
        "end_date",
        "total_value",
    }  # from schema_file
    assert contracts.params["max_pages"] == 100 and contracts.params["retry_rounds"] == 1
    assert dags.dags["invoices_nightly"].params["approve_above_usd"] == 1
    assert (
        dags.dags["gemini_batch_extract"].params["response_schema"] == DEFAULT_SCHEMA
    )  # the repository DAG's default unchanged


def test_a_pipeline_sets_the_dags_id_schedule_and_defaults(tmp_path, monkeypatch):
    dags = bag(
        tmp_path, monkeypatch, {"receipts.yaml": GOOD, "no-id.yml": {k: v for k, v in GOOD.items() if k != "dag_id"}}
    )
    assert not dags.import_errors, dags.import_errors
    receipts = dags.dags["receipts"]
    assert receipts.params["source"] == GOOD["source"] and receipts.params["max_cost_usd"] == 2.5
    assert receipts.params["max_rows_per_job"] == 500 and receipts.params["max_pages"] == 50  # others: the defaults
    assert receipts.params["response_schema"] == GOOD["schema"]
    assert receipts.timetable.expression == "0 0 * * *"  # @daily, as Airflow reads it
    assert "no-id" in dags.dags  # no dag_id: the file's name


@pytest.mark.parametrize(
    ("change", "field", "cause"),
    [
        ({"limits": {"max_pages": 0}}, "limits.max_pages", "less than the minimum of 1"),
        ({"limits": {"max_cost": 3}}, "limits.max_cost", "Additional properties"),
        ({"promt": "typo"}, "promt", "Additional properties"),
        ({"prompt": None}, "prompt", "is not of type 'string'"),
        ({"schedule": "every night"}, "schedule", "every night"),
        ({"schema": {"type": "objekt"}}, "schema", "not a valid JSON schema"),
        ({"schema_file": "missing.json"}, "schema, schema_file", "either schema or schema_file"),
        ({"start_date": "first of may"}, "start_date", "not an ISO date"),
        ({"thinking": "lots"}, "thinking", "is not one of"),
    ],
)
def test_a_pipeline_with_a_mistake_is_named_with_its_field_and_the_others_load(
    tmp_path, monkeypatch, change, field, cause
):
    bad = {**GOOD, "dag_id": "broken", **change}
    dags = bag(tmp_path, monkeypatch, {"receipts.yaml": GOOD, "broken.yaml": bad})
    assert set(dags.dags) == {"receipts"}  # the good one loads; neither the broken one nor a stand-in
    [(where, error)] = dags.import_errors.items()
    assert where.endswith("gemini_batch_pipelines.py")
    assert f"broken.yaml: field {field}:" in error and cause in error, error


def test_every_broken_file_is_named_and_a_missing_schema_file_too(tmp_path, monkeypatch):
    dags = bag(
        tmp_path,
        monkeypatch,
        {
            "a.yaml": {
                **{k: v for k, v in GOOD.items() if k != "schema"},
                "dag_id": "a",
                "schema_file": "nowhere.json",
            },
            "b.yaml": "source: [unclosed",
            "c.yaml": {**GOOD, "dag_id": "receipts"},
            "receipts.yaml": GOOD,
        },
    )
    [error] = dags.import_errors.values()
    assert "a.yaml: field schema_file: cannot read" in error.replace(str(tmp_path / "pipelines") + "/", "")
    assert "b.yaml: not valid YAML" in error
    assert "field dag_id: 'receipts' is already the DAG of" in error
    assert ERRORS_DAG_ID not in dags.dags and "a" not in dags.dags


def test_build_dag_refuses_a_param_it_does_not_have():
    with pytest.raises(ValueError, match="unknown params promt"):
        build_dag("mine", params={"promt": "typo"})


@pytest.mark.parametrize("field", ["schema", "prompt"])
def test_a_yaml_bomb_is_refused_quickly_and_the_other_pipelines_load(tmp_path, monkeypatch, field):
    bomb = billion_laughs(field)
    assert len(bomb) < 600
    tracemalloc.start()
    started = time.monotonic()
    try:
        dags = bag(tmp_path, monkeypatch, {"receipts.yaml": GOOD, "laughs.yaml": bomb})
        elapsed, (_, peak) = time.monotonic() - started, tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert elapsed < 5 and peak < 100 * 2**20, (elapsed, peak)
    assert set(dags.dags) == {"receipts"}
    [error] = dags.import_errors.values()
    assert "laughs.yaml: refused: more than 100,000 values once its aliases (*name) are expanded" in error, error
    assert len(error) < 2000


@pytest.mark.parametrize(
    ("content", "cause"),
    [
        ("prompt: " + "x" * (2**20 + 1), "bytes, above the 1,048,576 a pipeline file may hold"),
        ("source: &s [*s]\nprompt: p\n", "refused: an alias refers to a value that contains it"),
        (
            "source: landing\nprompt: p\nschema:\n"
            + "".join("  " * n + "  properties:\n" + "  " * n + "    x:\n" for n in range(0, 120, 2)),
            "nested deeper than",
        ),
    ],
    ids=["oversized", "self-referring", "deep"],
)
def test_an_oversized_self_referring_or_deep_file_is_named_and_the_others_load(tmp_path, monkeypatch, content, cause):
    dags = bag(tmp_path, monkeypatch, {"receipts.yaml": GOOD, "bad.yaml": content})
    assert set(dags.dags) == {"receipts"}
    [error] = dags.import_errors.values()
    assert "bad.yaml: " in error and cause in error, error

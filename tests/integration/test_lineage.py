"""OpenLineage events of a real `airflow dags test` run (tests/support/dagrun.py) against the emulator, as the
provider's file transport writes them: publish_results reports the source folder as its input, results.jsonl
as its output and, with ``gemini_batch.operators.batch.lineage_run_facets`` configured, the run's totals as the run
facet ``geminiBatch``.

`dags test` runs every task in one process, so its hook-lineage collector keeps what earlier tasks recorded
(the work files they read and wrote): the datasets are checked for what publish adds, not for an exact set."""

from __future__ import annotations

import json
import shutil

from support.dagrun import SAMPLES, developer_conn, read_results, run_dag
from support.emulators import developer_client

PUBLISH = "gemini_batch_extract.publish_results"


def datasets(event: dict, side: str) -> list[tuple[str, str]]:
    return [(d["namespace"], d["name"]) for d in event.get(side, [])]


def test_publish_results_reports_source_results_and_usage(airflow_home, tmp_path, start_emulator):
    source = tmp_path / "source"
    shutil.copytree(SAMPLES, source)
    output = tmp_path / "out"
    log_file = tmp_path / "openlineage.jsonl"
    server = start_emulator(time_scale=600)
    env = {
        "AIRFLOW__OPENLINEAGE__TRANSPORT": json.dumps({"type": "file", "log_file_path": str(log_file), "append": True}),
        "AIRFLOW__OPENLINEAGE__CUSTOM_RUN_FACETS": "gemini_batch.operators.batch.lineage_run_facets",
    }
    run_dag(
        airflow_home, developer_conn(server.url), {"source": str(source), "output": str(output)}, "2026-11-05", env
    ).check()

    events = [json.loads(line) for line in log_file.read_text().splitlines()]
    (complete,) = [e for e in events if e["eventType"] == "COMPLETE" and e["job"]["name"] == PUBLISH]
    assert ("file", str(source)) in datasets(complete, "inputs")
    assert datasets(complete, "outputs").count(("file", str(output / "results.jsonl"))) == 1
    # Only publish reports the source: no task before it does.
    assert not [
        e["job"]["name"]
        for e in events
        if e is not complete
        and ("file", str(source)) in datasets(e, "inputs")
        and e["eventTime"] < complete["eventTime"]
    ]

    _, summary = read_results(output)
    facet = complete["run"]["facets"]["geminiBatch"]
    assert summary["input_tokens"] > 0 and summary["jobs"] == 1
    assert {k: facet[k] for k in ("jobs", "input_tokens", "output_tokens", "documents", "succeeded")} == {
        k: summary[k] for k in ("jobs", "input_tokens", "output_tokens", "documents", "succeeded")
    }
    client = developer_client(server.url)  # held: the SDK closes its HTTP client with the object
    assert facet["job_names"] == [job.name for job in client.batches.list()]

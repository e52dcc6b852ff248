"""Pipeline files as Airflow loads them (`bin/airflow dags list-import-errors`)."""

from __future__ import annotations

import itertools
import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
LOADER = ROOT / "dags" / "gemini_batch_pipelines.py"
GOOD = {
    "dag_id": "receipts",
    "schedule": "@daily",
    "source": "gs://landing/receipts/{{ ds }}/",
    "output": "gs://results/receipts/{{ ds }}",
    "prompt": "Extract the total.",
    "schema": {"type": "object", "properties": {"total": {"type": "number"}}},
    "model": "gemini-2.5-flash-lite",
    "limits": {"max_cost_usd": 2.5, "max_rows_per_job": 500},
}


def billion_laughs(field: str) -> str:
    """A pipeline file of about 400 bytes whose ``field`` holds nine levels of nine aliases: 9**9 strings once
    expanded, though the parsed data shares them and costs little to hold."""
    levels = "abcdefghi"
    anchors = [f"  - &a [{', '.join(['lol'] * 9)}]"] + [
        f"  - &{name} [{', '.join(['*' + below] * 9)}]" for below, name in itertools.pairwise(levels)
    ]
    inner = "\n".join(anchors)
    body = f"schema:\n  type: object\n  enum:\n{inner}\n" if field == "schema" else f"{field}:\n{inner}\n"
    return "dag_id: laughs\nsource: landing\n" + ("prompt: Extract.\n" if field != "prompt" else "") + body


def test_airflow_lists_a_yaml_bombs_file_as_an_import_error(airflow_home, tmp_path):
    """What `bin/airflow dags list-import-errors` shows: the loader file, naming the bomb; the good DAG is listed."""
    dags, pipelines = tmp_path / "dags", tmp_path / "pipelines"
    dags.mkdir()
    pipelines.mkdir()
    shutil.copy(LOADER, dags)
    (pipelines / "receipts.yaml").write_text(yaml.safe_dump(GOOD))
    (pipelines / "laughs.yaml").write_text(billion_laughs("schema"))
    env = {
        **os.environ,
        "AIRFLOW_HOME": str(airflow_home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(dags),
        "GEMINI_BATCH_PIPELINES": str(pipelines),
    }

    def cli(*args: str) -> list[dict]:
        """The command's JSON (its last line; list-import-errors exits 1 when it lists any)."""
        done = subprocess.run(
            [ROOT / "bin" / "airflow", "dags", *args, "--local", "-o", "json"],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        return json.loads(done.stdout.strip().splitlines()[-1])

    started = time.monotonic()
    [error] = cli("list-import-errors")
    assert error["filepath"].endswith("gemini_batch_pipelines.py")
    assert "laughs.yaml: refused: more than 100,000 values" in error["error"]
    assert [d["dag_id"] for d in cli("list")] == ["receipts"]
    assert time.monotonic() - started < 60

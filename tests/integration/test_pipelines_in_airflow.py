"""Pipeline files as Airflow loads them (`bin/airflow dags list-import-errors`)."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import yaml

from support.pipelines import GOOD, billion_laughs, loader_folders

ROOT = Path(__file__).resolve().parents[2]


def test_airflow_lists_a_yaml_bombs_file_as_an_import_error(airflow_home, tmp_path):
    """What `bin/airflow dags list-import-errors` shows: the loader file, naming the bomb; the good DAG is listed."""
    dags, pipelines = loader_folders(tmp_path)
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

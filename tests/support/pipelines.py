"""What the pipeline-file tests share: a good pipeline, a YAML bomb, and the loader alone in a DAG folder."""

from __future__ import annotations

import itertools
import shutil
from pathlib import Path

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


def loader_folders(tmp_path: Path) -> tuple[Path, Path]:
    """A DAG folder holding the loader file alone, and an empty pipelines folder beside it."""
    dags, pipelines = tmp_path / "dags", tmp_path / "pipelines"
    dags.mkdir()
    pipelines.mkdir()
    shutil.copy(LOADER, dags)
    return dags, pipelines


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

"""Benchmark: one whole gemini_batch_extract run over N small PDFs on the emulator.

    .venv/bin/python bench/dag_run.py [--documents 1000] [--time-scale 3600] [--max-rows-per-job 10000]

Generates N one-page PDFs, starts the Gemini emulator, prepares a throwaway
AIRFLOW_HOME (database and pool), runs `bin/airflow dags test
gemini_batch_extract` over them and reports the wall time of the run and its
summary.json as one JSON line. The emulator's time scale decides how long its
jobs queue and run (3600: an emulated hour per second).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]

from prepare_documents import generate_pdfs  # noqa: E402

from gemini_emulator.testing import gemini_emulator  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--documents", type=int, default=1000)
    parser.add_argument("--time-scale", type=float, default=3600)
    parser.add_argument("--max-rows-per-job", type=int, default=10_000)
    parser.add_argument("--workdir", type=Path)
    args = parser.parse_args()

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="bench-dag-"))
    source, output, home = workdir / "source", workdir / "output", workdir / "airflow-home"
    if not source.exists():
        generate_pdfs(source, args.documents)
    env = {**os.environ, "AIRFLOW_HOME": str(home)}
    airflow = str(ROOT / "bin" / "airflow")
    subprocess.run([airflow, "db", "migrate"], env=env, check=True, capture_output=True)
    subprocess.run([airflow, "pools", "set", "gemini_batch_jobs", "10", "bench", "--include-deferred"],
                   env=env, check=True, capture_output=True)
    with gemini_emulator(workdir / "emulator", time_scale=args.time_scale) as server:
        env["AIRFLOW_CONN_GEMINI_DEFAULT"] = json.dumps(
            {"conn_type": "generic", "password": "bench", "extra": {"backend": "developer", "base_url": server.url}})
        conf = {"source": str(source), "output": str(output), "poll_seconds": 1,
                "max_rows_per_job": args.max_rows_per_job}
        start = time.perf_counter()
        done = subprocess.run([airflow, "dags", "test", "gemini_batch_extract", "-c", json.dumps(conf)],
                              env=env, capture_output=True, text=True)
        wall = time.perf_counter() - start
    (workdir / "dag.log").write_text(done.stdout + done.stderr)
    state = re.findall(r"DagRun Finished: .*? state=(\w+)", done.stdout + done.stderr)
    summary = json.loads((output / "summary.json").read_text()) if (output / "summary.json").exists() else None
    print(json.dumps({"documents": args.documents, "state": state[-1] if state else None,
                      "wall_s": round(wall, 1), "summary": summary, "log": str(workdir / "dag.log")}))


if __name__ == "__main__":
    main()

"""End to end: N one-page PDFs to results, the whole DAG run against the script users write, 50 ms per request.

- ours: ``bin/airflow dags test gemini_batch_extract`` over the folder (a migrated throwaway AIRFLOW_HOME, not
  timed), Airflow's own start-up, parsing and task runs included; its default routing sends every PDF here
  inline, so the run's only upload is each job's JSONL.
- the script: upload each file with the Files API, write the JSONL, upload it, create the job, poll it every
  second, download the output and write one result per document; one request at a time, as such scripts are.
  Its uploads are timed on ``SCRIPT_SAMPLE`` files and scaled to N (they cost the same per file); the rest
  (JSONL upload, create, poll, download, results) is timed once, over the sample.

Both against the same emulator: jobs finish at once (instant mode) and every request waits ``latency_ms``
first, the round trip the real service adds.
"""

from __future__ import annotations

import json
import os
import re
import resource
import subprocess
import time
from pathlib import Path

import orjson

from bench.common import ROOT, Row, emulator_connection, measure, pdf_source
from bench.orchestration import DAG_ID, INSTANT_FAULTS, INSTANT_TIME_SCALE, _prepare_airflow_home

SCRIPT_SAMPLE = 300
PROMPT = "Extract the invoice number and the total."


def ours(home: str, url: str, source: str, output: str) -> dict:
    """One ``dags test`` run over ``source``; its wall time and what it published."""
    env = {**os.environ, "AIRFLOW_HOME": home, "AIRFLOW_CONN_GEMINI_DEFAULT": emulator_connection(url)}
    conf = {
        "source": source,
        "output": output,
        "poll_seconds": 1,
        "state": f"{output}/ledger",
        "prompt": PROMPT,
        "response_schema": None,
    }
    start = time.perf_counter()
    done = subprocess.run(
        [str(ROOT / "bin" / "airflow"), "dags", "test", DAG_ID, "-c", json.dumps(conf)],
        env=env,
        capture_output=True,
        text=True,
    )
    wall = time.perf_counter() - start
    log = done.stdout + done.stderr
    Path(output).mkdir(parents=True, exist_ok=True)
    (Path(output) / "dags-test.log").write_text(log)
    finished = re.findall(r"DagRun Finished: .*? state=(\w+)", log)
    if not finished or finished[-1] != "success":
        raise RuntimeError(f"dags test did not succeed (exit {done.returncode}); see {output}/dags-test.log")
    summary = json.loads((Path(output) / "summary.json").read_text())
    peak_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # the dags test process (bin/airflow execs it)
    return {"seconds": round(wall, 3), "summary": summary, "dags_test_peak_rss_mb": round(peak_kb / 1024, 1)}


def script(url: str, source: str, work: str, sample: int) -> dict:
    """The hand-written script over the first ``sample`` files: (upload seconds per file, seconds of the rest)."""
    from google import genai
    from google.genai import types

    client = genai.Client(api_key="bench", http_options=types.HttpOptions(base_url=url))
    files = sorted(Path(source).rglob("*.pdf"))[:sample]
    Path(work).mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    uploaded = [
        (path, client.files.upload(file=path, config=types.UploadFileConfig(mime_type="application/pdf")))
        for path in files
    ]
    uploads = time.perf_counter() - start
    start = time.perf_counter()
    requests = Path(work) / "requests.jsonl"
    with open(requests, "wb") as out:
        for path, file in uploaded:
            out.write(
                orjson.dumps(
                    {
                        "key": str(path),
                        "request": {
                            "contents": [
                                {
                                    "role": "user",
                                    "parts": [
                                        {"text": PROMPT},
                                        {"fileData": {"fileUri": file.uri, "mimeType": "application/pdf"}},
                                    ],
                                }
                            ],
                            "generationConfig": {"responseMimeType": "application/json"},
                        },
                    }
                )
                + b"\n"
            )
    src = client.files.upload(file=requests, config=types.UploadFileConfig(mime_type="jsonl"))
    job = client.batches.create(model="gemini-2.5-flash-lite", src=src.name)
    while not job.done:
        time.sleep(1)
        job = client.batches.get(name=job.name)
    with open(Path(work) / "results.jsonl", "wb") as out:
        for line in client.files.download(file=job.dest.file_name).splitlines():
            row = orjson.loads(line)
            text = row["response"]["candidates"][0]["content"]["parts"][0]["text"]
            out.write(orjson.dumps({"document": row["key"], "data": orjson.loads(text)}) + b"\n")
    return {
        "documents": len(files),
        "upload_s_per_file": uploads / len(files),
        "rest_s": round(time.perf_counter() - start, 3),
        "state": job.state.name,
    }


def run(workdir: Path, count: int = 2_000, latency_ms: float = 50) -> list[Row]:
    import shutil

    from gemini_emulator.testing import gemini_emulator

    source, _ = pdf_source(workdir, count)
    folder = workdir / f"end-to-end-{count}"
    shutil.rmtree(folder, ignore_errors=True)
    home = folder / "airflow-home"
    home.mkdir(parents=True)
    _prepare_airflow_home(home)
    faults = {**INSTANT_FAULTS, "request_latency_ms": latency_ms}
    with gemini_emulator(folder / "emulator", time_scale=INSTANT_TIME_SCALE, faults=faults) as server:
        dag = measure(
            "bench.end_to_end.ours", home=str(home), url=server.url, source=str(source), output=str(folder / "ours")
        )
        sample = min(count, SCRIPT_SAMPLE)
        hand = measure(
            "bench.end_to_end.script", url=server.url, source=str(source), work=str(folder / "script"), sample=sample
        )
    if dag["summary"]["succeeded"] != count or hand["state"] != "JOB_STATE_SUCCEEDED":
        raise AssertionError(f"not every document succeeded: ours {dag['summary']}, script {hand['state']}")
    script_s = hand["upload_s_per_file"] * count + hand["rest_s"]
    label = f"{count:,} PDFs, {latency_ms:g} ms per request"
    speedup = script_s / dag["seconds"]
    return [
        Row(
            "end to end",
            f"the script: upload each, JSONL, job, poll, download (uploads timed on {sample:,})",
            label,
            round(script_s, 1),
            f"{count / script_s:,.0f} docs/s",
            hand["peak_rss_mb"],
            extra=hand,
        ),
        Row(
            "end to end",
            "ours: the whole dags test run, Airflow included",
            label,
            dag["seconds"],
            f"{count / dag['seconds']:,.0f} docs/s",
            dag["dags_test_peak_rss_mb"],
            f"{speedup:.1f}x the script",
            ">=8x the script",
            speedup >= 8,
            extra=dag,
        ),
    ]

"""Collection: a round's output JSONL, parsed, validated against the schema and joined to the keys sent.

The output is generated in the Developer API's row format with realistic
answers (an invoice with line items, usage metadata, model version), and the
faults a real output holds: fenced JSON, truncated answers, answers that do
not match the schema, row errors, rows missing and unknown keys. It comes as
jobs of 10,000 rows, the DAG's default ``max_rows_per_job``. Two ways over the
same files, each in a fresh process:

- ours: ``collection.collect_results`` for the round, writing one outcome per key
  sent; each job's output is read from its local file (the stand-in for the
  hook's download, the one part not measured);
- the floors: a bare loop of ``orjson.loads`` over the same lines, on one core and split over one spawned
  process per core.
"""

from __future__ import annotations

import concurrent.futures
import multiprocessing
import os
import random
import time
from pathlib import Path

import orjson

from bench.common import MB, Row, measure

SCHEMA = {
    "type": "object",
    "properties": {
        "invoice_number": {"type": ["string", "null"]},
        "date": {"type": ["string", "null"]},
        "vendor": {"type": ["string", "null"]},
        "currency": {"type": ["string", "null"], "enum": ["EUR", "USD", "GBP", None]},
        "total": {"type": ["number", "null"]},
        "line_items": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "description": {"type": "string"},
                    "quantity": {"type": "number"},
                    "amount": {"type": "number"},
                },
                "required": ["description", "amount"],
            },
        },
    },
    "required": ["invoice_number", "date", "vendor", "currency", "total", "line_items"],
}
ROWS_PER_JOB = 10_000  # the DAG's default max_rows_per_job: a round's output comes as jobs of this many rows
FAULTS = (("fenced", 0.02), ("truncated", 0.005), ("off_schema", 0.005), ("row_error", 0.005), ("missing", 0.005))
JOB_NAME = "batches/bench"


def key_of(i: int) -> str:
    return f"{i:064x}"


def _answer(rng: random.Random, i: int) -> dict:
    items = [
        {
            "description": f"Item {n} of order {i}: {rng.choice(['consulting', 'hardware', 'licence', 'support'])}",
            "quantity": rng.randint(1, 20),
            "amount": round(rng.uniform(5, 900), 2),
        }
        for n in range(rng.randint(2, 6))
    ]
    return {
        "invoice_number": f"INV-{i:08d}",
        "date": f"2026-{i % 12 + 1:02d}-{i % 28 + 1:02d}",
        "vendor": f"Vendor {i % 997} GmbH",
        "currency": "EUR",
        "total": round(sum(x["amount"] for x in items), 2),
        "line_items": items,
    }


def generate(folder: str, target_mb: float, max_keys: int | None = None, seed: int = 7) -> dict:
    """About ``target_mb`` MB of output (or ``max_keys`` keys' worth) as jobs of ``ROWS_PER_JOB`` keys each:
    ``job-N.jsonl`` (the output) and ``job-N.keys`` (the keys sent) in ``folder``; counts by kind."""
    rng = random.Random(seed)
    counts = dict.fromkeys(["rows", "keys", "jobs", *(name for name, _ in FAULTS)], 0)
    target = target_mb * MB
    written = i = 0
    Path(folder).mkdir(parents=True, exist_ok=True)
    while written < target and (max_keys is None or i < max_keys):
        job = Path(folder) / f"job-{counts['jobs']:05d}"
        counts["jobs"] += 1
        with open(f"{job}.jsonl", "wb") as out, open(f"{job}.keys", "w") as keys:
            for _ in range(ROWS_PER_JOB):
                if written >= target or (max_keys is not None and i >= max_keys):
                    break
                key = key_of(i)
                keys.write(key + "\n")
                counts["keys"] += 1
                i += 1
                fault = _draw(rng)
                if fault == "missing":
                    counts["missing"] += 1
                    continue
                if fault:
                    counts[fault] += 1
                line = orjson.dumps(_row(rng, key, i, fault)) + b"\n"
                out.write(line)
                written += len(line)
                counts["rows"] += 1
            line = orjson.dumps(_row(rng, "f" * 64, i, None)) + b"\n"  # a key this job was not sent
            out.write(line)
            written += len(line)
    counts["bytes"] = written
    return counts


def _draw(rng: random.Random) -> str | None:
    draw = rng.random()
    for name, rate in FAULTS:
        if draw < rate:
            return name
        draw -= rate
    return None


def _row(rng: random.Random, key: str, i: int, fault: str | None) -> dict:
    if fault == "row_error":
        return {"key": key, "error": {"code": 13, "message": "Internal error encountered.", "status": "INTERNAL"}}
    answer = _answer(rng, i)
    if fault == "off_schema":
        answer["total"] = f"{answer['total']} EUR"
    text = orjson.dumps(answer, option=orjson.OPT_INDENT_2).decode()
    finish = "STOP"
    if fault == "fenced":
        text = f"Here is the extracted invoice:\n```json\n{text}\n```"
    elif fault == "truncated":
        text, finish = text[: len(text) // 2], "MAX_TOKENS"
    output_tokens = len(text) // 4
    return {
        "key": key,
        "response": {
            "candidates": [
                {"content": {"parts": [{"text": text}], "role": "model"}, "finishReason": finish, "index": 0}
            ],
            "usageMetadata": {
                "promptTokenCount": 1290,
                "candidatesTokenCount": output_tokens,
                "thoughtsTokenCount": 48,
                "totalTokenCount": 1290 + output_tokens + 48,
                "promptTokensDetails": [
                    {"modality": "DOCUMENT", "tokenCount": 1032},
                    {"modality": "TEXT", "tokenCount": 258},
                ],
            },
            "modelVersion": "gemini-2.5-flash-lite",
            "responseId": f"bench-{i:x}",
        },
    }


class LocalOutputHook:
    """The hook's two calls collect_results makes, over the local output files (the download is not measured)."""

    backend = "developer"
    gcp_conn_id = None

    def get_job(self, name: str) -> str:
        return name

    def iter_output_lines(self, job: str):
        with open(f"{job}.jsonl", "rb", buffering=MB) as fh:
            yield from fh


def ours(jobs: str, work: str) -> dict:
    """``collect_results`` over a round of one shard per job: one outcome per key sent, into the round's outcomes."""
    from gemini_batch.core.batch_requests import ShardManifest
    from gemini_batch.steps import collection, runs

    run = runs.Run.from_params(
        {
            "source": str(Path(work) / "source"),
            "output": str(Path(work) / "output"),
            "model": "gemini-2.5-flash-lite",
            "prompt": "Extract the invoice.",
            "response_schema": SCHEMA,
            "state": str(Path(work) / "ledger"),
        },
        "bench",
        LocalOutputHook(),
    )
    folder = run.folder
    shards = folder.shards(0)
    shards.mkdir(parents=True, exist_ok=True)
    submitted = []
    for keys in sorted(Path(jobs).glob("job-*.keys")):
        job = str(keys.with_suffix(""))
        manifest = ShardManifest(keys.stem, f"{job}.jsonl", 0, 0, str(keys), str(shards / f"{keys.stem}.manifest.json"))
        manifest.save(shards / f"{keys.stem}.manifest.json")
        submitted.append({"manifest_uri": manifest.manifest_uri, "job_name": job, "state": "JOB_STATE_SUCCEEDED"})
    start = time.perf_counter()
    counts = collection.collect_results(run, 0, submitted)
    return {
        **counts,
        "outcomes_bytes": Path(folder.outcomes(0).path).stat().st_size,
        "seconds": round(time.perf_counter() - start, 6),
    }


def _parse_files(outputs: list[str]) -> int:
    rows = 0
    for output in outputs:
        with open(output, "rb", buffering=MB) as fh:
            for line in fh:
                orjson.loads(line)
                rows += 1
    return rows


def floor(jobs: str, processes: int = 1) -> dict:
    """Every line of every output through orjson.loads, nothing else: here, or over ``processes`` spawned ones
    (started before the clock, as a long-lived pool would be), the files split between them."""
    outputs = [str(p) for p in sorted(Path(jobs).glob("job-*.jsonl"))]
    if processes == 1:
        start = time.perf_counter()
        rows = _parse_files(outputs)
        return {"rows": rows, "processes": 1, "seconds": round(time.perf_counter() - start, 6)}
    with concurrent.futures.ProcessPoolExecutor(processes, mp_context=multiprocessing.get_context("spawn")) as pool:
        list(pool.map(abs, range(processes)))
        start = time.perf_counter()
        rows = sum(pool.map(_parse_files, [outputs[i::processes] for i in range(processes)]))
        seconds = time.perf_counter() - start
    return {"rows": rows, "processes": processes, "seconds": round(seconds, 6)}


def run(
    workdir: Path, target_mb: float = float("inf"), *, keys: int | None = None, bench: str = "collection"
) -> list[Row]:
    """Rows for the floor and ours over about ``target_mb`` MB of output, or over ``keys`` keys' output."""
    import shutil

    case_dir = workdir / (f"collect-{keys}-keys" if keys else f"collect-{target_mb:g}mb")
    jobs = case_dir / "jobs"
    made_file = case_dir / "generated.json"
    if not made_file.exists():
        case_dir.mkdir(parents=True, exist_ok=True)
        start = time.perf_counter()
        made = generate(str(jobs), target_mb, keys)
        made_file.write_bytes(orjson.dumps(made))
        print(
            f"  generated {made['bytes'] / MB:,.0f} MB of output ({made['rows']:,} rows, {made['jobs']} jobs) "
            f"in {time.perf_counter() - start:.0f} s",
            flush=True,
            file=__import__("sys").stderr,
        )
    made = orjson.loads(made_file.read_bytes())
    shutil.rmtree(case_dir / "work", ignore_errors=True)
    size_mb = made["bytes"] / MB
    label = (
        f"{size_mb / 1024:.2f} GB" if size_mb >= 1000 else f"{size_mb:,.1f} MB"
    ) + f", {made['keys']:,} keys in {made['jobs']} jobs"
    cores = len(os.sched_getaffinity(0))
    floors = [measure("bench.collect.floor", jobs=str(jobs), processes=n) for n in (1, cores)]
    collected = measure("bench.collect.ours", jobs=str(jobs), work=str(case_dir / "work"))
    if collected["keys"] != made["keys"]:
        raise AssertionError(f"collect_results wrote {collected['keys']} outcomes for {made['keys']} keys")
    rate, all_cores = size_mb / collected["seconds"], floors[-1]["seconds"]
    rows = [
        Row(
            bench,
            f"orjson floor (parse each line, {'1 core' if f['processes'] == 1 else f'{cores} cores'})",
            label,
            f["seconds"],
            f"{size_mb / f['seconds']:,.0f} MB/s",
            f["peak_rss_mb"],
            extra=f,
        )
        for f in floors
    ]
    large = size_mb >= 1000
    rows.append(
        Row(
            bench,
            "ours: parse, validate, join by key, write outcomes",
            label,
            collected["seconds"],
            f"{rate:,.0f} MB/s, {made['keys'] / collected['seconds']:,.0f} keys/s",
            collected["peak_rss_mb"],
            f"{collected['seconds'] / floors[0]['seconds']:.1f}x the 1-core floor's time, "
            f"{collected['seconds'] / all_cores:.1f}x the all-cores floor's",
            "<=2x all-cores floor, <300 MB" if large else "",
            (collected["seconds"] <= 2 * all_cores and collected["peak_rss_mb"] < 300) if large else None,
            extra={**collected, "generated": made},
        )
    )
    return rows

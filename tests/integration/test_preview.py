"""The preview (issue 27): online calls (``models.generateContent``) on the emulator's two surfaces through the real
google-genai client, a DAG run that previews 3 documents before its batch, and ``python -m gemini_batch preview``.
What was sent online and in batches is read from the emulator's own records (online.jsonl, each job's input)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import httpx
import pytest
from google.genai import errors, types

from gemini_batch.core.cost import load_prices
from gemini_emulator import discovery
from gemini_emulator.service import contents_fingerprint
from gemini_emulator.testing import online_requests
from support.dagrun import ROOT, SAMPLES, assert_contract, developer_conn, read_results, run_dag, submitted_jobs
from support.emulators import developer_client, vertex_client

MODEL = "gemini-2.5-flash-lite"
SCHEMA = {
    "type": "object",
    "properties": {"invoice_number": {"type": "string"}, "total": {"type": "number"}},
    "required": ["invoice_number", "total"],
}
TEXT = "Invoice Number: INV-77\nTotal: 42.00 EUR\n"


def test_generate_content_on_both_backends(start_emulator):
    server = start_emulator(faults={"online_rpm": 4})
    config = types.GenerateContentConfig(response_mime_type="application/json", response_json_schema=SCHEMA)
    developer, vertex = developer_client(server.url), vertex_client(server.url)
    for client in (developer, vertex):
        response = client.models.generate_content(model=MODEL, contents=["Extract the invoice.", TEXT], config=config)
        assert json.loads(response.text) == {"invoice_number": "INV-77", "total": 42.0}
        assert response.candidates[0].finish_reason == types.FinishReason.STOP
        assert response.usage_metadata.prompt_token_count > 0 and response.model_version == MODEL
    assert vertex.models.generate_content(model=MODEL, contents="x").create_time is not None  # Vertex AI says when
    # The Developer API's answer is the Discovery document's GenerateContentResponse, nothing else.
    body = httpx.post(
        f"{server.url}/v1beta/models/{MODEL}:generateContent",
        headers={"x-goog-api-key": "test-key"},
        json={"contents": [{"role": "user", "parts": [{"text": "x"}]}]},
    ).json()
    assert set(body) <= set(discovery.developer().schemas["GenerateContentResponse"]["properties"])
    # Online calls count against the model's rate (4 a minute here): the next is refused 429, as the service does.
    with pytest.raises(errors.ClientError) as refused:
        developer.models.generate_content(model=MODEL, contents="y")
    assert refused.value.code == 429
    with pytest.raises(errors.ClientError) as unknown:
        developer.models.generate_content(model="gemini-0-nothing", contents="y")
    assert unknown.value.code == 404
    calls = online_requests(server)
    assert [(c["surface"], c["status"]) for c in calls] == [
        ("developer", 200),
        ("vertex", 200),
        ("vertex", 200),
        ("developer", 200),
        ("developer", 429),
        ("developer", 404),
    ]
    assert calls[0]["input_tokens"] > 0 and calls[0]["output_tokens"] > 0


@pytest.fixture
def source(tmp_path):
    folder = tmp_path / "source"
    shutil.copytree(SAMPLES, folder)
    return folder


def test_a_run_previews_three_documents_and_its_batch_does_not_send_them_again(
    airflow_home, source, tmp_path, start_emulator
):
    server = start_emulator(time_scale=600)
    output = tmp_path / "out"
    done = run_dag(
        airflow_home,
        developer_conn(server.url),
        {"source": str(source), "output": str(output), "preview_documents": 3, "approve_above_usd": 1.0},
        "2026-11-05",
    )
    done.check()
    records, summary = read_results(output)
    assert_contract(records, summary, source)  # results.jsonl still has every document

    previewed = [json.loads(line) for line in (output / "preview.jsonl").read_text().splitlines()]
    report = json.loads((output / "preview.json").read_text())
    assert len(previewed) == len(report["documents"]) == 3
    for record in previewed:  # shaped exactly like results.jsonl's lines, with the same answers
        assert list(record) == list(records[record["document"]])
        assert record["status"] == "succeeded" and record["data"] == records[record["document"]]["data"]
        assert records[record["document"]]["reused"], "the batch took the preview's answer from the ledger"
    preview_keys = {part["key"] for record in previewed for part in record["parts"]}

    # What went online, and what went in batches, by the emulator's own records: nothing twice.
    online = online_requests(server)
    assert len(online) == len(preview_keys) == sum(d["online_requests"] for d in report["documents"])
    assert all(call["status"] == 200 for call in online)
    batch_keys = {key for _, keys in submitted_jobs(server) for key in keys}
    assert batch_keys and not batch_keys & preview_keys
    jobs_dir = server.log_path.parent / "jobs"
    batch_contents = {
        contents_fingerprint(json.loads(line)["request"]["contents"])
        for path in jobs_dir.glob("*.input.jsonl")
        for line in path.read_text().splitlines()
        if line
    }
    assert not batch_contents & {call["contents_sha256"] for call in online}
    assert summary["requests"] == len(batch_keys) == 8 - len(preview_keys)

    # The projection against what the run was billed (the emulator answers the same request the same way online
    # and in a batch, so the preview's tokens are what the batch would have billed for those documents).
    prices, projection = load_prices(), report["projection"]
    preview_in = sum(d["input_tokens"] for d in report["documents"])
    preview_out = sum(d["output_tokens"] for d in report["documents"])
    whole = prices.cost(MODEL, summary["input_tokens"] + preview_in, summary["output_tokens"] + preview_out)
    measured = {
        "estimate_usd (heuristic, whole plan)": projection["estimate_usd"],
        "projected batch_cost_usd (whole plan)": projection["batch_cost_usd"],
        "actual batch cost (whole plan, at the batch price)": round(whole, 6),
        "projected remaining_batch_cost_usd": projection["remaining_batch_cost_usd"],
        "actual estimated_cost_usd (summary.json)": summary["estimated_cost_usd"],
        "preview_cost_usd (online)": projection["preview_cost_usd"],
        "projected input tokens (whole plan)": projection["input_tokens"],
        "actual input tokens (whole plan)": summary["input_tokens"] + preview_in,
        "projected output tokens (whole plan)": projection["output_tokens"],
        "actual output tokens (whole plan)": summary["output_tokens"] + preview_out,
    }
    print("\n[preview on include/samples] " + json.dumps(measured, indent=2), file=sys.stderr)
    assert projection["remaining_requests"] == summary["requests"]
    assert projection["batch_cost_usd"] == pytest.approx(whole, rel=0.5)
    assert projection["preview_cost_usd"] == pytest.approx(
        prices.cost(MODEL, preview_in, preview_out) / prices.batch_discount, abs=1e-6
    )
    assert "Preview: 3 document(s)" in done.log or "preview" in done.log


def test_the_preview_command(start_emulator, tmp_path):
    server = start_emulator()
    schema = tmp_path / "schema.json"
    schema.write_text(json.dumps(SCHEMA))
    env = {
        **os.environ,
        "AIRFLOW_CONN_GEMINI_DEFAULT": json.dumps(developer_conn(server.url)),
        "AIRFLOW_HOME": str(tmp_path / "airflow"),
        "PYTHONPATH": str(ROOT / "plugins"),
    }
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "gemini_batch",
            "preview",
            str(SAMPLES),
            "--prompt",
            "Extract the invoice number and the total.",
            "--schema",
            str(schema),
            "-n",
            "2",
            "--output",
            str(tmp_path / "out"),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.splitlines()
    records = [json.loads(line) for line in lines[:2]]
    assert {r["document"] for r in records} == {"statement-120-pages.pdf", "invoice-4.md"}  # largest, smallest
    assert all(set(r["data"]) == {"invoice_number", "total"} for r in records)
    report = json.loads("\n".join(lines[2:]))
    assert report["projection"]["requests"] == 8 and report["projection"]["run_cost_usd"] > 0
    assert "Projected for the whole run" in done.stderr
    assert (tmp_path / "out" / "preview.json").exists()
    assert len(online_requests(server)) == 4  # the statement's three parts and the Markdown file

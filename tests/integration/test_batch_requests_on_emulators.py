"""Shards written to Cloud Storage and run as a real batch on the emulator."""

from __future__ import annotations

import time

import orjson
import pytest
from google.genai import types

from gemini_batch.core.batch_requests import RequestSpec, ShardManifest, ShardWriter, build_row
from gemini_batch.core.locations import as_path
from support.batch_requests import SCHEMA, write_invoice_pdf


@pytest.fixture(scope="module")
def invoice_pdf(tmp_path_factory):
    return write_invoice_pdf(tmp_path_factory.mktemp("docs") / "invoice.pdf")


# ---------------------------------------------------------------- rows


def test_a_shard_of_rows_runs_as_a_real_batch(client, invoice_pdf, tmp_path):
    """Rows as built here, uploaded and answered through the google-genai client."""
    uploaded = client.files.upload(file=str(invoice_pdf), config={"mime_type": "application/pdf"})
    data = invoice_pdf.read_bytes()
    while uploaded.state != types.FileState.ACTIVE:
        time.sleep(0.05)
        uploaded = client.files.get(name=uploaded.name)
    spec = RequestSpec(
        model="gemini-3-flash-preview", prompt="Extract the invoice number and total.", response_schema=SCHEMA
    )
    with ShardWriter(as_path(tmp_path / "shards")) as writer:
        writer.add(build_row("from-file", spec, file_uri=uploaded.uri, mime_type="application/pdf"))
        writer.add(build_row("from-text", spec, text="Invoice number: INV-7\nTotal: 10\n"))
        writer.add(build_row("inline", spec, data=data, mime_type="application/pdf"))
    (manifest,) = writer.manifests
    src = client.files.upload(file=manifest.uri, config={"mime_type": "application/jsonl"})
    job = client.batches.create(model=spec.model, src=src.name)
    deadline = time.monotonic() + 30
    while not job.done and time.monotonic() < deadline:
        time.sleep(0.1)
        job = client.batches.get(name=job.name)
    assert job.state == types.JobState.JOB_STATE_SUCCEEDED
    answers = {}
    for line in client.files.download(file=job.dest.file_name).splitlines():
        row = orjson.loads(line)
        answers[row["key"]] = orjson.loads(row["response"]["candidates"][0]["content"]["parts"][0]["text"])
    assert answers == {
        "from-file": {"invoice_number": "INV-42", "total": 1234.5},
        "from-text": {"invoice_number": "INV-7", "total": 10},
        "inline": {"invoice_number": "INV-42", "total": 1234.5},
    }


# ---------------------------------------------------------------- shards


def make_row(index: int, padding: int) -> dict:
    return {"key": f"key-{index:04d}", "request": {"contents": [{"parts": [{"text": "x" * padding}]}]}}


def line_of(row: dict) -> bytes:
    return orjson.dumps(row) + b"\n"


def test_shards_on_gcs(gcs_root):
    folder = gcs_root / "shards" / "test_shards_on_gcs"
    rows = [make_row(i, 50 * (i % 3)) for i in range(25)]
    with ShardWriter(folder, max_rows=10, max_bytes=1500, prefix="part") as writer:
        for row in rows:
            writer.add(row)
    manifests = writer.manifests
    assert all(m.uri.startswith("gs://test-bucket/shards/test_shards_on_gcs/part-") for m in manifests)
    assert all(m.manifest_uri.startswith("gs://") and m.keys_uri.startswith("gs://") for m in manifests)
    loaded = [ShardManifest.load(m.manifest_uri) for m in manifests]
    assert loaded == manifests
    lines = [line for m in loaded for line in as_path(m.uri).read_bytes().splitlines(keepends=True)]
    assert lines == [line_of(row) for row in rows]
    assert all(as_path(m.uri).stat().st_size == m.bytes <= 1500 and m.rows <= 10 for m in loaded)
    assert [k for m in loaded for k in as_path(m.keys_uri).read_text().split()] == [row["key"] for row in rows]

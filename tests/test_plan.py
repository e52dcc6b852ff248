"""The preparation stage end to end: plan -> stage -> build shards -> validate,
with real generated documents, the real google-genai client against the
emulator (Files API) and gcp-storage-emulator (Vertex staging), and the
shards accepted by the emulator's batch endpoint."""

from __future__ import annotations

import shutil
import time

import orjson
import pytest
from conftest import developer_client
from fpdf import FPDF

from gemini_batch import documents, plan
from gemini_batch.batch_requests import RequestSpec
from gemini_batch.cost import load_prices
from gemini_batch.locations import as_path
from gemini_batch.staging import FilesApiStager, GcsStager, StagedPart
from gemini_batch.ledger import Ledger, LedgerEvent
from gemini_batch.validate import validate_jsonl

SCHEMA = {"type": "object", "properties": {"invoice_number": {"type": "string"}, "date": {"type": "string"}}}
SPEC = RequestSpec(model="gemini-2.5-flash-lite", prompt="Extract the invoice number and date.", response_schema=SCHEMA)


def write_pdf(path, pages: int, text: str = "Invoice") -> None:
    pdf = FPDF()
    for page in range(1, pages + 1):
        pdf.add_page()
        pdf.set_font("helvetica", size=12)
        pdf.cell(text=f"{text} page {page} dated 2026-03-{page % 28 + 1:02d}")
    path.parent.mkdir(parents=True, exist_ok=True)
    pdf.output(str(path))


@pytest.fixture
def source(tmp_path):
    """A folder with the cases a real landing folder has."""
    root = tmp_path / "source"
    write_pdf(root / "a.pdf", 1, "Invoice A-1")
    write_pdf(root / "sub" / "long.pdf", 120, "Report")
    write_pdf(root / "b.pdf", 1, "Invoice B-2")
    shutil.copy(root / "a.pdf", root / "copy-of-a.pdf")  # same bytes: one request, two records
    (root / "notes.md").write_text("# Notes\nInvoice N-3 dated 2026-05-01\n")
    (root / "broken.pdf").write_bytes((root / "b.pdf").read_bytes()[:300])
    (root / "empty.txt").write_bytes(b"")
    (root / ".DS_Store").write_bytes(b"\0\1")
    return root


def run_plan(source, work, finished=frozenset()):
    return plan.plan_run(as_path(source), SPEC, as_path(work) / "plan.jsonl", finished=finished, prices=load_prices())


def stage_all(stager, plan_file, source) -> dict[str, StagedPart]:
    results = list(stager.stage(plan.parts_to_stage(plan_file, as_path(source))))
    assert all(isinstance(r, StagedPart) for r in results), results
    return {r.key: r for r in results}


def test_plan_accounts_for_every_document(source, tmp_path):
    summary = run_plan(source, tmp_path / "work")
    docs = {d.path: d for d in plan.read_plan(as_path(summary.plan_uri))}

    assert sorted(docs) == ["a.pdf", "b.pdf", "broken.pdf", "copy-of-a.pdf", "empty.txt", "notes.md", "sub/long.pdf"]
    assert [d for d in docs] == sorted(docs), "plan order is the stable discovery order"
    assert docs["broken.pdf"].rejected and not docs["broken.pdf"].parts
    assert docs["empty.txt"].rejected
    assert [p.pages for p in docs["sub/long.pdf"].parts] == [(1, 50), (51, 100), (101, 120)]
    assert docs["a.pdf"].parts[0].key == docs["copy-of-a.pdf"].parts[0].key
    assert docs["a.pdf"].parts[0].key != docs["b.pdf"].parts[0].key

    # a.pdf, b.pdf, notes.md, 3 parts of long.pdf; the copy is fanned out, not requested
    assert (summary.documents, summary.rejected, summary.parts) == (7, 2, 7)
    assert (summary.requests, summary.duplicate_parts, summary.reused_parts) == (6, 1, 0)
    assert summary.estimate.requests == 6 and summary.estimate.usd > 0
    assert len(orjson.dumps(summary.to_json())) < 2048, "small enough for XCom"


def test_keys_follow_prompt_model_and_schema(source, tmp_path):
    base = {d.path: d.parts for d in plan.read_plan(as_path(run_plan(source, tmp_path / "w1").plan_uri))}
    again = {d.path: d.parts for d in plan.read_plan(as_path(run_plan(source, tmp_path / "w2").plan_uri))}
    assert base == again

    other = RequestSpec(model=SPEC.model, prompt=SPEC.prompt + " Also the total.", response_schema=SCHEMA)
    summary = plan.plan_run(as_path(source), other, as_path(tmp_path / "w3" / "plan.jsonl"), prices=load_prices())
    changed = {d.path: d.parts for d in plan.read_plan(as_path(summary.plan_uri))}
    assert {p.key for ps in changed.values() for p in ps}.isdisjoint({p.key for ps in base.values() for p in ps})


def test_developer_stage_build_validate_and_submit(source, tmp_path, emulator):
    client = developer_client(emulator.url)
    work = as_path(tmp_path / "work")
    run_plan(source, tmp_path / "work")
    staged = stage_all(FilesApiStager(client, documents.open_part), work / "plan.jsonl", source)
    assert len(staged) == 5  # every non-text request once: a, b, 3 ranges of long.pdf
    assert all(s.uri.endswith(f"/files/{s.uri.rsplit('/', 1)[-1]}") and s.expires_at for s in staged.values())

    manifests, unbuilt = plan.build_shards(work / "plan.jsonl", as_path(source), staged, SPEC, work / "shards", max_rows=4)
    assert unbuilt == {}
    assert [m.rows for m in manifests] == [4, 2]
    for manifest in manifests:
        report = validate_jsonl(manifest.uri, backend="developer")
        assert report.ok, report.problems

    # The emulator (like the service) accepts the shard and answers every key.
    uploaded = client.files.upload(file=manifests[0].uri, config={"mime_type": "application/jsonl"})
    job = client.batches.create(model=SPEC.model, src=uploaded.name)
    while not job.done:
        time.sleep(0.2)
        job = client.batches.get(name=job.name)
    assert job.state.name == "JOB_STATE_SUCCEEDED"
    rows = [orjson.loads(line) for line in client.files.download(file=job.dest.file_name).splitlines()]
    expected = as_path(manifests[0].keys_uri).read_text().split()
    assert sorted(r["key"] for r in rows) == sorted(expected)
    assert all("response" in r for r in rows)

    # Staging again uploads nothing: every part is found under its deterministic name.
    before = {f.name for f in client.files.list()}
    again = stage_all(FilesApiStager(client, documents.open_part), work / "plan.jsonl", source)
    assert {f.name for f in client.files.list()} == before
    assert {k: s.uri for k, s in again.items()} == {k: s.uri for k, s in staged.items()}


def test_vertex_stage_to_gcs(source, tmp_path, gcs_root):
    work = as_path(tmp_path / "work")
    run_plan(source, tmp_path / "work")
    prefix = gcs_root / "staging" / "test_vertex_stage"
    staged = stage_all(GcsStager(prefix, documents.open_part), work / "plan.jsonl", source)
    assert all(s.uri.startswith("gs://test-bucket/staging/test_vertex_stage/") for s in staged.values())

    manifests, _ = plan.build_shards(work / "plan.jsonl", as_path(source), staged, SPEC, gcs_root / "shards" / "vertex")
    assert manifests[0].uri.startswith("gs://")
    report = validate_jsonl(manifests[0].uri, backend="vertex")
    assert report.ok, report.problems
    assert report.rows == 6


def test_rerun_over_unchanged_folder_plans_zero_requests(source, tmp_path):
    first = run_plan(source, tmp_path / "w1")
    ledger = Ledger(as_path(tmp_path / "state"))
    done = [LedgerEvent(p.key, "answered", "run-1", "2026-11-24T00:00:00Z",
                        {"key": p.key, "status": "succeeded", "data": {"ok": True}, "finish_reason": "STOP"})
            for d in plan.read_plan(as_path(first.plan_uri)) for p in d.parts]
    ledger.append(done, writer="run-1")

    with ledger.view() as finished:
        second = run_plan(source, tmp_path / "w2", finished=finished)
    assert (second.requests, second.reused_parts, second.documents) == (0, first.parts, first.documents)
    assert list(plan.parts_to_stage(as_path(second.plan_uri), as_path(source))) == []

    write_pdf(source / "new.pdf", 2, "Invoice C-9")
    with ledger.view() as finished:
        third = run_plan(source, tmp_path / "w3", finished=finished)
    assert third.requests == 1 and third.documents == first.documents + 1

"""Planning, staging and building against the emulators (Files API, Vertex AI with GCS)."""

from __future__ import annotations

import base64
import time

import orjson
import pytest

from gemini_batch.core import documents
from gemini_batch.core.cost import load_prices
from gemini_batch.core.locations import as_path
from gemini_batch.core.planned import Routing
from gemini_batch.core.staged import StagedPart
from gemini_batch.core.validate import validate_jsonl
from gemini_batch.hooks.uploads import FilesApiStager, GcsStager
from gemini_batch.steps import plan
from gemini_emulator.testing import requests_made
from support.emulators import developer_client
from support.plans import SPEC, landing_folder, run_plan


@pytest.fixture
def source(tmp_path):
    """A folder with the cases a real landing folder has."""
    return landing_folder(tmp_path / "source")


def answers_of(client, manifest) -> dict[str, dict]:
    """Run one shard as a real batch job on the emulator: its answers by key."""
    uploaded = client.files.upload(file=manifest.uri, config={"mime_type": "application/jsonl"})
    job = client.batches.create(model=SPEC.model, src=uploaded.name)
    while not job.done:
        time.sleep(0.2)
        job = client.batches.get(name=job.name)
    assert job.state.name == "JOB_STATE_SUCCEEDED"
    rows = [orjson.loads(line) for line in client.files.download(file=job.dest.file_name).splitlines()]
    return {r["key"]: r["response"] for r in rows}


def stage_all(stager, plan_file, source) -> dict[str, StagedPart]:
    results = list(stager.stage(plan.parts_to_stage(plan_file, as_path(source))))
    assert all(isinstance(r, StagedPart) for r in results), results
    return {r.key: r for r in results}


def test_developer_stage_build_validate_and_submit(source, tmp_path, emulator):
    client = developer_client(emulator.url)
    work = as_path(tmp_path / "work")
    run_plan(source, tmp_path / "work")
    staged = stage_all(FilesApiStager(client, documents.open_planned), work / "plan.jsonl", source)
    assert len(staged) == 5  # every non-text request once: a, b, 3 ranges of long.pdf
    assert all(s.uri.endswith(f"/files/{s.uri.rsplit('/', 1)[-1]}") and s.expires_at for s in staged.values())

    manifests, unbuilt = plan.build_shards(
        work / "plan.jsonl", as_path(source), staged, SPEC, work / "shards", max_rows=4
    )
    assert unbuilt == {}
    assert [m.rows for m in manifests] == [4, 2]
    for manifest in manifests:
        report = validate_jsonl(manifest.uri, backend="developer")
        assert report.ok, report.problems

    # The emulator (like the service) accepts the shard and answers every key.
    assert sorted(answers_of(client, manifests[0])) == sorted(as_path(manifests[0].keys_uri).read_text().split())

    # Staging again uploads nothing: every part is found under its deterministic name.
    before = {f.name for f in client.files.list()}
    again = stage_all(FilesApiStager(client, documents.open_planned), work / "plan.jsonl", source)
    assert {f.name for f in client.files.list()} == before
    assert {k: s.uri for k, s in again.items()} == {k: s.uri for k, s in staged.items()}


def test_small_parts_go_inline_and_nothing_is_staged(source, tmp_path, emulator):
    """The default routing: every part here is under the inline threshold, so none is uploaded; the rows carry
    the bytes open_part would have uploaded, and the emulator answers them like file references."""
    client = developer_client(emulator.url)
    work = as_path(tmp_path / "work")
    summary = run_plan(source, tmp_path / "work", routing=Routing())
    assert summary.routes == {"inline": 6, "in_place": 0, "staged": 0}
    assert list(plan.parts_to_stage(work / "plan.jsonl", as_path(source))) == []

    manifests, unbuilt = plan.build_shards(work / "plan.jsonl", as_path(source), {}, SPEC, work / "shards")
    assert unbuilt == {}
    report = validate_jsonl(manifests[0].uri, backend="developer")
    assert report.ok and report.rows == 6, report.problems
    rows = {r["key"]: r["request"]["contents"][0]["parts"][1] for r in map(orjson.loads, open(manifests[0].uri, "rb"))}
    docs = {d.path: d for d in plan.read_plan(work / "plan.jsonl")}
    long_parts = docs["sub/long.pdf"].parts
    with documents.open_part(as_path(source / "sub" / "long.pdf"), long_parts[1].pages) as stream:
        assert rows[long_parts[1].key]["inlineData"]["data"] == base64.b64encode(stream.read()).decode()
    assert rows[docs["notes.md"].parts[0].key] == {"text": "# Notes\nInvoice N-3 dated 2026-05-01\n"}
    answers = answers_of(client, manifests[0])
    assert set(answers) == set(rows) and all(a["candidates"][0]["finishReason"] == "STOP" for a in answers.values())
    starts = [r for r in requests_made(emulator, "POST", "/upload/v1beta/files") if "upload_id=" not in r["query"]]
    assert len(starts) == 1, "one upload in all: the shard's JSONL"


def test_vertex_references_whole_documents_under_a_gcs_source_in_place(source, tmp_path, gcs_root):
    """Vertex reads gs:// itself: whole documents are not copied; page ranges are cut and staged (or inline)."""
    remote = gcs_root / "landing" / "test_in_place"
    for path in sorted(source.rglob("*")):
        if path.is_file():
            (remote / str(path.relative_to(source))).write_bytes(path.read_bytes())
    work = as_path(tmp_path / "work")
    summary = plan.plan_run(
        remote, SPEC, work / "plan.jsonl", routing=Routing(inline_max_bytes=0, in_place=True), prices=load_prices()
    )
    assert summary.routes == {"inline": 1, "in_place": 2, "staged": 3}  # notes.md; a.pdf, b.pdf; long.pdf's ranges
    to_stage = list(plan.parts_to_stage(work / "plan.jsonl", remote))
    assert sorted(item.pages for item in to_stage) == [(1, 50), (51, 100), (101, 120)]
    staged = stage_all(
        GcsStager(gcs_root / "staging" / "test_in_place", documents.open_planned), work / "plan.jsonl", remote
    )

    manifests, unbuilt = plan.build_shards(work / "plan.jsonl", remote, staged, SPEC, work / "shards")
    assert unbuilt == {}
    uris = sorted(
        part["fileData"]["fileUri"]
        for line in open(manifests[0].uri, "rb")
        for part in orjson.loads(line)["request"]["contents"][0]["parts"][1:]
        if "fileData" in part
    )
    assert uris[:2] == [f"gs://test-bucket/landing/test_in_place/{name}" for name in ("a.pdf", "b.pdf")]
    assert all(uri.startswith("gs://test-bucket/staging/test_in_place/") for uri in uris[2:]) and len(uris) == 5
    assert validate_jsonl(manifests[0].uri, backend="vertex").ok


def test_vertex_stage_to_gcs(source, tmp_path, gcs_root):
    work = as_path(tmp_path / "work")
    run_plan(source, tmp_path / "work")
    prefix = gcs_root / "staging" / "test_vertex_stage"
    staged = stage_all(GcsStager(prefix, documents.open_planned), work / "plan.jsonl", source)
    assert all(s.uri.startswith("gs://test-bucket/staging/test_vertex_stage/") for s in staged.values())

    manifests, _ = plan.build_shards(work / "plan.jsonl", as_path(source), staged, SPEC, gcs_root / "shards" / "vertex")
    assert manifests[0].uri.startswith("gs://")
    report = validate_jsonl(manifests[0].uri, backend="vertex")
    assert report.ok, report.problems
    assert report.rows == 6

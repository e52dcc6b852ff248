"""The preparation stage end to end: plan -> stage -> build shards -> validate,
with real generated documents, the real google-genai client against the
emulator (Files API) and gcp-storage-emulator (Vertex staging), and the
shards accepted by the emulator's batch endpoint."""

from __future__ import annotations

import time

import msgspec
import pytest

from gemini_batch.coordination.ledger import Ledger, LedgerEvent
from gemini_batch.core import documents, records
from gemini_batch.core.batch_requests import RequestSpec
from gemini_batch.core.cost import load_prices
from gemini_batch.core.locations import as_path
from gemini_batch.core.planned import Routing
from gemini_batch.steps import plan
from support.documents import write_dated_pdf
from support.plans import SCHEMA, SPEC, landing_folder, run_plan


@pytest.fixture
def source(tmp_path):
    """A folder with the cases a real landing folder has."""
    return landing_folder(tmp_path / "source")


def test_plan_accounts_for_every_document(source, tmp_path):
    summary = run_plan(source, tmp_path / "work")
    docs = {d.path: d for d in plan.read_plan(as_path(summary.plan_uri))}

    assert sorted(docs) == ["a.pdf", "b.pdf", "broken.pdf", "copy-of-a.pdf", "empty.txt", "notes.md", "sub/long.pdf"]
    assert list(docs) == sorted(docs), "plan order is the stable discovery order"
    assert docs["broken.pdf"].rejected and not docs["broken.pdf"].parts
    assert docs["empty.txt"].rejected
    assert [p.pages for p in docs["sub/long.pdf"].parts] == [(1, 50), (51, 100), (101, 120)]
    assert docs["a.pdf"].parts[0].key == docs["copy-of-a.pdf"].parts[0].key
    assert docs["a.pdf"].parts[0].key != docs["b.pdf"].parts[0].key

    # a.pdf, b.pdf, notes.md, 3 parts of long.pdf; the copy is fanned out, not requested
    assert (summary.documents, summary.rejected, summary.parts) == (7, 2, 7)
    assert (summary.requests, summary.duplicate_parts, summary.reused_parts) == (6, 1, 0)
    assert summary.estimate.requests == 6 and summary.estimate.usd > 0
    assert len(records.encode(summary)) < 2048, "small enough for XCom"


def test_a_plan_made_by_the_process_pool_is_the_one_made_here(tmp_path, monkeypatch):
    """Past PROCESSES_AFTER local files, spawned processes inspect them: same plan, same order, byte for byte."""
    source = tmp_path / "many"
    for n in range(plan.PROCESSES_AFTER + 30):
        write_dated_pdf(source / f"doc-{n:03d}.pdf", 1 + n % 3, f"Invoice {n}")
    (source / "bad.pdf").write_bytes(b"%PDF-1.7 truncated")
    one = plan.plan_run(as_path(source), SPEC, as_path(tmp_path / "one.jsonl"), prices=load_prices(), workers=1)
    pool = plan.plan_run(as_path(source), SPEC, as_path(tmp_path / "pool.jsonl"), prices=load_prices(), workers=2)
    assert (tmp_path / "pool.jsonl").read_bytes() == (tmp_path / "one.jsonl").read_bytes()
    assert msgspec.structs.replace(pool, plan_uri="") == msgspec.structs.replace(one, plan_uri="")
    assert pool.documents == plan.PROCESSES_AFTER + 31 and pool.rejected == 1


def test_keys_follow_prompt_model_and_schema(source, tmp_path):
    base = {d.path: d.parts for d in plan.read_plan(as_path(run_plan(source, tmp_path / "w1").plan_uri))}
    again = {d.path: d.parts for d in plan.read_plan(as_path(run_plan(source, tmp_path / "w2").plan_uri))}
    assert base == again

    other = RequestSpec(model=SPEC.model, prompt=SPEC.prompt + " Also the total.", response_schema=SCHEMA)
    summary = plan.plan_run(as_path(source), other, as_path(tmp_path / "w3" / "plan.jsonl"), prices=load_prices())
    changed = {d.path: d.parts for d in plan.read_plan(as_path(summary.plan_uri))}
    assert {p.key for ps in changed.values() for p in ps}.isdisjoint({p.key for ps in base.values() for p in ps})


def test_an_inline_document_changed_or_gone_since_the_plan_fails_alone(source, tmp_path):
    work = as_path(tmp_path / "work")
    run_plan(source, tmp_path / "work", routing=Routing())
    write_dated_pdf(source / "b.pdf", 2, "Invoice B-2, corrected")  # edited after the plan
    (source / "sub" / "long.pdf").unlink()  # gone after the plan
    docs = {d.path: d for d in plan.read_plan(work / "plan.jsonl")}

    manifests, unbuilt = plan.build_shards(work / "plan.jsonl", as_path(source), {}, SPEC, work / "shards")
    assert set(unbuilt) == {docs["b.pdf"].parts[0].key} | {p.key for p in docs["sub/long.pdf"].parts}
    assert unbuilt[docs["b.pdf"].parts[0].key].startswith("b.pdf changed since the run planned it (sha256 ")
    assert all(unbuilt[p.key].startswith("sub/long.pdf cannot be read any more: ") for p in docs["sub/long.pdf"].parts)
    assert sum(m.rows for m in manifests) == 2  # a.pdf (its copy shares the key) and notes.md


def test_rerun_over_unchanged_folder_plans_zero_requests(source, tmp_path):
    first = run_plan(source, tmp_path / "w1")
    ledger = Ledger(as_path(tmp_path / "state"))
    done = [
        LedgerEvent(
            p.key,
            "answered",
            "run-1",
            "2026-11-24T00:00:00Z",
            {"key": p.key, "status": "succeeded", "data": {"ok": True}, "finish_reason": "STOP"},
        )
        for d in plan.read_plan(as_path(first.plan_uri))
        for p in d.parts
    ]
    ledger.append(done, writer="run-1")

    with ledger.view() as finished:
        second = run_plan(source, tmp_path / "w2", finished=finished)
    assert (second.requests, second.reused_parts, second.documents) == (0, first.parts, first.documents)
    assert list(plan.parts_to_stage(as_path(second.plan_uri), as_path(source))) == []

    write_dated_pdf(source / "new.pdf", 2, "Invoice C-9")
    with ledger.view() as finished:
        third = run_plan(source, tmp_path / "w3", finished=finished)
    assert third.requests == 1 and third.documents == first.documents + 1


def test_huge_files_are_judged_by_type_and_size_before_they_are_read(source, tmp_path):
    """Sparse 5 GB files cost nothing to make; hashing one would read 5 GB. Each is rejected from its first bytes
    and its size, and the folder's other documents are planned as before."""
    with open(source / "disk.img", "wb") as unknown:  # zeros: no known type
        unknown.truncate(5 * 2**30)
    with open(source / "scan-archive.pdf", "wb") as huge_pdf:
        huge_pdf.write(b"%PDF-1.7\n")
        huge_pdf.truncate(5 * 2**30)
    for name in ("disk.img", "scan-archive.pdf"):
        started = time.monotonic()
        alone = documents.inspect(documents.SourceFile(name, as_path(source), 5 * 2**30))
        assert time.monotonic() - started < 3, f"{name} was read before it was judged"
        assert alone.rejected and alone.sha256 is None and alone.parts == ()

    started = time.monotonic()
    summary = run_plan(source, tmp_path / "work")
    assert time.monotonic() - started < 10
    docs = {d.path: d for d in plan.read_plan(as_path(summary.plan_uri))}
    assert docs["disk.img"].rejected == (
        "unsupported file type: unrecognised binary content (supported: PDF, PNG, JPEG, WEBP, text, Markdown, HTML)"
    )
    assert docs["scan-archive.pdf"].rejected == "PDF is 5 GB, above the 2 GB file limit"
    assert docs["scan-archive.pdf"].mime_type == "application/pdf" and docs["scan-archive.pdf"].size == 5 * 2**30
    assert (summary.documents, summary.rejected, summary.requests) == (9, 4, 6)  # seven as before, two rejected

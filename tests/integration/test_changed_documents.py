"""A document that changes between its plan and its upload: replaced by a symlink out of the source, or edited in
place. The plan keyed its parts by the bytes it read; whatever is read later must be those bytes, or the part
fails and nothing is sent, answered or recorded under that key. Run steps against a real emulator."""

from __future__ import annotations

import hashlib
import os
import shutil
import threading
import uuid
from contextlib import contextmanager

import pytest

from gemini_batch.core import documents
from gemini_batch.core.batch_requests import ShardManifest
from gemini_batch.core.locations import as_path
from gemini_batch.core.staged import StagedPart, StageFailure, StageItem
from gemini_batch.hooks.gemini import GeminiBatchHook
from gemini_batch.hooks.uploads import FilesApiStager, GcsStager, files_api_name
from gemini_batch.steps import plan, runs
from gemini_batch.steps.build import build_requests
from gemini_batch.steps.collection import collect_results
from gemini_batch.steps.planning import plan_documents
from gemini_batch.steps.publish import publish_results
from gemini_batch.steps.staging import stage_documents
from gemini_emulator.testing import requests_made
from support.dagrun import read_results
from support.documents import write_pdf
from support.emulators import developer_client
from support.service import MODEL, use_developer, wait_until_ended

SCHEMA = {"type": "object", "properties": {"invoice_number": {"type": "string"}}}
# inline_max_mb 0: every PDF is uploaded first (staged), the route this is about
PARAMS = {"prompt": "Extract the invoice number.", "model": MODEL, "response_schema": SCHEMA, "inline_max_mb": 0}
CHANGED = "scan.pdf changed since the run planned it"


@pytest.fixture
def source(tmp_path):
    """scan.pdf, the document that will change, beside other.pdf, which does not."""
    root = tmp_path / "source"
    write_pdf(root / "scan.pdf", "Invoice Number: GENUINE-1")
    write_pdf(root / "other.pdf", "Invoice Number: OTHER-2")
    return root


def symlink_out(source, tmp_path) -> bytes:
    """scan.pdf becomes a symlink to a file outside the source; returns that file's bytes."""
    outside = tmp_path / "outside" / "secret.pdf"
    write_pdf(outside, "Invoice Number: OUTSIDE-9")
    genuine = source / "scan.pdf"
    genuine.rename(tmp_path / "genuine.pdf")
    genuine.symlink_to(outside)
    return outside.read_bytes()


def edit_in_place(source, tmp_path) -> bytes:
    """scan.pdf gets other content in the same file; returns the new bytes."""
    shutil.copy(source / "scan.pdf", tmp_path / "genuine.pdf")
    write_pdf(source / "scan.pdf", "Invoice Number: EDITED-5")
    return (source / "scan.pdf").read_bytes()


def restore(source, tmp_path) -> None:
    (source / "scan.pdf").unlink()
    shutil.copy(tmp_path / "genuine.pdf", source / "scan.pdf")


CHANGES = pytest.mark.parametrize("change", [symlink_out, edit_in_place], ids=["symlink-out", "edited-in-place"])


def run_through(hook, source, output, run_id, *, after_plan=lambda: None) -> runs.Run:
    """plan, (the change), stage, build, one job per shard on the emulator, collect, publish."""
    run = runs.Run.from_params({**PARAMS, "source": str(source), "output": str(output)}, run_id, hook)
    plan_documents(run)
    after_plan()
    stage_documents(run)
    jobs = []
    for uri in build_requests(run, 0):
        manifest = ShardManifest.load(uri)
        src = hook.upload_jsonl(hook.storage_path(manifest.uri), "gbs-" + uuid.uuid4().hex[:32])
        job = wait_until_ended(hook, hook.create_job(model=MODEL, src=src, display_name=run_id).name)
        jobs.append({"manifest_uri": uri, "job_name": job.name, "state": job.state.name})
    publish_results(run, [collect_results(run, 0, jobs)])
    return run


def stored_anywhere(server, data: bytes) -> bool:
    """Whether the emulator holds ``data`` in any file it keeps (uploads, files, job inputs)."""
    return any(data in path.read_bytes() for path in server.log_path.parent.rglob("*") if path.is_file())


def key_of(run: runs.Run, document: str) -> str:
    (doc,) = [d for d in plan.read_plan(run.folder.plan) if d.path == document]
    (part,) = doc.parts
    return part.key


@CHANGES
def test_a_staged_document_changed_after_planning_fails_and_is_never_sent(
    change, source, tmp_path, emulator, monkeypatch
):
    use_developer(monkeypatch, emulator.url)
    sent: list[bytes] = []
    run = run_through(
        GeminiBatchHook(),
        source,
        tmp_path / "out",
        "manual__changed",
        after_plan=lambda: sent.append(change(source, tmp_path)),
    )

    records, _summary = read_results(tmp_path / "out")
    scan = records["scan.pdf"]
    assert scan["status"] == "failed" and scan["data"] is None
    assert scan["error"].startswith(f"not requested: {CHANGED}"), scan["error"]
    assert records["other.pdf"]["status"] == "succeeded"
    assert not stored_anywhere(emulator, sent[0]), "the changed bytes reached the service"
    uploads = [r for r in requests_made(emulator, "POST", "/upload/v1beta/files") if "upload_id=" not in r["query"]]
    assert len(uploads) == 2, "other.pdf and the job's input: nothing for scan.pdf"
    with run.ledger.view() as ledger:
        assert ledger.finished(key_of(run, "scan.pdf")) is None


@CHANGES
def test_a_later_run_over_the_genuine_file_gets_its_own_answer(change, source, tmp_path, emulator, monkeypatch):
    use_developer(monkeypatch, emulator.url)
    hook = GeminiBatchHook()
    run_through(hook, source, tmp_path / "first", "manual__first", after_plan=lambda: change(source, tmp_path))
    restore(source, tmp_path)

    run_through(hook, source, tmp_path / "second", "manual__second")
    records, summary = read_results(tmp_path / "second")
    scan = records["scan.pdf"]
    assert (scan["status"], scan["reused"], scan["data"]) == ("succeeded", False, {"invoice_number": "GENUINE-1"})
    assert records["other.pdf"]["reused"] is True
    assert summary["requests"] == 1


# --- the check itself, under the stagers -------------------------------------------------------------------------


def stage_item(source, name: str) -> StageItem:
    """scan.pdf's one part as the plan would list it (its key is made up: the part is what matters)."""
    data = (source / name).read_bytes()
    return StageItem(
        "c" * 64, as_path(source), name, None, "application/pdf", len(data), hashlib.sha256(data).hexdigest()
    )


def changing_while_read(path):
    """documents.open_planned, appending to ``path`` once the part is open and checked: the change lands while
    the stager sends it, so it is only seen after the upload."""

    @contextmanager
    def opener(*args):
        with documents.open_planned(*args) as stream:
            with open(path, "ab") as out:
                out.write(b"\n% appended while uploading\n")
            yield stream

    return opener


def test_a_part_changed_while_it_uploads_is_deleted_and_fails(source, emulator):
    client = developer_client(emulator.url)
    item = stage_item(source, "scan.pdf")
    (result,) = FilesApiStager(client, changing_while_read(source / "scan.pdf")).stage([item])

    assert isinstance(result, StageFailure) and result.error.startswith(CHANGED), result
    with pytest.raises(Exception, match="403|404"):
        client.files.get(name=files_api_name(item.key))
    assert list(requests_made(emulator, "DELETE")), "the upload was taken back"


def test_a_gcs_part_changed_while_it_uploads_is_deleted_and_fails(source, gcs_root):
    prefix = gcs_root / "staging" / f"changing-{uuid.uuid4().hex[:8]}"
    item = stage_item(source, "scan.pdf")
    (result,) = GcsStager(prefix, changing_while_read(source / "scan.pdf")).stage([item])

    assert isinstance(result, StageFailure) and result.error.startswith(CHANGED), result
    assert not (prefix / f"{item.key}.pdf").exists()


def test_a_symlink_inside_the_source_is_still_read(source, emulator):
    """Discovery follows links that stay inside the source: so does reading a part of one."""
    (source / "alias.pdf").symlink_to("scan.pdf")
    item = stage_item(source, "alias.pdf")
    (result,) = FilesApiStager(developer_client(emulator.url), documents.open_planned).stage([item])
    assert isinstance(result, StagedPart), result


def test_a_fifo_swapped_in_fails_at_once_instead_of_blocking(source):
    item = stage_item(source, "scan.pdf")
    (source / "scan.pdf").unlink()
    os.mkfifo(source / "scan.pdf")
    raised: list[BaseException] = []

    def read():
        try:
            with documents.open_planned(item.source, item.path, None, item.sha256):
                pass
        except BaseException as error:
            raised.append(error)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(10)
    assert raised, "opening the FIFO blocked"
    assert isinstance(raised[0], documents.SourceChanged) and "no longer a regular file" in str(raised[0]), raised

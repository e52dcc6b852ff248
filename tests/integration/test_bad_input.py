"""Bad input: broken, locked, empty and oversized documents, hostile file names, a source that is empty or goes
away, parameters that cannot work. Every document still gets exactly one line with a status and a reason, the
other documents go on, nothing is written outside ``output``; a run that cannot work fails at once, naming the
parameter and the cause, before anything is submitted.

Fast tests drive the pure modules and the run steps; a few real ``airflow dags test`` runs (tests/test_dag.py's
helpers) check the same end to end, against the emulator's own record of what it received.
"""

from __future__ import annotations

import base64
import io
import json
import os
import shutil
import tracemalloc
from pathlib import Path

import orjson
import pytest
from airflow.sdk.exceptions import AirflowFailException
from fpdf import FPDF
from PIL import Image
from pypdf import PdfReader, PdfWriter

from gemini_batch.core import documents, records, results
from gemini_batch.core.batch_requests import RequestSpec, ShardManifest
from gemini_batch.core.cost import load_prices
from gemini_batch.core.locations import as_path
from gemini_batch.core.validate import validate_jsonl
from gemini_batch.hooks.gemini import GeminiBatchHook
from gemini_batch.operators.batch import GeminiBatchSubmitOperator
from gemini_batch.steps import plan, run_settings, runs
from gemini_batch.steps.build import build_requests
from gemini_batch.steps.collection import collect_results
from gemini_batch.steps.planning import plan_documents
from gemini_batch.steps.publish import publish_results
from gemini_batch.steps.staging import stage_documents
from support.dagrun import developer_conn, read_results, run_dag, submitted_jobs
from support.emulators import developer_client, storage_client
from support.service import RecordingTaskInstance, context, use_developer, wait_until_ended, write_shard

MB = 2**20
MODEL = "gemini-2.5-flash-lite"
NON_UTF8 = b"caf\xe9.pdf"  # Latin-1 "café.pdf": not UTF-8
LONG_NAME = "x" * 251 + ".pdf"  # 255 bytes, the most a Linux name may have
PARAMS = {"prompt": "Extract the invoice number and total.", "model": MODEL, "response_schema": None}


# ------------------------------------------------------------------ documents


def pdf_bytes(text: str, pages: int = 1, noise_side: int = 0) -> bytes:
    """A PDF of ``pages`` pages, each with ``text`` and, given a side, its own noise image (fpdf2 embeds a repeated
    image once)."""
    pdf = FPDF()
    pdf.set_font("helvetica", size=12)
    for page in range(1, pages + 1):
        pdf.add_page()
        if noise_side:
            pdf.image(io.BytesIO(noise_png(noise_side)), x=10, y=30, w=150)
        pdf.cell(text=f"{text} page {page}")
    return bytes(pdf.output())


def noise_png(side: int) -> bytes:
    """Random pixels do not compress: about side**2 * 3 bytes."""
    buffer = io.BytesIO()
    Image.frombytes("RGB", (side, side), os.urandom(side * side * 3)).save(buffer, "PNG")
    return buffer.getvalue()


def encrypted(data: bytes, **passwords) -> bytes:
    writer = PdfWriter(clone_from=PdfReader(io.BytesIO(data)))
    writer.encrypt(**passwords, algorithm="AES-256")
    buffer = io.BytesIO()
    writer.write(buffer)
    return buffer.getvalue()


def zero_page_pdf() -> bytes:
    buffer = io.BytesIO()
    PdfWriter().write(buffer)
    return buffer.getvalue()


def bad_folder(root: Path) -> tuple[Path, dict[str, tuple[str, str | None]]]:
    """A source with every kind of bad input beside good documents, for max_part_mb=1.

    Returns the source and, per document as results.jsonl names it, the expected status and a piece of its error.
    """
    source, outside = root / "source", root / "outside"
    for folder in (source / "sub" / "deep", source / ".git", outside):
        folder.mkdir(parents=True)
    good = pdf_bytes("Invoice INV-0001 total 100.00 EUR")
    files = {
        "good.pdf": good,
        "a..b.pdf": pdf_bytes("Invoice INV-0002 total 2.00 EUR"),
        "new\nline.pdf": pdf_bytes("Invoice INV-0003 total 3.00 EUR"),
        LONG_NAME: pdf_bytes("Invoice INV-0004 total 4.00 EUR"),
        "sub/deep/note.txt": b"Invoice T-5, total 5.00 EUR\n",
        "owner-only.pdf": encrypted(pdf_bytes("Invoice INV-0006 total 6.00 EUR"), user_password="", owner_password="o"),
        "encrypted.pdf": encrypted(good, user_password="secret", owner_password="o"),
        "zero-pages.pdf": zero_page_pdf(),
        "corrupt.pdf": good[:300],
        "empty.txt": b"",
        "big.png": noise_png(900),  # ~2.3 MB
        "big-page.pdf": pdf_bytes("Scan", noise_side=900),  # one page of ~2.3 MB
        "long.pdf": pdf_bytes("Statement", pages=5, noise_side=380),  # ~2 MB in 5 pages of ~0.4 MB
        "..pdf": good,  # starts with ".": hidden, like .DS_Store or macOS's ._name.pdf, not a document
        ".git/config.pdf": good,
    }
    for relative, data in files.items():
        (source / relative).write_bytes(data)
    (source / os.fsdecode(NON_UTF8)).write_bytes(pdf_bytes("Invoice INV-0007 total 7.00 EUR"))
    (outside / "secret.pdf").write_bytes(pdf_bytes("Secret outside the source"))
    (source / "link-out.pdf").symlink_to(outside / "secret.pdf")  # absolute targets
    (source / "link-out-folder").symlink_to(outside)
    (source / "link-in.pdf").symlink_to(source / "good.pdf")
    too_big = "above the 1 MB part limit"
    expected = {
        "good.pdf": ("succeeded", None),
        "a..b.pdf": ("succeeded", None),
        "new\nline.pdf": ("succeeded", None),
        LONG_NAME: ("succeeded", None),
        "sub/deep/note.txt": ("succeeded", None),
        "owner-only.pdf": ("succeeded", None),
        "caf\\xe9.pdf": ("succeeded", None),
        "long.pdf": ("succeeded", None),
        "link-in.pdf": ("succeeded", None),
        "encrypted.pdf": ("rejected", "encrypted PDF (password required)"),
        "zero-pages.pdf": ("rejected", "PDF has no pages"),
        "corrupt.pdf": ("rejected", "corrupt PDF: "),
        "empty.txt": ("rejected", "zero-byte file"),
        "big.png": ("rejected", f"image is 2.3 MB, {too_big}"),
        "big-page.pdf": ("rejected", f"page 1 alone is 2.3 MB, {too_big}"),
        "link-out.pdf": ("rejected", f"symlink to {outside / 'secret.pdf'}, outside the source: not followed"),
        "link-out-folder": ("rejected", f"symlink to {outside}, outside the source: not followed"),
    }
    return source, expected


def tree(root: Path, *skip: Path) -> dict[bytes, tuple[int, int, int]]:
    """Every entry under root (bytes paths: any name), with its mode, size and mtime; ``skip`` folders left out."""
    skipped = {os.fsencode(path) for path in skip}
    listing = {}
    for folder, dirs, files in os.walk(os.fsencode(root)):
        dirs[:] = [d for d in dirs if os.path.join(folder, d) not in skipped]
        for name in dirs + files:
            status = os.lstat(os.path.join(folder, name))
            listing[os.path.join(folder, name)] = (status.st_mode, status.st_size, status.st_mtime_ns)
    return listing


def plan_folder(source: Path, work: Path, spec: RequestSpec, limits=documents.Limits()) -> plan.PlanSummary:
    return plan.plan_run(as_path(source), spec, as_path(work) / "plan.jsonl", limits=limits, prices=load_prices())


def test_every_bad_file_is_planned_once_with_its_reason(tmp_path):
    source, expected = bad_folder(tmp_path)
    summary = plan_folder(
        source, tmp_path / "work", RequestSpec(model=MODEL, prompt="Extract."), documents.Limits(max_part_bytes=MB)
    )
    lines = (tmp_path / "work" / "plan.jsonl").read_bytes()
    lines.decode("utf-8")  # strict: every name is written as valid UTF-8
    planned = {doc["document"]: doc for doc in map(orjson.loads, lines.splitlines())}
    assert sorted(planned) == sorted(expected) and summary.documents == len(expected)
    for document, (status, error) in expected.items():
        reason = planned[document]["rejected"]
        assert (reason is None) == (status != "rejected") and (error or "") in (reason or ""), document
    assert summary.rejected == sum(status == "rejected" for status, _ in expected.values())
    long_parts = [part["pages"] for part in planned["long.pdf"]["parts"]]
    assert len(long_parts) > 1 and all(part["size"] <= MB for part in planned["long.pdf"]["parts"])
    assert long_parts[0][0] == 1 and long_parts[-1][1] == 5
    assert planned["link-in.pdf"]["parts"][0]["key"] == planned["good.pdf"]["parts"][0]["key"]  # one request


def test_a_name_that_is_not_utf8_is_read_and_shown_with_escapes(tmp_path):
    """The plan keeps the exact bytes (percent-encoded) so every step finds the file; JSON shows ``\\xNN``."""
    source = tmp_path / "source"
    source.mkdir()
    data = pdf_bytes("Invoice INV-0007")
    (source / os.fsdecode(NON_UTF8)).write_bytes(data)
    plan_folder(source, tmp_path, RequestSpec(model=MODEL, prompt="Extract."))
    line = orjson.loads((tmp_path / "plan.jsonl").read_bytes())
    assert (line["document"], line["path_quoted"]) == ("caf\\xe9.pdf", "caf%E9.pdf")
    assert line["uri"] == f"{source}/caf\\xe9.pdf"
    (doc,) = plan.read_plan(as_path(tmp_path / "plan.jsonl"))
    assert os.fsencode(doc.path) == NON_UTF8
    (manifest,), unbuilt = plan.build_shards(
        as_path(tmp_path / "plan.jsonl"),
        as_path(source),
        {},
        RequestSpec(model=MODEL, prompt="Extract."),
        as_path(tmp_path / "shards"),
    )
    (row,) = map(orjson.loads, as_path(manifest.uri).read_bytes().splitlines())
    assert unbuilt == {} and base64.b64decode(row["request"]["contents"][0]["parts"][1]["inlineData"]["data"]) == data
    record = records.to_builtins(results.document_record(doc, {}, {}))
    assert record["document"] == "caf\\xe9.pdf" and orjson.dumps(record).decode("utf-8")


def test_an_object_name_with_an_empty_segment_is_rejected_not_read_elsewhere(gcs, gcs_root):
    """``docs//a.txt`` joined to the source reads ``docs/a.txt``: another object, or nothing."""
    bucket = storage_client(gcs.url).bucket("test-bucket")
    bucket.blob("bad-names/docs/a.txt").upload_from_string(b"the real a.txt\n")
    bucket.blob("bad-names/docs//a.txt").upload_from_string(b"the double-slash one\n")
    found = {file.path: file for file in documents.discover(gcs_root / "bad-names" / "docs")}
    assert found["a.txt"].rejected is None
    assert found["/a.txt"].rejected == "object name has an empty segment ('//'): it names no path inside the source"
    assert documents.inspect(found["/a.txt"]).rejected == found["/a.txt"].rejected


# ------------------------------------------------------------------ parameters


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"response_schema": {"type": "objekt"}}, "response_schema is not a valid JSON schema: 'objekt' is not valid"),
        ({"response_schema": {"properties": {"total": {"type": 5}}}}, "response_schema is not a valid JSON schema: 5 "),
        ({"response_schema": ["not", "an", "object"]}, "invalid parameters: response_schema must be a JSON object"),
        (
            {"response_schema": {"properties": {"total": {"$ref": "#/$defs/amount"}}}},
            r"response_schema is not a valid JSON schema: \$ref '#/\$defs/amount' leads nowhere",
        ),
        ({"model": " "}, "invalid parameters: model ' ' names no model id"),
        (
            {"output": "{source}/out"},
            "output {source}/out is inside source {source}: the run's own files would be read",
        ),
        ({"output": "{source}"}, "output {source} is inside source {source}"),
        ({"state": "{source}/sub/_state"}, "state {source}/sub/_state is inside source {source}"),
    ],
)
def test_parameters_that_cannot_work_name_the_parameter_and_cause(change, message, tmp_path):
    source = str(tmp_path / "source")
    change = {name: value.format(source=source) if isinstance(value, str) else value for name, value in change.items()}
    params = {**PARAMS, "source": source, "output": str(tmp_path / "out"), **change}
    with pytest.raises(run_settings.RunConfigError, match=message.format(source=source)):
        run_settings.RunSettings.from_params(params)


def test_output_beside_or_above_the_source_and_references_that_resolve_are_fine(tmp_path):
    (tmp_path / "source-2").mkdir()
    schema = {"$defs": {"amount": {"type": "number"}}, "properties": {"total": {"$ref": "#/$defs/amount"}}}
    for output in ("source-2-out", "."):  # a sibling whose name starts the same; the source's parent
        run_settings.RunSettings.from_params(
            {
                **PARAMS,
                "source": str(tmp_path / "source-2"),
                "output": str(tmp_path / output),
                "response_schema": schema,
            }
        )


def test_a_model_the_service_does_not_have_fails_the_task_naming_it(start_emulator, monkeypatch, tmp_path):
    """A priced model can still be unknown to the service (a retired preview, a region without it): the emulator,
    like the service, answers 404 on create. The task fails at once (a retry cannot help); no job exists."""
    server = start_emulator(time_scale=3600)
    use_developer(monkeypatch, server.url)
    task = GeminiBatchSubmitOperator(
        task_id="submit",
        manifest_uri=write_shard(tmp_path / "shards").manifest_uri,
        model="gemini-9-ultra",
        poll_interval=0.2,
    )
    with pytest.raises(
        AirflowFailException,
        match=r"^model 'gemini-9-ultra': the service has no such model .*"
        r"\(404 NOT_FOUND: models/gemini-9-ultra is not found",
    ):
        task.execute(context(RecordingTaskInstance()))
    assert list(developer_client(server.url).batches.list()) == []


# ------------------------------------------------------------------ a source that goes away


def planned_key(run: runs.Run, document: str) -> str:
    (doc,) = [doc for doc in plan.read_plan(run.folder.plan) if doc.path == document]
    return doc.parts[0].key


def test_a_source_that_disappears_mid_run_fails_only_what_it_still_needed(start_emulator, monkeypatch, tmp_path):
    """Staged documents need their source no more; text goes inline, read when the requests are built: once the
    folder is gone it fails with the cause, and the rest of the run goes on to publish. (Staging every PDF:
    tests/test_runs.py has the same for inline ones.)"""
    server = start_emulator(time_scale=3600)
    use_developer(monkeypatch, server.url)
    hook = GeminiBatchHook()
    source = tmp_path / "source"
    (source / "sub").mkdir(parents=True)
    (source / "invoice.pdf").write_bytes(pdf_bytes("Invoice INV-0001 total 1.00 EUR"))
    (source / "sub" / "note.txt").write_text("Invoice T-2, total 2.00 EUR\n")
    (source / "late.pdf").write_bytes(pdf_bytes("Invoice INV-0003 total 3.00 EUR"))
    run = runs.Run.from_params(
        {**PARAMS, "source": str(source), "output": str(tmp_path / "out"), "inline_max_mb": 0}, "manual__vanish", hook
    )
    plan_documents(run)
    late = source.parent / "late.pdf"
    (source / "late.pdf").rename(late)  # gone before staging
    assert stage_documents(run) == {"staged": 1, "failed": 1}
    late.rename(source / "late.pdf")
    shutil.rmtree(source)  # gone after staging, before the requests are built

    (manifest_uri,) = build_requests(run, 0)
    assert as_path(manifest_uri).exists()
    src = hook.upload_jsonl(hook.storage_path(ShardManifest.load(manifest_uri).uri), "gbs-vanish")
    job = wait_until_ended(hook, hook.create_job(model=MODEL, src=src, display_name="vanish").name)
    collected = collect_results(run, 0, [{"manifest_uri": manifest_uri, "job_name": job.name, "state": job.state.name}])
    report = publish_results(run, [collected])

    records, summary = read_results(tmp_path / "out")
    assert records["invoice.pdf"]["status"] == "succeeded"
    assert records["late.pdf"]["status"] == "failed"
    assert records["late.pdf"]["error"].startswith(f"not requested: staging {source}/late.pdf failed: [Errno 2] ")
    assert records["sub/note.txt"]["status"] == "failed"
    assert records["sub/note.txt"]["error"].startswith(
        "not requested: sub/note.txt cannot be read any more: [Errno 2] No such file or directory"
    )
    assert report == summary and (summary["documents"], summary["succeeded"], summary["failed"]) == (3, 1, 2)

    # A cleared run that builds again, with the folder back, forgets the earlier try's reading failure.
    late_key, note_key = planned_key(run, "late.pdf"), planned_key(run, "sub/note.txt")
    with run.staging() as staging:
        assert dict(staging.failures()).keys() == {late_key, note_key}
    (source / "sub").mkdir(parents=True)
    (source / "sub" / "note.txt").write_text("Invoice T-2, total 2.00 EUR\n")
    build_requests(run, 0)
    with run.staging() as staging:
        assert dict(staging.failures()).keys() == {late_key}


# ------------------------------------------------------------------ a 1 MB prompt


def build_with_prompt(folder: Path, spec: RequestSpec, documents_count: int) -> tuple[list, int, plan.PlanSummary]:
    """Plan and build ``documents_count`` text documents; the manifests and the peak of memory while building."""
    source = folder / "source"
    source.mkdir(parents=True)
    for n in range(documents_count):
        (source / f"note-{n:02d}.txt").write_text(f"Invoice T-{n}, total {n}.00 EUR\n")
    summary = plan_folder(source, folder, spec)
    tracemalloc.start()
    manifests, unbuilt = plan.build_shards(
        as_path(folder / "plan.jsonl"), as_path(source), {}, spec, as_path(folder / "shards"), max_bytes=8 * MB
    )
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert unbuilt == {}
    return manifests, peak, summary


def test_a_one_megabyte_prompt_is_accepted_and_rows_are_streamed(start_emulator, monkeypatch, tmp_path):
    """1 MiB of prompt is ~262k tokens: within every Gemini model's 1M-token context and the service's request
    size, so it is accepted. Each row carries it (a batch row is a whole request), so N documents make N MB of
    requests; they are written one row at a time (serialising a row briefly takes ~16x the prompt, whatever the
    number of rows), shards roll over at max_mb_per_job, and the budget gate counts the prompt in every request.
    Not tried through ``dags test``: one command-line argument (its -c conf) holds at most 128 KiB."""
    spec = RequestSpec(model=MODEL, prompt=("Extract the invoice number and total as JSON. " * 25_000)[:MB])
    _, peak_of_two, _ = build_with_prompt(tmp_path / "two", spec, 2)
    manifests, peak, summary = build_with_prompt(tmp_path / "thirty", spec, 30)
    assert summary.requests == 30 and summary.estimate.input_tokens >= 30 * MB // 4
    assert peak < peak_of_two + 2 * MB, f"30 rows held {peak / MB:.1f} MB, 2 rows {peak_of_two / MB:.1f} MB"
    assert [m.rows for m in manifests] == [7, 7, 7, 7, 2] and all(m.bytes <= 8 * MB for m in manifests)
    assert validate_jsonl(manifests[-1].uri, backend="developer", max_bytes=8 * MB).ok

    server = start_emulator(time_scale=3600)
    use_developer(monkeypatch, server.url)
    hook = GeminiBatchHook()
    src = hook.upload_jsonl(hook.storage_path(manifests[-1].uri), "gbs-big-prompt")
    job = wait_until_ended(hook, hook.create_job(model=MODEL, src=src, display_name="big-prompt").name)
    outcomes = [results.parse_output_row(orjson.loads(line), None) for line in hook.iter_output_lines(job)]
    assert [o.status for o in outcomes] == ["succeeded", "succeeded"]
    assert all(o.input_tokens >= MB // 4 for o in outcomes)  # the service read the whole prompt


# ------------------------------------------------------------------ whole runs


def test_a_run_over_bad_inputs_loses_nothing_and_writes_only_to_output(airflow_home, tmp_path, start_emulator):
    source, expected = bad_folder(tmp_path)
    server = start_emulator(time_scale=600, data_dir=tmp_path / "emulator")
    output, ledger = tmp_path / "output", tmp_path / "ledger"
    before = tree(tmp_path, output, tmp_path / "emulator", ledger)

    done = run_dag(
        airflow_home,
        developer_conn(server.url),
        {"source": str(source), "output": str(output), "max_part_mb": 1, "state": str(ledger)},
        "2026-12-01",
    )
    done.check()
    assert tree(tmp_path, output, tmp_path / "emulator", ledger) == before, "nothing is written outside output"
    assert (ledger / "events").is_dir(), "and the ledger"

    raw = (output / "results.jsonl").read_bytes()
    lines = [json.loads(line) for line in raw.decode("utf-8").splitlines()]
    records, summary = read_results(output)
    assert len(lines) == len(records) == len(expected) and sorted(records) == sorted(expected)
    for document, (status, error) in expected.items():
        record = records[document]
        assert record["status"] == status, (document, record)
        assert (record["error"] is None) == (status == "succeeded") and (error or "") in (record["error"] or "")
        assert (record["data"] is not None) == (status == "succeeded")
        assert not document.startswith("/") and ".." not in document.split("/")
    assert len(records["long.pdf"]["parts"]) > 1 and records["long.pdf"]["parts"][-1]["pages"][1] == 5
    rejected = sum(status == "rejected" for status, _ in expected.values())
    assert summary["documents"] == len(expected) == summary["succeeded"] + summary["failed"] + summary["rejected"]
    assert (summary["rejected"], summary["failed"]) == (rejected, 0)
    # every accepted part requested once (link-in.pdf is good.pdf's bytes), no rejected one
    keys = [key for _, job_keys in submitted_jobs(server) for key in job_keys]
    assert len(keys) == len(set(keys)) == summary["requests"]


def test_an_empty_source_publishes_an_empty_result(airflow_home, tmp_path, start_emulator):
    """A landing folder with nothing in it (or only hidden files) is a normal day, not an error: the run succeeds
    with an empty results.jsonl and a summary of zeros, so downstream readers see "nothing today" explicitly."""
    source = tmp_path / "source"
    source.mkdir()
    (source / ".DS_Store").write_bytes(b"\0")
    server = start_emulator(time_scale=600)
    output = tmp_path / "output"
    run_dag(
        airflow_home, developer_conn(server.url), {"source": str(source), "output": str(output)}, "2026-12-02"
    ).check()
    assert (output / "results.jsonl").read_bytes() == b""
    summary = json.loads((output / "summary.json").read_text())
    assert summary == {
        "documents": 0,
        "succeeded": 0,
        "failed": 0,
        "rejected": 0,
        "reused": 0,
        "requests": 0,
        "jobs": 0,
        "retry_rounds": 0,
        "input_tokens": 0,
        "output_tokens": 0,
        "estimated_cost_usd": 0.0,
    }
    assert submitted_jobs(server) == []


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            {"response_schema": {"type": "object", "properties": {"total": {"type": "amount"}}}},
            "response_schema is not a valid JSON schema: 'amount' is not valid under any of the given schemas",
        ),
        (
            {"model": "gemini-9-ultra"},
            "model 'gemini-9-ultra': the service does not know it (unknown or shut down); "
            "batch-capable models: gemini-",
        ),
        ({"source": "{tmp}/no-such-folder"}, "source {tmp}/no-such-folder cannot be read: No such file or directory"),
    ],
    ids=["schema", "model", "source"],
)
def test_a_run_that_cannot_work_fails_at_once_submitting_nothing(
    change, message, airflow_home, tmp_path, start_emulator
):
    (tmp_path / "source").mkdir()
    (tmp_path / "source" / "note.txt").write_text("Invoice T-1, total 1.00 EUR\n")
    server = start_emulator(time_scale=600)
    output = tmp_path / "output"
    conf = {"source": str(tmp_path / "source"), "output": str(output), **change}
    conf = {name: value.format(tmp=tmp_path) if isinstance(value, str) else value for name, value in conf.items()}
    done = run_dag(airflow_home, developer_conn(server.url), conf, "2026-12-03")
    assert done.state == "failed"
    assert message.format(tmp=tmp_path) in done.log
    assert "up_for_retry" not in done.log.lower(), "a parameter error is not retried"
    assert submitted_jobs(server) == [] and list(developer_client(server.url).files.list()) == []
    assert not (output / "results.jsonl").exists()

"""The Vertex AI batch prediction surface of the emulator, driven by the real
google-genai client (Vertex mode) and the real google-cloud-storage client
against real gcp-storage-emulator and Gemini emulator processes."""

from __future__ import annotations

import asyncio
import json
import re
import time
import uuid

import httpx
import jsonschema
import pytest
from fpdf import FPDF
from google.genai import errors, types

from gemini_emulator import discovery
from support.emulators import storage_client, vertex_client

BUCKET = "test-bucket"
MODEL = "gemini-2.5-flash-lite"
PARENT = "projects/test-project/locations/us-central1"
JOB_NAME = re.compile(rf"^{PARENT}/batchPredictionJobs/\d+$")
OUTPUT_DIR = re.compile(r"/prediction-model-\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?Z$")
JS = types.JobState

INVOICE_SCHEMA = {
    "type": "object",
    "properties": {
        "invoice_number": {"type": "string"},
        "invoice_date": {"type": "string", "format": "date"},
        "vendor": {"type": "string"},
        "total": {"type": "number"},
    },
    "required": ["invoice_number", "invoice_date", "vendor", "total"],
    "additionalProperties": False,
}

PDF_LINES = [
    "ACME CORP - INVOICE",
    "Invoice Number: INV-2024-0042",
    "Invoice Date: March 15, 2024",
    "Vendor: Acme Corp",
    "Total: $1,234.50",
]
PDF_EXPECTED = {"invoice_number": "INV-2024-0042", "invoice_date": "2024-03-15", "vendor": "Acme Corp", "total": 1234.5}
TEXT_DOC = "Supplier invoice\nInvoice Number: TXT-77\nInvoice Date: 2025-01-09\nVendor: Paper & Ink Ltd\nTotal: 42.00\n"
TEXT_EXPECTED = {"invoice_number": "TXT-77", "invoice_date": "2025-01-09", "vendor": "Paper & Ink Ltd", "total": 42.0}


# ---------------------------------------------------------------- helpers


@pytest.fixture(scope="module")
def storage(gcs):
    return storage_client(gcs.url)


@pytest.fixture
def prefix():
    """A fresh object prefix: the GCS emulator is shared by the whole session."""
    return f"vertex-tests/{uuid.uuid4().hex}"


@pytest.fixture
def vertex_emulator(start_emulator, gcs):
    """A fast emulator (an emulated hour per second) wired to the GCS emulator."""
    return start_emulator(time_scale=3600, gcs_endpoint=gcs.url)


@pytest.fixture
def vertex(vertex_emulator):
    """A real Vertex-mode google-genai client for ``vertex_emulator``."""
    return vertex_client(vertex_emulator.url)


def counts(stats) -> tuple[int, int, int]:
    """(successful, failed, incomplete): proto3 JSON leaves a zero count out, which the SDK reads as None."""
    return tuple(n or 0 for n in (stats.successful_count, stats.failed_count, stats.incomplete_count))


def invoice_pdf(lines: list[str]) -> bytes:
    pdf = FPDF()
    pdf.add_page()
    pdf.set_font("Helvetica", size=12)
    for line in lines:
        pdf.cell(0, 10, line, new_x="LMARGIN", new_y="NEXT")
    return bytes(pdf.output())


def put(storage, name: str, data: bytes | str, content_type: str) -> str:
    storage.bucket(BUCKET).blob(name).upload_from_string(data, content_type=content_type)
    return f"gs://{BUCKET}/{name}"


def file_row(key: str, uri: str, mime_type: str, prompt: str = "Extract the invoice fields from the document.") -> dict:
    return {
        "key": key,
        "request": {
            "contents": [
                {"role": "user", "parts": [{"text": prompt}, {"fileData": {"fileUri": uri, "mimeType": mime_type}}]}
            ],
            "generationConfig": {"responseMimeType": "application/json", "responseJsonSchema": INVOICE_SCHEMA},
        },
    }


def text_row(key: str, document: str) -> dict:
    return {
        "key": key,
        "request": {
            "contents": [{"role": "user", "parts": [{"text": "Extract the invoice fields."}, {"text": document}]}],
            "generationConfig": {"responseMimeType": "application/json", "responseJsonSchema": INVOICE_SCHEMA},
        },
    }


def put_jsonl(storage, name: str, rows: list[dict | str]) -> str:
    lines = [r if isinstance(r, str) else json.dumps(r) for r in rows]
    return put(storage, name, "\n".join(lines) + "\n", "application/jsonl")


def wait_done(client, name: str, timeout: float = 30, poll: float = 0.02) -> tuple[types.BatchJob, list]:
    """Poll until the job is terminal; return it and the states seen on the way."""
    states = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.batches.get(name=name)
        if not states or states[-1] != job.state:
            states.append(job.state)
        if job.done:
            return job, states
        time.sleep(poll)
    raise AssertionError(f"{name} not done after {timeout}s; states seen: {states}")


def blobs_under(storage, prefix: str) -> list[str]:
    return sorted(b.name for b in storage.list_blobs(BUCKET, prefix=prefix))


def predictions(storage, job: types.BatchJob) -> dict[str, dict]:
    """The rows of ``predictions.jsonl`` in the job's output directory, by key."""
    directory = job.output_info.gcs_output_directory
    bucket, _, path = directory.removeprefix("gs://").partition("/")
    text = storage.bucket(bucket).blob(f"{path}/predictions.jsonl").download_as_text()
    rows = [json.loads(line) for line in text.splitlines() if line.strip()]
    by_key = {r.get("key"): r for r in rows}
    assert len(by_key) == len(rows), f"duplicate or missing keys in output: {[r.get('key') for r in rows]}"
    return by_key


def answer_json(row: dict):
    parts = row["response"]["candidates"][0]["content"]["parts"]
    return json.loads("".join(p["text"] for p in parts))


def assert_api_error(exc: errors.APIError, code: int, status: str, *fragments: str) -> None:
    assert (exc.code, exc.status) == (code, status), f"got {exc.code} {exc.status}: {exc.message}"
    for fragment in fragments:
        assert fragment in exc.message, f"{fragment!r} not in {exc.message!r}"


# ---------------------------------------------------------------- lifecycle


def test_full_lifecycle_with_pdf_and_text_documents_from_gcs(start_emulator, gcs, storage, prefix):
    # Slow the pending and running phases a little so both can be observed.
    emulator = start_emulator(
        time_scale=3600, gcs_endpoint=gcs.url, faults={"pending_seconds": 720, "running_seconds": 1800}
    )
    client = vertex_client(emulator.url)
    pdf_uri = put(storage, f"{prefix}/docs/invoice.pdf", invoice_pdf(PDF_LINES), "application/pdf")
    txt_uri = put(storage, f"{prefix}/docs/invoice.txt", TEXT_DOC, "text/plain")
    rows = [
        file_row("invoice-pdf", pdf_uri, "application/pdf"),
        file_row("invoice-txt", txt_uri, "text/plain"),
        file_row("invoice-pdf-again", pdf_uri, "application/pdf", prompt="Read this invoice."),
    ]
    src = put_jsonl(storage, f"{prefix}/input.jsonl", rows)
    dest = f"gs://{BUCKET}/{prefix}/out/"

    created = client.batches.create(model=MODEL, src=src, config={"dest": dest, "display_name": "lifecycle"})
    assert JOB_NAME.match(created.name), created.name
    assert created.state == JS.JOB_STATE_PENDING
    assert created.display_name == "lifecycle"
    assert created.model.endswith(f"models/{MODEL}")
    assert created.src.gcs_uri == [src]
    assert created.dest.gcs_uri == dest
    assert created.output_info is None
    assert blobs_under(storage, f"{prefix}/out/") == []  # nothing written before the job runs

    job, states = wait_done(client, created.name)
    assert job.state == JS.JOB_STATE_SUCCEEDED, job.error
    assert states[-1] == JS.JOB_STATE_SUCCEEDED
    assert JS.JOB_STATE_RUNNING in states, states
    assert set(states) <= {JS.JOB_STATE_PENDING, JS.JOB_STATE_RUNNING, JS.JOB_STATE_SUCCEEDED}, states
    assert states.index(JS.JOB_STATE_RUNNING) < states.index(JS.JOB_STATE_SUCCEEDED)
    assert job.name == created.name
    assert job.error is None
    assert job.create_time <= job.start_time <= job.end_time
    stats = job.completion_stats
    assert counts(stats) == (len(rows), 0, 0)

    directory = job.output_info.gcs_output_directory
    assert directory.startswith(dest), directory
    assert OUTPUT_DIR.search(directory), directory
    assert "/" not in directory.removeprefix(dest)  # directly under the prefix
    out_path = directory.removeprefix(f"gs://{BUCKET}/")
    assert blobs_under(storage, f"{prefix}/out/") == [f"{out_path}/predictions.jsonl"]

    out = predictions(storage, job)
    assert set(out) == {r["key"] for r in rows}
    for source in rows:
        row = out[source["key"]]
        assert row["status"] == ""
        assert row["request"] == source["request"]  # Vertex echoes the request
        assert "processed_time" in row
        value = answer_json(row)
        jsonschema.validate(value, INVOICE_SCHEMA, format_checker=jsonschema.FormatChecker())
    assert answer_json(out["invoice-pdf"]) == PDF_EXPECTED
    assert answer_json(out["invoice-pdf-again"]) == PDF_EXPECTED
    assert answer_json(out["invoice-txt"]) == TEXT_EXPECTED
    usage = out["invoice-pdf"]["response"]["usageMetadata"]
    assert {"modality": "DOCUMENT", "tokenCount": 258} in usage["promptTokensDetails"]  # one PDF page

    # A finished job can be read again and is listed with its final state.
    again = client.batches.get(name=job.name.rsplit("/", 1)[1])  # a bare id works too
    assert (again.name, again.state, again.output_info.gcs_output_directory) == (job.name, job.state, directory)
    listed = {j.name: j for j in client.batches.list()}
    assert listed[job.name].state == JS.JOB_STATE_SUCCEEDED


# ---------------------------------------------------------------- per-row failures


def test_missing_gcs_document_fails_only_its_row_and_finished_job_can_be_deleted(vertex, storage, prefix):
    client = vertex
    txt_uri = put(storage, f"{prefix}/docs/invoice.txt", TEXT_DOC, "text/plain")
    missing_uri = f"gs://{BUCKET}/{prefix}/docs/no-such-invoice.pdf"
    rows = [
        file_row("ok-file", txt_uri, "text/plain"),
        file_row("missing", missing_uri, "application/pdf"),
        text_row("ok-inline", TEXT_DOC),
    ]
    src = put_jsonl(storage, f"{prefix}/input.jsonl", rows)
    created = client.batches.create(
        model=MODEL, src=src, config={"dest": f"gs://{BUCKET}/{prefix}/out", "display_name": "row-failure"}
    )
    job, _ = wait_done(client, created.name)

    assert job.state == JS.JOB_STATE_SUCCEEDED  # a failed row does not fail the job
    stats = job.completion_stats
    assert counts(stats) == (2, 1, 0)
    out = predictions(storage, job)
    assert set(out) == {"ok-file", "missing", "ok-inline"}
    failed = out["missing"]
    assert isinstance(failed["status"], str) and failed["status"]
    assert "no-such-invoice.pdf" in failed["status"]
    assert "response" not in failed
    for key in ("ok-file", "ok-inline"):
        assert out[key]["status"] == ""
        assert answer_json(out[key]) == TEXT_EXPECTED

    # Deleting a finished job removes the job but not its output.
    client.batches.delete(name=job.name)
    with pytest.raises(errors.APIError) as exc:
        client.batches.get(name=job.name)
    assert_api_error(exc.value, 404, "NOT_FOUND", job.name.rsplit("/", 1)[1])
    assert job.name not in {j.name for j in client.batches.list()}
    directory = job.output_info.gcs_output_directory.removeprefix(f"gs://{BUCKET}/")
    assert blobs_under(storage, f"{prefix}/out") == [f"{directory}/predictions.jsonl"]


def test_malformed_jsonl_lines_fail_only_their_rows(vertex, storage, prefix):
    client = vertex
    lines = [
        text_row("first", "Invoice Number: A-1\nInvoice Date: 2024-01-02\nVendor: A\nTotal: 1"),
        '{"key": "broken", "request": {"contents": [{"role": "user", "parts": [',
        text_row("third", "Invoice Number: C-3\nInvoice Date: 2024-03-04\nVendor: C\nTotal: 3"),
        "this line is not JSON at all",
    ]
    src = put_jsonl(storage, f"{prefix}/input.jsonl", lines)
    created = client.batches.create(model=MODEL, src=src, config={"dest": f"gs://{BUCKET}/{prefix}/out/"})
    job, _ = wait_done(client, created.name)

    assert job.state == JS.JOB_STATE_SUCCEEDED
    stats = job.completion_stats
    assert counts(stats) == (2, 2, 0)
    out = predictions(storage, job)
    assert set(out) == {"first", "broken", "third", None}
    assert answer_json(out["first"])["invoice_number"] == "A-1"
    assert answer_json(out["third"])["invoice_number"] == "C-3"
    for key, line_no in (("broken", 2), (None, 4)):
        row = out[key]
        assert "response" not in row
        assert row["status"].startswith('Bad Request: {"error": {"code": 400'), row["status"]  # Google's example form
        assert json.loads(row["status"].removeprefix("Bad Request: "))["error"]["status"] == "INVALID_ARGUMENT"
        assert f"Line {line_no}" in row["status"] and "not valid JSON" in row["status"], row["status"]


def test_input_spread_over_several_files(vertex, storage, prefix):
    """Vertex reads each input file on its own: a file without a final newline
    must not swallow the first request of the next file."""
    client = vertex
    first = put(
        storage, f"{prefix}/part-1.jsonl", json.dumps(text_row("a", "Invoice Number: A-1")), "application/jsonl"
    )
    second = put_jsonl(
        storage, f"{prefix}/part-2.jsonl", [text_row("b", "Invoice Number: B-2"), text_row("c", "Invoice Number: C-3")]
    )
    created = client.batches.create(
        model=MODEL,
        src={"format": "jsonl", "gcs_uri": [first, second]},
        config={"dest": f"gs://{BUCKET}/{prefix}/out/"},
    )
    assert created.src.gcs_uri == [first, second]
    job, _ = wait_done(client, created.name)
    assert job.state == JS.JOB_STATE_SUCCEEDED
    out = predictions(storage, job)
    assert {k: r["status"] for k, r in out.items()} == {"a": "", "b": "", "c": ""}
    assert {k: answer_json(r)["invoice_number"] for k, r in out.items()} == {"a": "A-1", "b": "B-2", "c": "C-3"}
    stats = job.completion_stats
    assert counts(stats) == (3, 0, 0)


def test_many_jobs_in_flight_each_publish_complete_predictions(vertex, storage, prefix):
    """Jobs created back to back, each with ~0.4 MB of output so that publishing
    takes a while: every one must succeed and publish all of its rows once."""
    client = vertex
    filler = "lorem ipsum dolor sit amet " * 7_500  # ~200 KB of document per row
    rows = [
        text_row(f"k{i}", f"Invoice Number: R-{i}\nInvoice Date: 2024-05-0{i + 1}\nVendor: V\nTotal: {i}\n{filler}")
        for i in range(2)
    ]
    src = put_jsonl(storage, f"{prefix}/input.jsonl", rows)
    names = [
        client.batches.create(model=MODEL, src=src, config={"dest": f"gs://{BUCKET}/{prefix}/out-{i:02d}/"}).name
        for i in range(40)
    ]
    problems = []
    for name in names:
        job, _ = wait_done(client, name)
        stats = job.completion_stats
        if job.state != JS.JOB_STATE_SUCCEEDED or job.output_info is None:
            problems.append(f"{name}: {job.state} {job.error}")
            continue
        directory = job.output_info.gcs_output_directory.removeprefix(f"gs://{BUCKET}/")
        lines = storage.bucket(BUCKET).blob(f"{directory}/predictions.jsonl").download_as_text().splitlines()
        keys = sorted(json.loads(line)["key"] for line in lines)
        if keys != ["k0", "k1"] or counts(stats)[:2] != (2, 0):
            problems.append(f"{name}: predictions keys {keys}, stats {counts(stats)}")
    assert problems == [], f"{len(problems)} of {len(names)} jobs published bad output:\n" + "\n".join(problems)


# ---------------------------------------------------------------- validation at create time


def test_create_rejects_bad_model_keys_and_inputs(vertex, storage, prefix):
    client = vertex
    dest = {"dest": f"gs://{BUCKET}/{prefix}/out/"}
    good = put_jsonl(storage, f"{prefix}/good.jsonl", [text_row("a", "Invoice Number: 1")])

    with pytest.raises(errors.APIError) as exc:
        client.batches.create(model="gemini-9-ultra", src=good, config=dest)
    assert_api_error(exc.value, 404, "NOT_FOUND", "gemini-9-ultra")

    # Vertex AI does not need a key: the output row carries the request instead.
    no_key = put_jsonl(
        storage, f"{prefix}/no-key.jsonl", [text_row("a", "x"), {"request": text_row("b", "y")["request"]}]
    )
    job, _ = wait_done(client, client.batches.create(model=MODEL, src=no_key, config=dest).name)
    out = predictions(storage, job)
    assert (
        set(out) == {"a", None} and out[None]["request"] == text_row("b", "y")["request"] and out[None]["status"] == ""
    )

    duplicate = put_jsonl(
        storage, f"{prefix}/dup.jsonl", [text_row("same-key", "x"), text_row("other", "y"), text_row("same-key", "z")]
    )
    with pytest.raises(errors.APIError) as exc:
        client.batches.create(model=MODEL, src=duplicate, config=dest)
    assert_api_error(exc.value, 400, "INVALID_ARGUMENT", "same-key", "duplicate")

    absent = f"gs://{BUCKET}/{prefix}/does-not-exist.jsonl"
    with pytest.raises(errors.APIError) as exc:
        client.batches.create(model=MODEL, src=absent, config=dest)
    assert_api_error(exc.value, 400, "INVALID_ARGUMENT", "does-not-exist.jsonl")

    assert [j.name for j in client.batches.list()] == [job.name]  # no rejected request left a job behind
    # ...and the good input is accepted by the same emulator.
    job, _ = wait_done(client, client.batches.create(model=MODEL, src=good, config=dest).name)
    assert job.state == JS.JOB_STATE_SUCCEEDED


# ---------------------------------------------------------------- list


def test_list_pages_and_filters(vertex_emulator, vertex, storage, prefix):
    client = vertex
    src = put_jsonl(storage, f"{prefix}/input.jsonl", [text_row("a", "Invoice Number: 1")])
    names = ["list-common", "list-common-2", "list-special"]
    created = [
        client.batches.create(
            model=MODEL, src=src, config={"dest": f"gs://{BUCKET}/{prefix}/out-{i}/", "display_name": n}
        ).name
        for i, n in enumerate(names)
    ]
    assert len(set(created)) == 3

    pager = client.batches.list(config={"page_size": 2})
    assert len(pager.page) == 2
    listed = [j.name for j in pager]  # the pager follows nextPageToken
    assert sorted(listed) == sorted(created)

    special = list(client.batches.list(config={"filter": 'display_name="list-special"'}))
    assert [(j.name, j.display_name) for j in special] == [(created[2], "list-special")]
    assert list(client.batches.list(config={"filter": 'display_name="list"'})) == []  # exact, not prefix

    for name in created:
        assert wait_done(client, name)[0].state == JS.JOB_STATE_SUCCEEDED
    succeeded = client.batches.list(config={"filter": "state=JOB_STATE_SUCCEEDED", "page_size": 1})
    assert sorted(j.name for j in succeeded) == sorted(created)
    assert list(client.batches.list(config={"filter": "state=JOB_STATE_RUNNING"})) == []

    # Jobs live under their project and location: another location lists none of them.
    elsewhere = vertex_client(vertex_emulator.url, location="europe-west4")
    assert list(elsewhere.batches.list()) == []


# ---------------------------------------------------------------- cancel and delete


def test_cancel_running_job_and_delete_rules(start_emulator, gcs, storage, prefix):
    # 40 rows at 0.1 s each: the job runs for about four seconds.
    emulator = start_emulator(time_scale=100, gcs_endpoint=gcs.url, faults={"row_seconds": 10})
    client = vertex_client(emulator.url)
    rows = [text_row(f"row-{i:02d}", f"Invoice Number: N-{i}") for i in range(40)]
    src = put_jsonl(storage, f"{prefix}/input.jsonl", rows)
    job = client.batches.create(
        model=MODEL, src=src, config={"dest": f"gs://{BUCKET}/{prefix}/out/", "display_name": "to-cancel"}
    )

    deadline = time.monotonic() + 10
    while True:
        current = client.batches.get(name=job.name)
        stats = current.completion_stats  # counts of zero are left out, as the service leaves them out
        if current.state == JS.JOB_STATE_RUNNING and stats and (stats.successful_count or 0) >= 2:
            break
        assert time.monotonic() < deadline, f"job never got going: {current.state} {current.completion_stats}"
        time.sleep(0.02)

    with pytest.raises(errors.APIError) as exc:
        client.batches.delete(name=job.name)
    assert_api_error(exc.value, 400, "FAILED_PRECONDITION", "JOB_STATE_RUNNING")
    assert client.batches.get(name=job.name).state == JS.JOB_STATE_RUNNING  # still there, still running

    cancelled_at = time.monotonic()
    client.batches.cancel(name=job.name)
    final, states = wait_done(client, job.name, timeout=10, poll=0.01)
    elapsed = time.monotonic() - cancelled_at
    assert final.state == JS.JOB_STATE_CANCELLED, states
    assert set(states) <= {JS.JOB_STATE_RUNNING, JS.JOB_STATE_CANCELLING, JS.JOB_STATE_CANCELLED}, states
    assert elapsed < 2.5, f"cancel took {elapsed:.1f}s: the rows were not abandoned"
    assert (final.error.code, final.error.message) == (1, "CANCELED")
    assert final.completion_stats is None, "a cancelled job carries no completion stats"
    # The rows it finished are exported, and only those.
    out = predictions(storage, final)
    assert 2 <= len(out) < 40 and all(r["status"] == "" and "response" in r for r in out.values())
    assert set(out) < {r["key"] for r in rows}
    assert client.batches.get(name=job.name).state == JS.JOB_STATE_CANCELLED

    with pytest.raises(errors.APIError) as exc:
        client.batches.cancel(name=job.name)
    assert_api_error(exc.value, 400, "FAILED_PRECONDITION", "CANCELLED")

    client.batches.delete(name=job.name)
    with pytest.raises(errors.APIError) as exc:
        client.batches.get(name=job.name)
    assert_api_error(exc.value, 404, "NOT_FOUND")
    with pytest.raises(errors.APIError) as exc:
        client.batches.delete(name=job.name)
    assert exc.value.code == 404
    assert list(client.batches.list()) == []


# ---------------------------------------------------------------- async client


def test_async_client_create_get_list(vertex, storage, prefix):
    aclient = vertex.aio
    src = put_jsonl(storage, f"{prefix}/input.jsonl", [text_row("k1", TEXT_DOC), text_row("k2", "Invoice Number: Q-2")])

    async def run():
        first = await aclient.batches.create(
            model=MODEL, src=src, config={"dest": f"gs://{BUCKET}/{prefix}/out-a/", "display_name": "async-a"}
        )
        second = await aclient.batches.create(
            model=MODEL, src=src, config={"dest": f"gs://{BUCKET}/{prefix}/out-b/", "display_name": "async-b"}
        )
        done = []
        for created in (first, second):
            deadline = time.monotonic() + 30
            while not (job := await aclient.batches.get(name=created.name)).done:
                assert time.monotonic() < deadline
                await asyncio.sleep(0.02)
            done.append(job)
        pager = await aclient.batches.list(config={"page_size": 1})
        first_page = list(pager.page)
        listed = [j.name async for j in pager]
        filtered = [j.name async for j in await aclient.batches.list(config={"filter": 'display_name="async-b"'})]
        return first, second, done, first_page, listed, filtered

    first, second, done, first_page, listed, filtered = asyncio.run(run())
    assert JOB_NAME.match(first.name) and JOB_NAME.match(second.name) and first.name != second.name
    assert first.state == JS.JOB_STATE_PENDING
    assert [j.state for j in done] == [JS.JOB_STATE_SUCCEEDED] * 2
    assert len(first_page) == 1
    assert sorted(listed) == sorted([first.name, second.name])
    assert filtered == [second.name]
    for job, suffix in zip(done, ("out-a/", "out-b/"), strict=False):
        assert job.completion_stats.successful_count == 2
        assert job.output_info.gcs_output_directory.startswith(f"gs://{BUCKET}/{prefix}/{suffix}")
        out = predictions(storage, job)
        assert answer_json(out["k1"]) == TEXT_EXPECTED
        assert answer_json(out["k2"])["invoice_number"] == "Q-2"


# ---------------------------------------------------------------- configuration and auth


def test_vertex_needs_a_gcs_endpoint(start_emulator):
    emulator = start_emulator(time_scale=3600)  # no --gcs-endpoint
    client = vertex_client(emulator.url)
    assert list(client.batches.list()) == []  # reading job metadata needs no GCS
    with pytest.raises(errors.APIError) as exc:
        client.batches.create(model=MODEL, src=f"gs://{BUCKET}/input.jsonl", config={"dest": f"gs://{BUCKET}/out/"})
    assert_api_error(exc.value, 400, "FAILED_PRECONDITION", "--gcs-endpoint")


def test_requests_without_a_bearer_token_are_unauthenticated(vertex_emulator, vertex):
    url = f"{vertex_emulator.url}/v1beta1/{PARENT}/batchPredictionJobs"
    body = {
        "model": f"publishers/google/models/{MODEL}",
        "inputConfig": {"instancesFormat": "jsonl", "gcsSource": {"uris": [f"gs://{BUCKET}/x.jsonl"]}},
        "outputConfig": {"predictionsFormat": "jsonl", "gcsDestination": {"outputUriPrefix": f"gs://{BUCKET}/out/"}},
    }
    for headers in ({}, {"Authorization": "Basic dXNlcjpwYXNz"}, {"x-goog-api-key": "an-api-key"}):
        response = httpx.post(url, json=body, headers=headers)
        assert response.status_code == 401, (headers, response.text)
        error = response.json()
        assert set(error) == {"error"} and set(error["error"]) == {"code", "message", "status"}
        assert error["error"]["code"] == 401 and error["error"]["status"] == "UNAUTHENTICATED"
        assert error["error"]["message"]
    assert httpx.get(url).status_code == 401
    # The same request with a bearer token is let through (and listing works).
    authed = httpx.get(url, headers={"Authorization": "Bearer test-token"})
    assert authed.status_code == 200 and authed.json() == {"batchPredictionJobs": []}
    assert list(vertex.batches.list()) == []  # nothing was created by the refused POSTs


# ---------------------------------------------------------------- true to the published API


def check_spec(value, schema: str) -> None:
    problems = discovery.vertex().problems(value, f"GoogleCloudAiplatformV1{schema}")
    assert problems == [], f"{schema}: {problems}"


def raw_job(emulator, name: str) -> dict:
    response = httpx.get(f"{emulator.url}/v1beta1/{name}", headers={"authorization": "Bearer x"}, timeout=10)
    assert response.status_code == 200, response.text
    return response.json()


def test_job_bodies_follow_the_discovery_document(start_emulator, gcs, storage, prefix):
    emulator = start_emulator(time_scale=3600, gcs_endpoint=gcs.url, faults={"pending_seconds": 2 * 3600})
    client = vertex_client(emulator.url)
    src = put_jsonl(storage, f"{prefix}/in.jsonl", [text_row("a", TEXT_DOC), {"key": "b", "request": {"contents": []}}])
    job = client.batches.create(model=MODEL, src=src, config={"dest": f"gs://{BUCKET}/{prefix}/out/"})
    pending = raw_job(emulator, job.name)
    check_spec(pending, "BatchPredictionJob")
    assert pending["state"] == "JOB_STATE_PENDING" and "completionStats" not in pending, "no stats while queued"
    done, _ = wait_done(client, job.name)
    body = raw_job(emulator, done.name)
    check_spec(body, "BatchPredictionJob")
    assert body["completionStats"] == {"successfulCount": "1", "failedCount": "1"}, "zero counts are left out"
    listed = httpx.get(
        f"{emulator.url}/v1beta1/{PARENT}/batchPredictionJobs", headers={"authorization": "Bearer x"}
    ).json()
    check_spec(listed, "ListBatchPredictionJobsResponse")
    out = predictions(storage, done)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+00:00", out["a"]["processed_time"])


def test_a_job_queued_past_72_hours_expires_with_nothing(start_emulator, gcs, storage, prefix):
    emulator = start_emulator(time_scale=72 * 3600 / 1.5, gcs_endpoint=gcs.url, faults={"stuck_pending_rate": 1})
    client = vertex_client(emulator.url)
    src = put_jsonl(storage, f"{prefix}/in.jsonl", [text_row("a", TEXT_DOC)])
    job = client.batches.create(model=MODEL, src=src, config={"dest": f"gs://{BUCKET}/{prefix}/out/"})
    done, states = wait_done(client, job.name, timeout=10)
    assert done.state == JS.JOB_STATE_EXPIRED and set(states) == {JS.JOB_STATE_PENDING, JS.JOB_STATE_EXPIRED}
    assert (done.end_time - done.create_time).total_seconds() == pytest.approx(1.5, abs=0.5)
    assert done.output_info is None and blobs_under(storage, f"{prefix}/out") == []


def test_a_job_running_past_24_hours_expires_and_exports_what_it_finished(start_emulator, gcs, storage, prefix):
    emulator = start_emulator(
        time_scale=24 * 3600 / 1.5,
        gcs_endpoint=gcs.url,
        faults={"job_expire_rate": 1, "partial_fraction": 0.5, "pending_seconds": 0},
    )
    client = vertex_client(emulator.url)
    rows = [text_row(f"k{i}", TEXT_DOC) for i in range(10)]
    job = client.batches.create(
        model=MODEL, src=put_jsonl(storage, f"{prefix}/in.jsonl", rows), config={"dest": f"gs://{BUCKET}/{prefix}/out/"}
    )
    done, _ = wait_done(client, job.name, timeout=10)
    assert done.state == JS.JOB_STATE_EXPIRED
    assert (done.end_time - done.start_time).total_seconds() == pytest.approx(1.5, abs=0.5)
    out = predictions(storage, done)
    assert len(out) == 5 and all("response" in r for r in out.values())
    assert counts(done.completion_stats) == (5, 0, 5)


def test_input_uris_may_use_wildcards(vertex, storage, prefix):
    for name in ("part-1.jsonl", "part-2.jsonl", "other.txt"):
        put_jsonl(storage, f"{prefix}/in/{name}", [text_row(name, TEXT_DOC)])
    job = vertex.batches.create(
        model=MODEL, src=f"gs://{BUCKET}/{prefix}/in/part-*.jsonl", config={"dest": f"gs://{BUCKET}/{prefix}/out/"}
    )
    done, _ = wait_done(vertex, job.name)
    assert set(predictions(storage, done)) == {"part-1.jsonl", "part-2.jsonl"}
    with pytest.raises(errors.APIError) as exc:
        vertex.batches.create(
            model=MODEL, src=f"gs://{BUCKET}/{prefix}/none-*.jsonl", config={"dest": f"gs://{BUCKET}/{prefix}/out/"}
        )
    assert exc.value.code == 400 and "No files match" in exc.value.message

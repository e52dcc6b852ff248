"""The Developer API surface of the emulator, driven by the real google-genai client."""

from __future__ import annotations

import asyncio
import io
import json
import time

import httpx
import orjson
import pytest
from google.genai import errors, types

from gemini_emulator import discovery, responder
from support.emulators import developer_client, upload_jsonl, wait_done

SCHEMA = {
    "type": "object",
    "properties": {
        "invoice_number": {"type": "string"},
        "date": {"type": "string", "format": "date"},
        "total": {"type": "number"},
    },
    "required": ["invoice_number", "date", "total"],
}


def row(key: str, text: str, **config) -> dict:
    return {
        "key": key,
        "request": {
            "contents": [{"role": "user", "parts": [{"text": "Extract the invoice fields."}, {"text": text}]}],
            "generationConfig": {"responseMimeType": "application/json", "responseJsonSchema": SCHEMA, **config},
        },
    }


def output_rows(client, job) -> list[dict]:
    return [json.loads(line) for line in client.files.download(file=job.dest.file_name).decode().splitlines()]


# ---------------------------------------------------------------- Files API


def test_upload_goes_processing_then_active_and_keeps_bytes(start_emulator, tmp_path):
    emulator = start_emulator(time_scale=1, faults={"file_processing_seconds": 1})
    client = developer_client(emulator.url)
    pdf = tmp_path / "doc.txt"
    pdf.write_text("Invoice Number: A-1\n" * 1000)
    uploaded = client.files.upload(file=pdf, config={"display_name": "doc"})
    assert uploaded.state == types.FileState.PROCESSING
    assert uploaded.size_bytes == pdf.stat().st_size
    assert uploaded.mime_type == "text/plain"
    assert uploaded.uri.endswith(f"/v1beta/{uploaded.name}")
    assert uploaded.expiration_time - uploaded.create_time == pytest.approx(
        __import__("datetime").timedelta(hours=48), abs=__import__("datetime").timedelta(seconds=1)
    )
    time.sleep(1.1)
    assert client.files.get(name=uploaded.name).state == types.FileState.ACTIVE


def test_file_list_pages_and_delete(client):
    names = {upload_jsonl(client, [row(f"k{i}", "x")]).name for i in range(5)}
    page = client.files.list(config={"page_size": 2})
    assert len(page.page) == 2
    assert {f.name for f in page} == names  # the pager follows nextPageToken
    victim = sorted(names)[0]
    client.files.delete(name=victim)
    assert {f.name for f in client.files.list()} == names - {victim}
    with pytest.raises(errors.ClientError) as exc:
        client.files.get(name=victim)
    assert exc.value.code == 403 and victim.split("/")[1] in exc.value.message


def test_uploaded_files_expire_after_48_emulated_hours(start_emulator):
    emulator = start_emulator(time_scale=48 * 3600 / 1.5)  # 48 h pass in 1.5 s
    client = developer_client(emulator.url)
    uploaded = upload_jsonl(client, [row("k", "x")])
    assert client.files.get(name=uploaded.name).name == uploaded.name
    time.sleep(1.6)
    with pytest.raises(errors.ClientError) as exc:
        client.files.get(name=uploaded.name)
    assert exc.value.code == 403
    assert uploaded.name not in {f.name for f in client.files.list()}


def test_uploaded_files_cannot_be_downloaded(client):
    uploaded = upload_jsonl(client, [row("k", "x")])
    with pytest.raises(errors.ClientError) as exc:
        client.files.download(file=uploaded.name)
    assert exc.value.code == 400 and "generated" in exc.value.message


def test_large_upload_is_chunked_and_hashed(client, tmp_path):
    import base64
    import hashlib

    blob = tmp_path / "big.jsonl"
    line = orjson.dumps(row("k", "y" * 1000)) + b"\n"
    with blob.open("wb") as fh:
        for i in range(20_000):  # ~21 MB: several 8 MB chunks
            fh.write(line.replace(b'"k"', f'"k{i}"'.encode(), 1))
    uploaded = client.files.upload(file=blob, config={"mime_type": "application/jsonl"})
    assert uploaded.size_bytes == blob.stat().st_size
    assert uploaded.sha256_hash == base64.b64encode(hashlib.sha256(blob.read_bytes()).digest()).decode()


def test_named_upload_and_conflict(client):
    first = upload_jsonl(client, [row("k", "x")], name="my-input")
    assert first.name == "files/my-input"
    with pytest.raises(errors.ClientError) as exc:
        upload_jsonl(client, [row("k", "x")], name="my-input")
    assert exc.value.code == 409


# ---------------------------------------------------------------- batches


def test_file_batch_lifecycle_and_schema_answers(client):
    rows = [
        row(f"doc-{i}", f"Invoice Number: INV-{i}\nDate: 2024-03-{i + 1:02d}\nTotal: $1,2{i}0.50") for i in range(5)
    ]
    job = client.batches.create(
        model="gemini-2.5-flash", src=upload_jsonl(client, rows).name, config={"display_name": "invoices"}
    )
    assert job.name.startswith("batches/")
    assert job.state == types.JobState.JOB_STATE_PENDING
    assert job.display_name == "invoices" and job.model == "models/gemini-2.5-flash"
    job = wait_done(client, job.name)
    assert job.state == types.JobState.JOB_STATE_SUCCEEDED
    assert job.create_time <= job.update_time and job.end_time is not None
    out = {r["key"]: r for r in output_rows(client, job)}
    assert set(out) == {r["key"] for r in rows}
    for i in range(5):
        response = out[f"doc-{i}"]["response"]
        candidate = response["candidates"][0]
        assert candidate["finishReason"] == "STOP"
        data = json.loads(candidate["content"]["parts"][0]["text"])
        assert data == {"invoice_number": f"INV-{i}", "date": f"2024-03-{i + 1:02d}", "total": float(f"12{i}0.50")}
        usage = response["usageMetadata"]
        assert usage["totalTokenCount"] >= usage["promptTokenCount"] + usage["candidatesTokenCount"] > 0


def test_batch_stats_in_rest_body(client, emulator):
    rows = [row(f"k{i}", "Invoice Number: 1") for i in range(4)]
    job = wait_done(client, client.batches.create(model="gemini-2.5-flash", src=upload_jsonl(client, rows).name).name)
    body = httpx.get(f"{emulator.url}/v1beta/{job.name}", headers={"x-goog-api-key": "k"}).json()
    assert body["done"] is True
    assert body["metadata"]["state"] == "BATCH_STATE_SUCCEEDED"
    assert body["metadata"]["batchStats"] == {
        "requestCount": "4",
        "successfulRequestCount": "4",
    }  # zero counters left out


def test_inlined_requests_return_inlined_responses(client):
    requests = [
        types.InlinedRequest(contents="Title: Alpha report", metadata={"key": "a"}),
        types.InlinedRequest(
            contents="Title: Beta report",
            metadata={"key": "b"},
            config=types.GenerateContentConfig(
                response_mime_type="application/json",
                response_json_schema={"type": "object", "properties": {"title": {"type": "string"}}},
            ),
        ),
    ]
    job = wait_done(client, client.batches.create(model="gemini-2.5-flash", src=requests).name)
    assert job.state == types.JobState.JOB_STATE_SUCCEEDED
    responses = {r.metadata["key"]: r for r in job.dest.inlined_responses}
    assert responses["a"].response.text.startswith("Summary: Title: Alpha")
    assert json.loads(responses["b"].response.text) == {"title": "Beta report"}


def test_malformed_line_fails_only_its_row(client):
    good = [row(f"k{i}", "Invoice Number: 7") for i in range(3)]
    data = (
        orjson.dumps(good[0])
        + b"\n"
        + b'{"key": "broken", "request": {oops\n'
        + orjson.dumps(good[1])
        + b"\n"
        + orjson.dumps(good[2])
        + b"\n"
    )
    job = wait_done(client, client.batches.create(model="gemini-2.5-flash", src=upload_jsonl(client, data).name).name)
    assert job.state == types.JobState.JOB_STATE_SUCCEEDED
    out = {r.get("key"): r for r in output_rows(client, job)}
    assert out["broken"]["error"]["code"] == 3 and "Line 2 is not valid JSON" in out["broken"]["error"]["message"]
    assert all("response" in out[f"k{i}"] for i in range(3))


def test_request_in_sdk_flat_form_fails_its_row(client):
    flat = {
        "key": "flat",
        "request": {"contents": [{"parts": [{"text": "x"}]}], "thinking_config": {"thinking_budget": 0}},
    }
    job = wait_done(
        client,
        client.batches.create(model="gemini-2.5-flash", src=upload_jsonl(client, [flat, row("ok", "x")]).name).name,
    )
    out = {r["key"]: r for r in output_rows(client, job)}
    assert 'Unknown name "thinking_config"' in out["flat"]["error"]["message"]
    assert "response" in out["ok"]


@pytest.mark.parametrize(
    ("lines", "fragment"),
    [
        ([{"request": {"contents": []}}], "Line 1: the request has no 'key'"),
        (
            [row("same", "x"), row("other", "y"), row("same", "z")],
            "Line 3: duplicate key 'same' (first used on line 1)",
        ),
        ([], "no requests"),
    ],
)
def test_invalid_input_is_rejected_with_400(client, lines, fragment):
    data = b"".join(orjson.dumps(r) + b"\n" for r in lines) or b"\n"
    with pytest.raises(errors.ClientError) as exc:
        client.batches.create(model="gemini-2.5-flash", src=upload_jsonl(client, data).name)
    assert exc.value.code == 400 and exc.value.status == "INVALID_ARGUMENT"
    assert fragment in exc.value.message


def test_oversize_input_is_rejected(start_emulator):
    client = developer_client(start_emulator(time_scale=3600, faults={"max_input_bytes": 1000}).url)
    with pytest.raises(errors.ClientError) as exc:
        upload_jsonl(client, [row(f"k{i}", "x" * 100) for i in range(20)])
    assert exc.value.code == 400 and "exceeds the maximum of 1000 bytes" in exc.value.message


def test_unknown_model_is_404_in_google_error_shape(client, emulator):
    src = upload_jsonl(client, [row("k", "x")]).name
    with pytest.raises(errors.ClientError) as exc:
        client.batches.create(model="gemini-9-ultra", src=src)
    assert exc.value.code == 404 and exc.value.status == "NOT_FOUND"
    assert "models/gemini-9-ultra is not found" in exc.value.message
    raw = httpx.post(
        f"{emulator.url}/v1beta/models/nope:batchGenerateContent", headers={"x-goog-api-key": "k"}, json={"batch": {}}
    )
    assert raw.status_code == 404 and set(raw.json()["error"]) == {"code", "message", "status"}


def test_missing_api_key_is_refused(emulator):
    raw = httpx.get(f"{emulator.url}/v1beta/batches")
    assert raw.status_code == 403 and raw.json()["error"]["status"] == "PERMISSION_DENIED"


def test_unknown_batch_is_404(client):
    with pytest.raises(errors.ClientError) as exc:
        client.batches.get(name="batches/doesnotexist")
    assert exc.value.code == 404


def test_batch_list_pages(client):
    src = upload_jsonl(client, [row("k", "x")]).name
    names = {client.batches.create(model="gemini-2.5-flash", src=src).name for _ in range(5)}
    pager = client.batches.list(config={"page_size": 2})
    assert len(pager.page) == 2
    assert {j.name for j in pager} == names


def test_cancel_while_running_and_delete(start_emulator):
    emulator = start_emulator(time_scale=10, faults={"pending_seconds": 0, "row_seconds": 1})
    client = developer_client(emulator.url)
    job = client.batches.create(
        model="gemini-2.5-flash", src=upload_jsonl(client, [row(f"k{i}", "x") for i in range(100)]).name
    )
    deadline = time.monotonic() + 10
    while client.batches.get(name=job.name).state != types.JobState.JOB_STATE_RUNNING:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    client.batches.cancel(name=job.name)
    job = wait_done(client, job.name)
    assert job.state == types.JobState.JOB_STATE_CANCELLED
    assert job.dest is None or job.dest.file_name is None
    with pytest.raises(errors.ClientError) as exc:
        client.batches.cancel(name=job.name)
    assert exc.value.status == "FAILED_PRECONDITION"
    client.batches.delete(name=job.name)
    with pytest.raises(errors.ClientError):
        client.batches.get(name=job.name)


def test_job_expires_after_48_emulated_hours(start_emulator):
    emulator = start_emulator(time_scale=48 * 3600 / 1.5, faults={"stuck_pending_rate": 1})
    client = developer_client(emulator.url)
    job = client.batches.create(model="gemini-2.5-flash", src=upload_jsonl(client, [row("k", "x")]).name)
    time.sleep(0.5)
    assert client.batches.get(name=job.name).state == types.JobState.JOB_STATE_PENDING
    job = wait_done(client, job.name, timeout=10)
    assert job.state == types.JobState.JOB_STATE_EXPIRED
    assert (job.end_time - job.create_time).total_seconds() == pytest.approx(1.5, abs=0.5)


def test_file_data_parts_read_uploaded_pdfs(client, tmp_path):
    from fpdf import FPDF

    pdf = FPDF()
    for page in range(3):
        pdf.add_page()
        pdf.set_font("Helvetica", size=12)
        pdf.cell(0, 10, f"Invoice Number: P-{page}" if page == 0 else f"Page {page + 1}")
        if page == 0:
            pdf.ln()
            pdf.cell(0, 10, "Date: 17 June 2025")
            pdf.ln()
            pdf.cell(0, 10, "Total: 99.95")
    path = tmp_path / "invoice.pdf"
    pdf.output(str(path))
    doc = client.files.upload(file=path)
    assert doc.mime_type == "application/pdf"
    request = {
        "key": "pdf",
        "request": {
            "contents": [
                {
                    "role": "user",
                    "parts": [{"text": "Extract."}, {"fileData": {"fileUri": doc.uri, "mimeType": "application/pdf"}}],
                }
            ],
            "generationConfig": {
                "responseMimeType": "application/json",
                "responseSchema": {
                    "type": "OBJECT",
                    "properties": {
                        "invoice_number": {"type": "STRING"},
                        "date": {"type": "STRING"},
                        "total": {"type": "NUMBER"},
                    },
                },
            },
        },
    }
    missing = {
        "key": "gone",
        "request": {
            "contents": [
                {"parts": [{"text": "x"}, {"fileData": {"fileUri": "files/nosuchfile", "mimeType": "application/pdf"}}]}
            ]
        },
    }
    time.sleep(0.01)
    job = wait_done(
        client, client.batches.create(model="gemini-2.5-flash", src=upload_jsonl(client, [request, missing]).name).name
    )
    out = {r["key"]: r for r in output_rows(client, job)}
    answer = out["pdf"]["response"]
    assert json.loads(answer["candidates"][0]["content"]["parts"][0]["text"]) == {
        "invoice_number": "P-0",
        "date": "2025-06-17",
        "total": 99.95,
    }
    assert {"modality": "DOCUMENT", "tokenCount": 3 * 258} in answer["usageMetadata"]["promptTokensDetails"]
    assert out["gone"]["error"]["code"] == 7 and "nosuchfile" in out["gone"]["error"]["message"]


def test_thinking_budget_can_eat_the_output_budget(client):
    starved = row("starved", "Invoice Number: 1", maxOutputTokens=50, thinkingConfig={"thinkingBudget": 200})
    fine = row("fine", "Invoice Number: 1", maxOutputTokens=500, thinkingConfig={"thinkingBudget": 0})
    job = wait_done(
        client, client.batches.create(model="gemini-2.5-flash", src=upload_jsonl(client, [starved, fine]).name).name
    )
    out = {r["key"]: r["response"] for r in output_rows(client, job)}
    assert out["starved"]["candidates"][0]["finishReason"] == "MAX_TOKENS"
    assert "parts" not in out["starved"]["candidates"][0]["content"]
    assert out["fine"]["candidates"][0]["finishReason"] == "STOP"
    assert "thoughtsTokenCount" not in out["fine"]["usageMetadata"]


def test_async_client_full_cycle(client):
    aclient = client.aio

    async def run():
        src = await aclient.files.upload(
            file=io.BytesIO(orjson.dumps(row("a", "Invoice Number: Z")) + b"\n"),
            config={"mime_type": "application/jsonl"},
        )
        job = await aclient.batches.create(model="gemini-2.5-flash", src=src.name)
        while not (job := await aclient.batches.get(name=job.name)).done:
            await asyncio.sleep(0.05)
        listed = [j.name async for j in await aclient.batches.list(config={"page_size": 1})]
        data = (
            await aclient.files.download(file=job.dest.file_name)
            if hasattr(aclient.files, "download")
            else client.files.download(file=job.dest.file_name)
        )
        return job, listed, data

    job, listed, data = asyncio.run(run())
    assert job.state == types.JobState.JOB_STATE_SUCCEEDED
    assert job.name in listed
    assert (
        json.loads(
            json.loads(data.decode().splitlines()[0])["response"]["candidates"][0]["content"]["parts"][0]["text"]
        )["invoice_number"]
        == "Z"
    )


# ---------------------------------------------------------------- true to the published API


def check_spec(value, schema: str) -> None:
    """The body as the Discovery document allows it: known fields, types, int64 as strings, enums."""
    problems = discovery.developer().problems(value, schema)
    assert problems == [], f"{schema}: {problems}"


def check_operation(body: dict) -> None:
    check_spec(body, "Operation")
    check_spec(body["metadata"], "GenerateContentBatch")
    assert body["metadata"]["@type"] == "type.googleapis.com/google.ai.generativelanguage.v1main.GenerateContentBatch"
    assert body.get("done") in (None, True), "proto3 JSON leaves out done: false"
    assert "0" not in body["metadata"].get("batchStats", {}).values(), "zero counters are left out"
    if "response" in body:
        check_spec(body["response"], "GenerateContentBatchOutput")


def raw(emulator, method: str, path: str, **kwargs) -> httpx.Response:
    return httpx.request(
        method,
        f"{emulator.url}{path}",
        headers={"x-goog-api-key": "k", **kwargs.pop("headers", {})},
        timeout=10,
        **kwargs,
    )


def test_google_s_documented_flow_uploads_then_creates_at_once(client):
    """files.upload, then batches.create with the upload's name straight away: documents and JSONL need no
    processing (only large media do)."""
    data = b"".join(orjson.dumps(row(f"k{i}", f"Invoice Number: {i}")) + b"\n" for i in range(3))
    uploaded = client.files.upload(file=io.BytesIO(data), config={"mime_type": "jsonl"})
    assert uploaded.state == types.FileState.ACTIVE
    job = client.batches.create(model="gemini-2.5-flash-lite", src=uploaded.name)
    assert wait_done(client, job.name).state == types.JobState.JOB_STATE_SUCCEEDED


def test_media_are_processed_before_use(start_emulator):
    emulator = start_emulator(time_scale=1)
    client = developer_client(emulator.url)
    video = client.files.upload(file=io.BytesIO(b"\0" * 1000), config={"mime_type": "video/mp4"})
    assert video.state == types.FileState.PROCESSING
    text = client.files.upload(file=io.BytesIO(b"Invoice Number: 1"), config={"mime_type": "text/plain"})
    assert text.state == types.FileState.ACTIVE


def test_every_body_follows_the_discovery_document(client, emulator):
    rows = [row("ok", "Invoice Number: A-1"), {"key": "bad", "request": {"contents": []}}]
    uploaded = upload_jsonl(client, rows)
    check_spec(raw(emulator, "GET", f"/v1beta/{uploaded.name}").json(), "File")
    check_spec(raw(emulator, "GET", "/v1beta/files").json(), "ListFilesResponse")
    created = raw(
        emulator,
        "POST",
        "/v1beta/models/gemini-2.5-flash-lite:batchGenerateContent",
        json={"batch": {"displayName": "spec", "inputConfig": {"fileName": uploaded.name}}},
    ).json()
    check_operation(created)
    assert created["metadata"]["batchStats"] == {"requestCount": "2", "pendingRequestCount": "2"}
    job = wait_done(client, created["name"])
    body = raw(emulator, "GET", f"/v1beta/{job.name}").json()
    check_operation(body)
    listed = raw(emulator, "GET", "/v1beta/batches").json()
    check_spec(listed, "ListOperationsResponse")
    for operation in listed["operations"]:
        check_operation(operation)
    out = {r["key"]: r for r in output_rows(client, job)}
    check_spec(out["ok"]["response"], "GenerateContentResponse")
    check_spec(out["bad"]["error"], "Status")
    assert set(out["bad"]["error"]) == {"code", "message"}, "a google.rpc.Status has no status string"

    inline = client.batches.create(
        model="gemini-2.5-flash-lite", src=[{"contents": [{"parts": [{"text": "Invoice Number: 7"}], "role": "user"}]}]
    )
    body = raw(emulator, "GET", f"/v1beta/{wait_done(client, inline.name).name}").json()
    check_operation(body)
    assert "inputConfig" not in body["metadata"], "an inline batch's requests are not echoed"
    (answer,) = body["response"]["inlinedResponses"]["inlinedResponses"]
    check_spec(answer, "InlinedResponse")
    assert "metadata" not in answer, "no metadata: null"


def test_inline_requests_with_unknown_fields_are_refused_at_create(client, emulator):
    """The SDK would refuse the field itself (pydantic), so the request is sent as raw REST."""
    request = {"contents": [{"parts": [{"text": "x"}], "role": "user"}], "generationConfig": {"temprature": 0}}
    response = raw(
        emulator,
        "POST",
        "/v1beta/models/gemini-2.5-flash-lite:batchGenerateContent",
        json={"batch": {"inputConfig": {"requests": {"requests": [{"request": request}]}}}},
    )
    assert response.status_code == 400 and "temprature" in response.json()["error"]["message"]
    assert list(client.batches.list()) == [], "nothing was created"


def test_a_cancelled_batch_ends_with_the_documented_error(start_emulator):
    emulator = start_emulator(time_scale=1, faults={"pending_seconds": 3600})
    client = developer_client(emulator.url)
    job = client.batches.create(model="gemini-2.5-flash-lite", src=upload_jsonl(client, [row("k", "x")]).name)
    client.batches.cancel(name=job.name)
    done = wait_done(client, job.name)
    assert done.state == types.JobState.JOB_STATE_CANCELLED
    body = raw(emulator, "GET", f"/v1beta/{job.name}").json()  # the SDK does not map an operation's error
    check_operation(body)
    assert body["done"] is True and body["error"]["code"] == 1 and "response" not in body


def test_downloads_redirect_to_the_media_path(client, emulator):
    job = wait_done(
        client,
        client.batches.create(model="gemini-2.5-flash-lite", src=upload_jsonl(client, [row("k", "x")]).name).name,
    )
    api_path = f"/v1beta/{job.dest.file_name}:download"
    redirect = raw(emulator, "GET", api_path, params={"alt": "media"})
    assert redirect.status_code == 302
    assert redirect.headers["location"] == f"{emulator.url}/download{api_path}?alt=media"
    media = raw(emulator, "GET", f"/download{api_path}", params={"alt": "media"})
    assert media.status_code == 200 and json.loads(media.content.splitlines()[0])["key"] == "k"
    assert client.files.get(name=job.dest.file_name).download_uri.endswith(f"/download{api_path}?alt=media")
    assert output_rows(client, job)[0]["key"] == "k"  # the SDK follows the redirect


@pytest.mark.parametrize("protocol", ["raw", "multipart"])
def test_simple_and_multipart_uploads(client, emulator, protocol):
    data = b"Invoice Number: S-1\n"
    if protocol == "raw":
        response = raw(
            emulator,
            "POST",
            "/upload/v1beta/files",
            content=data,
            headers={"x-goog-upload-protocol": "raw", "content-type": "text/plain"},
        )
    else:
        boundary = "b0undary"
        body = (
            (
                f"--{boundary}\r\nContent-Type: application/json; charset=UTF-8\r\n\r\n"
                '{"file": {"display_name": "multi"}}\r\n'
                f"--{boundary}\r\nContent-Type: text/plain\r\n\r\n"
            ).encode()
            + data
            + f"\r\n--{boundary}--\r\n".encode()
        )
        response = raw(
            emulator,
            "POST",
            "/upload/v1beta/files",
            params={"uploadType": "multipart"},
            content=body,
            headers={"content-type": f"multipart/related; boundary={boundary}"},
        )
    assert response.status_code == 200, response.text
    check_spec(response.json(), "CreateFileResponse")
    file = client.files.get(name=response.json()["file"]["name"])
    assert (file.mime_type, file.size_bytes, file.state) == ("text/plain", len(data), types.FileState.ACTIVE)
    if protocol == "multipart":
        assert file.display_name == "multi"


def test_models_are_listed_and_shut_down_ones_answer_as_the_service_does(client):
    listed = {m.name: m for m in client.models.list()}
    assert "models/gemini-2.5-flash-lite" in listed and "models/gemini-3.8-flash" in listed
    assert "batchGenerateContent" in listed["models/gemini-2.5-flash-lite"].supported_actions
    assert "models/gemini-2.5-flash" not in listed and "models/gemini-2.0-flash" not in listed, "shut down"
    assert client.models.get(model="gemini-3.8-flash").display_name == "Gemini 3.8 Flash"
    with pytest.raises(errors.ClientError) as exc:
        client.models.get(model="gemini-2.5-flash")
    assert exc.value.code == 404
    # A shut-down model's batches are routed to its successor, which answers them ...
    job = wait_done(
        client, client.batches.create(model="gemini-2.5-flash", src=upload_jsonl(client, [row("k", "x")]).name).name
    )
    assert output_rows(client, job)[0]["response"]["modelVersion"] == "gemini-3.5-flash-lite"
    # ... and one shut down without a successor is refused.
    with pytest.raises(errors.ClientError) as exc:
        client.batches.create(model="gemini-2.0-flash", src=upload_jsonl(client, [row("k", "x")]).name)
    assert exc.value.code == 404


def test_the_enqueued_token_quota_refuses_what_would_exceed_it(start_emulator):
    rows = [row(f"k{i}", "Invoice Number: 1 " * 40) for i in range(3)]
    per_row = responder.request_tokens(rows[0]["request"], None)
    assert per_row > 100
    emulator = start_emulator(time_scale=1, faults={"pending_seconds": 3600, "enqueued_token_limit": 5 * per_row})
    client = developer_client(emulator.url)
    broken = b"".join(orjson.dumps(r) + b"\n" for r in rows) + b'{"key": "cut off\n'  # a bad line holds nothing
    first = client.batches.create(model="gemini-2.5-flash-lite", src=upload_jsonl(client, broken).name)  # 3 rows held
    with pytest.raises(errors.ClientError) as exc:
        client.batches.create(model="gemini-2.5-flash-lite", src=upload_jsonl(client, rows).name)  # 6 > 5
    assert exc.value.code == 429 and exc.value.status == "RESOURCE_EXHAUSTED"
    client.batches.create(model="gemini-3.8-flash", src=upload_jsonl(client, rows).name)  # the quota is per model
    client.batches.cancel(name=first.name)
    wait_done(client, first.name)
    client.batches.create(model="gemini-2.5-flash-lite", src=upload_jsonl(client, rows).name)  # room again
    jobs = [json.loads(p.read_text()) for p in (emulator.log_path.parent / "jobs").glob("*.json")]
    assert sorted(j["tokens"] for j in jobs) == [3 * per_row] * 3, "the emulator records each job's tokens"

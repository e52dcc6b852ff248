"""The emulator runs Google's published batch samples unchanged: request bodies as the service's front end
parses them (proto3 JSON), today's models, embeddings batches on both backends, video and audio parts,
the list without inlined responses, AIP-160 filters, and ids as long as the service's.

Where the SDK is what sends the body, the real google-genai client sends it."""

from __future__ import annotations

import base64
import json
import math
import re
import uuid
import warnings

import pytest
from google.genai import types

from gemini_emulator import discovery
from support.emulators import developer_client, storage_client, upload, upload_jsonl, vertex_client, wait_done

INVOICE = "Invoice Number: INV-77\nInvoice Date: 2025-03-01\nTotal: 42.00\n"
SCHEMA = {
    "type": "object",
    "properties": {"invoice_number": {"type": "string"}, "total": {"type": "number"}},
    "required": ["invoice_number", "total"],
}
BUCKET = "test-bucket"


def output_rows(client, job) -> dict:
    lines = client.files.download(file=job.dest.file_name).decode().splitlines()
    return {row["key"]: row for row in map(json.loads, lines)}


def text_of(response) -> str:
    return "".join(p.text or "" for p in response.candidates[0].content.parts)


def check(value, schema: str) -> None:
    assert discovery.developer().problems(value, schema) == []


def experimental():
    return warnings.catch_warnings(action="ignore")  # batches.create_embeddings warns that it is experimental


# ---------------------------------------------------------------- request bodies (proto3 JSON)


def test_jsonl_rows_in_proto_form_are_answered(client):
    """Google's samples write JSONL with the proto's snake_case names, at every level."""
    document = upload(client, INVOICE.encode(), "text/plain")
    request = {
        "contents": [
            {
                "role": "user",
                "parts": [
                    {"text": "Extract the invoice fields."},
                    {"file_data": {"file_uri": document.uri, "mime_type": "text/plain"}},
                ],
            }
        ],
        "system_instruction": {"parts": [{"text": "You extract invoices."}]},
        "safety_settings": [{"category": "harm_category_dangerous_content", "threshold": "block_none"}],
        "generation_config": {
            "response_mime_type": "application/json",
            "response_json_schema": SCHEMA,
            "max_output_tokens": "4000",
            "thinking_config": {"thinking_level": "low"},
        },
    }
    job = client.batches.create(
        model="gemini-2.5-flash-lite", src=upload_jsonl(client, [{"key": "k", "request": request}]).name
    )
    out = output_rows(client, wait_done(client, job.name))
    assert "error" not in out["k"], out["k"]
    answer = json.loads(out["k"]["response"]["candidates"][0]["content"]["parts"][0]["text"])
    assert answer == {"invoice_number": "INV-77", "total": 42.0}


def test_sdk_inline_requests_with_a_file_and_bytes(client):
    """google-genai sends inline parts as ``fileData: {file_uri, mime_type}`` and ``inlineData: {data,
    mime_type}`` with URL-safe base64, and the config's integer fields as floats (``topK: 10.0``)."""
    document = upload(client, b"Vendor: Paper & Ink Ltd\n", "text/plain")
    data = b"Invoice Number: B-7\n\xfb\xff\xbf"  # its URL-safe base64 differs from the standard one
    assert set("-_") & set(base64.urlsafe_b64encode(data).decode())
    job = client.batches.create(
        model="gemini-2.5-flash-lite",
        src=[
            {
                "contents": [
                    types.Content(
                        role="user",
                        parts=[
                            types.Part(text="Extract the invoice fields."),
                            types.Part.from_bytes(data=data, mime_type="text/plain"),
                            types.Part.from_uri(file_uri=document.uri, mime_type="text/plain"),
                        ],
                    )
                ],
                "config": {"top_k": 10, "candidate_count": 1, "system_instruction": "Answer briefly."},
            }
        ],
    )
    (answer,) = wait_done(client, job.name).dest.inlined_responses
    assert answer.error is None, answer.error
    assert "B-7" in text_of(answer.response) and "Paper & Ink" in text_of(answer.response)


def test_enum_names_as_the_sdk_sends_them(client):
    """The SDK passes ``response_modalities`` through as given (``["text"]``); the front end reads enum names
    in any case. Lower-case enums in a JSONL row too."""
    job = client.batches.create(
        model="gemini-2.5-flash-lite",
        src=[
            {"contents": [{"role": "user", "parts": [{"text": "Hello"}]}], "config": {"response_modalities": ["text"]}}
        ],
    )
    (answer,) = wait_done(client, job.name).dest.inlined_responses
    assert answer.error is None and text_of(answer.response)
    row = {
        "key": "k",
        "request": {
            "contents": [{"parts": [{"text": "Hello"}]}],
            "generationConfig": {"responseModalities": ["Text"], "mediaResolution": "media_resolution_low"},
        },
    }
    job = client.batches.create(model="gemini-2.5-flash-lite", src=upload_jsonl(client, [row]).name)
    assert "response" in output_rows(client, wait_done(client, job.name))["k"]


def test_what_proto3_json_refuses_is_still_refused(client, emulator):
    """Unknown fields and non-integral integers fail their row, in the service's words."""
    import httpx

    rows = [
        {"key": "unknown", "request": {"contents": [{"parts": [{"text": "x"}]}], "generation_config": {"top_kk": 1}}},
        {"key": "fraction", "request": {"contents": [{"parts": [{"text": "x"}]}], "generationConfig": {"topK": 1.5}}},
    ]
    job = client.batches.create(model="gemini-2.5-flash-lite", src=upload_jsonl(client, rows).name)
    out = output_rows(client, wait_done(client, job.name))
    assert 'Unknown name "top_kk"' in out["unknown"]["error"]["message"]
    assert "top_k" in out["fraction"]["error"]["message"] and "1.5" in out["fraction"]["error"]["message"]
    refused = httpx.post(
        f"{emulator.url}/v1beta/models/gemini-2.5-flash-lite:batchGenerateContent",
        headers={"x-goog-api-key": "k"},
        json={"batch": {"input_config": {"requests": {"requests": [{"request": rows[0]["request"]}]}}}},
    )
    assert refused.status_code == 400 and 'Unknown name "top_kk"' in refused.json()["error"]["message"]


# ---------------------------------------------------------------- models


def test_today_s_models_are_served(client, start_emulator, gcs):
    for name in ("gemini-3.5-flash", "gemini-3.6-flash", "gemini-2.5-flash-image"):
        assert "batchGenerateContent" in client.models.get(model=name).supported_actions
    assert "asyncBatchEmbedContent" in client.models.get(model="gemini-embedding-001").supported_actions
    vertex = vertex_client(start_emulator(time_scale=3600, gcs_endpoint=gcs.url).url)
    for name in ("gemini-embedding-001", "text-embedding-005", "text-embedding-004"):
        assert vertex.models.get(model=name).name.endswith(name)


# ---------------------------------------------------------------- embeddings


def test_embeddings_batch_with_inlined_requests(client, emulator):
    """``batches.create_embeddings`` as Google's SDK test calls it: vectors of ``output_dimensionality``
    values, the same text the same vector, in the documented operation shape."""
    import httpx

    contents = [{"parts": [{"text": "the cat sat on the mat"}]}, {"parts": [{"text": "quarterly invoice totals"}]}]
    with experimental():
        job = client.batches.create_embeddings(
            model="gemini-embedding-001",
            src={"inlined_requests": {"contents": contents + contents[:1], "config": {"output_dimensionality": 64}}},
            config={"display_name": "embeddings"},
        )
    assert re.fullmatch(r"batches/[a-z0-9]{36}", job.name)
    done = wait_done(client, job.name)
    assert done.state == types.JobState.JOB_STATE_SUCCEEDED
    first, second, again = (r.response.embedding.values for r in done.dest.inlined_embed_content_responses)
    assert len(first) == len(second) == 64 and first == again and first != second
    assert math.isclose(sum(v * v for v in first), 1.0, rel_tol=1e-3)
    body = httpx.get(f"{emulator.url}/v1beta/{job.name}", headers={"x-goog-api-key": "k"}).json()
    check(body, "Operation")
    check(body["metadata"], "EmbedContentBatch")
    check(body["response"], "EmbedContentBatchOutput")
    assert body["metadata"]["@type"].endswith(".EmbedContentBatch")
    assert body["metadata"]["batchStats"] == {"requestCount": "3", "successfulRequestCount": "3"}


def test_embeddings_batch_from_a_file_with_per_row_errors(client):
    rows = [
        {"key": "a", "request": {"content": {"parts": [{"text": "alpha"}]}, "output_dimensionality": 8}},
        {"key": "b", "request": {"content": {"parts": [{"text": "beta"}]}, "taskType": "retrieval_document"}},
        {"key": "bad", "request": {"content": {"parts": [{"text": "x"}]}, "outputDimensionality": 99999}},
    ]
    with experimental():
        job = client.batches.create_embeddings(
            model="gemini-embedding-001", src={"file_name": upload_jsonl(client, rows).name}
        )
    done = wait_done(client, job.name)
    out = output_rows(client, done)
    assert len(out["a"]["response"]["embedding"]["values"]) == 8
    assert len(out["b"]["response"]["embedding"]["values"]) == 3072  # the model's full size
    assert out["bad"]["error"]["code"] == 3 and "output_dimensionality" in out["bad"]["error"]["message"]
    for row in out.values():
        check({k: v for k, v in row.items() if k != "key"}, "InlinedEmbedContentResponse")


def test_embeddings_batches_have_the_faults_of_generation_batches(start_emulator):
    client = developer_client(start_emulator(time_scale=3600, faults={"row_error_rate": 1.0}).url)
    with experimental():
        job = client.batches.create_embeddings(
            model="gemini-embedding-001", src={"inlined_requests": {"contents": [{"parts": [{"text": "x"}]}]}}
        )
    dest = wait_done(client, job.name).dest
    # With no embedding in any row, the SDK cannot tell the responses from a generation batch's.
    (row,) = dest.inlined_embed_content_responses or dest.inlined_responses
    assert row.response is None and row.error.code in (4, 9, 13, 429)


def test_a_generation_model_refuses_embeddings_and_the_reverse(client):
    from google.genai import errors

    with experimental(), pytest.raises(errors.ClientError) as exc:
        client.batches.create_embeddings(
            model="gemini-2.5-flash-lite", src={"inlined_requests": {"contents": [{"parts": [{"text": "x"}]}]}}
        )
    assert exc.value.code == 404 and "asyncBatchEmbedContent" in exc.value.message
    with pytest.raises(errors.ClientError) as exc:
        client.batches.create(model="gemini-embedding-001", src=[{"contents": [{"parts": [{"text": "x"}]}]}])
    assert exc.value.code == 404


@pytest.mark.parametrize(("model", "size"), [("text-embedding-005", 768), ("gemini-embedding-001", 3072)])
def test_vertex_batch_prediction_with_an_embedding_model(start_emulator, gcs, model, size):
    """Google's Vertex AI batch embeddings: JSONL instances ``{"content": ...}``, predictions with
    ``embeddings.values`` and their token count."""
    storage = storage_client(gcs.url)
    prefix = f"fidelity/{uuid.uuid4().hex}"
    lines = [{"content": "the cat sat on the mat"}, {"content": "quarterly invoice totals", "task_type": "CLUSTERING"}]
    storage.bucket(BUCKET).blob(f"{prefix}/in.jsonl").upload_from_string(
        "\n".join(json.dumps(line) for line in lines) + "\n", content_type="application/jsonl"
    )
    vertex = vertex_client(start_emulator(time_scale=3600, gcs_endpoint=gcs.url).url)
    job = vertex.batches.create(
        model=model, src=f"gs://{BUCKET}/{prefix}/in.jsonl", config={"dest": f"gs://{BUCKET}/{prefix}/out"}
    )
    assert re.fullmatch(r".*/batchPredictionJobs/\d{19}", job.name)
    done = wait_done(vertex, job.name)
    assert done.state == types.JobState.JOB_STATE_SUCCEEDED
    directory = done.output_info.gcs_output_directory.removeprefix(f"gs://{BUCKET}/")
    text = storage.bucket(BUCKET).blob(f"{directory}/predictions.jsonl").download_as_text()
    rows = [json.loads(line) for line in text.splitlines()]
    assert [r["instance"] for r in rows] == lines
    for row in rows:
        assert row["status"] == ""
        (prediction,) = row["predictions"]
        assert len(prediction["embeddings"]["values"]) == size
        assert prediction["embeddings"]["statistics"]["token_count"] > 0


# ---------------------------------------------------------------- media, list, filters, ids


def test_video_and_audio_parts_are_answered(client):
    video = upload(client, b"\0" * 500_000, "video/mp4")
    audio = upload(client, b"\0" * 64_000, "audio/mpeg")
    request = {
        "contents": [
            {
                "parts": [
                    {"text": "Describe the clip."},
                    {"fileData": {"fileUri": video.uri, "mimeType": "video/mp4"}},
                    {"fileData": {"fileUri": audio.uri, "mimeType": "audio/mpeg"}},
                    {"inlineData": {"mimeType": "video/webm", "data": base64.b64encode(b"\0" * 1000).decode()}},
                ]
            }
        ]
    }
    job = client.batches.create(
        model="gemini-2.5-flash-lite", src=upload_jsonl(client, [{"key": "k", "request": request}]).name
    )
    row = output_rows(client, wait_done(client, job.name))["k"]
    assert "response" in row, row
    details = {d["modality"]: d["tokenCount"] for d in row["response"]["usageMetadata"]["promptTokensDetails"]}
    assert details["VIDEO"] >= 263 * 4 and details["AUDIO"] >= 32 * 4


def test_the_list_leaves_out_inlined_responses(client, emulator):
    import httpx

    job = client.batches.create(model="gemini-2.5-flash-lite", src=[{"contents": [{"parts": [{"text": "x"}]}]}])
    assert wait_done(client, job.name).dest.inlined_responses
    listed = httpx.get(f"{emulator.url}/v1beta/batches", headers={"x-goog-api-key": "k"}).json()
    (operation,) = listed["operations"]
    assert operation["done"] is True
    assert "inlinedResponses" not in json.dumps(operation)


def test_vertex_list_takes_aip_160_filters(start_emulator, gcs):
    storage = storage_client(gcs.url)
    prefix = f"fidelity/{uuid.uuid4().hex}"
    row = {"request": {"contents": [{"role": "user", "parts": [{"text": "x"}]}]}}
    storage.bucket(BUCKET).blob(f"{prefix}/in.jsonl").upload_from_string(json.dumps(row) + "\n")
    vertex = vertex_client(start_emulator(time_scale=3600, gcs_endpoint=gcs.url).url)
    names = {}
    for display_name in ("genai_one", "genai_two", "other"):
        config = {"dest": f"gs://{BUCKET}/{prefix}/out", "display_name": display_name}
        names[display_name] = vertex.batches.create(
            model="gemini-2.5-flash-lite", src=f"gs://{BUCKET}/{prefix}/in.jsonl", config=config
        ).name
    for name in names.values():
        wait_done(vertex, name)

    def listed(text: str) -> set[str]:
        return {job.display_name for job in vertex.batches.list(config={"filter": text})}

    assert listed('display_name:"genai_*"') == {"genai_one", "genai_two"}  # the SDK's own test
    assert listed('display_name:"genai_*" AND state=JOB_STATE_SUCCEEDED') == {"genai_one", "genai_two"}
    assert listed('display_name!="other" AND display_name="*two"') == {"genai_two"}
    assert listed("state=JOB_STATE_RUNNING") == set()


def test_ids_and_output_names_are_as_long_as_the_service_s(client):
    job = client.batches.create(
        model="gemini-2.5-flash-lite",
        src=upload_jsonl(client, [{"key": "k", "request": {"contents": [{"parts": [{"text": "x"}]}]}}]).name,
    )
    assert re.fullmatch(r"batches/[a-z0-9]{36}", job.name)
    done = wait_done(client, job.name)
    assert done.dest.file_name == f"files/batch-{job.name.removeprefix('batches/')}"
    assert len(done.dest.file_name.removeprefix("files/")) > 40
    assert "k" in output_rows(client, done)

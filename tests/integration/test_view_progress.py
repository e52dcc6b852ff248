"""The view's job progress (gemini_batch.hooks.progress) against the emulator: the Developer API's batchStats,
which google-genai drops from its BatchJob, read from the service's raw answer through the hook's client; Vertex
AI's completionStats through the SDK. The emulator writes both as the services do (int64 strings, zeros left out)."""

from __future__ import annotations

import json

from gemini_batch.hooks.gemini import GeminiBatchHook
from gemini_batch.hooks.progress import job_progress
from support.emulators import developer_client, upload_jsonl, wait_done

ROWS = [
    {"key": f"k{i}", "request": {"contents": [{"parts": [{"text": f"Return JSON with n={i}"}], "role": "user"}]}}
    for i in range(5)
]


def test_developer_progress_comes_from_batch_stats(emulator, monkeypatch):
    monkeypatch.setenv(
        "AIRFLOW_CONN_GEMINI_VIEW",
        json.dumps(
            {"conn_type": "generic", "password": "k", "extra": {"backend": "developer", "base_url": emulator.url}}
        ),
    )
    client = developer_client(emulator.url)
    src = upload_jsonl(client, ROWS)
    job = client.batches.create(model="gemini-2.5-flash-lite", src=src.name)
    hook = GeminiBatchHook("gemini_view")
    first = job_progress(hook, job.name)
    assert first["name"] == job.name and first["state"].startswith("BATCH_STATE_")
    wait_done(client, job.name)
    done = job_progress(hook, job.name)
    assert done["counted"] and (done["total"], done["succeeded"] + done["failed"], done["pending"]) == (5, 5, 0)
    assert done["state"] == "BATCH_STATE_SUCCEEDED"
    assert job_progress(hook, job.name.removeprefix("batches/"))["total"] == 5  # a bare id too

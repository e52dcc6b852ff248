"""Clients of the emulators as the tests make them, files uploaded and jobs waited for through them, and an
account's job history written into an emulator."""

from __future__ import annotations

import io
import time
from pathlib import Path

import orjson

from gemini_emulator.models import Catalogue
from gemini_emulator.testing import requests_made

# The models the emulator accepts batches for today, as the service lists them.
BATCH_MODELS = sorted(m.id for m in Catalogue.load().live() if "batchGenerateContent" in m.methods)


def developer_client(url: str):
    from google import genai
    from google.genai import types

    return genai.Client(api_key="test-key", http_options=types.HttpOptions(base_url=url))


def upload(client, data: bytes, mime_type: str, timeout: float = 10, **config):
    """A Files API upload through ``client``, once the emulator has made it ACTIVE."""
    from google.genai import types

    uploaded = client.files.upload(file=io.BytesIO(data), config={"mime_type": mime_type, **config})
    deadline = time.monotonic() + timeout
    while uploaded.state != types.FileState.ACTIVE:
        assert time.monotonic() < deadline, f"{uploaded.name} not ACTIVE after {timeout}s"
        time.sleep(0.02)
        uploaded = client.files.get(name=uploaded.name)
    return uploaded


def upload_jsonl(client, rows: list[dict] | bytes, **config):
    """Batch rows (or a JSONL file's bytes) uploaded as a Files API file, once ACTIVE."""
    data = rows if isinstance(rows, bytes) else b"".join(orjson.dumps(r) + b"\n" for r in rows)
    return upload(client, data, "application/jsonl", **config)


def wait_done(client, name: str, timeout: float = 30, poll: float = 0.03):
    """The batch job ``name`` once it has ended."""
    deadline = time.monotonic() + timeout
    while True:
        job = client.batches.get(name=name)
        if job.done:
            return job
        assert time.monotonic() < deadline, f"{name} not done after {timeout}s: {job.state}"
        time.sleep(poll)


def vertex_client(url: str, project: str = "test-project", location: str = "us-central1"):
    from google import genai
    from google.genai import types
    from google.oauth2.credentials import Credentials

    return genai.Client(
        vertexai=True,
        project=project,
        location=location,
        credentials=Credentials(token="test-token"),
        http_options=types.HttpOptions(base_url=url),
    )


def storage_client(url: str):
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    return storage.Client(project="test", credentials=AnonymousCredentials(), client_options={"api_endpoint": url})


def list_calls(server) -> int:
    """Developer API job list pages the emulator served (``GET /v1beta/batches``), from its own request log."""
    return len(requests_made(server, "GET", r"/v1beta/batches"))


def seed_job_history(data_dir: Path, count: int, *, days: float = 30.0, model: str = "gemini-2.5-flash") -> None:
    """``count`` earlier Developer API batch jobs of the account, finished, created over the last ``days`` (the
    newest a day ago), written into an emulator's data dir before it starts. The emulator's own code makes each
    job (``create_batch``, one inline request); only its times and end state are set as its runner would have
    set them then: thousands of real creates and runs would take minutes."""
    import time

    from gemini_emulator.config import EmulatorConfig
    from gemini_emulator.service import Emulator

    em = Emulator(EmulatorConfig(data_dir=data_dir))
    request = {"contents": [{"role": "user", "parts": [{"text": "Return the invoice number as JSON."}]}]}
    newest = time.time() - 86400
    try:
        for i in range(count):
            job = em.create_batch(
                model,
                {
                    "displayName": f"history-{i:05d}",
                    "inputConfig": {
                        "requests": {"requests": [{"request": request, "metadata": {"key": f"history-{i:05d}"}}]}
                    },
                },
            )
            created = newest - (count - 1 - i) * (days - 1) * 86400 / max(count - 1, 1)  # oldest first, as made
            em.jobs.update(
                job["id"],
                state="SUCCEEDED",
                processed=True,
                create_time=created,
                start_time=created + 1,
                update_time=created + 60,
                end_time=created + 60,
                stats={"succeeded": 1, "failed": 0, "processed": 1},
            )
    finally:
        em.stop()

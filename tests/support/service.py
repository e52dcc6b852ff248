"""Helpers for the tests that talk to the emulated service through the hook,
the operators and the trigger: connections, real shards, job submission and
waiting, and the stand-ins for what exists only inside a task run."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import time
import uuid

from gemini_batch.core.batch_requests import RequestSpec, ShardManifest, ShardWriter, build_row
from gemini_batch.hooks.gemini import GeminiBatchHook, is_terminal
from gemini_batch.triggers.gemini import GeminiBatchJobTrigger

KEY = "test-key-5ecr3t-8d1f0c"
MODEL = "gemini-2.5-flash-lite"
GCS_CONNECTION = {"conn_type": "google_cloud_platform", "extra": {"is_anonymous": True, "project": "test-project"}}
SLOW = {"pending_seconds": 3600}  # with time_scale=1: a job stays PENDING for the whole test


def use_developer(monkeypatch, url: str, conn_id: str = "gemini_default", **extra) -> None:
    connection = {"conn_type": "generic", "password": KEY, "extra": {"backend": "developer", "base_url": url, **extra}}
    monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", json.dumps(connection))


def use_vertex(monkeypatch, url: str, conn_id: str = "gemini_default") -> None:
    """Vertex AI through the emulator; the project comes from the anonymous GCP connection."""
    monkeypatch.setenv("AIRFLOW_CONN_GCS_EMULATOR", json.dumps(GCS_CONNECTION))
    connection = {
        "conn_type": "generic",
        "extra": {"backend": "vertex", "base_url": url, "gcp_conn_id": "gcs_emulator"},
    }
    monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", json.dumps(connection))


def write_shard(folder, rows: int = 3) -> ShardManifest:
    """A real shard of text rows (text needs no staging), as the DAG's build step writes it."""
    spec = RequestSpec(model=MODEL, prompt="Return the invoice number as JSON.")
    with ShardWriter(folder) as writer:
        for i in range(rows):
            writer.add(build_row(f"key-{i:05d}", spec, text=f"Invoice Number: INV-{i}\n"))
    (manifest,) = writer.manifests
    return manifest


def wait_until_ended(hook: GeminiBatchHook, name: str, timeout: float = 60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = hook.get_job(name)
        if is_terminal(job):
            return job
        time.sleep(0.2)
    raise AssertionError(f"{name} did not end within {timeout} s")


def submit_shard(hook: GeminiBatchHook, manifest: ShardManifest, display_name: str):
    src = hook.upload_jsonl(hook.storage_path(manifest.uri), "gbs-" + uuid.uuid4().hex[:32])
    return hook.create_job(model=MODEL, src=src, display_name=display_name)


def deadline_in(seconds: float) -> str:
    return (dt.datetime.now(dt.timezone.utc) + dt.timedelta(seconds=seconds)).isoformat()


def first_event(trigger: GeminiBatchJobTrigger, timeout: float = 60) -> dict:
    async def first() -> dict:
        async for event in trigger.run():
            return event.payload
        raise AssertionError("the trigger ended without an event")

    return asyncio.run(asyncio.wait_for(first(), timeout))


class RecordingTaskInstance:
    def __init__(self, dag_id: str = "gemini_batch_extract", run_id: str = "manual__2026-01-01"):
        self.dag_id, self.run_id = dag_id, run_id
        self.pushed: list[tuple[str, object]] = []

    def xcom_push(self, key: str, value) -> None:
        self.pushed.append((key, value))


class DictTaskStateStore:
    """Stands in for Airflow's task state store (``context["task_state_store"]``), which exists only inside a
    task run: ``execute`` is called outside one here. Like Airflow's, one object is kept for a task (run,
    task id, map index) across its tries, so a retry is a new operator with the same store."""

    def __init__(self):
        self.values: dict[str, object] = {}

    def get(self, key: str, default=None):
        return self.values.get(key, default)

    def set(self, key: str, value, *, retention=None) -> None:
        if value is None:
            raise ValueError("Cannot set value as None")
        self.values[key] = value

    def delete(self, key: str) -> None:
        self.values.pop(key, None)


def context(ti: RecordingTaskInstance | None = None, store: DictTaskStateStore | None = None) -> dict:
    ti = ti or RecordingTaskInstance()
    return {"ti": ti, "run_id": ti.run_id, **({"task_state_store": store} if store is not None else {})}

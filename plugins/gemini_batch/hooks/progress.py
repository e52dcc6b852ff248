"""A batch job's progress as the service reports it, on both backends: its state and row counts.

Vertex AI's ``completionStats`` reach us through google-genai's ``BatchJob``; the Developer API's ``batchStats``
do not (the SDK drops them), so there the job is read once more as the service's raw JSON answer, through the
same authenticated client (``batches.get``'s own path, without the SDK's mapping). Counts are int64 in proto3
JSON: strings, and left out when zero.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import orjson

from gemini_batch.hooks.gemini import GeminiBatchHook, job_stats, state_name

__all__ = ["developer_progress", "job_progress"]


def _count(stats: dict[str, Any], name: str) -> int:
    value = stats.get(name)
    try:
        return int(value) if value not in (None, "") else 0
    except (TypeError, ValueError):
        return 0


def developer_progress(answer: dict[str, Any]) -> dict[str, Any]:
    """The progress in a Developer API batch as its REST answer holds it (an ``Operation`` whose ``metadata`` is
    the batch, or the batch itself)."""
    metadata = answer.get("metadata")
    batch: dict[str, Any] = metadata if isinstance(metadata, dict) else answer
    stats = batch.get("batchStats") or {}
    total = _count(stats, "requestCount")
    succeeded, failed = _count(stats, "successfulRequestCount"), _count(stats, "failedRequestCount")
    pending = _count(stats, "pendingRequestCount") if "pendingRequestCount" in stats else total - succeeded - failed
    return {
        "name": batch.get("name") or answer.get("name"),
        "state": batch.get("state"),
        "display_name": batch.get("displayName"),
        "model": batch.get("model"),
        "create_time": batch.get("createTime"),
        "total": total,
        "succeeded": succeeded,
        "failed": failed,
        "pending": max(pending, 0),
        "counted": bool(stats),
    }


def job_progress(hook: GeminiBatchHook, name: str) -> dict[str, Any]:
    """``{name, state, display_name, model, create_time, total, succeeded, failed, pending, counted}`` of one job
    (``counted``: the service reported row counts; a queued job has none yet)."""
    if hook.backend == "developer":
        path = name if name.startswith("batches/") else f"batches/{name}"
        # One try: a page that shows progress must not hang on the hook's retries; the caller shows the error.
        response = hook.get_conn()._api_client.request("get", path, {}, None)
        return developer_progress(orjson.loads(response.body or "{}"))
    job = hook.get_conn().batches.get(name=name)
    stats = job_stats(job)
    done = stats.get("succeeded", 0) + stats.get("failed", 0)
    created = job.create_time.astimezone(dt.timezone.utc).isoformat() if job.create_time else None
    return {
        "name": job.name or name,
        "state": state_name(job),
        "display_name": job.display_name,
        "model": job.model,
        "create_time": created,
        "total": done + stats.get("incomplete", 0),
        "succeeded": stats.get("succeeded", 0),
        "failed": stats.get("failed", 0),
        "pending": stats.get("incomplete", 0),
        "counted": bool(stats),
    }

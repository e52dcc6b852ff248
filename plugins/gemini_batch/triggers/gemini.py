"""Wait for a batch job in the triggerer, without holding a worker slot.

The trigger only polls a job that already exists (by name): a triggerer
restart re-creates it from ``serialize()`` and it resumes polling the same
job, never submitting a second one. Its kwargs hold no secret; the hook reads
the key from the connection. Transient errors (429, 5xx, timeouts) are
waited out with backoff; only a run of other errors ends the wait, and the
deadline (from the job's create time) ends it even if the service never
says EXPIRED. Each change in the job's row counts is one log line, where the
backend reports them (Vertex AI's completionStats; google-genai drops the
Developer API's batchStats, so there the log says once that it cannot tell).
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import AsyncIterator
from typing import Any

from airflow.triggers.base import BaseTrigger, TriggerEvent
from google.genai import types

from gemini_batch.hooks.errors import is_transient
from gemini_batch.hooks.gemini import GeminiBatchHook, is_terminal, job_error, job_stats, state_name

MAX_BACKOFF_SECONDS = 600.0
MAX_CONSECUTIVE_ERRORS = 5
NO_ROW_COUNTS = "the Developer API reports no row counts through the SDK (google-genai drops its batchStats)"


def progress_line(stats: dict[str, int]) -> str | None:
    """``120 of 1,000 rows done (118 succeeded, 2 failed)``; None without counts (a queued job)."""
    if not stats:
        return None
    done = stats["succeeded"] + stats["failed"]
    return (
        f"{done:,} of {done + stats['incomplete']:,} rows done "
        f"({stats['succeeded']:,} succeeded, {stats['failed']:,} failed)"
    )


def job_output(job: types.BatchJob) -> str | None:
    """Where a job's results are: its own gs:// output folder once it runs, else the prefix it writes under
    (Vertex AI); its results file ``files/...`` once it ends (Developer API)."""
    return (
        (job.output_info and job.output_info.gcs_output_directory)
        or (job.dest and (job.dest.gcs_uri or job.dest.file_name))
        or None
    )


class GeminiBatchJobTrigger(BaseTrigger):
    """Polls one batch job until it ends, its deadline passes, or polling keeps failing.

    Events: ``{"status": "terminal", "job_name", "state", "stats", "error", "output"}``,
    ``{"status": "deadline", "job_name", "state", "stats"}`` (last state seen) or
    ``{"status": "error", "job_name", "error"}``.
    """

    def __init__(self, *, job_name: str, gemini_conn_id: str, deadline: str, poll_interval: float = 30):
        super().__init__()
        self.job_name = job_name
        self.gemini_conn_id = gemini_conn_id
        self.deadline = deadline
        self.poll_interval = poll_interval
        deadline_at = dt.datetime.fromisoformat(deadline)
        if deadline_at.tzinfo is None:
            raise ValueError(f"deadline must carry its time zone (UTC), got {deadline!r}")
        self._deadline_at = deadline_at

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {
                "job_name": self.job_name,
                "gemini_conn_id": self.gemini_conn_id,
                "deadline": self.deadline,
                "poll_interval": self.poll_interval,
            },
        )

    async def run(self) -> AsyncIterator[TriggerEvent]:
        hook = GeminiBatchHook(self.gemini_conn_id)
        # Reading the connection (and, for Vertex, credentials) blocks: keep it off the event loop.
        client = await asyncio.to_thread(hook.get_async_conn)
        state = progress = None
        stats: dict[str, int] = {}
        errors_in_a_row = 0
        backoff = self.poll_interval
        while True:
            try:
                job = await client.batches.get(name=self.job_name)
            except Exception as exc:
                if not is_transient(exc):
                    errors_in_a_row += 1
                    if errors_in_a_row >= MAX_CONSECUTIVE_ERRORS:
                        yield TriggerEvent(
                            {
                                "status": "error",
                                "job_name": self.job_name,
                                "error": f"{errors_in_a_row} polls in a row failed; last: {exc}",
                            }
                        )
                        return
                self.log.warning(
                    "Polling %s failed (%s), next poll in %.0f s: %s",
                    self.job_name,
                    "transient" if is_transient(exc) else f"{errors_in_a_row} in a row",
                    backoff,
                    exc,
                )
                sleep_for, backoff = backoff, min(backoff * 2, MAX_BACKOFF_SECONDS)
            else:
                errors_in_a_row = 0
                if state_name(job) != state:
                    self.log.info("Batch job %s is %s", self.job_name, state_name(job))
                state, stats = state_name(job), job_stats(job)
                # The connection was read above (get_async_conn): backend blocks on nothing here.
                line = progress_line(stats) or (NO_ROW_COUNTS if hook.backend == "developer" else None)
                if line and line != progress:
                    self.log.info("Batch job %s: %s", self.job_name, line)
                progress = line
                if is_terminal(job):
                    yield TriggerEvent(
                        {
                            "status": "terminal",
                            "job_name": self.job_name,
                            "state": state,
                            "stats": stats,
                            "error": job_error(job),
                            "output": job_output(job),
                        }
                    )
                    return
                sleep_for = backoff = self.poll_interval
            remaining = (self._deadline_at - dt.datetime.now(dt.timezone.utc)).total_seconds()
            if remaining <= 0:
                self.log.warning("Batch job %s passed its deadline %s in state %s", self.job_name, self.deadline, state)
                yield TriggerEvent({"status": "deadline", "job_name": self.job_name, "state": state, "stats": stats})
                return
            await asyncio.sleep(min(sleep_for, remaining))

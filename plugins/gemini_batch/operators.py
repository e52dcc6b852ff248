"""Submit a shard as a batch job, and wait for it, deferred.

The submit operator is idempotent: the job's display name is derived from
the run and the shard's keys, so a retried or cleared task finds the job it
submitted before and reattaches instead of paying twice. Waiting is deferred
by default and the task keeps its pool slot while deferred: a pool with
``include_deferred`` then caps the jobs in flight exactly. The deadline
comes from the job's create time, so a restart never extends it; when it
passes, the job is cancelled so that it bills nothing more.

A job that ends FAILED or EXPIRED does not fail the task: its finished rows
are collected and the rest retried downstream. The operator and the sensor
return the same small outcome dict: ``job_name``, ``display_name``,
``shard_id``, ``manifest_uri``, ``state``, ``stats``, ``error``,
``deadline_passed``.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Mapping
from typing import Any

from airflow.sdk import BaseOperator, BaseSensorOperator, ObjectStoragePath, PokeReturnValue
from airflow.sdk.exceptions import AirflowException, AirflowFailException
from google.genai import errors, types

from gemini_batch.batch_requests import ShardManifest
from gemini_batch.hooks import DEAD_STATES, GeminiBatchHook, is_terminal, job_error, job_stats, state_name
from gemini_batch.triggers import GeminiBatchJobTrigger

SUCCEEDED_STATES = frozenset({"JOB_STATE_SUCCEEDED"})
DEFAULT_EXPIRY_HOURS = 24.0
HASH_CHUNK_BYTES = 2**20


def default_display_name(dag_id: str, run_id: str, shard_id: str, keys: ObjectStoragePath) -> str:
    """``gb-<run hash>-<shard id>-<keys hash>``: the same run and the same rows give the same job."""
    run_hash = hashlib.sha256(f"{dag_id}/{run_id}".encode()).hexdigest()[:12]
    keys_hash = hashlib.sha256()
    with keys.open("rb") as stream:
        while chunk := stream.read(HASH_CHUNK_BYTES):
            keys_hash.update(chunk)
    return f"gb-{run_hash}-{shard_id}-{keys_hash.hexdigest()[:12]}"


def shard_file_name(display_name: str) -> str:
    """The Files API name of a job's input: at most 40 lowercase letters, digits or dashes."""
    return "gbs-" + hashlib.sha256(display_name.encode()).hexdigest()[:36]


def default_output_prefix(manifest: ShardManifest) -> str:
    return f"{manifest.uri.rsplit('/', 1)[0]}/output/{manifest.shard_id}/"


def job_deadline(job: types.BatchJob, expiry: dt.timedelta) -> dt.datetime:
    created = job.create_time or dt.datetime.now(dt.timezone.utc)
    return created.astimezone(dt.timezone.utc) + expiry


def wait_for_job(
    task: BaseOperator, hook: GeminiBatchHook, job: types.BatchJob, *, expiry: dt.timedelta, poll_interval: float,
    describe: Mapping[str, Any],
) -> dict:
    """The outcome of a job that has ended; otherwise defer to the trigger until it ends (raises TaskDeferred)."""
    if is_terminal(job):
        return job_outcome(task, describe, job.name, state_name(job), job_stats(job), job_error(job))
    deadline = job_deadline(job, expiry)
    task.log.info("Waiting for batch job %s (%s) until %s at the latest", job.name, state_name(job), deadline.isoformat())
    task.defer(
        trigger=GeminiBatchJobTrigger(
            job_name=job.name, gemini_conn_id=hook.gemini_conn_id, deadline=deadline.isoformat(),
            poll_interval=poll_interval,
        ),
        method_name="execute_complete",
        kwargs={"describe": dict(describe)},
    )


def complete_from_event(task: BaseOperator, hook: GeminiBatchHook, event: Mapping, describe: Mapping[str, Any]) -> dict:
    """The outcome of a trigger event: a job that ended, a deadline that passed, or polling that kept failing."""
    if event["status"] == "error":
        raise AirflowException(f"Waiting for batch job {event['job_name']} failed: {event['error']}")
    if event["status"] == "deadline":
        return deadline_outcome(task, hook, event["job_name"], event["state"], event.get("stats") or {}, describe)
    return job_outcome(task, describe, event["job_name"], event["state"], event["stats"], event["error"])


def deadline_outcome(
    task: BaseOperator, hook: GeminiBatchHook, job_name: str, last_state: str | None, stats: Mapping,
    describe: Mapping[str, Any],
) -> dict:
    """Cancel a job past its deadline and report it EXPIRED; one that ended meanwhile reports how it ended."""
    if not hook.cancel_job(job_name):
        job = hook.get_job(job_name)
        return job_outcome(task, describe, job_name, state_name(job), job_stats(job), job_error(job))
    error = f"no result by the deadline (last state {last_state}); the job was cancelled"
    return job_outcome(task, describe, job_name, "JOB_STATE_EXPIRED", dict(stats), error, deadline_passed=True)


def job_outcome(
    task: BaseOperator, describe: Mapping[str, Any], job_name: str, state: str | None, stats: Mapping, error: str | None,
    *, deadline_passed: bool = False,
) -> dict:
    outcome = {
        "job_name": job_name, "display_name": describe.get("display_name"), "shard_id": describe.get("shard_id"),
        "manifest_uri": describe.get("manifest_uri"), "state": state, "stats": dict(stats), "error": error,
        "deadline_passed": deadline_passed,
    }
    if state in SUCCEEDED_STATES:
        task.log.info("Batch job %s ended %s %s", job_name, state, dict(stats) or "")
    else:
        task.log.warning("Batch job %s ended %s (%s); its finished rows are collected and the rest retried",
                         job_name, state, error or "no error message")
    return outcome


class GeminiBatchSubmitOperator(BaseOperator):
    """Submit one shard (by its manifest) as a batch job, or reattach to the one submitted before; wait deferred.

    Returns the outcome dict, or only the job name with ``wait=False``; the job
    name is also pushed as XCom ``job_name``. On Vertex AI the output goes to
    ``output_prefix`` (default ``<shard folder>/output/<shard id>/``).
    """

    # gemini_conn_id, expiry and polling too: the DAG takes them as run params (contract 5); strings are converted.
    template_fields = (
        "manifest_uri", "model", "display_name", "output_prefix", "gemini_conn_id", "expiry_hours", "poll_interval",
    )

    def __init__(
        self,
        *,
        manifest_uri: str,
        model: str,
        gemini_conn_id: str = GeminiBatchHook.default_conn_name,
        display_name: str | None = None,
        output_prefix: str | None = None,
        wait: bool = True,
        poll_interval: float | str = 30,
        expiry_hours: float | str = DEFAULT_EXPIRY_HOURS,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.manifest_uri = manifest_uri
        self.model = model
        self.gemini_conn_id = gemini_conn_id
        self.display_name = display_name
        self.output_prefix = output_prefix
        self.wait = wait
        self.poll_interval = poll_interval
        self.expiry_hours = expiry_hours
        self.job_name: str | None = None

    def execute(self, context) -> dict | str:
        hook = GeminiBatchHook(self.gemini_conn_id)
        manifest, display_name = self._shard(context, hook)
        ti = context["ti"]
        job = hook.find_job(display_name)
        if job is not None and state_name(job) not in DEAD_STATES:
            self.log.info("Reattaching to batch job %s (%s), %s", job.name, display_name, state_name(job))
        else:
            if job is not None:
                self.log.info("The earlier job %s (%s) ended %s; submitting again", job.name, display_name, state_name(job))
            job = self._submit(hook, manifest, display_name)
        self.job_name = job.name
        ti.xcom_push(key="job_name", value=job.name)
        if hook.backend == "developer":  # the SDK does not report a Developer API job's input: clean-up needs it
            ti.xcom_push(key="job_input", value=f"files/{shard_file_name(display_name)}")
        if not self.wait:
            return job.name
        describe = self._describe(display_name, manifest)
        return wait_for_job(self, hook, job, expiry=dt.timedelta(hours=float(self.expiry_hours)),
                            poll_interval=float(self.poll_interval), describe=describe)

    def _submit(self, hook: GeminiBatchHook, manifest: ShardManifest, display_name: str) -> types.BatchJob:
        """Create the shard's job; a 404 on create is the model (none such, or not for this project): no retry helps."""
        if hook.backend == "vertex":
            if not manifest.uri.startswith("gs://"):
                raise ValueError(
                    f"Vertex AI reads batch input from gs:// only; shard {manifest.shard_id} is at {manifest.uri}")
            src, dest = manifest.uri, self.output_prefix or default_output_prefix(manifest)
        else:
            src, dest = hook.upload_jsonl(hook.storage_path(manifest.uri), shard_file_name(display_name)), None
        try:
            return hook.create_job(model=self.model, src=src, display_name=display_name, dest=dest)
        except errors.ClientError as exc:
            if exc.code != 404:
                raise
            raise AirflowFailException(
                f"model {self.model!r}: the service has no such model for batch jobs, or not for this project "
                f"({exc.code} {exc.status}: {exc.message})") from None

    def _shard(self, context, hook: GeminiBatchHook) -> tuple[ShardManifest, str]:
        """The shard's manifest and the job's display name (the same run and rows give the same name)."""
        manifest = ShardManifest.load(hook.storage_path(self.manifest_uri))
        ti = context["ti"]
        return manifest, self.display_name or default_display_name(
            ti.dag_id, ti.run_id, manifest.shard_id, hook.storage_path(manifest.keys_uri))

    def _describe(self, display_name: str, manifest: ShardManifest) -> dict:
        return {"display_name": display_name, "shard_id": manifest.shard_id, "manifest_uri": self.manifest_uri}

    def execute_complete(self, context, event: Mapping, describe: Mapping[str, Any] | None = None) -> dict:
        hook = GeminiBatchHook(self.gemini_conn_id)
        if describe is None:  # not every runner hands the defer kwargs back (dags test does not): rebuild them
            describe = self._describe(*reversed(self._shard(context, hook)))
        return complete_from_event(self, hook, event, describe)

    def on_kill(self) -> None:
        # Not cancelled on purpose: a cleared or retried task reattaches to the job by its display name.
        if self.job_name:
            self.log.info("Leaving batch job %s running", self.job_name)


class GeminiBatchJobSensor(BaseSensorOperator):
    """Wait for a batch job submitted elsewhere; returns the same outcome dict as the submit operator."""

    template_fields = ("job_name", "gemini_conn_id")

    def __init__(
        self,
        *,
        job_name: str,
        gemini_conn_id: str = GeminiBatchHook.default_conn_name,
        deferrable: bool = True,
        poll_interval: float = 30,
        expiry_hours: float = DEFAULT_EXPIRY_HOURS,
        **kwargs,
    ):
        super().__init__(poke_interval=poll_interval, **kwargs)
        self.job_name = job_name
        self.gemini_conn_id = gemini_conn_id
        self.deferrable = deferrable
        self.poll_interval = poll_interval
        self.expiry = dt.timedelta(hours=expiry_hours)

    def execute(self, context) -> dict | None:
        if not self.deferrable:
            return super().execute(context)
        hook = GeminiBatchHook(self.gemini_conn_id)
        job = hook.get_job(self.job_name)
        return wait_for_job(self, hook, job, expiry=self.expiry, poll_interval=self.poll_interval,
                            describe=_describe_job(job))

    def poke(self, context) -> bool | PokeReturnValue:
        hook = GeminiBatchHook(self.gemini_conn_id)
        job = hook.get_job(self.job_name)
        if is_terminal(job):
            return PokeReturnValue(True, job_outcome(
                self, _describe_job(job), job.name, state_name(job), job_stats(job), job_error(job)))
        if dt.datetime.now(dt.timezone.utc) >= job_deadline(job, self.expiry):
            return PokeReturnValue(True, deadline_outcome(
                self, hook, job.name, state_name(job), job_stats(job), _describe_job(job)))
        return False

    def execute_complete(self, context, event: Mapping, describe: Mapping[str, Any] | None = None) -> dict:
        return complete_from_event(self, GeminiBatchHook(self.gemini_conn_id), event, describe or {})


def _describe_job(job: types.BatchJob) -> dict:
    return {"display_name": job.display_name, "shard_id": None, "manifest_uri": None}

"""Submit a shard as a batch job, and wait for it, deferred.

The submit operator is idempotent: the job's display name is derived from
the run and the shard's keys, so a retried or cleared task finds the job it
submitted before and reattaches instead of paying twice. It finds it through
Airflow's task state store (kept per run, task and map index across retries
and clears), so a first try lists no jobs at all. Waiting is deferred
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
from airflow.providers.standard.triggers.temporal import TimeDeltaTrigger
from airflow.sdk.exceptions import AirflowException, AirflowFailException
from google.genai import errors, types

from gemini_batch.batch_requests import ShardManifest
from gemini_batch.claims import FROM_LEDGER, key_shards, run_alive
from gemini_batch.hooks import CLOCK_SKEW, DEAD_STATES, GeminiBatchHook, is_terminal, job_error, job_stats, state_name
from gemini_batch.ledger import Ledger
from gemini_batch.triggers import GeminiBatchJobTrigger

SUCCEEDED_STATES = frozenset({"JOB_STATE_SUCCEEDED"})
DEFAULT_EXPIRY_HOURS = 24.0
HASH_CHUNK_BYTES = 2**20
# Task state store keys: when a submit started (ISO, UTC), then the job it made.
SUBMIT_STARTED_KEY = "submit_started_at"
JOB_NAME_KEY = "job_name"


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
        if (adoption := ShardManifest.load(hook.storage_path(self.manifest_uri))).adopts is not None:
            return self._adopt(context, hook, adoption)
        manifest, display_name = self._shard(context, hook)
        ti = context["ti"]
        store = context.get("task_state_store")
        job = self._earlier_job(context, store, hook, display_name)
        if job is not None and state_name(job) not in DEAD_STATES:
            self.log.info("Reattaching to batch job %s (%s), %s", job.name, display_name, state_name(job))
        else:
            if job is not None:
                self.log.info("The earlier job %s (%s) ended %s; submitting again", job.name, display_name, state_name(job))
            if store is not None:
                store.delete(JOB_NAME_KEY)  # else a crash before the new name is stored leaves the dead one
                store.set(SUBMIT_STARTED_KEY, dt.datetime.now(dt.timezone.utc).isoformat())
            job = self._submit(hook, manifest, display_name)
        if store is not None:  # a new job, or one found by searching: the next try needs a single get
            store.set(JOB_NAME_KEY, job.name)
        self.job_name = job.name
        if manifest.claim and manifest.ledger:  # what another run that wants these keys waits for
            Ledger(hook.storage_path(manifest.ledger)).record_job(manifest.claim, manifest.shard_id, job.name)
        ti.xcom_push(key="job_name", value=job.name)
        if hook.backend == "developer":  # the SDK does not report a Developer API job's input: clean-up needs it
            ti.xcom_push(key="job_input", value=f"files/{shard_file_name(display_name)}")
        if not self.wait:
            return job.name
        describe = self._describe(display_name, manifest)
        return wait_for_job(self, hook, job, expiry=dt.timedelta(hours=float(self.expiry_hours)),
                            poll_interval=float(self.poll_interval), describe=describe)

    def _earlier_job(self, context, store, hook: GeminiBatchHook, display_name: str) -> types.BatchJob | None:
        """The job an earlier try of this task submitted, found without reading the account's whole job list.

        A stored job name is one get. A submit that started but stored no name (the worker died in between)
        pages back only to its start; nothing stored means nothing submitted: no look-up. Without a store
        (``execute`` called outside a task run) the search goes back to when the DAG run was due, if there is one.
        """
        if store is None:
            dag_run = context.get("dag_run")
            started = getattr(dag_run, "run_after", None)  # before the first try; a clear resets start_date
            return hook.find_job(display_name, created_after=started - CLOCK_SKEW if started else None)
        if job_name := store.get(JOB_NAME_KEY):
            try:
                job = hook.get_job(job_name)
            except errors.ClientError as exc:
                if exc.code != 404:
                    raise
                self.log.info("The earlier job %s is gone; submitting again", job_name)
                return None
            if job.display_name == display_name:
                return job
            # Mapped tasks are stored per map index: this index now holds other rows (its upstream was rerun).
            self.log.info("The stored job %s is for %s, not %s; searching by name", job_name, job.display_name,
                          display_name)
            return hook.find_job(display_name)
        if started := store.get(SUBMIT_STARTED_KEY):
            return hook.find_job(display_name, created_after=dt.datetime.fromisoformat(started) - CLOCK_SKEW)
        return None

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

    def _adopt(self, context, hook: GeminiBatchHook, manifest: ShardManifest) -> dict:
        """Wait, deferred, for the jobs of another run's claim that request this manifest's keys.

        Nothing is submitted or cancelled: those jobs are the other run's. A
        job past its deadline, or a claim whose run died before submitting, is
        given up on: its keys get no answer here and the next round takes them over.
        """
        outcome = {**self._describe(None, manifest), "job_name": None, "state": "ADOPTED", "stats": {}, "error": None,
                   "deadline_passed": False, "adopted_jobs": []}
        if manifest.adopts == FROM_LEDGER:
            return outcome
        ledger = Ledger(hook.storage_path(manifest.ledger))
        claim = ledger.claim(manifest.adopts)
        run_state = getattr(context["ti"], "get_dagrun_state", None) or _unknown_run_state
        if claim is not None and not claim.built and run_alive(claim, run_state):
            return self._wait_for_claim(claim.claim, "to write its shards")
        if claim is None or not claim.built:
            return outcome
        with hook.storage_path(manifest.keys_uri).open("rb") as keys:
            wanted = {line.decode().strip() for line in keys if line.strip()}
        shards = key_shards(claim, hook.gcp_conn_id)
        expiry = dt.timedelta(hours=float(self.expiry_hours))
        for shard in sorted({shards[key] for key in wanted if key in shards}):
            name = ledger.job_of(claim.claim, shard)
            if name is None:
                if run_alive(claim, run_state):
                    return self._wait_for_claim(claim.claim, f"to submit shard {shard}")
                continue
            job = hook.get_job(name)
            deadline = job_deadline(job, expiry)
            if not is_terminal(job) and dt.datetime.now(dt.timezone.utc) < deadline:
                self.log.info("Waiting for batch job %s (%s) of claim %s: it requests keys of this round",
                              name, state_name(job), claim.claim)
                self.defer(trigger=GeminiBatchJobTrigger(job_name=name, gemini_conn_id=hook.gemini_conn_id,
                                                         deadline=deadline.isoformat(),
                                                         poll_interval=float(self.poll_interval)),
                           method_name="resume_adoption")
            outcome["adopted_jobs"].append({"job_name": name, "state": state_name(job)})
        self.log.info("Adopted %d key(s) from claim %s: jobs %s", len(wanted), claim.claim,
                      ", ".join(f"{j['job_name']} ({j['state']})" for j in outcome["adopted_jobs"]) or "none")
        return outcome

    def _wait_for_claim(self, claim: str, what: str):
        self.log.info("Waiting for claim %s %s", claim, what)
        self.defer(trigger=TimeDeltaTrigger(dt.timedelta(seconds=float(self.poll_interval))),
                   method_name="resume_adoption")

    def resume_adoption(self, context, event: Any = None) -> dict:
        """Look again: the claim wrote its shards, a job was created, or the job ended."""
        return self._adopt(context, GeminiBatchHook(self.gemini_conn_id),
                           ShardManifest.load(GeminiBatchHook(self.gemini_conn_id).storage_path(self.manifest_uri)))

    def on_kill(self) -> None:
        # Not cancelled on purpose: a cleared or retried task reattaches to the job (task state store, display name).
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


def _unknown_run_state(dag_id: str, run_id: str) -> str | None:
    return None


def _describe_job(job: types.BatchJob) -> dict:
    return {"display_name": job.display_name, "shard_id": None, "manifest_uri": None}

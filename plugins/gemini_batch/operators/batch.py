"""Submit a shard as a batch job, and wait for it, deferred.

The submit operator is idempotent: the job's display name is derived from
the run and the shard's keys, so a retried or cleared task finds the job it
submitted before and reattaches instead of paying twice. It finds it through
Airflow's task state store (kept per run, task and map index across retries
and clears), so a first try lists no jobs at all. The sensor waits,
deferred; the deadline comes from the job's create time, so a restart never
extends it; when it passes, the run's own job is cancelled so that it bills
nothing more (a job of another run is only observed).

A job that ends FAILED or EXPIRED does not fail the task: its finished rows
are collected and the rest retried downstream. The operator and the sensor
return the same small outcome dict: ``job_name``, ``display_name``,
``shard_id``, ``manifest_uri``, ``state``, ``stats``, ``error``,
``deadline_passed``.

Both carry two extra links, read from XCom the tasks push (the job's name,
and where its output is once known): "Gemini batch job" and "Batch output".
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
from collections.abc import Mapping
from typing import Any

from airflow.providers.standard.triggers.temporal import TimeDeltaTrigger
from airflow.sdk import BaseOperator, BaseOperatorLink, BaseSensorOperator, ObjectStoragePath, PokeReturnValue, XComArg
from airflow.sdk.exceptions import AirflowException, AirflowFailException
from airflow.sdk.execution_time.xcom import XCom
from google.genai import errors, types

from gemini_batch.coordination.claims import (
    FROM_LEDGER,
    holder_tokens,
    job_finder,
    job_state,
    key_shards,
    run_alive,
    run_state_of,
    shard_job_name,
    slot_is_free,
)
from gemini_batch.coordination.ledger import Ledger, ShardJob, now_iso
from gemini_batch.core.batch_requests import ShardManifest, ShardPiece, ShardPieces, manifest_of_file, split_shard
from gemini_batch.core.locations import uri_of
from gemini_batch.core.settings import DEFAULTS
from gemini_batch.hooks.errors import QuotaExhausted
from gemini_batch.hooks.gemini import (
    CLOCK_SKEW,
    DEAD_STATES,
    DEVELOPER_API_VERSION,
    DEVELOPER_BASE_URL,
    GeminiBatchHook,
    deadline_of,
    is_terminal,
    job_error,
    job_stats,
    name_of,
    state_name,
)
from gemini_batch.hooks.uploads import shard_file_name
from gemini_batch.steps.publish import LINEAGE_EXTRA
from gemini_batch.triggers.gemini import GeminiBatchJobTrigger, job_output

SUCCEEDED_STATES = frozenset({"JOB_STATE_SUCCEEDED"})
DEFAULT_EXPIRY_HOURS = DEFAULTS["expiry_hours"]
DEFAULT_QUOTA_WAIT_HOURS = DEFAULTS["quota_wait_hours"]
# A shard refused 429 with no other job of the model in flight is over the quota on its own once the refusals have
# lasted this many poll intervals (and at least ALONE_MIN_SECONDS): a rate limit's burst of 429s is over by then.
ALONE_POLLS = 10
ALONE_MIN_SECONDS = 5.0
HASH_CHUNK_BYTES = 2**20
# Task state store keys: when a submit started (ISO, UTC), then the job it made.
SUBMIT_STARTED_KEY = "submit_started_at"
JOB_NAME_KEY = "job_name"  # also the XCom key of the job's name
OUTPUT_KEY = "job_output"  # XCom: where the job's output is (gs:// prefix or folder, or files/...), once known
CONSOLE = "https://console.cloud.google.com"
AI_STUDIO_BATCHES = "https://aistudio.google.com/batches"
VERTEX_JOB = re.compile(r"projects/(?P<project>[^/]+)/locations/(?P<location>[^/]+)/batchPredictionJobs/(?P<id>[^/]+)")


class GeminiBatchJobLink(BaseOperatorLink):
    """A Vertex AI job's page in the Google Cloud console. The Developer API has no page per job: its link is
    AI Studio's list of batch jobs (the job's results file is the "Batch output" link)."""

    name = "Gemini batch job"

    def get_link(self, operator, *, ti_key) -> str:
        job_name = XCom.get_value(ti_key=ti_key, key=JOB_NAME_KEY)
        if not job_name:
            return ""
        if job := VERTEX_JOB.fullmatch(job_name):
            return (
                f"{CONSOLE}/vertex-ai/locations/{job['location']}/batch-predictions/{job['id']}"
                f"?project={job['project']}"
            )
        return AI_STUDIO_BATCHES


class GeminiBatchOutputLink(BaseOperatorLink):
    """A job's output: a gs:// prefix in the console's storage browser; a Developer API results file as its
    download URL, which no console shows and which needs the API key (``x-goog-api-key``), so a browser is
    refused: the link names the file for a download with the key."""

    name = "Batch output"

    def get_link(self, operator, *, ti_key) -> str:
        output = XCom.get_value(ti_key=ti_key, key=OUTPUT_KEY)
        if not output:
            return ""
        if output.startswith("gs://"):
            return f"{CONSOLE}/storage/browser/{output.removeprefix('gs://')}"
        return f"{DEVELOPER_BASE_URL}/{DEVELOPER_API_VERSION}/{output}:download?alt=media"


JOB_LINKS = (GeminiBatchJobLink(), GeminiBatchOutputLink())


def lineage_run_facets(task_instance, ti_state) -> dict:
    """An OpenLineage ``[openlineage] custom_run_facets`` function
    (``gemini_batch.operators.batch.lineage_run_facets``): the totals a task recorded as hook-lineage extra
    ``LINEAGE_EXTRA`` (jobs, tokens, documents) as the run facet ``geminiBatch``. The provider makes facets of SQL
    extras only, and a TaskFlow task cannot return its own."""
    import attrs
    from airflow.providers.common.compat.lineage.hook import get_hook_lineage_collector
    from airflow.providers.common.compat.openlineage.facet import RunFacet

    totals = {}
    for extra in get_hook_lineage_collector().collected_assets.extra:
        if extra.key == LINEAGE_EXTRA:
            totals.update(extra.value)
    if not totals:
        return {}
    facet = attrs.make_class("GeminiBatchRunFacet", list(totals), bases=(RunFacet,), kw_only=True)
    return {"geminiBatch": facet(**totals)}


def push_links(context, job_name: str, output: str | None) -> None:
    """What the extra links read: the job's name and, once known, its output (small strings, no secret)."""
    context["ti"].xcom_push(key=JOB_NAME_KEY, value=job_name)
    if output:
        context["ti"].xcom_push(key=OUTPUT_KEY, value=output)


def default_display_name(dag_id: str, run_id: str, shard_id: str, keys: ObjectStoragePath) -> str:
    """``gb-<run hash>-<shard id>-<keys hash>``: the same run and the same rows give the same job."""
    run_hash = hashlib.sha256(f"{dag_id}/{run_id}".encode()).hexdigest()[:12]
    keys_hash = hashlib.sha256()
    with keys.open("rb") as stream:
        while chunk := stream.read(HASH_CHUNK_BYTES):
            keys_hash.update(chunk)
    return f"gb-{run_hash}-{shard_id}-{keys_hash.hexdigest()[:12]}"


def default_output_prefix(manifest: ShardManifest) -> str:
    return f"{manifest.uri.rsplit('/', 1)[0]}/output/{manifest.shard_id}/"


def job_deadline(job: types.BatchJob, expiry: dt.timedelta) -> dt.datetime:
    return deadline_of(job.create_time or dt.datetime.now(dt.timezone.utc), expiry)


def wait_for_job(
    task: BaseOperator,
    hook: GeminiBatchHook,
    job: types.BatchJob,
    *,
    expiry: dt.timedelta,
    poll_interval: float,
    describe: Mapping[str, Any],
) -> dict:
    """The outcome of a job that has ended; otherwise defer to the trigger until it ends (raises TaskDeferred)."""
    if is_terminal(job):
        return job_outcome(task, describe, name_of(job), state_name(job), job_stats(job), job_error(job))
    deadline = job_deadline(job, expiry)
    task.log.info(
        "Waiting for batch job %s (%s) until %s at the latest", name_of(job), state_name(job), deadline.isoformat()
    )
    task.defer(
        trigger=GeminiBatchJobTrigger(
            job_name=name_of(job),
            gemini_conn_id=hook.gemini_conn_id,
            deadline=deadline.isoformat(),
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
    task: BaseOperator,
    hook: GeminiBatchHook,
    job_name: str,
    last_state: str | None,
    stats: Mapping,
    describe: Mapping[str, Any],
) -> dict:
    """Cancel a job past its deadline and report it EXPIRED; one that ended meanwhile reports how it ended."""
    if not hook.cancel_job(job_name):
        job = hook.get_job(job_name)
        return job_outcome(task, describe, job_name, state_name(job), job_stats(job), job_error(job))
    error = f"no result by the deadline (last state {last_state}); the job was cancelled"
    return job_outcome(task, describe, job_name, "JOB_STATE_EXPIRED", dict(stats), error, deadline_passed=True)


def job_outcome(
    task: BaseOperator,
    describe: Mapping[str, Any],
    job_name: str,
    state: str | None,
    stats: Mapping,
    error: str | None,
    *,
    deadline_passed: bool = False,
) -> dict:
    outcome = {
        "job_name": job_name,
        "display_name": describe.get("display_name"),
        "shard_id": describe.get("shard_id"),
        "manifest_uri": describe.get("manifest_uri"),
        "state": state,
        "stats": dict(stats),
        "error": error,
        "deadline_passed": deadline_passed,
    }
    if state in SUCCEEDED_STATES:
        task.log.info("Batch job %s ended %s %s", job_name, state, dict(stats) or "")
    else:
        task.log.warning(
            "Batch job %s ended %s (%s); its finished rows are collected and the rest retried",
            job_name,
            state,
            error or "no error message",
        )
    return outcome


class GeminiBatchSubmitOperator(BaseOperator):
    """Submit one shard (by its manifest) as a batch job, or reattach to the one submitted before.

    With ``wait=False`` (what the DAG does) it returns the submission, which
    ``GeminiBatchJobSensor`` waits for: ``{"jobs": [name], "adopted": False,
    "own": True, ...}``; with ``wait=True`` it waits itself (deferred) and
    returns the outcome dict. The job name is also pushed as XCom
    ``job_name``. On Vertex AI the output goes to ``output_prefix`` (default
    ``<shard folder>/output/<shard id>/``).

    On its own, outside the DAG, it takes a plain batch JSONL file instead of a
    manifest: ``input_file`` (local or gs://; rows with a ``key``); its manifest
    is kept in ``_gemini_batch/`` beside the file.

    A shard whose keys another run requests (an adoption manifest) submits
    nothing: its submission names that run's jobs, once they exist. With
    ``max_jobs_in_flight``, a new job is created only while fewer than that
    many jobs of the DAG's runs (all that share its ledger) are in flight;
    otherwise the task waits, deferred, for one to end.

    A create refused 429 (the model's enqueued-token quota) while other jobs
    of the model are in flight waits, deferred, for them, at most
    ``quota_wait_hours`` without progress. Refused with none in flight, the
    shard alone is over the quota: it is split in halves, down to single
    requests, and the pieces are submitted in turn (``ShardPieces``, kept
    beside the manifest); a single request over the quota is refused, and its
    document fails naming the quota. Each piece's input is uploaded once.
    """

    operator_extra_links = JOB_LINKS
    # gemini_conn_id, expiry and polling too: the DAG takes them as run params; strings are converted.
    template_fields = (
        "manifest_uri",
        "input_file",
        "model",
        "display_name",
        "output_prefix",
        "gemini_conn_id",
        "expiry_hours",
        "poll_interval",
        "max_jobs_in_flight",
        "quota_wait_hours",
    )

    def __init__(
        self,
        *,
        manifest_uri: str | None = None,
        input_file: str | None = None,
        model: str,
        gemini_conn_id: str = GeminiBatchHook.default_conn_name,
        display_name: str | None = None,
        output_prefix: str | None = None,
        wait: bool = True,
        poll_interval: float | str = 30,
        expiry_hours: float | str = DEFAULT_EXPIRY_HOURS,
        max_jobs_in_flight: int | str | None = None,
        quota_wait_hours: float | str = DEFAULT_QUOTA_WAIT_HOURS,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if (manifest_uri is None) == (input_file is None):
            raise ValueError(f"{self.task_id}: give a shard's manifest_uri or a plain JSONL input_file, one of them")
        self.input_file = input_file
        self.max_jobs_in_flight = max_jobs_in_flight
        self.quota_wait_hours = quota_wait_hours
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
        if (adoption := ShardManifest.load(hook.storage_path(self._manifest_uri(hook)))).adopts is not None:
            submission = self._adopt(context, hook, adoption)
            if not self.wait:
                return submission
            return observe_jobs(
                self,
                hook,
                submission,
                expiry=dt.timedelta(hours=float(self.expiry_hours)),
                poll_interval=float(self.poll_interval),
                method_name="resume",
            )
        manifest, display_name = self._shard(context, hook)
        pieces_path = ShardPieces.path_of(manifest, hook.storage_path(manifest.manifest_uri).parent)
        if (pieces := ShardPieces.load(pieces_path)) is not None:  # the service refused this shard before
            return self._submit_pieces(context, hook, pieces, pieces_path)
        store = context.get("task_state_store")
        job = self._earlier_job(context, store, hook, display_name)
        if job is not None and state_name(job) not in DEAD_STATES:
            self.log.info("Reattaching to batch job %s (%s), %s", name_of(job), display_name, state_name(job))
        else:
            if job is not None:
                self.log.info(
                    "The earlier job %s (%s) ended %s; submitting again", name_of(job), display_name, state_name(job)
                )
            if not self._take_slot(context, hook, manifest):
                return self._wait(f"for one of the {self.max_jobs_in_flight} slots for jobs in flight", "resume")
            if store is not None:
                store.delete(JOB_NAME_KEY)  # else a crash before the new name is stored leaves the dead one
                store.set(SUBMIT_STARTED_KEY, dt.datetime.now(dt.timezone.utc).isoformat())
            self._record_job(hook, manifest, ShardJob(None, now_iso(), display_name))  # findable if we die now
            src = self._input(hook, manifest, display_name)
            try:
                job = self._create(hook, manifest, src, display_name)
            except QuotaExhausted as exc:  # nothing was created: from here on the shard is submitted as pieces
                if store is not None:
                    store.delete(SUBMIT_STARTED_KEY)
                self.log.info(
                    "The service refused shard %s (%d requests, about %d input tokens): %s",
                    manifest.shard_id,
                    manifest.rows,
                    manifest.tokens,
                    exc,
                )
                pieces = ShardPieces(
                    manifest.shard_id, [ShardPiece(manifest.manifest_uri, display_name, manifest.rows, src=src)]
                )
                pieces.save(pieces_path)
                return self._submit_pieces(context, hook, pieces, pieces_path, refused_now=True)
        if store is not None:  # a new job, or one found by searching: the next try needs a single get
            store.set(JOB_NAME_KEY, name_of(job))
        self.job_name = name_of(job)
        self._record_job(hook, manifest, ShardJob(name_of(job), now_iso(), display_name))
        push_links(context, name_of(job), job_output(job))
        describe = self._describe(display_name, manifest)
        if not self.wait:
            return {**describe, "jobs": [name_of(job)], "adopted": False, "own": True}
        return wait_for_job(
            self,
            hook,
            job,
            expiry=dt.timedelta(hours=float(self.expiry_hours)),
            poll_interval=float(self.poll_interval),
            describe=describe,
        )

    @staticmethod
    def _record_job(hook: GeminiBatchHook, manifest: ShardManifest, job: ShardJob) -> None:
        """What another run that wants these keys waits for: the shard's job, in the ledger."""
        if manifest.claim and manifest.ledger:
            Ledger(hook.storage_path(manifest.ledger)).record_job(manifest.claim, manifest.shard_id, job)

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
            self.log.info(
                "The stored job %s is for %s, not %s; searching by name", job_name, job.display_name, display_name
            )
            return hook.find_job(display_name)
        if started := store.get(SUBMIT_STARTED_KEY):
            return hook.find_job(display_name, created_after=dt.datetime.fromisoformat(started) - CLOCK_SKEW)
        return None

    def _input(self, hook: GeminiBatchHook, manifest: ShardManifest, display_name: str) -> str:
        """Where the job reads the shard: its gs:// URI (Vertex AI), or its upload to the Files API."""
        if hook.backend == "vertex":
            if not manifest.uri.startswith("gs://"):
                raise ValueError(
                    f"Vertex AI reads batch input from gs:// only; shard {manifest.shard_id} is at {manifest.uri}"
                )
            return manifest.uri
        return hook.upload_jsonl(hook.storage_path(manifest.uri), shard_file_name(display_name))

    def _create(self, hook: GeminiBatchHook, manifest: ShardManifest, src: str, display_name: str) -> types.BatchJob:
        """Create the shard's job; a 404 on create is the model (none such, or not for this project): no retry helps."""
        dest = None
        if hook.backend == "vertex":
            dest = default_output_prefix(manifest)
            if self.output_prefix:
                dest = (
                    self.output_prefix
                    if manifest.piece_of is None
                    else (f"{self.output_prefix.rstrip('/')}/{manifest.shard_id}/")
                )
        try:
            return hook.create_job(model=self.model, src=src, display_name=display_name, dest=dest)
        except errors.ClientError as exc:
            if exc.code != 404:
                raise
            raise AirflowFailException(
                f"model {self.model!r}: the service has no such model for batch jobs, or not for this project "
                f"({exc.code} {exc.status}: {exc.message})"
            ) from None

    def _shard(self, context, hook: GeminiBatchHook) -> tuple[ShardManifest, str]:
        """The shard's manifest and the job's display name (the same run and rows give the same name)."""
        manifest = ShardManifest.load(hook.storage_path(self._manifest_uri(hook)))
        return manifest, self._display_name(context, hook, manifest)

    def _display_name(self, context, hook: GeminiBatchHook, manifest: ShardManifest) -> str:
        if self.display_name:
            return (
                self.display_name
                if manifest.piece_of is None
                else (f"{self.display_name}{manifest.shard_id[len(manifest.piece_of) :]}")
            )
        ti = context["ti"]
        return default_display_name(ti.dag_id, ti.run_id, manifest.shard_id, hook.storage_path(manifest.keys_uri))

    def _submit_pieces(
        self, context, hook: GeminiBatchHook, pieces: ShardPieces, path: ObjectStoragePath, *, refused_now: bool = False
    ) -> dict | str:
        """Submit, in order, the pieces of a shard the service refused; return the submission once each has a job
        or is refused. ``refused_now``: the first open piece was just refused (no second create for it).

        Refused while none of the model's jobs is in flight, a piece is judged over the quota on its own only once
        the refusals have lasted ``ALONE_POLLS`` poll intervals (a burst of 429s passes; a quota does not); from
        then on the shard's smaller pieces are split or refused at their first such refusal."""
        index = 0
        while index < len(pieces.pieces):
            piece = pieces.pieces[index]
            if not piece.open:
                index += 1
                continue
            part = ShardManifest.load(hook.storage_path(piece.manifest_uri))
            verdict = "refused" if refused_now else self._try_piece(hook, part, piece, pieces, path)
            refused_now = False
            if isinstance(verdict, types.BatchJob):
                push_links(context, name_of(verdict), job_output(verdict))
                index += 1
                continue
            if hook.jobs_in_flight(self.model):  # they hold the quota: wait for them, not forever
                if piece.refused_alone_since is not None:
                    piece.refused_alone_since = None
                    pieces.save(path)
                return self._wait_for_quota(hook, part, pieces, path)
            if not pieces.over_quota_alone and not self._refused_alone_long_enough(piece, pieces, path):
                return self._wait(
                    f"to see whether {part.shard_id} stays refused with no other job of {self.model} in flight (a "
                    "burst of 429s passes, the model's quota does not)",
                    "resume",
                )
            pieces.over_quota_alone, piece.refused_alone_since = True, None
            if part.rows > 1:
                halves = split_shard(part, hook.storage_path)
                pieces.pieces[index : index + 1] = [
                    ShardPiece(half.manifest_uri, self._display_name(context, hook, half), half.rows) for half in halves
                ]
                pieces.save(path)
                self.log.info(
                    "Shard %s alone is over the model's quota: split into %s and %s (%d and %d requests)",
                    part.shard_id,
                    halves[0].shard_id,
                    halves[1].shard_id,
                    halves[0].rows,
                    halves[1].rows,
                )
            else:
                piece.refused = quota_refusal(self.model, part.tokens)
                pieces.save(path)
                self.log.warning("Request %s: %s", part.shard_id, piece.refused)
                index += 1
        submission = self._describe(
            pieces.pieces[0].display_name, ShardManifest.load(hook.storage_path(self._manifest_uri(hook)))
        )
        return {
            **submission,
            "jobs": [p.job_name for p in pieces.pieces if p.job_name],
            "adopted": False,
            "own": True,
            "pieces_uri": uri_of(path),
        }

    def _refused_alone_long_enough(self, piece: ShardPiece, pieces: ShardPieces, path: ObjectStoragePath) -> bool:
        now = dt.datetime.now(dt.timezone.utc)
        if piece.refused_alone_since is None:
            piece.refused_alone_since = now.isoformat()
            pieces.save(path)
        settle = max(ALONE_POLLS * float(self.poll_interval), ALONE_MIN_SECONDS)
        return (now - dt.datetime.fromisoformat(piece.refused_alone_since)).total_seconds() >= settle

    def _try_piece(
        self,
        hook: GeminiBatchHook,
        part: ShardManifest,
        piece: ShardPiece,
        pieces: ShardPieces,
        path: ObjectStoragePath,
    ) -> types.BatchJob | str:
        """The piece's job (one an earlier try made, found by its display name, or a new one), or "refused"."""
        job = None
        if piece.started_at is not None:
            job = hook.find_job(
                piece.display_name, created_after=dt.datetime.fromisoformat(piece.started_at) - CLOCK_SKEW
            )
            job = job if job is not None and state_name(job) not in DEAD_STATES else None
        if job is None:
            if piece.src is None:
                piece.src = self._input(hook, part, piece.display_name)
            piece.started_at = now_iso()
            pieces.save(path)
            self._record_job(hook, part, ShardJob(None, piece.started_at, piece.display_name))
            try:
                job = self._create(hook, part, piece.src, piece.display_name)
            except QuotaExhausted:
                return "refused"
        piece.job_name, pieces.quota_wait_since = name_of(job), None
        pieces.save(path)
        self._record_job(hook, part, ShardJob(name_of(job), now_iso(), piece.display_name))
        self.log.info(
            "Piece %s of shard %s (%d requests): batch job %s", part.shard_id, pieces.shard_id, part.rows, name_of(job)
        )
        return job

    def _wait_for_quota(self, hook: GeminiBatchHook, part: ShardManifest, pieces: ShardPieces, path: ObjectStoragePath):
        """Defer until the model's jobs in flight leave room; fail the run once the wait passes quota_wait_hours."""
        now = dt.datetime.now(dt.timezone.utc)
        if pieces.quota_wait_since is None:
            pieces.quota_wait_since = now.isoformat()
            pieces.save(path)
        since = dt.datetime.fromisoformat(pieces.quota_wait_since)
        limit = dt.timedelta(hours=float(self.quota_wait_hours))
        if now - since >= limit:
            raise AirflowFailException(
                f"model {self.model!r}: the service refused {part.shard_id} ({part.rows} requests, about "
                f"{part.tokens:,} input tokens) for {now - since} while other jobs of the model held its "
                f"enqueued-token quota (quota_wait_hours={float(self.quota_wait_hours):g}). Set the model's quota as "
                f"enqueued_token_limit in connection {self.gemini_conn_id!r} (shards are then sized to it and wait "
                f"their turn), lower max_jobs_in_flight, or raise quota_wait_hours"
            )
        return self._wait(
            f"for the model's quota: {part.shard_id} (about {part.tokens:,} input tokens) was refused "
            f"while other jobs of {self.model} are in flight; waiting until {(since + limit).isoformat()} "
            "at the latest",
            "resume",
        )

    def _manifest_uri(self, hook: GeminiBatchHook) -> str:
        """The shard's manifest: as given, or made for a plain ``input_file`` (once; a retry finds it)."""
        if self.manifest_uri is None:
            jsonl = hook.storage_path(str(self.input_file))
            shard_id = re.sub(r"[^a-z0-9-]+", "-", self.task_id.lower()).strip("-") or "shard"
            self.manifest_uri = manifest_of_file(jsonl, jsonl.parent / "_gemini_batch", shard_id).manifest_uri
        return self.manifest_uri

    def _describe(self, display_name: str | None, manifest: ShardManifest) -> dict:
        return {"display_name": display_name, "shard_id": manifest.shard_id, "manifest_uri": manifest.manifest_uri}

    def execute_complete(self, context, event: Mapping, describe: Mapping[str, Any] | None = None) -> dict:
        hook = GeminiBatchHook(self.gemini_conn_id)
        if describe is None:  # not every runner hands the defer kwargs back (dags test does not): rebuild them
            manifest, display_name = self._shard(context, hook)
            describe = self._describe(display_name, manifest)
        if event["status"] == "terminal":
            push_links(context, event["job_name"], event.get("output"))
        return complete_from_event(self, hook, event, describe)

    def _take_slot(self, context, hook: GeminiBatchHook, manifest: ShardManifest) -> bool:
        """One of the ledger's slots for jobs in flight, if the run caps them; True when there is no cap.

        When the connection states the model's enqueued-token quota, the slot is taken only while the tokens
        of every job in flight in the ledger (all runs') and this shard's fit in it.
        """
        if not self.max_jobs_in_flight or not (manifest.claim and manifest.ledger):
            return True
        ledger = Ledger(hook.storage_path(manifest.ledger))
        return ledger.take_slot(
            f"{manifest.claim}/{manifest.shard_id}",
            int(self.max_jobs_in_flight),
            lambda holder: slot_is_free(
                ledger,
                holder,
                job_state=lambda name: job_state(hook, name),
                run_state=run_state_of(context),
                find_job=job_finder(hook),
            ),
            tokens=manifest.tokens,
            token_budget=hook.enqueued_token_limit,
            tokens_of=lambda holder: holder_tokens(ledger, holder, hook.gcp_conn_id),
        )

    def _adopt(self, context, hook: GeminiBatchHook, manifest: ShardManifest) -> dict:
        """The submission of the jobs another run's claim made for this manifest's keys, once they exist.

        Nothing is submitted or cancelled here: those jobs are the other run's.
        A claim whose run died before submitting a shard leaves that shard's
        keys without an answer here; the next round takes them over.
        """
        submission = {**self._describe(None, manifest), "jobs": [], "adopted": True, "own": False}
        if manifest.adopts == FROM_LEDGER or manifest.adopts is None or manifest.ledger is None:
            return submission
        ledger = Ledger(hook.storage_path(manifest.ledger))
        claim = ledger.claim(manifest.adopts)
        run_state = run_state_of(context)
        if claim is not None and not claim.built and run_alive(claim, run_state):
            return self._wait(f"for claim {claim.claim} to write its shards", "resume")
        if claim is None or not claim.built:
            return submission
        wanted = set(manifest.keys(hook.gcp_conn_id))
        shards = key_shards(claim, hook.gcp_conn_id)
        for shard in sorted({shards[key] for key in wanted if key in shards}):
            name = shard_job_name(ledger, claim.claim, shard, job_finder(hook))
            if name is None and run_alive(claim, run_state):
                return self._wait(f"for claim {claim.claim} to submit shard {shard}", "resume")
            if name is not None:
                submission["jobs"].append(name)
        self.log.info(
            "%d key(s) are requested by claim %s, in jobs %s",
            len(wanted),
            claim.claim,
            ", ".join(submission["jobs"]) or "none",
        )
        return submission

    def _wait(self, what: str, method_name: str):
        self.log.info("Waiting %s", what)
        self.defer(trigger=TimeDeltaTrigger(dt.timedelta(seconds=float(self.poll_interval))), method_name=method_name)

    def resume(self, context, event: Any = None) -> dict | str:
        """Look again: a slot for a job in flight is free, or the adopted claim wrote its shards or made a job."""
        return self.execute(context)

    def on_kill(self) -> None:
        # Not cancelled on purpose: a cleared or retried task reattaches to the job (task state store, display name).
        if self.job_name:
            self.log.info("Leaving batch job %s running", self.job_name)


class GeminiBatchJobSensor(BaseSensorOperator):
    """Wait for batch jobs, deferred; return the outcome dict. It only observes.

    ``job_name`` is a job's name, or the submission a
    ``GeminiBatchSubmitOperator(wait=False)`` returned: its own job (which
    the sensor cancels at the deadline: this run submitted it and must not
    pay for it past then), or another run's jobs it adopted, which it waits
    for and never touches. A job named alone is never cancelled either.
    """

    operator_extra_links = JOB_LINKS
    template_fields = ("job_name", "gemini_conn_id", "poll_interval", "expiry_hours")

    def __init__(
        self,
        *,
        job_name: str | Mapping | XComArg,  # the submission, or a job name
        gemini_conn_id: str = GeminiBatchHook.default_conn_name,
        deferrable: bool = True,
        poll_interval: float | str = 30,
        expiry_hours: float | str = DEFAULT_EXPIRY_HOURS,
        **kwargs,
    ):
        if isinstance(poll_interval, (int, float)):
            kwargs.setdefault("poke_interval", poll_interval)
        super().__init__(**kwargs)
        self.job_name = job_name
        self.gemini_conn_id = gemini_conn_id
        self.deferrable = deferrable
        self.poll_interval = poll_interval
        self.expiry_hours = expiry_hours

    @property
    def expiry(self) -> dt.timedelta:
        return dt.timedelta(hours=float(self.expiry_hours))

    def _submission(self) -> dict:
        if isinstance(self.job_name, Mapping):
            return dict(self.job_name)
        return {
            "jobs": [self.job_name],
            "adopted": False,
            "own": False,
            "display_name": None,
            "shard_id": None,
            "manifest_uri": None,
        }

    def execute(self, context) -> dict | None:
        if not self.deferrable:
            return super().execute(context)
        hook = GeminiBatchHook(self.gemini_conn_id)
        submission = self._submission()
        if submission["adopted"] or submission.get("pieces_uri"):
            return self._observe(hook, submission, "execute_complete")
        job = hook.get_job(submission["jobs"][0])
        push_links(context, name_of(job), job_output(job))
        return wait_for_job(
            self,
            hook,
            job,
            expiry=self.expiry,
            poll_interval=float(self.poll_interval),
            describe=_describe(submission, job),
        )

    def poke(self, context) -> bool | PokeReturnValue:
        hook = GeminiBatchHook(self.gemini_conn_id)
        submission = self._submission()
        jobs = [hook.get_job(name) for name in submission["jobs"]]
        now = dt.datetime.now(dt.timezone.utc)
        if not all(is_terminal(job) or now >= job_deadline(job, self.expiry) for job in jobs):
            return False
        if submission["adopted"] or submission.get("pieces_uri"):
            return PokeReturnValue(
                True,
                self._observe(hook, submission, "poke"),  # all ended: it does not defer
            )
        (job,) = jobs
        push_links(context, name_of(job), job_output(job))
        if is_terminal(job):
            return PokeReturnValue(
                True,
                job_outcome(
                    self, _describe(submission, job), name_of(job), state_name(job), job_stats(job), job_error(job)
                ),
            )
        return PokeReturnValue(
            True, self._past_deadline(hook, submission, name_of(job), state_name(job), job_stats(job))
        )

    def execute_complete(self, context, event: Mapping, describe: Mapping[str, Any] | None = None) -> dict:
        hook = GeminiBatchHook(self.gemini_conn_id)
        submission = self._submission()
        if submission["adopted"] or submission.get("pieces_uri"):  # one of its jobs ended: look at all again
            return self._observe(hook, submission, "execute_complete")
        if event["status"] == "deadline":
            return self._past_deadline(hook, submission, event["job_name"], event["state"], event.get("stats") or {})
        if event["status"] == "terminal":
            push_links(context, event["job_name"], event.get("output"))
        return complete_from_event(self, hook, event, describe or _describe(submission, None))

    def _observe(self, hook: GeminiBatchHook, submission: Mapping, method_name: str) -> dict:
        """A submission of several jobs (adopted, or a shard's pieces): their outcome, or a deferral."""
        return observe_jobs(
            self, hook, submission, expiry=self.expiry, poll_interval=float(self.poll_interval), method_name=method_name
        )

    def _past_deadline(self, hook, submission: Mapping, job_name: str, state: str | None, stats: Mapping) -> dict:
        describe = _describe(submission, None)
        if submission["own"]:
            return deadline_outcome(self, hook, job_name, state, stats, describe)
        error = f"no result by the deadline (last state {state}); the job was left running: not this task's to cancel"
        return job_outcome(self, describe, job_name, "JOB_STATE_EXPIRED", dict(stats), error, deadline_passed=True)


def observe_jobs(
    task: BaseOperator,
    hook: GeminiBatchHook,
    submission: Mapping,
    *,
    expiry: dt.timedelta,
    poll_interval: float,
    method_name: str,
) -> dict:
    """The outcome of a submission of several jobs once each has ended or passed its deadline; until then defer.

    Another run's jobs (adopted) are only observed; this run's own (a shard's
    pieces) are cancelled at their deadline, so they bill nothing more.
    """
    jobs, pieces = [], []
    for name in submission["jobs"]:
        job = hook.get_job(name)
        deadline = job_deadline(job, expiry)
        if not is_terminal(job) and dt.datetime.now(dt.timezone.utc) < deadline:
            task.log.info(
                "Waiting for batch job %s (%s)%s",
                name,
                state_name(job),
                " of another run: it requests keys of this round" if submission["adopted"] else "",
            )
            task.defer(
                trigger=GeminiBatchJobTrigger(
                    job_name=name,
                    gemini_conn_id=hook.gemini_conn_id,
                    deadline=deadline.isoformat(),
                    poll_interval=poll_interval,
                ),
                method_name=method_name,
            )
        jobs.append(job)
        if not submission["adopted"]:
            pieces.append(
                deadline_outcome(task, hook, name, state_name(job), job_stats(job), {})
                if not is_terminal(job)
                else job_outcome(task, {}, name, state_name(job), job_stats(job), job_error(job))
            )
    if submission["adopted"]:
        return adopted_outcome(submission, jobs)
    return {
        **adopted_outcome(submission, []),
        "display_name": submission.get("display_name"),
        "state": "PIECES",
        "adopted_jobs": None,
        "pieces_uri": submission["pieces_uri"],
        "piece_jobs": pieces,
    }


def adopted_outcome(submission: Mapping, jobs: list[types.BatchJob]) -> dict:
    return {
        "job_name": None,
        "display_name": None,
        "shard_id": submission.get("shard_id"),
        "manifest_uri": submission.get("manifest_uri"),
        "state": "ADOPTED",
        "stats": {},
        "error": None,
        "deadline_passed": False,
        "adopted_jobs": [{"job_name": name_of(job), "state": state_name(job)} for job in jobs],
    }


def _describe(submission: Mapping, job: types.BatchJob | None) -> dict:
    return {
        "display_name": submission.get("display_name") or (job.display_name if job else None),
        "shard_id": submission.get("shard_id"),
        "manifest_uri": submission.get("manifest_uri"),
    }


def quota_refusal(model: str, tokens: int) -> str:
    """Why a single request can never be submitted: alone, it is over the model's enqueued-token quota."""
    return (
        f"refused by the service: this request alone (about {tokens:,} input tokens) is over model {model}'s "
        "enqueued-token quota (429 RESOURCE_EXHAUSTED with no other job of the model in flight); split the "
        "document smaller (max_pages, max_part_mb), or ask Google for a larger quota"
    )

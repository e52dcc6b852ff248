"""The extraction DAG, built for any id and defaults: the repository's DAG, each pipeline file, or a user's own.

plan -> (preview a few documents online) -> check budget -> (approve the cost) -> stage
-> build requests (leases the keys in the ledger)
-> jobs (one mapped group per shard: submit, then a deferred sensor waits) ->
collect -> retry rounds (failed keys only) -> publish results -> (sink results into a SQL table) -> clean up.
Each task opens the run (``gemini_batch.steps.runs.Run``) and calls its step, a function of its own module
under ``gemini_batch.steps``; this module only wires them. Nothing here runs at parse time but the wiring.
"""

from __future__ import annotations

import copy
import datetime as dt
import logging
import os
from collections.abc import Iterable, Mapping
from typing import Any

from airflow.sdk import DAG, Asset, Param, TaskGroup, TriggerRule, get_current_context, task, task_group
from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException, DownstreamTasksSkipped

from gemini_batch.core import documents, records, settings
from gemini_batch.core.locations import uri_of
from gemini_batch.core.settings import MAX_RETRY_ROUNDS
from gemini_batch.core.sink_sql import SinkError
from gemini_batch.operators.approval import CostApprovalOperator
from gemini_batch.operators.batch import GeminiBatchJobSensor, GeminiBatchSubmitOperator
from gemini_batch.steps import (
    budget,
    build,
    collection,
    planning,
    preview,
    publish,
    retry,
    run_settings,
    runs,
    sink,
    staging,
)
from gemini_batch.steps.clean_up import clean_up as clean_up_run  # the task below is clean_up

log = logging.getLogger(__name__)
POOL = "gemini_batch_jobs"  # counts deferred tasks: caps worker and triggerer load (bin/setup: 10 slots)
DEFAULT_SCHEDULE = "0 2 * * *"
DEFAULT_START = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
RETRY_ROUND_PREFIX = "retry_round_"
LANDING_ENV = "GEMINI_BATCH_LANDING"  # nightly runs of the repository's DAG read <landing>/<date>/


def default_params() -> dict[str, Param]:
    """The trigger form, one field per setting (core.settings), with its default (``build_dag(params=...)`` replaces
    defaults). Nightly runs of the repository's DAG read ``$GEMINI_BATCH_LANDING/<date>/`` when that is set."""
    landing = os.environ.get(LANDING_ENV)
    form = {}
    for setting in settings.SETTINGS:
        default = f"{landing}/{{{{ ds }}}}/" if setting.name == "source" and landing else setting.default
        form[setting.name] = Param(
            copy.deepcopy(default), setting.description or None, title=setting.title, **setting.schema
        )
    return form


PARAM_NAMES = frozenset(settings.BY_NAME)


def _open_run() -> runs.Run:
    """The current task's run: settings checked once, work folder, ledger and hook."""
    try:
        return runs.Run.from_context(get_current_context())
    except run_settings.RunConfigError as exc:
        raise AirflowFailException(str(exc)) from None  # retrying cannot fix a parameter


@task(multiple_outputs=False)  # one XCom: the plan's URI and counts (a dict return would be split per key)
def plan_documents() -> dict:
    """An empty source plans zero documents and the run publishes an empty result; a missing one fails at once."""
    try:
        return records.to_builtins(planning.plan_documents(_open_run()))
    except (documents.SourceError, run_settings.RunConfigError) as exc:
        raise AirflowFailException(str(exc)) from None  # a missing source or an unknown model: a parameter to fix


@task(multiple_outputs=False)
def preview_documents(planned: dict) -> dict:
    """Skipped with ``preview_documents`` 0; else a few documents answered online, their records in
    preview.jsonl, the run's cost projected from them in preview.json (XCom: that report)."""
    run = _open_run()
    if run.settings.preview_documents <= 0:
        raise AirflowSkipException("preview_documents is 0: no preview")
    try:
        report = preview.preview_documents(run, planned)
    except run_settings.RunConfigError as exc:
        raise AirflowFailException(str(exc)) from None  # the preview alone is over budget
    if report is None:
        raise AirflowSkipException("no document to preview")
    return report


@task(trigger_rule=TriggerRule.NONE_FAILED)  # a skipped preview: the estimate decides
def check_budget(planned: dict, previewed: dict | None = None) -> None:
    try:
        budget.check_budget(_open_run(), planned, previewed)
    except run_settings.RunConfigError as exc:
        raise AirflowFailException(str(exc)) from None  # over budget: no retry


@task(multiple_outputs=False)
def stage_documents() -> dict:
    return staging.stage_documents(_open_run())


@task
def build_requests() -> list[str]:
    return build.build_requests(_open_run(), 0)


@task(trigger_rule=TriggerRule.NONE_FAILED, multiple_outputs=False)
def collect_results(round_: int, jobs) -> dict:
    # A mapped group of one shard hands its single outcome on unwrapped (Airflow 3.3), not as a list of one.
    return collection.collect_results(_open_run(), round_, [jobs] if isinstance(jobs, Mapping) else list(jobs or []))


@task
def prepare_retry(round_: int) -> list[str]:
    """Nothing left to retry skips the rest of this round and every later one at once: their tasks never start,
    and publishing need not wait for the skip to pass down the rounds one task at a time."""
    manifests = retry.prepare_retry(_open_run(), round_)
    if not manifests:
        later = sorted(
            task_id
            for task_id in get_current_context()["task"].get_flat_relative_ids(upstream=False)
            if task_id.startswith(RETRY_ROUND_PREFIX)
        )
        log.info("Nothing to retry in round %d: skipping %s", round_, ", ".join(later))
        raise DownstreamTasksSkipped(tasks=later)
    return manifests


@task_group(group_id="jobs", tooltip="Per shard: submit its batch job, then wait for it (deferred)")
def batch_job(manifest_uri: str, pool: str = POOL):
    submitted = GeminiBatchSubmitOperator(
        task_id="submit",
        manifest_uri=manifest_uri,
        model="{{ params.model }}",
        gemini_conn_id="{{ params.gemini_conn_id }}",
        expiry_hours="{{ params.expiry_hours }}",
        poll_interval="{{ params.poll_seconds }}",
        max_jobs_in_flight="{{ params.max_jobs_in_flight }}",
        quota_wait_hours="{{ params.quota_wait_hours }}",
        wait=False,
        pool=pool,
    )
    return GeminiBatchJobSensor(
        task_id="wait",
        job_name=submitted.output,
        gemini_conn_id="{{ params.gemini_conn_id }}",
        expiry_hours="{{ params.expiry_hours }}",
        poll_interval="{{ params.poll_seconds }}",
        pool=pool,
    ).output


@task(trigger_rule=TriggerRule.NONE_FAILED, multiple_outputs=True)  # the summary's fields in the UI
def publish_results(collected: list[dict], outlet_events=None) -> dict:
    run = _open_run()
    rounds = [counts for counts in collected if counts is not None]  # a skipped round hands on None
    summary = publish.publish_results(run, rounds)
    for asset in get_current_context()["outlets"]:
        outlet_events[asset].extra = {"output": uri_of(run.settings.output), **summary}
    return summary


@task
def sink_results() -> int:
    """results.jsonl upserted into ``sink_table`` of ``sink_conn_id`` (skipped without one); XCom: the rows."""
    run = _open_run()
    if not run.settings.sink_conn_id:
        raise AirflowSkipException("no sink_conn_id: the results are in results.jsonl only")
    try:
        return sink.sink_results(run, sink.sql_hook(run.settings.sink_conn_id))
    except SinkError as exc:
        raise AirflowFailException(str(exc)) from None  # a connection or table to fix: retrying cannot


@task(multiple_outputs=False)  # the DAG makes it a teardown: it runs whatever happened upstream
def clean_up() -> dict:
    """The run's jobs are found in the ledger, where each submit recorded them."""
    return clean_up_run(_open_run())


def results_asset(dag_id: str) -> Asset:
    """What a DAG's publish step updates, for DAGs scheduled on its results."""
    return Asset(name=f"{dag_id}.results", uri=f"gemini-batch://{dag_id}/results")


def build_dag(
    dag_id: str = "gemini_batch_extract",
    *,
    params: Mapping[str, Any] | None = None,
    schedule: Any = DEFAULT_SCHEDULE,
    start_date: dt.datetime = DEFAULT_START,
    description: str = "Documents in a folder -> one structured record each, with Gemini Batch Mode",
    tags: Iterable[str] = ("gemini", "batch", "extraction"),
    max_active_runs: int = 4,
    pool: str = POOL,
    doc_md: str | None = None,
) -> DAG:
    """The extraction DAG under ``dag_id``; ``params`` replaces the defaults of the trigger form's fields.

    Every task is idempotent (a resubmitted shard reattaches to its job by name), so a lost worker or a
    transient failure is retried; parameter and budget errors fail at once (AirflowFailException).
    """
    unknown = sorted(set(params or {}) - PARAM_NAMES)
    if unknown:
        raise ValueError(
            f"build_dag({dag_id!r}): unknown params {', '.join(unknown)}; known: {', '.join(sorted(PARAM_NAMES))}"
        )
    form = default_params()
    for name, value in (params or {}).items():
        param = form[name]
        form[name] = Param(copy.deepcopy(value), param.description, schema=param.schema)
    with DAG(
        dag_id=dag_id,
        description=description,
        schedule=schedule,
        start_date=start_date,
        catchup=False,
        max_active_runs=max_active_runs,
        default_args={"retries": 2, "retry_delay": dt.timedelta(seconds=30)},
        params=form,
        render_template_as_native_obj=True,  # "{{ params.x }}" is the param's value: a number, or None
        tags=list(tags),
        doc_md=doc_md or __doc__,
    ) as dag:
        planned = plan_documents()
        previewed = preview_documents(planned)  # type: ignore[arg-type]  # TaskFlow passes the XComArg
        staged = stage_documents()
        approved = CostApprovalOperator(
            task_id="approve_cost",
            planned=planned,
            preview=previewed,
            threshold_usd="{{ params.approve_above_usd }}",
            trigger_rule=TriggerRule.NONE_FAILED,  # runs after a skipped preview
        )
        check_budget(planned, previewed) >> approved >> staged  # type: ignore[arg-type]
        manifests = build_requests()
        staged >> manifests
        collected = [collect_results(0, batch_job.partial(pool=pool).expand(manifest_uri=manifests))]
        for round_ in range(1, MAX_RETRY_ROUNDS + 1):
            with TaskGroup(
                f"{RETRY_ROUND_PREFIX}{round_}", tooltip="Resubmit the requests that failed or got no answer"
            ):
                retry_manifests = prepare_retry(round_)
                collected[-1] >> retry_manifests
                collected.append(
                    collect_results.override(trigger_rule=TriggerRule.NONE_FAILED_MIN_ONE_SUCCESS)(
                        round_, batch_job.partial(pool=pool).expand(manifest_uri=retry_manifests)
                    )
                )
        published = publish_results.override(outlets=[results_asset(dag_id)])(collected)  # type: ignore[arg-type]
        published >> sink_results() >> clean_up().as_teardown()  # a teardown does not decide the run's state
    return dag

"""What Airflow's metadata DB knows about the provider's pipelines: which DAGs they are, their runs with each one's
summary (publish_results' XCom) and output (the results Asset's event, else the run's conf), and the batch jobs
their deferred tasks wait for (the trigger rows).

A DAG is one of this provider's when its ``publish_results`` task updates a ``gemini-batch://`` Asset: what
``gemini_batch.dag.build_dag`` wires for gemini_batch_extract, each YAML pipeline and a user's own DAGs.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Collection, Iterable, Mapping
from typing import Any

from airflow.models.asset import AssetEvent, AssetModel, TaskOutletAssetReference
from airflow.models.dag import DagModel
from airflow.models.dagrun import DagRun
from airflow.models.taskinstance import TaskInstance
from airflow.models.trigger import Trigger
from airflow.models.xcom import XComModel
from sqlalchemy import select
from sqlalchemy.orm import Session

from gemini_batch.triggers.gemini import GeminiBatchJobTrigger
from gemini_batch.ui.data import RunRow

PUBLISH_TASK = "publish_results"
ASSET_SCHEME = "gemini-batch://"
RETURN_KEY = "return_value"
JOB_TRIGGER = f"{GeminiBatchJobTrigger.__module__}.{GeminiBatchJobTrigger.__qualname__}"


def pipeline_dag_ids(session: Session) -> list[str]:
    """Every DAG (not stale) whose publish task updates a ``gemini-batch://`` Asset, sorted."""
    stmt = (
        select(TaskOutletAssetReference.dag_id)
        .join(AssetModel, AssetModel.id == TaskOutletAssetReference.asset_id)
        .join(DagModel, DagModel.dag_id == TaskOutletAssetReference.dag_id)
        .where(
            AssetModel.uri.like(f"{ASSET_SCHEME}%"),
            TaskOutletAssetReference.task_id == PUBLISH_TASK,
            DagModel.is_stale.is_(False),
        )
        .distinct()
    )
    return sorted(session.scalars(stmt))


def _summaries(session: Session, keys: Collection[tuple[str, str]]) -> dict[tuple[str, str], dict]:
    """publish_results' summary per (dag_id, run_id): its return value, else its fields pushed one by one."""
    if not keys:
        return {}
    dag_ids, run_ids = {k[0] for k in keys}, {k[1] for k in keys}
    rows = session.execute(
        select(XComModel.dag_id, XComModel.run_id, XComModel.key, XComModel.value).where(
            XComModel.dag_id.in_(dag_ids),
            XComModel.run_id.in_(run_ids),
            XComModel.task_id == PUBLISH_TASK,
            XComModel.map_index == -1,
        )
    )
    found: dict[tuple[str, str], dict] = {}
    fields: dict[tuple[str, str], dict] = {}
    for dag_id, run_id, key, value in rows:
        if (dag_id, run_id) not in keys:
            continue
        value = XComModel.deserialize_value(_Row(value))
        if key == RETURN_KEY and isinstance(value, Mapping):
            found[(dag_id, run_id)] = dict(value)
        else:
            fields.setdefault((dag_id, run_id), {})[key] = value
    for key_, values in fields.items():
        if key_ not in found and "documents" in values:
            found[key_] = values
    return found


class _Row:
    """What ``XComModel.deserialize_value`` reads: an object with the stored value."""

    def __init__(self, value: Any):
        self.value = value


def _outputs(session: Session, keys: Collection[tuple[str, str]]) -> dict[tuple[str, str], dict]:
    """The results Asset's latest event extra per (dag_id, run_id): ``output`` and the summary's fields."""
    if not keys:
        return {}
    rows = session.execute(
        select(AssetEvent.source_dag_id, AssetEvent.source_run_id, AssetEvent.extra)
        .where(
            AssetEvent.source_dag_id.in_({k[0] for k in keys}),
            AssetEvent.source_run_id.in_({k[1] for k in keys}),
            AssetEvent.source_task_id == PUBLISH_TASK,
        )
        .order_by(AssetEvent.timestamp)
    )
    return {(d, r): dict(extra or {}) for d, r, extra in rows if (d, r) in keys}


def conf_output(conf: Mapping | None) -> str | None:
    """A run's output as its conf gives it, when that is a location as it is (not a template to render)."""
    output = (conf or {}).get("output")
    if isinstance(output, str) and output and "{{" not in output and "{%" not in output:
        return output
    return None


def runs(session: Session, dag_ids: Iterable[str], *, limit: int = 100, offset: int = 0) -> list[RunRow]:
    """The DAGs' runs, newest first, each with its summary and output where known."""
    dag_ids = list(dag_ids)
    if not dag_ids:
        return []
    stmt = (
        select(DagRun.dag_id, DagRun.run_id, DagRun.state, DagRun.start_date, DagRun.end_date, DagRun.conf)
        .where(DagRun.dag_id.in_(dag_ids))
        .order_by(DagRun.run_after.desc(), DagRun.id.desc())
        .offset(offset)
        .limit(limit)
    )
    found = session.execute(stmt).all()
    keys = {(r.dag_id, r.run_id) for r in found}
    summaries, events = _summaries(session, keys), _outputs(session, keys)
    rows = []
    for r in found:
        key = (r.dag_id, r.run_id)
        event = events.get(key, {})
        summary = summaries.get(key) or ({k: v for k, v in event.items() if k != "output"} if event else None)
        rows.append(
            RunRow(
                dag_id=r.dag_id,
                run_id=r.run_id,
                state=str(r.state),
                start=r.start_date,
                end=r.end_date,
                summary=summary,
                output=event.get("output") or conf_output(r.conf),
            )
        )
    return rows


def run(session: Session, dag_id: str, run_id: str) -> tuple[RunRow, dict] | None:
    """One run's row and its conf; None if there is no such run."""
    found = session.execute(
        select(DagRun.dag_id, DagRun.run_id, DagRun.state, DagRun.start_date, DagRun.end_date, DagRun.conf).where(
            DagRun.dag_id == dag_id, DagRun.run_id == run_id
        )
    ).first()
    if found is None:
        return None
    key = {(dag_id, run_id)}
    event = _outputs(session, key).get((dag_id, run_id), {})
    summary = _summaries(session, key).get((dag_id, run_id)) or (
        {k: v for k, v in event.items() if k != "output"} if event else None
    )
    row = RunRow(
        dag_id=dag_id,
        run_id=run_id,
        state=str(found.state),
        start=found.start_date,
        end=found.end_date,
        summary=summary,
        output=event.get("output") or conf_output(found.conf),
    )
    return row, dict(found.conf or {})


def jobs_in_flight(session: Session, dag_ids: Iterable[str], *, limit: int = 200) -> list[dict[str, Any]]:
    """The batch jobs the DAGs' deferred tasks are waiting for: per task, its run and the trigger's job name and
    connection (the trigger's arguments hold no secret)."""
    dag_ids = list(dag_ids)
    if not dag_ids:
        return []
    stmt = (
        select(TaskInstance.dag_id, TaskInstance.run_id, TaskInstance.task_id, TaskInstance.map_index, Trigger)
        .join(Trigger, Trigger.id == TaskInstance.trigger_id)
        .where(TaskInstance.dag_id.in_(dag_ids), TaskInstance.state == "deferred", Trigger.classpath == JOB_TRIGGER)
        .order_by(Trigger.created_date)
        .limit(limit)
    )
    jobs = []
    for dag_id, run_id, task_id, map_index, trigger in session.execute(stmt):
        try:
            kwargs = trigger.kwargs
        except Exception:  # a trigger row this process cannot decrypt: shown without its job
            kwargs = {}
        created = trigger.created_date
        jobs.append(
            {
                "dag_id": dag_id,
                "run_id": run_id,
                "task_id": task_id,
                "map_index": map_index,
                "job_name": kwargs.get("job_name"),
                "gemini_conn_id": kwargs.get("gemini_conn_id"),
                "deadline": kwargs.get("deadline"),
                "waiting_since": created.astimezone(dt.timezone.utc).isoformat() if created else None,
            }
        )
    return jobs

"""The view's FastAPI app, mounted by Airflow's API server under ``URL_PREFIX`` (the plugin's ``fastapi_apps``).

Auth is Airflow's own: every route depends on ``airflow.api_fastapi.core_api.security.get_user`` (the JWT from the
``Authorization: Bearer`` header, or the UI's ``_token`` cookie, so the iframe page works for a signed-in user;
anonymous: 401, a bad token: 403), and what a user sees is what the auth manager lets them read: the pipeline DAGs
among ``get_authorized_dag_ids(user, GET)``, and a run's results only with GET on the DAG's runs
(``is_authorized_dag(GET, RUN)``), as the core API's dag-run routes require.

HTML pages: ``/`` (pipelines, charts, runs, jobs in flight), ``/run`` (one run's results browser), ``/document``.
JSON: ``/api/pipelines``, ``/api/jobs``, ``/api/results`` (one page, streaming from a byte cursor), ``/api/document``.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import logging
from typing import Annotated, Any

from airflow.api_fastapi.app import get_auth_manager
from airflow.api_fastapi.auth.managers.models.base_user import BaseUser
from airflow.api_fastapi.auth.managers.models.resource_details import DagAccessEntity, DagDetails
from airflow.api_fastapi.common.db.common import SessionDep
from airflow.api_fastapi.core_api.security import get_user
from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi.responses import HTMLResponse
from sqlalchemy.orm import Session

from gemini_batch.core import jsonl, records
from gemini_batch.core.locations import as_path, open_file
from gemini_batch.core.settings import MAX_RETRY_ROUNDS
from gemini_batch.hooks.gemini import GeminiBatchHook
from gemini_batch.hooks.progress import job_progress
from gemini_batch.steps.run_settings import run_slug
from gemini_batch.ui import URL_PREFIX, data, metadata, pages

log = logging.getLogger(__name__)

RUNS_PER_DAG = 100
PROGRESS_TIMEOUT_SECONDS = 10.0

UserDep = Annotated[BaseUser, Depends(get_user)]


# ------------------------------------------------------------------------------------------------------ authorization


def readable_pipelines(user: BaseUser, session: Session) -> list[str]:
    """The provider's DAGs this user may read."""
    allowed = get_auth_manager().get_authorized_dag_ids(user=user, method="GET", session=session)
    return [dag_id for dag_id in metadata.pipeline_dag_ids(session) if dag_id in allowed]


def require_run_access(user: BaseUser, session: Session, dag_id: str) -> None:
    """403 unless the user may read the DAG's runs; 404 for a DAG that is not one of the provider's."""
    if not get_auth_manager().batch_is_authorized_dag(
        [
            {"method": "GET", "details": DagDetails(id=dag_id)},
            {"method": "GET", "access_entity": DagAccessEntity.RUN, "details": DagDetails(id=dag_id)},
        ],
        user=user,
    ):
        raise HTTPException(403, f"you may not read the runs of DAG {dag_id!r}")
    if dag_id not in metadata.pipeline_dag_ids(session):
        raise HTTPException(404, f"{dag_id!r} is not a Gemini Batch pipeline")


# ------------------------------------------------------------------------------------------------------------- data


def _links(request: Request) -> pages.Links:
    root = request.scope.get("root_path", "") or URL_PREFIX
    return pages.Links(root, root.removesuffix(URL_PREFIX))


def _gcp_conn_id(conf: dict) -> str | None:
    try:
        return GeminiBatchHook(conf.get("gemini_conn_id") or GeminiBatchHook.default_conn_name).gcp_conn_id
    except Exception:  # no such connection here: a gs:// output then needs the default credentials
        return None


def _with_progress(jobs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each job's progress from the service (in parallel, each given up after a few seconds)."""

    def one(job: dict[str, Any]) -> dict[str, Any]:
        if not job.get("job_name"):
            return {**job, "progress": None}
        try:
            hook = GeminiBatchHook(job.get("gemini_conn_id") or GeminiBatchHook.default_conn_name)
            return {**job, "progress": job_progress(hook, job["job_name"]), "error": None}
        except Exception as exc:
            return {**job, "progress": None, "error": f"cannot read its progress: {type(exc).__name__}: {exc}"[:300]}

    if not jobs:
        return []
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=min(8, len(jobs)))
    futures = [pool.submit(one, job) for job in jobs]
    out = []
    for job, future in zip(jobs, futures, strict=True):
        try:
            out.append(future.result(timeout=PROGRESS_TIMEOUT_SECONDS))
        except concurrent.futures.TimeoutError:
            out.append({**job, "progress": None, "error": "the service did not answer in time"})
    pool.shutdown(wait=False, cancel_futures=True)
    return out


def _run_or_404(session: Session, dag_id: str, run_id: str) -> tuple[data.RunRow, dict]:
    found = metadata.run(session, dag_id, run_id)
    if found is None:
        raise HTTPException(404, f"no run {run_id!r} of DAG {dag_id!r}")
    return found


def _results_page(row: data.RunRow, conf: dict, query: ResultsQuery) -> tuple[data.ResultsPage | None, str | None]:
    if not row.output:
        return None, "This run's output is not known yet (it is known once publish_results has run)."
    path = as_path(row.output, _gcp_conn_id(conf)) / "results.jsonl"
    try:
        with open_file(path) as fh:
            page = data.results_page(
                fh, cursor=query.cursor, limit=query.limit, status=query.status, search=query.search
            )
            return page, None
    except FileNotFoundError:
        return None, f"{row.output}/results.jsonl is not there (not published yet, or moved)."


def _columns(conf: dict, page: data.ResultsPage | None) -> list[str]:
    """The response schema's top-level fields (the run's conf); else the keys of the page's data, in order."""
    fields = data.schema_fields(conf.get("response_schema"))
    if fields or page is None:
        return fields
    seen: dict[str, None] = {}
    for record in page.records:
        if isinstance(record.data, dict):
            seen.update(dict.fromkeys(record.data))
    return list(seen)[:20]


def _document(row: data.RunRow, conf: dict, name: str) -> tuple[Any, dict]:
    if not row.output:
        raise HTTPException(404, "this run's output is not known yet")
    output = as_path(row.output, _gcp_conn_id(conf))
    record = data.find_document(jsonl.lines(output / "results.jsonl"), name)
    if record is None:
        raise HTTPException(404, f"no document {name!r} in this run's results")
    failed = [part.key for part in record.parts if part.status != "succeeded"]
    work = output / "_work" / run_slug(row.run_id)
    rounds = [jsonl.lines(work / f"round-{r}" / "outcomes.jsonl") for r in range(MAX_RETRY_ROUNDS + 1)]
    return record, data.raw_answers(rounds, failed)


@dataclasses.dataclass(frozen=True)
class ResultsQuery:
    """A page of one run's results: what the run page and ``/api/results`` are asked for."""

    dag_id: str
    run_id: str
    status: str | None
    search: str | None
    cursor: int
    limit: int


def results_query(
    dag_id: str,
    run_id: str,
    status: str | None = None,
    search: str | None = None,
    cursor: Annotated[int, Query(ge=0)] = 0,
    limit: Annotated[int, Query(ge=1, le=data.MAX_PAGE)] = 50,
) -> ResultsQuery:
    if status and status not in data.STATUSES:
        raise HTTPException(422, f"status must be one of {', '.join(data.STATUSES)}")
    return ResultsQuery(dag_id, run_id, status or None, search, cursor, limit)


ResultsQueryDep = Annotated[ResultsQuery, Depends(results_query)]


# ------------------------------------------------------------------------------------------------------------- app


def create_app() -> FastAPI:
    app = FastAPI(
        title="Gemini Batch",
        description="Runs, spend, jobs in flight and results of the gemini-batch pipelines, behind Airflow's auth.",
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )

    @app.get("/", response_class=HTMLResponse)
    def overview_page(request: Request, user: UserDep, session: SessionDep) -> HTMLResponse:
        dag_ids = readable_pipelines(user, session)
        rows = metadata.runs(session, dag_ids, limit=RUNS_PER_DAG * max(1, len(dag_ids)))
        panels = [(dag_id, [r for r in rows if r.dag_id == dag_id][:RUNS_PER_DAG]) for dag_id in dag_ids]
        jobs = _with_progress(metadata.jobs_in_flight(session, dag_ids))
        links = _links(request)
        return HTMLResponse(pages.layout("Gemini Batch", pages.overview(panels, jobs, links)))

    @app.get("/run", response_class=HTMLResponse)
    def run_page(request: Request, user: UserDep, session: SessionDep, query: ResultsQueryDep) -> HTMLResponse:
        require_run_access(user, session, query.dag_id)
        row, conf = _run_or_404(session, query.dag_id, query.run_id)
        page, problem = _results_page(row, conf, query)
        links = _links(request)
        body = pages.run_page(
            row,
            page,
            _columns(conf, page),
            links,
            status=query.status,
            search=query.search,
            cursor=query.cursor,
            problem=problem,
        )
        crumbs = [("Gemini Batch", links.home()), (query.dag_id, None)]
        return HTMLResponse(pages.layout(f"Run {query.run_id}", body, crumbs))

    @app.get("/document", response_class=HTMLResponse)
    def document_page(
        request: Request, user: UserDep, session: SessionDep, dag_id: str, run_id: str, name: str
    ) -> HTMLResponse:
        require_run_access(user, session, dag_id)
        row, conf = _run_or_404(session, dag_id, run_id)
        record, raw = _document(row, conf, name)
        links = _links(request)
        data_json = json.dumps(record.data, indent=2, ensure_ascii=False)
        crumbs = [("Gemini Batch", links.home()), (dag_id, None), (run_id, links.run(dag_id, run_id))]
        return HTMLResponse(pages.layout(name, pages.document_page(record, raw, data_json), crumbs))

    # -------------------------------------------------------------------------------------------------- JSON

    @app.get("/api/pipelines")
    def pipelines(
        user: UserDep, session: SessionDep, limit: Annotated[int, Query(ge=1, le=1000)] = RUNS_PER_DAG
    ) -> dict:
        dag_ids = readable_pipelines(user, session)
        rows = metadata.runs(session, dag_ids, limit=limit * max(1, len(dag_ids)))
        out = []
        for dag_id in dag_ids:
            mine = [r for r in rows if r.dag_id == dag_id][:limit]
            out.append(
                {
                    "dag_id": dag_id,
                    "totals": data.totals(mine),
                    "spend_per_day": [{"day": d.isoformat(), "cost_usd": c} for d, c in data.spend_per_day(mine)],
                    "runs": [_run_json(r) for r in mine],
                }
            )
        return {"pipelines": out}

    @app.get("/api/jobs")
    def jobs(user: UserDep, session: SessionDep) -> dict:
        return {"jobs": _with_progress(metadata.jobs_in_flight(session, readable_pipelines(user, session)))}

    @app.get("/api/results")
    def results(user: UserDep, session: SessionDep, query: ResultsQueryDep) -> dict:
        require_run_access(user, session, query.dag_id)
        row, conf = _run_or_404(session, query.dag_id, query.run_id)
        page, problem = _results_page(row, conf, query)
        if page is None:
            raise HTTPException(404, problem)
        return {
            "run": _run_json(row),
            "columns": _columns(conf, page),
            "documents": [records.to_builtins(r) for r in page.records],
            "next_cursor": page.next_cursor,
            "unreadable": page.unreadable,
        }

    @app.get("/api/document")
    def document(user: UserDep, session: SessionDep, dag_id: str, run_id: str, name: str) -> dict:
        require_run_access(user, session, dag_id)
        row, conf = _run_or_404(session, dag_id, run_id)
        record, raw = _document(row, conf, name)
        return {"document": records.to_builtins(record), "raw_answers": raw}

    return app


def _run_json(row: data.RunRow) -> dict:
    return {
        "dag_id": row.dag_id,
        "run_id": row.run_id,
        "state": row.state,
        "start": row.start.isoformat() if row.start else None,
        "end": row.end.isoformat() if row.end else None,
        "duration_seconds": row.duration.total_seconds() if row.duration else None,
        "output": row.output,
        "summary": dict(row.summary) if row.summary is not None else None,
        "tokens": row.tokens,
        "estimated_cost_usd": row.cost,
    }

"""A run's settings, checked once from its params, and the folders it works in."""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jsonschema
from airflow.sdk import ObjectStoragePath, Variable

from gemini_batch.coordination.ledger import Ledger
from gemini_batch.core import documents, results
from gemini_batch.core.batch_requests import (
    RequestSpec,
)
from gemini_batch.core.cost import PRICES_VARIABLE, PriceTable, load_prices
from gemini_batch.core.locations import as_path, is_gcs, uri_of
from gemini_batch.core.settings import DEFAULTS, RETENTIONS, SQL_TABLE_PATTERN, TEMPLATED, Retention, setting_value
from gemini_batch.steps import templating

LEDGER_ROOT_ENV = "GEMINI_BATCH_STATE"  # where each DAG's ledger lives unless the state param names one
HOME_ENV = "GEMINI_BATCH_HOME"  # what relative location params resolve against; else $AIRFLOW_HOME


class RunConfigError(ValueError):
    """A run's parameters cannot work; the message names the parameter."""


@dataclass(frozen=True)
class RunSettings:
    """A run's parameters, checked once, from the DAG params."""

    source: ObjectStoragePath
    output: ObjectStoragePath
    spec: RequestSpec
    gemini_conn_id: str = DEFAULTS["gemini_conn_id"]
    dag_id: str = "gemini_batch_extract"
    state: ObjectStoragePath | None = None  # the ledger's folder (from_params: default_ledger(dag_id) if not given)
    staging_prefix: ObjectStoragePath | None = None  # Vertex: gs:// prefix for documents, shards and outputs
    limits: documents.Limits = field(default_factory=documents.Limits)
    max_rows: int = DEFAULTS["max_rows_per_job"]
    max_bytes: int = DEFAULTS["max_mb_per_job"] * 2**20
    inline_max_bytes: int = DEFAULTS["inline_max_mb"] * 2**20
    max_cost_usd: float | None = DEFAULTS["max_cost_usd"]
    retry_rounds: int = DEFAULTS["retry_rounds"]
    preview_documents: int = DEFAULTS["preview_documents"]  # 0: no preview (steps.preview)
    retention: Retention = Retention(DEFAULTS["retention"])  # noqa: RUF009  # an enum member: immutable
    expiry: dt.timedelta = dt.timedelta(hours=DEFAULTS["expiry_hours"])
    sink_conn_id: str | None = DEFAULTS["sink_conn_id"]  # None: no results table (steps.sink)
    sink_table: str = DEFAULTS["sink_table"]

    @classmethod
    def from_params(
        cls,
        params: Mapping,
        *,
        gcp_conn_id: str | None = None,
        dag_id: str = "gemini_batch_extract",
    ) -> RunSettings:
        def value(name: str) -> Any:
            return setting_value(params, name)

        try:
            spec = RequestSpec(
                model=value("model"),
                prompt=value("prompt"),
                response_schema=value("response_schema"),
                thinking=value("thinking"),
            )
            limits = documents.Limits(
                max_pages=int(value("max_pages")), max_part_bytes=int(value("max_part_mb")) * 2**20
            )
            if spec.response_schema is not None:
                results.check_schema(spec.response_schema)
        except jsonschema.SchemaError as exc:
            raise RunConfigError(f"response_schema is not a valid JSON schema: {exc.message}") from None
        except (ValueError, TypeError) as exc:
            raise RunConfigError(f"invalid parameters: {exc}") from None
        if value("retention") not in RETENTIONS:
            raise RunConfigError(f"retention must be one of {RETENTIONS}, got {value('retention')!r}")
        source = _location(value("source"), "source", gcp_conn_id)
        output = _location(value("output"), "output", gcp_conn_id)
        state = (
            _location(value("state"), "state", gcp_conn_id) if value("state") else default_ledger(dag_id, gcp_conn_id)
        )
        for name, location in (("output", output), ("state", state)):
            if location is not None and _inside(location, source):
                raise RunConfigError(
                    f"{name} {uri_of(location)} is inside source {uri_of(source)}: "
                    "the run's own files would be read as documents"
                )
        staging = value("staging_prefix")
        sink_table = value("sink_table")
        if not isinstance(sink_table, str) or not re.fullmatch(SQL_TABLE_PATTERN, sink_table):
            raise RunConfigError(
                f"sink_table must be a table name (letters, digits, _; optionally schema.table), got {sink_table!r}"
            )
        return cls(
            source=source,
            output=output,
            spec=spec,
            gemini_conn_id=value("gemini_conn_id") or DEFAULTS["gemini_conn_id"],
            dag_id=dag_id,
            state=state,
            staging_prefix=_location(staging, "staging_prefix", gcp_conn_id) if staging else None,
            limits=limits,
            max_rows=int(value("max_rows_per_job")),
            max_bytes=int(value("max_mb_per_job")) * 2**20,
            inline_max_bytes=int(float(value("inline_max_mb")) * 2**20),
            max_cost_usd=value("max_cost_usd"),
            retry_rounds=int(value("retry_rounds")),
            preview_documents=int(value("preview_documents") or 0),
            retention=Retention(value("retention")),
            expiry=dt.timedelta(hours=float(value("expiry_hours"))),
            sink_conn_id=value("sink_conn_id") or None,
            sink_table=sink_table,
        )

    @classmethod
    def from_context(cls, context: Mapping, *, gcp_conn_id: str | None = None) -> RunSettings:
        """The run's params with the location ones rendered, so ``gs://landing/{{ ds }}/`` means that day's folder:
        in a sandbox holding the run's dates and params only (``gemini_batch.steps.templating``), never a secret."""
        values = templating.template_values(context)
        params = dict(context["params"])
        for name in TEMPLATED:
            if isinstance(params.get(name), str):
                try:
                    params[name] = templating.render(name, params[name], values)
                except templating.TemplateError as exc:
                    raise RunConfigError(str(exc)) from None
        return cls.from_params(params, gcp_conn_id=gcp_conn_id, dag_id=context["dag"].dag_id)

    def ledger(self) -> Ledger:
        return Ledger(self.state or default_ledger(self.dag_id))


def default_ledger(dag_id: str, gcp_conn_id: str | None = None) -> ObjectStoragePath:
    """``$GEMINI_BATCH_STATE/<dag id>``, else ``$AIRFLOW_HOME/gemini_batch/ledger/<dag id>``: never the run's
    output or date, so every run of the DAG shares it. Workers on several machines need a shared one (gs://)."""
    root = os.environ.get(LEDGER_ROOT_ENV) or os.path.join(
        os.environ.get("AIRFLOW_HOME") or os.path.expanduser("~/airflow"), "gemini_batch", "ledger"
    )
    return _location(root.rstrip("/") + "/" + dag_id, LEDGER_ROOT_ENV, gcp_conn_id)


def base_folder() -> Path:
    """Where relative ``source``/``output``/``state`` params point: ``$GEMINI_BATCH_HOME``, else ``$AIRFLOW_HOME``
    (an Astro project's root, for example), else ``~/airflow``."""
    return Path(os.environ.get(HOME_ENV) or os.environ.get("AIRFLOW_HOME") or os.path.expanduser("~/airflow"))


def _location(value: str, name: str, conn_id: str | None) -> ObjectStoragePath:
    if not isinstance(value, str) or not value.strip():
        raise RunConfigError(f"{name}: give a local folder or a gs:// prefix, got {value!r}")
    value = value.strip()
    if "://" not in value and not Path(value).is_absolute():
        value = str(base_folder() / value)  # the same folder whatever directory a task runs in
    return as_path(value, conn_id=conn_id if value.startswith("gs://") else None)


def _inside(path: ObjectStoragePath, folder: ObjectStoragePath) -> bool:
    """``path`` is ``folder`` or below it (local paths compared where their symlinks lead)."""
    if is_gcs(path) != is_gcs(folder):
        return False
    inner, outer = (uri_of(p) if is_gcs(p) else os.path.realpath(p.path) for p in (path, folder))
    return (inner.rstrip("/") + "/").startswith(outer.rstrip("/") + "/")


class RunFolder:
    """Where one run keeps its work files (see the module docstring)."""

    def __init__(self, settings: RunSettings, run_id: str, backend: str):
        self.run_id = run_id
        self.slug = run_slug(run_id)
        self.work = settings.output / "_work" / self.slug
        if backend == "vertex":
            if settings.staging_prefix is None or not is_gcs(settings.staging_prefix):
                raise RunConfigError(
                    "staging_prefix: Vertex AI reads documents and requests from Cloud Storage; "
                    "give a gs://bucket/prefix"
                )
            self.remote = settings.staging_prefix / self.slug
        else:
            self.remote = self.work
        self.plan = self.work / "plan.jsonl"
        self.staged = self.work / "staged"

    def shards(self, round_: int) -> ObjectStoragePath:
        return self.remote / f"round-{round_}"

    def outcomes(self, round_: int) -> ObjectStoragePath:
        return self.work / f"round-{round_}" / "outcomes.jsonl"

    def unreadable(self, round_: int) -> ObjectStoragePath:
        """Text parts go inline, read when round ``round_`` is built: failing that is their staging pass."""
        return self.staged / f"pass-round-{round_:03d}.jsonl"

    def next_pass(self) -> ObjectStoragePath:
        numbered = [p for p in self.passes() if PASS_NAME.fullmatch(p.name)]
        return self.staged / f"pass-{len(numbered):05d}.jsonl"

    def passes(self) -> list[ObjectStoragePath]:
        """The files of a folder written one per staging pass, oldest first (the round passes after the numbered)."""
        if not self.staged.exists():
            return []
        return sorted(p for p in self.staged.iterdir() if p.name.startswith("pass-") and p.name.endswith(".jsonl"))

    def documents_prefix(self) -> ObjectStoragePath:
        """Vertex: staged documents are shared by key across runs, so they live beside the runs."""
        return self.remote.parent / "documents"


def prices_with_overrides() -> PriceTable:
    """The shipped price table with the Airflow Variable ``gemini_batch_prices`` (JSON) laid over it, if set."""
    overrides = Variable.get(PRICES_VARIABLE, default=None, deserialize_json=True)
    try:
        return load_prices(overrides=overrides)
    except ValueError as exc:
        raise RunConfigError(str(exc)) from None


def run_slug(run_id: str) -> str:
    """A folder- and display-name-safe, unique form of a run id."""
    readable = re.sub(r"[^a-z0-9]+", "-", run_id.lower()).strip("-")[:40]
    return f"{readable}-{hashlib.sha256(run_id.encode()).hexdigest()[:8]}"


PASS_NAME = re.compile(r"pass-\d{5}\.jsonl")

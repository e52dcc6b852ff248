"""Pipelines as config: each YAML file in a pipelines folder becomes one extraction DAG.

A pipeline file names its DAG (``dag_id``, default the file's name), its
``schedule`` and ``start_date``, and the run's defaults: ``source``,
``output``, ``prompt``, ``schema`` (inline, or ``schema_file`` beside it),
``model``, ``gemini_conn_id`` and ``limits`` (any of the DAG's numeric
params). Every file is checked when the DAG file is parsed; a file with a
mistake is left out, named with the field in the loader file's import error,
and the other pipelines load. A file is read within limits (its size, its
values once YAML aliases are expanded, its nesting, time), so one crafted
file cannot hold up the DAG processor and take every pipeline with it.
"""

from __future__ import annotations

import datetime as dt
import math
import os
import stat
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jsonschema
import orjson
import yaml
from airflow.sdk import DAG

from gemini_batch.core import results
from gemini_batch.core.settings import BY_NAME, LIMIT, RUN, SETTINGS
from gemini_batch.dag import build_dag
from gemini_batch.steps.run_settings import base_folder

PIPELINES_ENV = "GEMINI_BATCH_PIPELINES"  # the pipelines folder; default <GEMINI_BATCH_HOME>/include/pipelines
ERRORS_DAG_ID = "gemini_batch_pipeline_errors"
# A file's top-level fields and its ``limits``: the settings of each kind (the schema has its own field, ``schema``).
RUN_FIELDS = tuple(s.name for s in SETTINGS if s.kind == RUN and s.name != "response_schema")
LIMIT_FIELDS = tuple(s.name for s in SETTINGS if s.kind == LIMIT)
SCHEMA_KEYWORDS = ("type", "enum", "minimum", "maximum", "minLength", "pattern")
MAX_FILE_BYTES = 2**20  # a pipeline or schema file; real ones hold a few KB
MAX_VALUES = 100_000  # values of a file once its aliases are expanded: what checking and serializing it costs
MAX_DEPTH = 50  # nesting levels: checking a schema recurses once per level
READ_SECONDS = 2.0  # the time box of reading one file
MESSAGE_CHARS = 300  # of a validation message, which quotes the offending value


class PipelineError(ValueError):
    """A pipeline file that cannot become a DAG: the message names the file and the field."""


class _Refused(ValueError):
    """A file read no further (the message says why)."""


class _BoundedLoader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):  # type: ignore[misc]  # libyaml's if installed
    """YAML's safe loader (libyaml's when installed: faster, and it refuses runaway nesting) that refuses a document
    whose aliases expand it past MAX_VALUES values or MAX_DEPTH levels, or into itself. Parsed, such a document is
    small (an alias is a shared reference); checked, copied or serialized, it is expanded ("billion laughs")."""

    deadline = math.inf

    def get_single_node(self):
        node = super().get_single_node()
        if node is not None:
            _check_expansion(node, self.deadline)
        return node


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.MappingNode):
        return [item for pair in node.value for item in pair]
    return node.value if isinstance(node, yaml.SequenceNode) else []


def _check_expansion(root: yaml.Node, deadline: float) -> None:
    """Values and depth of the document as if every alias were expanded, measuring each node once."""
    measured: dict[int, tuple[int, int]] = {}  # id(node): (values, depth) of it and all below it
    open_nodes: set[int] = set()  # the nodes whose children are being measured: the path from the root
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        if time.monotonic() > deadline:
            raise _Refused(f"refused: not read within {READ_SECONDS:g} s")
        node, children_measured = stack.pop()
        if children_measured:
            below = [measured[id(child)] for child in _children(node)]
            values, depth = 1 + sum(v for v, _ in below), 1 + max((d for _, d in below), default=0)
            if values > MAX_VALUES:
                raise _Refused(f"refused: more than {MAX_VALUES:,} values once its aliases (*name) are expanded")
            if depth > MAX_DEPTH:
                raise _Refused(f"refused: nested deeper than {MAX_DEPTH} levels")
            measured[id(node)] = (values, depth)
            open_nodes.discard(id(node))
        elif id(node) in open_nodes:
            raise _Refused("refused: an alias refers to a value that contains it")
        elif id(node) not in measured:
            open_nodes.add(id(node))
            stack.append((node, True))
            stack.extend((child, False) for child in _children(node))


def _read_capped(path: Path) -> bytes:
    """The file's bytes, refused when it is not a regular file (a FIFO would block) or above MAX_FILE_BYTES."""
    status = path.stat()
    if not stat.S_ISREG(status.st_mode):
        raise _Refused("refused: not a regular file")
    data = b""
    if status.st_size <= MAX_FILE_BYTES:
        with path.open("rb") as file:
            data = file.read(MAX_FILE_BYTES + 1)  # it may have grown since
    size = max(len(data), status.st_size)
    if size > MAX_FILE_BYTES:
        raise _Refused(f"refused: {size:,} bytes, above the {MAX_FILE_BYTES:,} a pipeline file may hold")
    return data


def _load_yaml(path: Path):
    """A YAML file's data, read within the limits (_Refused, yaml.YAMLError or OSError when not)."""
    loader = _BoundedLoader(_read_capped(path))
    loader.deadline = time.monotonic() + READ_SECONDS
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


def _brief(text: str) -> str:
    return text if len(text) <= MESSAGE_CHARS else text[:MESSAGE_CHARS] + "..."


def _param_schema(name: str) -> dict:
    """A field's JSON schema, the setting's own (the trigger form's too)."""
    schema = BY_NAME[name].schema
    return {key: schema[key] for key in SCHEMA_KEYWORDS if key in schema}


def file_schema() -> dict:
    return {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "dag_id": {"type": "string", "pattern": r"^[A-Za-z0-9_.-]{1,250}$"},
            "description": {"type": "string"},
            "schedule": {"type": ["string", "null"]},
            "start_date": {"type": ["string", "null"]},
            "tags": {"type": "array", "items": {"type": "string"}},
            "max_active_runs": {"type": "integer", "minimum": 1},
            "schema": {"type": ["object", "null"]},
            "schema_file": {"type": "string", "minLength": 1},
            **{name: _param_schema(name) for name in RUN_FIELDS},
            "limits": {
                "type": "object",
                "additionalProperties": False,
                "properties": {name: _param_schema(name) for name in LIMIT_FIELDS},
            },
        },
        "required": ["source", "prompt"],
        "not": {"required": ["schema", "schema_file"]},
    }


def _field(error: jsonschema.ValidationError) -> str:
    path = ".".join(str(p) for p in error.absolute_path)
    if error.validator == "additionalProperties":
        return f"{path + '.' if path else ''}{', '.join(sorted(set(error.instance) - set(error.schema['properties'])))}"
    if error.validator == "required":
        return f"{path + '.' if path else ''}{error.message.split(chr(39))[1]}"
    if error.validator == "not":
        return "schema, schema_file"
    return path or "(the file)"


def _read(path: Path) -> dict:
    try:
        data = _load_yaml(path)
    except yaml.YAMLError as exc:
        raise PipelineError(f"{path}: not valid YAML: {_brief(str(exc))}") from None
    except _Refused as exc:
        raise PipelineError(f"{path}: {exc}") from None
    except OSError as exc:
        raise PipelineError(f"{path}: cannot be read: {exc.strerror or exc}") from None
    # YAML reads an unquoted date as a date: the check below wants the text the user wrote.
    if isinstance(data, dict) and isinstance(data.get("start_date"), (dt.date, dt.datetime)):
        data["start_date"] = data["start_date"].isoformat()
    if not isinstance(data, dict):
        raise PipelineError(f"{path}: a pipeline file is a mapping of fields (dag_id, source, prompt, ...)")
    errors = sorted(jsonschema.Draft202012Validator(file_schema()).iter_errors(data), key=lambda e: list(e.path))
    if errors:
        first = errors[0]
        message = "give either schema or schema_file, not both" if first.validator == "not" else _brief(first.message)
        raise PipelineError(f"{path}: field {_field(first)}: {message}")
    return data


def _schema_of(path: Path, data: Mapping) -> dict | None:
    if "schema_file" not in data:
        schema = data.get("schema")
    else:
        schema_path = path.parent / data["schema_file"]
        try:
            schema = (
                orjson.loads(_read_capped(schema_path)) if schema_path.suffix == ".json" else _load_yaml(schema_path)
            )
        except (OSError, orjson.JSONDecodeError, yaml.YAMLError, _Refused) as exc:
            raise PipelineError(f"{path}: field schema_file: cannot read {schema_path}: {_brief(str(exc))}") from None
    if schema is not None:
        try:
            results.check_schema(schema)
        except (jsonschema.SchemaError, ValueError, TypeError) as exc:
            field = "schema_file" if "schema_file" in data else "schema"
            raise PipelineError(
                f"{path}: field {field}: not a valid JSON schema: {getattr(exc, 'message', exc)}"
            ) from None
    return schema


def _start_date(path: Path, value: str | None) -> dt.datetime | None:
    if value is None:
        return None
    try:
        start = dt.datetime.fromisoformat(value)
    except ValueError:
        raise PipelineError(f"{path}: field start_date: {value!r} is not an ISO date (YYYY-MM-DD)") from None
    return start if start.tzinfo else start.replace(tzinfo=dt.timezone.utc)


def pipeline_dag(path: Path) -> DAG:
    """The DAG one pipeline file describes (PipelineError names the file and the field when it cannot)."""
    data = _read(path)
    params: dict[str, Any] = {name: data[name] for name in RUN_FIELDS if name in data}
    params.update(data.get("limits") or {})
    if "schema" in data or "schema_file" in data:
        params["response_schema"] = _schema_of(path, data)
    options: dict[str, Any] = {name: data[name] for name in ("description", "tags", "max_active_runs") if name in data}
    if "schedule" in data:
        options["schedule"] = data["schedule"]
    start = _start_date(path, data.get("start_date"))
    if start is not None:
        options["start_date"] = start
    if "schedule" in data:
        try:
            DAG(dag_id="schedule_check", schedule=data["schedule"]).timetable.validate()  # Airflow's own reading
        except Exception as exc:
            raise PipelineError(
                f"{path}: field schedule: {data['schedule']!r} is not a cron expression or preset "
                f"(@daily, ...) Airflow reads: {exc}"
            ) from None
    try:
        return build_dag(
            data.get("dag_id") or path.stem, params=params, doc_md=f"Pipeline file `{path.name}`.", **options
        )
    except ValueError as exc:  # a param value the DAG's own form refuses
        raise PipelineError(f"{path}: {exc}") from None


class PipelineErrors(DAG):
    """Stands in for the pipeline files that failed their check. Airflow validates every DAG a file defines
    before keeping it: this one's ``validate`` raises the files' errors, which become the loader file's import
    error, while the good pipelines load."""

    def validate(self):
        raise PipelineError(self.doc_md)


def pipelines_folder() -> Path:
    return Path(os.environ.get(PIPELINES_ENV) or base_folder() / "include" / "pipelines")


def load_pipelines(folder: Path | str | None = None) -> dict[str, DAG]:
    """Every ``*.yaml``/``*.yml`` file of ``folder`` as a DAG, by DAG id (a DAG file puts them in its globals)."""
    folder = Path(folder) if folder else pipelines_folder()
    dags: dict[str, DAG] = {}
    sources: dict[str, Path] = {}
    problems: list[str] = []
    for path in sorted(p for p in folder.glob("*.y*ml") if p.suffix in (".yaml", ".yml")):
        try:
            dag = pipeline_dag(path)
        except PipelineError as exc:
            problems.append(str(exc))
            continue
        except Exception as exc:
            problems.append(f"{path}: cannot become a DAG: {type(exc).__name__}: {_brief(str(exc))}")
            continue
        if dag.dag_id in dags:
            problems.append(f"{path}: field dag_id: {dag.dag_id!r} is already the DAG of {sources[dag.dag_id]}")
            continue
        dags[dag.dag_id], sources[dag.dag_id] = dag, path
    if problems:
        dags[ERRORS_DAG_ID] = PipelineErrors(ERRORS_DAG_ID, schedule=None, doc_md="\n".join(problems))
    return dags

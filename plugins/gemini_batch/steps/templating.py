"""Location params rendered per run, in Jinja's sandbox, from the run's dates and params only.

``source``, ``output``, ``state`` and ``staging_prefix`` may name the run's day
(``gs://landing/{{ ds }}/``). Whoever may trigger a run sets them, so they are
not rendered with Airflow's task context: its ``conn``, ``var`` and ``ti``
would turn any connection's password or any Variable into a folder name, and
from there into XCom, asset events and the log. A template may use
``TEMPLATE_NAMES`` and nothing else; any other name is refused by name before
the template runs.
"""

from __future__ import annotations

import datetime as dt
import types
from collections.abc import Mapping
from typing import Any

from airflow.sdk.definitions._internal.templater import FILTERS as AIRFLOW_DATE_FILTERS
from airflow.sdk.execution_time import macros as airflow_macros
from jinja2 import StrictUndefined, TemplateSyntaxError, meta
from jinja2.sandbox import ImmutableSandboxedEnvironment

DATE_NAMES = (
    "ds",
    "ds_nodash",
    "ts",
    "ts_nodash",
    "ts_nodash_with_tz",
    "logical_date",
    "data_interval_start",
    "data_interval_end",
)
TEMPLATE_NAMES = (*DATE_NAMES, "run_id", "params", "macros")
# Airflow's date macros and the classes to do date arithmetic with: no modules (``datetime`` the module reaches
# ``sys``), nothing that reads configuration or sleeps.
MACROS = types.SimpleNamespace(
    ds_add=airflow_macros.ds_add,
    ds_format=airflow_macros.ds_format,
    datetime=dt.datetime,
    timedelta=dt.timedelta,
    date=dt.date,
)
_MARKUP = ("{{", "{%", "{#")


class TemplateError(ValueError):
    """A location param's template cannot be rendered; the message names the param, never a value it reached."""


def _environment() -> ImmutableSandboxedEnvironment:
    env = ImmutableSandboxedEnvironment(undefined=StrictUndefined, autoescape=False)
    env.globals.clear()  # range, lipsum, cycler, joiner, namespace: not a date, not a param
    env.filters.update(AIRFLOW_DATE_FILTERS)  # {{ data_interval_end | ds }}, as in Airflow
    return env


ENVIRONMENT = _environment()


def template_values(context: Mapping[str, Any]) -> dict[str, Any]:
    """What a location template may use, from a task's context. A run without a logical date (a manual run) has
    no ``ds`` in Airflow's context: its dates are those of when it was asked to run."""
    when = context.get("logical_date") or context["dag_run"].run_after
    ds, ts = when.strftime("%Y-%m-%d"), when.isoformat()
    values = {
        "ds": ds,
        "ds_nodash": ds.replace("-", ""),
        "ts": ts,
        "ts_nodash": when.strftime("%Y%m%dT%H%M%S"),
        "ts_nodash_with_tz": ts.replace("-", "").replace(":", ""),
        "logical_date": when,
        "data_interval_start": when,
        "data_interval_end": when,
    }
    values.update({name: context[name] for name in DATE_NAMES if context.get(name) is not None})
    return {**values, "run_id": context.get("run_id"), "params": dict(context.get("params") or {}), "macros": MACROS}


def render(name: str, template: str, values: Mapping[str, Any]) -> str:
    """``template`` (the param ``name``'s value) rendered with ``values`` (``template_values``) in the sandbox."""
    try:
        parsed = ENVIRONMENT.parse(template)
    except TemplateSyntaxError as exc:
        raise TemplateError(f"{name}: not a valid template: {exc.message} (line {exc.lineno})") from None
    refused = sorted(meta.find_undeclared_variables(parsed) - set(values))
    if refused:
        listed = ", ".join(f"`{n}`" for n in refused)
        raise TemplateError(
            f"{name}: {listed} {'is' if len(refused) == 1 else 'are'} not available in templates; "
            f"only {', '.join(TEMPLATE_NAMES[:-2])}, params and macros "
            f"({', '.join(vars(MACROS))})"
        )
    try:
        rendered = ENVIRONMENT.from_string(parsed).render(values)
    except Exception as exc:
        raise TemplateError(f"{name}: cannot be rendered: {type(exc).__name__}: {exc}") from None
    if any(markup in rendered for markup in _MARKUP):
        raise TemplateError(
            f"{name}: renders to Jinja markup ({rendered!r}); a location is rendered once and must not hold any"
        )
    return rendered

"""Location params (source, output, state, staging_prefix) are Jinja rendered per run with the run's dates and
params only: whoever may trigger a run must not be able to read a connection's password or a Variable through
a folder name, the metadata database or the log."""

from __future__ import annotations

import types

import pendulum
import pytest

from gemini_batch.dag import default_params
from gemini_batch.steps import run_settings

LOGICAL = pendulum.datetime(2026, 3, 4, 2, 0, tz="UTC")
SECRET = "sk-never-in-a-folder-name-0123"


class Vault:
    """Stands in for Airflow's ``conn`` and ``var`` accessors: any attribute is the secret."""

    def __getattr__(self, name):
        return self

    def __str__(self):
        return SECRET


def context(params: dict | None = None, *, logical_date=LOGICAL, run_after=LOGICAL) -> dict:
    """A task's context as Airflow 3 builds it; a run without a logical date has no ds, ts, ... at all."""
    values = {name: param.value for name, param in default_params().items()}
    found = {
        "params": {**values, **(params or {})},
        "run_id": "manual__2026-03-04T02:00:00+00:00",
        "dag": types.SimpleNamespace(dag_id="gemini_batch_extract"),
        "dag_run": types.SimpleNamespace(run_after=run_after, conf={}),
        "conn": Vault(),
        "var": {"value": Vault()},
        "ti": Vault(),
        "task_instance": Vault(),
        "task": Vault(),
        "macros": Vault(),
    }
    if logical_date is not None:
        ds = logical_date.strftime("%Y-%m-%d")
        found.update(
            logical_date=logical_date,
            ds=ds,
            ds_nodash=ds.replace("-", ""),
            ts=logical_date.isoformat(),
            ts_nodash=logical_date.strftime("%Y%m%dT%H%M%S"),
            data_interval_start=logical_date.add(days=-1),
            data_interval_end=logical_date,
        )
    return found


def output_of(template: str, **kwargs) -> str:
    settings = run_settings.RunSettings.from_context(context({"output": f"/data/{template}"}, **kwargs))
    return settings.output.path.removeprefix("/data/")


@pytest.mark.parametrize(
    ("template", "rendered"),
    [
        ("landing/{{ ds }}/", "landing/2026-03-04"),
        ("{{ macros.ds_add(ds, -1) }}", "2026-03-03"),
        ("{{ macros.ds_format(ds, '%Y-%m-%d', '%Y/%m') }}", "2026/03"),
        ("{{ ds_nodash }}-{{ ts_nodash }}", "20260304-20260304T020000"),
        ("{{ logical_date.strftime('%Y/%m/%d') }}", "2026/03/04"),
        ("{{ data_interval_start | ds }}", "2026-03-03"),
        ("{{ (logical_date - macros.timedelta(days=7)).strftime('%G-W%V') }}", "2026-W09"),
        ("{{ params.model }}/{{ ds }}", "gemini-2.5-flash-lite/2026-03-04"),
        ("{% set day = ds %}{{ day }}", "2026-03-04"),
    ],
)
def test_the_runs_dates_macros_and_params_render(template, rendered):
    assert output_of(template) == rendered


def test_a_run_without_a_logical_date_takes_the_day_it_was_asked_to_run():
    asked = pendulum.datetime(2026, 5, 6, 10, 30, tz="UTC")
    assert output_of("{{ ds }}/{{ ts_nodash }}", logical_date=None, run_after=asked) == "2026-05-06/20260506T103000"
    assert output_of("{{ macros.ds_add(ds, 1) }}", logical_date=None, run_after=asked) == "2026-05-07"


def test_the_defaults_render_as_the_readme_says():
    settings = run_settings.RunSettings.from_context(context())
    assert settings.output.path == str(run_settings.base_folder() / "output" / "2026-03-04")


@pytest.mark.parametrize(
    ("template", "refused"),
    [
        ("out-{{ conn.gemini_default.password }}", "`conn`"),
        ("out-{{ var.value.some_secret }}", "`var`"),
        ("{{ ti.xcom_pull('plan_documents') }}", "`ti`"),
        ("{{ task_instance }}", "`task_instance`"),
        ("{{ dag_run.conf }}", "`dag_run`"),
        ("{{ task.render_template('x', {}) }}", "`task`"),
        ("{{ lipsum.__globals__ }}", "`lipsum`"),
        ("{% for x in range(3) %}{{ x }}{% endfor %}", "`range`"),
    ],
)
def test_names_outside_the_runs_dates_and_params_are_refused_by_name(template, refused):
    with pytest.raises(run_settings.RunConfigError) as raised:
        output_of(template)
    message = str(raised.value)
    assert message.startswith(f"output: {refused} is not available in templates; only ds, ds_nodash, "), message
    assert "params" in message and SECRET not in message


@pytest.mark.parametrize(
    "template",
    [
        "{{ ds.__class__.__mro__ }}",
        "{{ params.__class__ }}",
        "{{ macros.ds_add.__globals__ }}",
        "{{ ds | attr('__class__') }}",
        "{{ macros.datetime.now.__self__ }}",
    ],
)
def test_the_sandbox_refuses_reaching_past_the_values(template):
    with pytest.raises(run_settings.RunConfigError, match="^output: cannot be rendered: "):
        output_of(template)


def test_a_location_that_renders_to_a_template_is_refused():
    """Rendered once, here: nothing downstream may render a path again with Airflow's full context."""
    with pytest.raises(run_settings.RunConfigError, match="^output: renders to Jinja markup"):
        output_of("{% raw %}{{ conn.gemini_default.password }}{% endraw %}")
    with pytest.raises(run_settings.RunConfigError, match="^source: renders to Jinja markup"):
        run_settings.RunSettings.from_context(
            context({"source": "/data/{{ params.prompt }}", "prompt": "{{ var.value.some_secret }}"})
        )

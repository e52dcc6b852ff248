"""The AirflowPlugin of the "Gemini Batch" view, registered through the ``airflow.plugins`` entry point (pyproject):
the FastAPI app (``fastapi_apps``, mounted by the API server under ``/gemini-batch``) and an external view in the
UI's navigation that shows the app's page in an iframe (``url_route``: ``/plugin/gemini-batch``).

Every Airflow process loads plugins (a task's for its macros and links); only the API server reads
``fastapi_apps``, so the app, and Airflow's API modules it needs, are imported then and not before."""

from __future__ import annotations

from typing import Any

from airflow.plugins_manager import AirflowPlugin

from gemini_batch.ui import URL_PREFIX


class GeminiBatchViewPlugin(AirflowPlugin):
    name = "gemini_batch_view"
    external_views = [  # noqa: RUF012  # AirflowPlugin declares it a class attribute
        {
            "name": "Gemini Batch",
            "href": f"{URL_PREFIX.lstrip('/')}/",  # relative: resolved against the UI's base URL
            "destination": "nav",
            "url_route": "gemini-batch",
        }
    ]
    _apps: list[dict[str, Any]] | None = None

    @property
    def fastapi_apps(self) -> list[dict[str, Any]]:  # type: ignore[override]  # made on first read
        if self._apps is None:
            from gemini_batch.ui.app import create_app

            self._apps = [{"app": create_app(), "url_prefix": URL_PREFIX, "name": "Gemini Batch"}]
        return self._apps

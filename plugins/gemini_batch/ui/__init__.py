"""The "Gemini Batch" view in Airflow's UI (Airflow 3's plugin interface): a FastAPI app mounted in the API server
under ``/gemini-batch`` and an external view (an iframe page in the UI's navigation) showing it.

``data``: the pure pieces (a run's row from its summary, spend per day, the results browser's streaming pages);
``charts`` and ``pages``: server-rendered HTML and inline SVG (no JavaScript framework, nothing from a CDN);
``metadata``: what Airflow's metadata DB knows (the provider's DAGs, their runs, summaries, outputs, jobs in flight);
``app``: the FastAPI app behind Airflow's auth; ``plugin``: the AirflowPlugin (entry point ``airflow.plugins``).
"""

URL_PREFIX = "/gemini-batch"  # where the API server mounts the app; the external view's page is <base URL>gemini-batch/

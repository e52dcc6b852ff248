"""gemini_batch_extract: a folder of documents in, one structured record per document out (an Airflow DAG).

The DAG is ``gemini_batch.dag.build_dag`` with its defaults: trigger it from the
UI form, let it run nightly over ``$GEMINI_BATCH_LANDING/<date>/``, or backfill
dated folders. Pipelines with their own prompt, schema and schedule are files
in ``include/pipelines/`` (``gemini_batch_pipelines.py``).
"""

from gemini_batch.dag import build_dag

dag = build_dag("gemini_batch_extract")

"""Airflow DAGs from pipeline files: each include/pipelines/*.yaml (or $GEMINI_BATCH_PIPELINES) is one DAG.

A file with a mistake shows up in this file's import error, naming the file and the field; the others load.
"""

from gemini_batch.pipelines import load_pipelines

globals().update(load_pipelines())

"""gemini-batch: folders of documents to structured data with Gemini Batch Mode.

Layers, each importing only those below it (import-linter checks them):

- ``dag``, ``pipelines``, ``provider``, ``__main__``: what Airflow and people call;
- ``operators``: the submit operator, the sensor, the cost approval (thin);
- ``steps``: a run's steps, plan to clean-up, with the templating of its locations;
- ``coordination``: the ledger every run of a DAG shares, and the claims on its keys;
- ``hooks``, ``triggers``: the service boundary, the one place that talks to Google;
- ``core``: documents, requests, results, keys, cost and records; no client of the service.
"""

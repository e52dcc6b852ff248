"""Pure modules: documents, requests, results, keys, cost, records. No Airflow run and no network: they import
and test on their own, and the worker processes that plan and parse import nothing else."""

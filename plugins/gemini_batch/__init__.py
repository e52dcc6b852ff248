"""gemini-batch: folders of documents to structured data with Gemini Batch Mode.

The pure pipeline modules (``documents``, ``keys``, ``batch_requests``,
``validate``, ``cost``, ``store``, ``staging``, ``plan``) import and run
without a running Airflow; the hook, operators, sensor and trigger wrap them.
"""

"""What Airflow's providers manager learns about this package (the ``apache_airflow_provider`` entry point)."""

from __future__ import annotations

from importlib import metadata

PACKAGE = "gemini-batch"


def _version() -> str:
    try:
        return metadata.version(PACKAGE)
    except metadata.PackageNotFoundError:  # imported from a checkout that was not installed
        return "0+unknown"


def get_provider_info() -> dict:
    return {
        "package-name": PACKAGE,
        "name": "Gemini Batch",
        "description": "Folders of documents to structured data with Gemini Batch Mode (Developer API or Vertex AI).",
        "versions": [_version()],
        "integrations": [
            {
                "integration-name": "Gemini Batch",
                "external-doc-url": "https://ai.google.dev/gemini-api/docs/batch-mode",
                "tags": ["gcp"],
            }
        ],
        "hooks": [{"integration-name": "Gemini Batch", "python-modules": ["gemini_batch.hooks.gemini"]}],
        "operators": [{"integration-name": "Gemini Batch", "python-modules": ["gemini_batch.operators.batch"]}],
        "sensors": [{"integration-name": "Gemini Batch", "python-modules": ["gemini_batch.operators.batch"]}],
        "triggers": [{"integration-name": "Gemini Batch", "python-modules": ["gemini_batch.triggers.gemini"]}],
        # The connection form, declared (Airflow 3.2+ reads it without importing the hook). The Airflow 3 UI
        # stores each conn-field in the extra under its bare name; placeholders reach only the standard fields.
        "connection-types": [
            {
                "hook-class-name": "gemini_batch.hooks.gemini.GeminiBatchHook",
                "connection-type": "gemini_batch",
                "hook-name": "Gemini Batch",
                "ui-field-behaviour": {
                    "hidden-fields": ["host", "schema", "login", "port"],
                    "relabeling": {"password": "API key"},
                    "placeholders": {"password": "Gemini Developer API key (empty for Vertex AI)"},
                },
                "conn-fields": {
                    "backend": {
                        "label": "Backend",
                        "description": "developer: the Gemini Developer API with the API key; vertex: Vertex AI "
                        "with the Google Cloud connection's credentials.",
                        "schema": {
                            "type": "string",
                            "enum": ["developer", "vertex"],
                            "default": "developer",
                            "values_display": {"developer": "Gemini Developer API", "vertex": "Vertex AI"},
                        },
                    },
                    "base_url": {
                        "label": "Base URL",
                        "description": "An emulator or proxy in front of the service; empty: Google's own endpoint.",
                        "schema": {"type": ["string", "null"], "examples": ["http://127.0.0.1:8790"]},
                    },
                    "project": {
                        "label": "Project",
                        "description": "Vertex AI: the Google Cloud project; empty: the Google Cloud connection's "
                        "project.",
                        "schema": {"type": ["string", "null"]},
                    },
                    "location": {
                        "label": "Location",
                        "description": "Vertex AI: the region the batch jobs run in.",
                        "schema": {
                            "type": ["string", "null"],
                            "default": "us-central1",
                            "examples": ["us-central1", "europe-west4", "global"],
                        },
                    },
                    "gcp_conn_id": {
                        "label": "Google Cloud connection",
                        "description": "Credentials for Vertex AI (empty: google_cloud_default) and for gs:// "
                        "sources and outputs.",
                        "schema": {"type": ["string", "null"], "examples": ["google_cloud_default"]},
                    },
                    "enqueued_token_limit": {
                        "label": "Enqueued-token limit",
                        "description": "Optional: the account's enqueued-token quota per model (about 3000000 for "
                        "the flash models on tier 1); shards stay under it and jobs are created only "
                        "while they fit in it.",
                        "schema": {"type": ["integer", "null"], "minimum": 1},
                    },
                },
            },
            {
                # Core Airflow registers ``generic`` without a hook, so testing one fails inside Airflow; the Gemini
                # connection may be generic (the README's). No form fields: the generic form stays as Airflow has it.
                "hook-class-name": "gemini_batch.hooks.gemini.GeminiGenericConnectionHook",
                "connection-type": "generic",
                "hook-name": "Generic",
            },
        ],
        "extra-links": [
            "gemini_batch.operators.batch.GeminiBatchJobLink",
            "gemini_batch.operators.batch.GeminiBatchOutputLink",
        ],
    }

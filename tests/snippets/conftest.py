"""Fixtures of the snippets tier: Google's published batch samples run against the emulators.

Every sample here talks to the service through the stock google-genai client; only its endpoint is changed:

* ``client``: a Developer API client, ``genai.Client(api_key=..., http_options=types.HttpOptions(base_url=...))``
  pointed at a Gemini emulator.
* ``vertex_client``: a Vertex AI client (``vertexai=True``, static credentials: no Google sign-in) pointed at the
  same emulator, which reads and writes ``gs://`` objects on the session's GCS emulator.
* ``storage``: a google-cloud-storage client of that GCS emulator, for the buckets and input objects the samples
  name (Google's public ``gs://cloud-samples-data`` and test buckets are unreachable offline; ``seed_gcs`` writes a
  stand-in object under the same URI).

The emulator runs at 3600x (an emulated hour per second), so a job finishes in about a second; the samples'
polling loops sleep ``POLL_SECONDS`` (0.2 s, set in each file) instead of their 30 s.
"""

from __future__ import annotations

import pytest

from support.emulators import developer_client, storage_client
from support.emulators import vertex_client as make_vertex_client

# The project and location the Vertex client names (any project: the emulator has no IAM).
PROJECT, LOCATION = "snippets-project", "us-central1"


@pytest.fixture
def snippet_emulator(start_emulator, gcs):
    """A fast Gemini emulator (3600x) wired to the session's GCS emulator, serving both API surfaces."""
    return start_emulator(time_scale=3600, gcs_endpoint=gcs.url)


@pytest.fixture
def client(snippet_emulator):
    """``genai.Client(api_key=..., http_options=types.HttpOptions(base_url=<emulator>))``."""
    return developer_client(snippet_emulator.url)


@pytest.fixture
def vertex_client(snippet_emulator):
    """``genai.Client(vertexai=True, project, location, credentials=<static>, http_options=<emulator base_url>)``."""
    return make_vertex_client(snippet_emulator.url, project=PROJECT, location=LOCATION)


@pytest.fixture
def held_emulator(start_emulator, gcs):
    """An emulator whose jobs stay PENDING for ten minutes: for the samples that cancel a job (at 3600x a job
    has finished before the sample's cancel call reaches it)."""
    return start_emulator(time_scale=1, gcs_endpoint=gcs.url, faults={"pending_seconds": 600})


@pytest.fixture
def held_client(held_emulator):
    """``client``, on ``held_emulator``."""
    return developer_client(held_emulator.url)


@pytest.fixture
def held_vertex_client(held_emulator):
    """``vertex_client``, on ``held_emulator``."""
    return make_vertex_client(held_emulator.url, project=PROJECT, location=LOCATION)


@pytest.fixture(scope="session")
def storage(gcs):
    return storage_client(gcs.url)


@pytest.fixture
def seed_gcs(storage):
    """Write ``text`` at ``gs://bucket/path`` on the GCS emulator (creating the bucket): a stand-in for an object
    of Google's that the sample reads."""

    def seed(uri: str, text: str) -> str:
        bucket_name, _, path = uri.removeprefix("gs://").partition("/")
        bucket = storage.lookup_bucket(bucket_name) or storage.create_bucket(bucket_name)
        bucket.blob(path).upload_from_string(text, content_type="application/jsonl")
        return uri

    return seed


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    """Run in an empty folder: the notebooks write their input files to the working directory."""
    monkeypatch.chdir(tmp_path)
    return tmp_path

"""Shared fixtures: real emulator processes on free loopback ports, and the
real google-genai / google-cloud-storage clients pointed at them."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "plugins")]
# Relative params (include/samples) are the repository's, as under bin/airflow.
os.environ.setdefault("GEMINI_BATCH_HOME", str(ROOT))

# gcsfs probes bucket layouts over a gRPC API no emulator serves (see gemini_batch.locations).
os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")

from gemini_emulator.models import Catalogue  # noqa: E402
from gemini_emulator.testing import gcs_emulator, gemini_emulator, requests_made  # noqa: E402

def pytest_collection_modifyitems(config, items):
    """The live check spends money on the real service: it runs only when asked for by name (``-m live``)."""
    expression = config.getoption("markexpr") or ""
    if "live" in expression and "not live" not in expression:
        return
    for item in items:
        if item.get_closest_marker("live"):
            item.add_marker(pytest.mark.skip(reason="not run: the live check runs only with bin/test -m live"))


# The models the emulator accepts batches for today, as the service lists them.
BATCH_MODELS = sorted(m.id for m in Catalogue.load().live() if "batchGenerateContent" in m.methods)


def developer_client(url: str):
    from google import genai
    from google.genai import types

    return genai.Client(api_key="test-key", http_options=types.HttpOptions(base_url=url))


def vertex_client(url: str, project: str = "test-project", location: str = "us-central1"):
    from google import genai
    from google.genai import types
    from google.oauth2.credentials import Credentials

    return genai.Client(
        vertexai=True, project=project, location=location,
        credentials=Credentials(token="test-token"),
        http_options=types.HttpOptions(base_url=url),
    )


def storage_client(url: str):
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    return storage.Client(project="test", credentials=AnonymousCredentials(), client_options={"api_endpoint": url})


def list_calls(server) -> int:
    """Developer API job list pages the emulator served (``GET /v1beta/batches``), from its own request log."""
    return len(requests_made(server, "GET", r"/v1beta/batches"))


def seed_job_history(data_dir: Path, count: int, *, days: float = 30.0, model: str = "gemini-2.5-flash") -> None:
    """``count`` earlier Developer API batch jobs of the account, finished, created over the last ``days`` (the
    newest a day ago), written into an emulator's data dir before it starts. The emulator's own code makes each
    job (``create_batch``, one inline request); only its times and end state are set as its runner would have
    set them then: thousands of real creates and runs would take minutes."""
    import time

    from gemini_emulator.config import EmulatorConfig
    from gemini_emulator.service import Emulator

    em = Emulator(EmulatorConfig(data_dir=data_dir))
    request = {"contents": [{"role": "user", "parts": [{"text": "Return the invoice number as JSON."}]}]}
    newest = time.time() - 86400
    try:
        for i in range(count):
            job = em.create_batch(model, {"displayName": f"history-{i:05d}", "inputConfig": {"requests": {"requests": [
                {"request": request, "metadata": {"key": f"history-{i:05d}"}}]}}})
            created = newest - (count - 1 - i) * (days - 1) * 86400 / max(count - 1, 1)  # oldest first, as made
            em.jobs.update(job["id"], state="SUCCEEDED", processed=True, create_time=created, start_time=created + 1,
                           update_time=created + 60, end_time=created + 60,
                           stats={"succeeded": 1, "failed": 0, "processed": 1})
    finally:
        em.stop()


@pytest.fixture(autouse=True)
def own_ledgers(tmp_path, monkeypatch):
    """Every test's runs keep their ledger in its own folder: no test reuses another's answers."""
    monkeypatch.setenv("GEMINI_BATCH_STATE", str(tmp_path / "ledgers"))


@pytest.fixture(scope="session")
def gcs(tmp_path_factory):
    """One gcp-storage-emulator for the session, with the bucket ``test-bucket``."""
    with gcs_emulator(tmp_path_factory.mktemp("gcs"), bucket="test-bucket") as server:
        yield server


@pytest.fixture(scope="session")
def gcs_root(gcs):
    """``gs://test-bucket`` as an ObjectStoragePath served by the session's GCS emulator.

    gcsfs (under ObjectStoragePath) finds the emulator through STORAGE_EMULATOR_HOST,
    set for the whole session; every other client here names its endpoint explicitly.
    """
    os.environ["STORAGE_EMULATOR_HOST"] = gcs.url
    from airflow.sdk import ObjectStoragePath

    yield ObjectStoragePath("gs://test-bucket", conn_id=None)
    os.environ.pop("STORAGE_EMULATOR_HOST", None)


@pytest.fixture
def start_emulator(tmp_path):
    """Factory: start a Gemini emulator; every one started is stopped after the test."""
    started = []

    def start(**kwargs):
        data_dir = kwargs.pop("data_dir", None) or tmp_path / f"emulator-{len(started)}"
        server = gemini_emulator(data_dir, **kwargs).start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture
def emulator(start_emulator):
    """A fast emulator: an emulated hour passes in a second."""
    return start_emulator(time_scale=3600)


@pytest.fixture
def client(emulator):
    return developer_client(emulator.url)


@pytest.fixture(scope="session")
def stack(tmp_path_factory):
    """The production topology (tests/stack.py) for the full-stack and browser tests, started once, with
    gemini_batch_extract parsed and unpaused. Slower emulated work (~5 s per upload to become ACTIVE, ~5 s pending,
    ~5 s running at 600x) keeps tasks running and waits deferred long enough to be seen and disturbed."""
    import time

    from stack import Stack

    folder = tmp_path_factory.mktemp("stack")
    t0 = time.monotonic()
    faults = {"pending_seconds": 3000, "running_seconds": 3000, "file_processing_seconds": 3000}
    with Stack(folder, time_scale=600, faults=faults) as running:
        running.timings = {"start": time.monotonic() - t0}
        print(f"[stack] up in {running.timings['start']:.0f}s ({running.executor}); logs in {running.logs}",
              file=sys.stderr)
        running.wait_parsed("gemini_batch_extract")
        running.api("PATCH", "/dags/gemini_batch_extract", {"is_paused": False})
        assert running.api("GET", "/dags/gemini_batch_extract")["is_paused"] is False
        yield running
        t1 = time.monotonic()
    print(f"[stack] stopped in {time.monotonic() - t1:.0f}s; stage wall time {time.monotonic() - t0:.0f}s "
          f"({', '.join(f'{k} {v:.0f}s' for k, v in running.timings.items())})", file=sys.stderr)


@pytest.fixture(scope="session")
def airflow_home(tmp_path_factory):
    """A migrated AIRFLOW_HOME (SQLite) with the jobs pool, for `dags test` runs."""
    return new_airflow_home(tmp_path_factory.mktemp("airflow-home"))


def new_airflow_home(home):
    env = {**os.environ, "AIRFLOW_HOME": str(home)}
    subprocess.run([ROOT / "bin" / "airflow", "db", "migrate"], env=env, check=True, capture_output=True)
    subprocess.run([ROOT / "bin" / "airflow", "pools", "set", "gemini_batch_jobs", "10", "jobs", "--include-deferred"],
                   env=env, check=True, capture_output=True)
    return home

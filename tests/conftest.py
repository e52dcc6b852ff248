"""Shared fixtures: real emulator processes on free loopback ports, and the
real google-genai / google-cloud-storage clients pointed at them."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "plugins"), str(ROOT / "tests")]
# Relative params (include/samples) are the repository's, as under bin/airflow.
os.environ.setdefault("GEMINI_BATCH_HOME", str(ROOT))

# gcsfs probes bucket layouts over a gRPC API no emulator serves (see gemini_batch.core.locations).
os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")

from gemini_emulator.testing import gcs_emulator, gemini_emulator  # noqa: E402
from support.dagrun import new_airflow_home  # noqa: E402
from support.emulators import developer_client  # noqa: E402

TIERS = ("unit", "snippets", "integration", "system")
_TIER_WEIGHT = {"unit": 0, "snippets": 1, "integration": 2, "system": 3, None: 0}


def _tier(item) -> str | None:
    return next((part for part in item.path.relative_to(ROOT / "tests").parts[:-1] if part in TIERS), None)


@pytest.hookimpl(tryfirst=True)  # before xdist's, which reads the groups
def pytest_collection_modifyitems(config, items):
    """Each test is marked with its tier, its folder (``bin/test -m unit``); the tests on the session's stack share
    it, so they run in one worker. The live check spends money on the real service: it runs only when asked for by
    name (``-m live``)."""
    expression = config.getoption("markexpr") or ""
    run_live = "live" in expression and "not live" not in expression
    for item in items:
        tier = _tier(item)
        if tier is None:
            raise pytest.UsageError(
                f"{item.nodeid}: a test lives in tests/unit, tests/snippets, tests/integration or tests/system"
            )
        item.add_marker(tier)
        if "stack" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.xdist_group("stack"))
        if item.get_closest_marker("live") and not run_live:
            item.add_marker(pytest.mark.skip(reason="not run: the live check runs only with bin/test -m live"))
    # Longest first, so no worker is left with a long tail: the stack's chain, the rest of the system tier, the
    # integration tier, then the many short unit tests to fill in.
    items.sort(key=lambda item: (0 if "stack" in getattr(item, "fixturenames", ()) else 1, -_TIER_WEIGHT[_tier(item)]))


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

    from support.stack import Stack

    folder = tmp_path_factory.mktemp("stack")
    t0 = time.monotonic()
    faults = {"pending_seconds": 3000, "running_seconds": 3000, "file_processing_seconds": 3000}
    with Stack(folder, time_scale=600, faults=faults) as running:
        running.timings = {"start": time.monotonic() - t0}
        print(
            f"[stack] up in {running.timings['start']:.0f}s ({running.executor}); logs in {running.logs}",
            file=sys.stderr,
        )
        running.wait_parsed("gemini_batch_extract")
        running.api("PATCH", "/dags/gemini_batch_extract", {"is_paused": False})
        assert running.api("GET", "/dags/gemini_batch_extract")["is_paused"] is False
        yield running
        t1 = time.monotonic()
    print(
        f"[stack] stopped in {time.monotonic() - t1:.0f}s; stage wall time {time.monotonic() - t0:.0f}s "
        f"({', '.join(f'{k} {v:.0f}s' for k, v in running.timings.items())})",
        file=sys.stderr,
    )


@pytest.fixture(scope="session")
def airflow_home(tmp_path_factory):
    """A migrated AIRFLOW_HOME (SQLite) with the jobs pool, for `dags test` runs."""
    return new_airflow_home(tmp_path_factory.mktemp("airflow-home"))

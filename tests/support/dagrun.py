"""Running gemini_batch_extract for real (`airflow dags test` through bin/airflow) and reading what it wrote
and what the emulator received: the helpers the DAG-level test files share."""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import json
import os
import re
import signal
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from support.warm_airflow import WarmAirflow, WarmRun

ROOT = Path(__file__).resolve().parents[2]
SAMPLES = ROOT / "include" / "samples"
NO_PIPELINES = Path(tempfile.mkdtemp(prefix="gemini-batch-no-pipelines-"))
atexit.register(os.rmdir, NO_PIPELINES)


def run_dag(airflow_home, conn: dict, conf: dict, logical_date: str, extra_env: dict | None = None):
    return start_dag(airflow_home, conn, conf, logical_date, extra_env).wait()


def start_dag(airflow_home, conn: dict, conf: dict, logical_date: str, extra_env: dict | None = None) -> StartedRun:
    """Start one `dags test` run in its own process group; ``wait()`` for its DagRun, or ``kill()`` it.

    The run is forked from this worker's warm Airflow (support.warm_airflow) when it configures Airflow the same
    way, else started cold (GEMINI_BATCH_TEST_COLD_AIRFLOW=1: always cold)."""
    command, env = dags_test(airflow_home, conn, conf, logical_date, extra_env)
    log = tempfile.NamedTemporaryFile("w+", prefix="dags-test-", suffix=".log")
    env = airflow_env(env)
    server = _warm_airflow(env)
    if server is not None:
        return StartedRun(server.start(command[1:], env, log.name), log)
    process = subprocess.Popen(
        command,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    return StartedRun(process, log)


def airflow_env(env: dict[str, str]) -> dict[str, str]:
    """``env`` with what bin/airflow sets when the caller has not (the project's folders, examples off)."""
    return {
        "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(ROOT / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "GEMINI_BATCH_HOME": str(ROOT),
        **env,
        "PATH": f"{ROOT / '.venv' / 'bin'}:{env.get('PATH', '')}",
    }


_WARM: dict[str, WarmAirflow] = {}


def _warm_airflow(env: dict[str, str]) -> WarmAirflow | None:
    """This worker's warm Airflow for the configuration ``env`` names (one per AIRFLOW_HOME), started on first use."""
    if os.environ.get("GEMINI_BATCH_TEST_COLD_AIRFLOW") == "1":
        return None
    home = env["AIRFLOW_HOME"]
    server = _WARM.get(home)
    if server is None:
        if not _WARM:
            atexit.register(lambda: [warm.stop() for warm in _WARM.values()])
        server = _WARM[home] = WarmAirflow(tempfile.mkdtemp(prefix="warm-airflow-"), env)
    return server if server.serves(env) else None


def dags_test(
    airflow_home, conn: dict, conf: dict, logical_date: str, extra_env: dict | None = None
) -> tuple[list[str], dict[str, str]]:
    """The `bin/airflow dags test` command for one run of gemini_batch_extract, and its environment."""
    env = {
        **os.environ,
        "AIRFLOW_HOME": str(airflow_home),
        "AIRFLOW_CONN_GEMINI_DEFAULT": json.dumps(conn),
        # The ledger every run of the DAG shares: here one per test folder (beside its output), so tests do not
        # reuse each other's answers while the runs of one test do.
        "GEMINI_BATCH_STATE": str(ledger_root(conf)),
        # Only the DAG under test is parsed: the repository's pipeline files are other DAGs (tested on their own).
        "GEMINI_BATCH_PIPELINES": str(NO_PIPELINES),
        **(extra_env or {}),
    }
    conf = {"poll_seconds": 0.5, **conf}
    airflow = str(ROOT / "bin" / "airflow")
    return [airflow, "dags", "test", "gemini_batch_extract", logical_date, "-c", json.dumps(conf)], env


@dataclasses.dataclass
class StartedRun:
    process: subprocess.Popen | WarmRun
    output: Any

    def wait(self, timeout: float = 900) -> DagRun:
        try:
            self.process.wait(timeout=timeout)
        except (subprocess.TimeoutExpired, TimeoutError):
            self.kill()
            raise
        self.output.seek(0)
        log = self.output.read()
        self.output.close()
        # `dags test` exits 0 whatever the run's outcome: the run's state is in its last log line
        finished = re.findall(r"DagRun Finished: .*? state=(\w+)", log)
        return DagRun(finished[-1] if finished else None, log)

    def kill(self) -> None:
        """SIGKILL the whole run (its task processes too), as a lost worker machine would end it."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=30)


def ledger_root(conf: dict) -> Path:
    output = conf.get("output", "")
    if output and "://" not in output:
        return Path(output.split("{{")[0]).parent / "ledgers"
    return Path(tempfile.mkdtemp(prefix="gemini-batch-ledgers-"))


@dataclasses.dataclass
class DagRun:
    state: str | None
    log: str

    def check(self) -> None:
        assert self.state == "success", self.log[-6000:]


def developer_conn(url: str) -> dict:
    return {"conn_type": "generic", "password": "test-key", "extra": {"backend": "developer", "base_url": url}}


def read_results(output: Path) -> tuple[dict[str, dict], dict]:
    records = [json.loads(line) for line in (output / "results.jsonl").read_text().splitlines()]
    return {r["document"]: r for r in records}, json.loads((output / "summary.json").read_text())


def submitted_jobs(server) -> list[tuple[str, list[str]]]:
    """(display name, keys) of every job the emulator received, oldest first: its own record of each input."""
    jobs_dir = server.log_path.parent / "jobs"
    jobs = sorted((json.loads(p.read_text()) for p in jobs_dir.glob("*.json")), key=lambda j: j["create_time"])
    return [
        (
            job["display_name"],
            [
                json.loads(line)["key"]
                for line in (jobs_dir / f"{job['id']}.input.jsonl").read_text().splitlines()
                if line
            ],
        )
        for job in jobs
    ]


def submitted_keys(server) -> list[list[str]]:
    return [keys for _, keys in submitted_jobs(server)]


def round_keys(server, round_: int) -> list[str]:
    return [k for name, keys in submitted_jobs(server) if f"-r{round_}-shard-" in name for k in keys]


def assert_contract(records: dict[str, dict], summary: dict, source: Path) -> None:
    found = sorted(str(p.relative_to(source)) for p in source.rglob("*") if p.is_file() and not p.name.startswith("."))
    assert sorted(records) == found, "exactly one line per document"
    assert summary["documents"] == len(found) == summary["succeeded"] + summary["failed"] + summary["rejected"]
    for record in records.values():
        assert set(record) >= {"document", "status", "data", "error", "parts", "usage", "reused"}
        assert record["status"] in ("succeeded", "failed", "rejected")
        assert (record["data"] is not None) == (record["status"] == "succeeded")
        assert (record["error"] is None) == (record["status"] == "succeeded")


def new_airflow_home(home):
    env = {**os.environ, "AIRFLOW_HOME": str(home)}
    subprocess.run([ROOT / "bin" / "airflow", "db", "migrate"], env=env, check=True, capture_output=True)
    subprocess.run(
        [ROOT / "bin" / "airflow", "pools", "set", "gemini_batch_jobs", "10", "jobs", "--include-deferred"],
        env=env,
        check=True,
        capture_output=True,
    )
    return home

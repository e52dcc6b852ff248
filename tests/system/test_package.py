"""The distribution as a team installs it: the wheel built from this repository, installed into a fresh
virtualenv beside the lock's Airflow and Google provider, with no ``plugins/`` on the path and no ``.pth``.
Airflow lists the provider, and a pipeline file and the repository's DAG file run with ``airflow dags test``
against the emulator the wheel brings (its ``[emulator]`` extra), from the installed package alone."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from gemini_emulator.testing import ServerProcess, free_port

ROOT = Path(__file__).resolve().parents[2]
SAMPLES = ["invoice-1.pdf", "invoice-2.pdf", "invoice-3.pdf", "invoice-4.md"]
pytestmark = pytest.mark.slow


def locked(name: str) -> str:
    [version] = re.findall(rf"^{re.escape(name)}==(\S+)$", (ROOT / "constraints.txt").read_text(), re.M)
    return version


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """A fresh virtualenv with the wheel, Airflow and the Google provider at the lock's versions."""
    folder = tmp_path_factory.mktemp("package")
    t0 = time.monotonic()
    # built from a copy of what the wheel holds: setuptools leaves build/ in the tree it builds, and a stale one
    # would carry modules since removed into the next wheel
    source = folder / "source"
    skip = shutil.ignore_patterns("__pycache__", "*.pyc")
    for part in ("plugins/gemini_batch", "gemini_emulator"):
        shutil.copytree(ROOT / part, source / part, ignore=skip)
    for part in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / part, source / part)
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", folder / "dist", source],
        check=True,
        capture_output=True,
        cwd=folder,
    )
    [wheel] = (folder / "dist").glob("gemini_batch-*.whl")
    venv = folder / "venv"
    uv = Path(sys.executable).parent / "uv"  # pip's resolver takes minutes over Airflow's tree; uv seconds
    subprocess.run([uv, "venv", "-q", "--python", sys._base_executable, venv], check=True)
    subprocess.run(
        [
            uv,
            "pip",
            "install",
            "-q",
            "--python",
            venv / "bin" / "python",
            f"{wheel}[emulator]",
            f"apache-airflow=={locked('apache-airflow')}",
            f"apache-airflow-providers-google=={locked('apache-airflow-providers-google')}",
            "-c",
            ROOT / "constraints.txt",
        ],
        check=True,
        capture_output=True,
        cwd=folder,
    )
    print(
        f"wheel built and installed with Airflow {locked('apache-airflow')}, providers-google "
        f"{locked('apache-airflow-providers-google')} in {time.monotonic() - t0:.0f} s",
        file=sys.stderr,
    )
    return venv


def airflow_env(folder: Path, **extra: str) -> dict[str, str]:
    """Airflow as the installed package sees it: its own home and DAG folder, nothing of this repository."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "GEMINI_BATCH", "PYTHON"))}
    (folder / "plugins").mkdir(exist_ok=True)
    return {
        **env,
        "AIRFLOW_HOME": str(folder / "home"),
        "AIRFLOW__CORE__DAGS_FOLDER": str(folder / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(folder / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "GEMINI_BATCH_HOME": str(folder),
        "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false",
        **extra,
    }


def run(venv: Path, args: list, env: dict, cwd: Path, timeout: float = 600) -> str:
    done = subprocess.run(
        [venv / "bin" / args[0], *args[1:]], env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout
    )
    assert done.returncode == 0, f"{args} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout


def test_the_installed_wheel_registers_the_provider_and_runs_a_pipeline_and_the_dag(installed, tmp_path):
    t0 = time.monotonic()
    where = run(
        installed,
        [
            "python",
            "-c",
            "import gemini_batch, gemini_emulator; print(gemini_batch.__file__, gemini_emulator.__file__)",
        ],
        airflow_env(tmp_path),
        tmp_path,
    )
    assert str(ROOT) not in where and where.count(str(installed)) == 2, where  # the installed copies, not ours

    source = tmp_path / "landing"
    source.mkdir()
    for name in SAMPLES:
        shutil.copy(ROOT / "include" / "samples" / name, source)
    (tmp_path / "dags").mkdir()
    for dag_file in ("gemini_batch_extract.py", "gemini_batch_pipelines.py"):
        shutil.copy(ROOT / "dags" / dag_file, tmp_path / "dags")
    pipelines = tmp_path / "pipelines"
    pipelines.mkdir()
    (pipelines / "receipts.yaml").write_text(
        yaml.safe_dump(
            {
                "dag_id": "receipts",
                "schedule": "@daily",
                "source": "landing",
                "output": "out/receipts/{{ ds }}",
                "prompt": "Extract the invoice number and the total.",
                "model": "gemini-2.5-flash-lite",
                "schema": {
                    "type": "object",
                    "properties": {
                        "invoice_number": {"type": ["string", "null"]},
                        "total": {"type": ["number", "null"]},
                    },
                },
                "limits": {"poll_seconds": 0.5, "max_cost_usd": 1},
            }
        )
    )

    # The emulator's documented start command, with the installed python; PYTHONSAFEPATH: not this repository's copy.
    port = free_port()
    emulator = ServerProcess(
        [
            installed / "bin" / "python",
            "-m",
            "gemini_emulator",
            "--port",
            str(port),
            "--data-dir",
            tmp_path / "emulator",
            "--time-scale",
            "3600",
        ],
        port,
        "/healthz",
        tmp_path / "emulator.log",
        env={"PYTHONSAFEPATH": "1"},
    )
    with emulator as server:
        env = airflow_env(
            tmp_path,
            GEMINI_BATCH_PIPELINES=str(pipelines),
            AIRFLOW_CONN_GEMINI_DEFAULT=json.dumps(
                {
                    "conn_type": "gemini_batch",
                    "password": "local",
                    "extra": {"backend": "developer", "base_url": server.url},
                }
            ),
        )
        run(installed, ["airflow", "db", "migrate"], env, tmp_path)
        providers = json.loads(run(installed, ["airflow", "providers", "list", "-o", "json"], env, tmp_path))
        [ours] = [p for p in providers if p["package_name"] == "gemini-batch"]
        assert ours["version"] == locked_version()
        hooks = run(installed, ["airflow", "providers", "hooks", "-o", "json"], env, tmp_path)
        assert "gemini_batch" in hooks and "GeminiBatchHook" in hooks
        run(
            installed,
            ["airflow", "pools", "set", "gemini_batch_jobs", "4", "jobs", "--include-deferred"],
            env,
            tmp_path,
        )

        run(installed, ["airflow", "dags", "test", "receipts", "2026-12-01"], env, tmp_path)
        run(
            installed,
            [
                "airflow",
                "dags",
                "test",
                "gemini_batch_extract",
                "2026-12-01",
                "-c",
                json.dumps({"source": str(source), "output": "out/extract", "poll_seconds": 0.5}),
            ],
            env,
            tmp_path,
        )

    for output, fields in (
        (tmp_path / "out" / "receipts" / "2026-12-01", {"invoice_number", "total"}),
        (tmp_path / "out" / "extract", {"invoice_number", "date", "vendor", "currency", "total"}),
    ):
        summary = json.loads((output / "summary.json").read_text())
        records = [json.loads(line) for line in (output / "results.jsonl").read_text().splitlines()]
        assert summary["documents"] == len(records) == len(SAMPLES) and summary["succeeded"] >= 3, summary
        assert {r["document"] for r in records} == set(SAMPLES)
        assert all(set(r["data"]) == fields for r in records if r["status"] == "succeeded")
    print(
        f"provider listed and both DAGs run from the installed wheel in {time.monotonic() - t0:.0f} s", file=sys.stderr
    )


def locked_version() -> str:
    import tomllib

    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]

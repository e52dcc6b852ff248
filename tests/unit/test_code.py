"""The code checks CI runs with the tests: lint and format (ruff), types (mypy), the layers (import-linter)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
CODE = ["plugins", "tests", "bench", "gemini_emulator", "dags", "include"]


def check(*command: str) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "plugins")}
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, (
        f"{' '.join(command)} exited {done.returncode}:\n{done.stdout[-6000:]}{done.stderr[-3000:]}"
    )


@pytest.mark.parametrize(
    "command",
    [
        pytest.param([str(BIN / "ruff"), "check", *CODE], id="ruff-check"),
        pytest.param([str(BIN / "ruff"), "format", "--check", *CODE], id="ruff-format"),
        pytest.param([str(BIN / "lint-imports")], id="layers"),
        pytest.param([str(BIN / "mypy")], id="mypy"),
    ],
)
def test_the_code_passes(command):
    check(*command)


def test_tests_marked_for_one_worker_run_in_one(tmp_path):
    """bin/test gives the tests on the session's stack one worker (``xdist_group``, ``--dist loadgroup``): with a
    pytest and pytest-xdist that do not agree on how a group is named, each worker would start a stack of its own."""
    (tmp_path / "test_grouped.py").write_text(
        "import os, pytest\n"
        "@pytest.mark.parametrize('n', range(8))\n"
        "@pytest.mark.xdist_group('stack')\n"
        "def test_grouped(n):\n"
        "    with open(os.environ['WORKERS_SEEN'], 'a') as seen:\n"
        "        seen.write(os.environ['PYTEST_XDIST_WORKER'] + '\\n')\n"
        "@pytest.mark.parametrize('n', range(8))\n"
        "def test_free(n):\n"
        "    pass\n"
    )
    seen = tmp_path / "workers"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-n",
            "2",
            "--dist",
            "loadgroup",
            "-q",
            "-p",
            "no:cacheprovider",
            "-c",
            os.devnull,
            "--rootdir",
            str(tmp_path),
            str(tmp_path),
        ],
        env={**os.environ, "WORKERS_SEEN": str(seen)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    workers = seen.read_text().split()
    assert len(workers) == 8 and len(set(workers)) == 1, f"the grouped tests ran on {sorted(set(workers))}"

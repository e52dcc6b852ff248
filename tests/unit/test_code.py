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

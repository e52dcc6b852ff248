"""Worker processes (gemini_batch.core.processes): spawned without running the parent's __main__ again."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

PLUGINS = Path(__file__).resolve().parents[2] / "plugins"


def test_workers_do_not_run_the_parents_main_again(tmp_path):
    """Inside Airflow the parent's __main__ is its command-line entry point, seconds of imports per worker: the
    workers must not run it. The script's top level records each process that runs it; only the parent does."""
    marker = tmp_path / "ran-main"
    script = tmp_path / "main.py"
    script.write_text(
        textwrap.dedent(f"""
        import os, sys
        sys.path.insert(0, {str(PLUGINS)!r})
        with open({str(marker)!r}, "a") as out:
            out.write(f"{{os.getpid()}}\\n")
        if __name__ == "__main__":
            from gemini_batch.core.processes import worker_pool
            with worker_pool(2) as pool:
                pids = {{pool.submit(os.getpid).result() for _ in range(8)}}
            print(len(pids), sys.modules["__main__"].__file__ == {str(script)!r})
    """)
    )
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    workers, main_restored = done.stdout.split()
    assert int(workers) >= 1 and main_restored == "True"
    assert len(marker.read_text().splitlines()) == 1  # the parent only

"""A location template that names a secret, in a real `airflow dags test` run."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

from support.dagrun import SAMPLES, developer_conn, run_dag


def test_a_template_naming_a_secret_fails_the_run_at_once_and_leaks_it_nowhere(airflow_home, tmp_path, start_emulator):
    conn_secret, variable_secret = f"conn-{uuid.uuid4().hex}", f"var-{uuid.uuid4().hex}"
    server = start_emulator(time_scale=600)
    conn = {**developer_conn(server.url), "password": conn_secret}
    conf = {
        "source": str(SAMPLES),
        "output": str(tmp_path / "out-{{ conn.gemini_default.password }}-{{ var.value.some_secret }}"),
    }
    done = run_dag(airflow_home, conn, conf, "2026-11-09", {"AIRFLOW_VAR_SOME_SECRET": variable_secret})

    assert done.state == "failed", done.log[-4000:]
    assert "output: `conn`, `var` are not available in templates; only ds, ds_nodash, " in done.log
    assert "up_for_retry" not in done.log.lower(), "a parameter error is not retried"
    for secret in (conn_secret, variable_secret):
        assert secret not in done.log
        for root in (tmp_path, Path(airflow_home)):
            for folder, names, files in os.walk(root):
                assert not [name for name in names + files if secret in name], folder
        for stored in Path(airflow_home).glob("airflow.db*"):  # XCom, asset events, rendered fields
            assert secret.encode() not in stored.read_bytes()
        for log_file in (Path(airflow_home) / "logs").rglob("*"):
            assert not log_file.is_file() or secret.encode() not in log_file.read_bytes()
    assert not list(tmp_path.glob("out-*")), "nothing was written"

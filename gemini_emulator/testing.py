"""Start and stop the emulators as real processes, for tests, benchmarks and
users' own CI. Every server gets a free loopback port and is stopped on exit."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ServerProcess:
    """A child process serving HTTP on loopback, ready once ``health_path`` answers 200."""

    def __init__(self, argv: list[str], port: int, health_path: str, log_path: Path, env: dict | None = None):
        self.argv, self.port, self.health_path, self.log_path = argv, port, health_path, log_path
        self.env = {**os.environ, **(env or {})}
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 30.0) -> ServerProcess:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            self.argv, stdout=log, stderr=subprocess.STDOUT, env=self.env, cwd=ROOT, start_new_session=True
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"{self.argv[0]} exited with {self.proc.returncode}; see {self.log_path}:\n"
                    f"{self.log_path.read_text()[-2000:]}"
                )
            try:
                with urllib.request.urlopen(self.url + self.health_path, timeout=1) as resp:
                    if resp.status == 200:
                        return self
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
                pass
            time.sleep(0.1)
        self.stop()
        raise TimeoutError(f"{self.argv} not ready on port {self.port} after {timeout}s")

    def stop(self, kill: bool = False) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGKILL if kill else signal.SIGTERM)
            self.proc.wait(timeout=10)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def gcs_emulator(data_dir: Path, port: int | None = None, bucket: str | None = None) -> ServerProcess:
    """gcp-storage-emulator (with generation preconditions: ``gemini_emulator.gcs``) on loopback, storing under
    ``data_dir``."""
    port = port or free_port()
    argv = [sys.executable, "-m", "gemini_emulator.gcs", "start", "--host", "127.0.0.1", "--port", str(port), "--quiet"]
    if bucket:
        argv += ["--default-bucket", bucket]
    data_dir.mkdir(parents=True, exist_ok=True)
    return ServerProcess(
        argv, port, "/", data_dir / "gcs-emulator.log", env={"STORAGE_BASE": str(data_dir), "STORAGE_DIR": "storage"}
    )


def gemini_emulator(
    data_dir: Path,
    port: int | None = None,
    time_scale: float = 1.0,
    faults: dict | None = None,
    gcs_endpoint: str | None = None,
    models: Path | None = None,
) -> ServerProcess:
    """The Gemini Batch emulator, started exactly as docs/emulator.md says."""
    port = port or free_port()
    argv = [
        sys.executable,
        "-m",
        "gemini_emulator",
        "--port",
        str(port),
        "--data-dir",
        str(data_dir),
        "--time-scale",
        str(time_scale),
    ]
    if faults:
        argv += ["--faults", json.dumps(faults)]
    if gcs_endpoint:
        argv += ["--gcs-endpoint", gcs_endpoint]
    if models:
        argv += ["--models", str(models)]
    return ServerProcess(argv, port, "/healthz", data_dir / "emulator.log")


def requests_made(
    server_or_data_dir: ServerProcess | Path, method: str | None = None, path_regex: str | None = None
) -> list[dict]:
    """The requests a Gemini emulator received, oldest first, from its own ``requests.jsonl``.

    ``path_regex`` must match the whole path, so ``/v1beta/batches`` counts list calls and not gets of one job.
    """
    data_dir = (
        server_or_data_dir.log_path.parent if isinstance(server_or_data_dir, ServerProcess) else server_or_data_dir
    )
    path = Path(data_dir) / "requests.jsonl"
    if not path.exists():
        return []
    pattern = re.compile(path_regex) if path_regex else None
    records = [json.loads(line) for line in path.read_bytes().splitlines(keepends=True) if line.endswith(b"\n")]
    return [
        r
        for r in records
        if (method is None or r["method"] == method.upper()) and (pattern is None or pattern.fullmatch(r["path"]))
    ]


def online_requests(server_or_data_dir: ServerProcess | Path) -> list[dict]:
    """The online requests (``models.generateContent``) a Gemini emulator answered or refused, oldest first, from
    its own ``online.jsonl``: time, surface, model, HTTP status, tokens and ``contents_sha256`` (the fingerprint
    ``gemini_emulator.service.contents_fingerprint`` gives a batch row's ``request.contents`` too)."""
    data_dir = (
        server_or_data_dir.log_path.parent if isinstance(server_or_data_dir, ServerProcess) else server_or_data_dir
    )
    path = Path(data_dir) / "online.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_bytes().splitlines(keepends=True) if line.endswith(b"\n")]

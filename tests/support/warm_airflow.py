"""A warm Airflow for `dags test` runs: one process per test worker that has imported Airflow's CLI, its in-process
execution API and the heavy libraries the DAG's tasks use, and forks a run on request.

A run started cold spends most of a small run's time importing (several seconds before its first task starts); a
forked one starts where the imports left off. Each forked run is still a process of its own, in its own session
(process group), with its own environment, argv and log file, so a test can SIGKILL it as a lost machine would end
it. What is imported here is what reads no per-run setting at import time: the project's own package is not
(its modules read ``GEMINI_BATCH_*`` variables when imported); a run whose Airflow configuration
(``AIRFLOW_HOME``, ``AIRFLOW__*``) differs from the server's is started cold by the caller (``support.dagrun``).

Protocol over a Unix socket, one connection per run: the client sends one JSON line ``{"argv", "env", "log",
"cwd"}``; the server answers ``pid N`` once the run is forked and ``exit CODE`` when it ends.
"""

from __future__ import annotations

import json
import os
import selectors
import signal
import socket
import sys
import threading
import time

PRELOAD = (
    "airflow.__main__",
    "airflow.cli.cli_parser",
    "airflow.cli.commands.dag_command",
    "airflow.dag_processing.dagbag",
    "airflow.api_fastapi.execution_api.app",
    "airflow.sdk.execution_time.supervisor",
    "airflow.sdk.execution_time.task_runner",
    "airflow.providers.standard.decorators.python",
    "airflow.providers.common.sql.hooks.sql",
    "google.genai",
    "pypdf",
    "msgspec",
    "orjson",
    "jsonschema",
    "jsonschema_rs",
    "httpx",
    "tenacity",
)


def preload() -> None:
    import importlib

    for name in PRELOAD:
        importlib.import_module(name)
    # The in-process execution API every task talks to (cached per process): its versioned routes are generated on
    # its first request, in a thread of its own; generated here, before any thread, every run starts with them.
    from airflow.sdk.execution_time.supervisor import in_process_api_server
    from cadwyn import Cadwyn

    app = in_process_api_server().app
    for candidate in (app, *(getattr(route, "app", None) for route in app.routes)):
        if isinstance(candidate, Cadwyn) and not candidate._cadwyn_initialized:
            candidate._cadwyn_initialize()
    if threading.active_count() != 1:  # fork copies no other thread: a lock one of them held would stay taken
        raise RuntimeError(f"preloading started threads: {threading.enumerate()}")


def _run_child(request: dict, keep: list[socket.socket]) -> None:
    """In the forked child: become the run's own session, take its environment, argv and log, run the CLI."""
    code = 1
    try:
        for sock in keep:
            sock.close()
        os.setsid()
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        log = os.open(request["log"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)
        os.dup2(log, 1)
        os.dup2(log, 2)
        os.chdir(request.get("cwd") or os.getcwd())
        os.environ.clear()
        os.environ.update(request["env"])
        import tempfile

        tempfile.tempdir = None  # TMPDIR is the run's
        from airflow import settings

        if getattr(settings, "engine", None) is not None:
            settings.engine.dispose(close=False)  # the parent's pool: never shared across a fork
        sys.argv = ["airflow", *request["argv"]]
        from airflow.__main__ import main

        try:
            main()
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException:
        import traceback

        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def serve(path: str) -> None:
    preload()
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(16)
    selector = selectors.DefaultSelector()
    selector.register(listener, selectors.EVENT_READ)
    runs: dict[int, socket.socket] = {}  # pid -> its client's connection
    parent = os.getppid()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    print("ready", flush=True)
    try:
        _loop(listener, selector, runs, parent)
    finally:
        for pid in runs:
            try:
                os.killpg(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def _loop(listener: socket.socket, selector: selectors.BaseSelector, runs: dict[int, socket.socket], parent: int):
    while os.getppid() == parent:  # the test worker that started this server is gone: stop
        for _ in selector.select(timeout=0.1):
            conn, _ = listener.accept()
            conn.settimeout(30)
            with conn.makefile("rb") as lines:
                request = json.loads(lines.readline())
            pid = os.fork()
            if pid == 0:
                _run_child(request, [listener, conn, *runs.values()])
            runs[pid] = conn
            conn.sendall(f"pid {pid}\n".encode())
        while runs:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            conn = runs.pop(pid, None)
            if conn is not None:
                code = os.waitstatus_to_exitcode(status)
                try:
                    conn.sendall(f"exit {code}\n".encode())
                except OSError:
                    pass
                conn.close()


class WarmRun:
    """A run forked by the server: its ``pid`` (its session's id, to kill it with) and ``wait`` for its exit code."""

    def __init__(self, server_path: str, argv: list[str], env: dict[str, str], log: str):
        self.conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.conn.connect(server_path)
        self.conn.sendall(json.dumps({"argv": argv, "env": env, "log": log, "cwd": os.getcwd()}).encode() + b"\n")
        self.lines = self.conn.makefile("rb")
        self.conn.settimeout(60)
        kind, value = self.lines.readline().split()
        assert kind == b"pid", (kind, value)
        self.pid = int(value)
        self.returncode: int | None = None

    def wait(self, timeout: float | None = None) -> int:
        if self.returncode is None:
            self.conn.settimeout(timeout)
            try:
                line = self.lines.readline()
            except TimeoutError:
                raise TimeoutError(f"run {self.pid} still going after {timeout} s") from None
            _, value = line.split() if line else (b"exit", b"-9")  # no line: the server itself is gone
            self.returncode = int(value)
            self.lines.close()
            self.conn.close()
        return self.returncode


class WarmAirflow:
    """The server, started lazily with the Airflow environment ``env`` (what bin/airflow sets)."""

    def __init__(self, folder: str, env: dict[str, str]):
        self.path = os.path.join(folder, "warm-airflow.sock")
        self.env = env
        self.process = None

    def config(self) -> dict[str, str]:
        return {k: v for k, v in self.env.items() if k == "AIRFLOW_HOME" or k.startswith("AIRFLOW__")}

    def serves(self, env: dict[str, str]) -> bool:
        """Whether a run with ``env`` would configure Airflow the way this server did."""
        return {k: v for k, v in env.items() if k == "AIRFLOW_HOME" or k.startswith("AIRFLOW__")} == self.config()

    def start(self, argv: list[str], env: dict[str, str], log: str) -> WarmRun:
        if self.process is None:
            import subprocess

            started = time.monotonic()
            self.process = subprocess.Popen(
                [sys.executable, __file__, self.path],
                env=self.env,
                stdout=subprocess.PIPE,
                text=True,
            )
            for line in self.process.stdout:  # what importing printed, then "ready"
                if line.strip() == "ready":
                    break
                print(f"[warm airflow] {line.rstrip()}", file=sys.stderr)
            else:
                raise RuntimeError(f"the warm Airflow server did not start (exit {self.process.wait(timeout=30)})")
            print(f"[warm airflow] ready in {time.monotonic() - started:.1f}s", file=sys.stderr)
        return WarmRun(self.path, argv, env, log)

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=30)
            self.process = None
            if os.path.exists(self.path):
                os.unlink(self.path)


if __name__ == "__main__":
    serve(sys.argv[1])

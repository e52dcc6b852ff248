"""The production topology, natively from .venv: a dedicated Postgres
database, CeleryExecutor with a Redis broker and a Postgres result backend, two
Celery workers, scheduler, dag-processor, triggerer, api-server on a free
loopback port, the Gemini emulator and gcp-storage-emulator on free ports; one
AIRFLOW_HOME in the stack's folder, every process's log beside it.

Where Postgres or Redis cannot be reached the stack says so on stderr and falls
back to the LocalExecutor on SQLite (no workers).

Auth: SimpleAuthManager with one configured admin user whose password the stack
writes into the passwords file before the api-server starts; ``Stack.token()``
gets a JWT from ``POST /auth/token`` and ``Stack.api()`` calls ``/api/v2`` with it.

    with Stack(folder) as stack:            # tests
        stack.api("GET", "/dags")

    bin/stack start|stop|status [--dir DIR]  # users (state in DIR/stack.json)
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import time
import types
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
for folder in (ROOT, ROOT / "tests"):  # run as a script (bin/stack) as well as imported by the tests
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))

from gemini_emulator.testing import free_port, gcs_emulator, gemini_emulator  # noqa: E402
from support.dagrun import submitted_jobs  # noqa: E402

AIRFLOW = str(ROOT / "bin" / "airflow")


def _host_port(var: str, default: str) -> tuple[str, int]:
    host, _, port = os.environ.get(var, default).rpartition(":")
    return host, int(port)


# where the machine's PostgreSQL (trust auth) and Redis listen; override with host:port
_pg_host, _pg_port = _host_port("GEMINI_BATCH_STACK_POSTGRES", "127.0.0.1:5432")
PG = {"host": _pg_host, "port": _pg_port, "user": os.environ.get("GEMINI_BATCH_STACK_POSTGRES_USER", "postgres")}
REDIS = _host_port("GEMINI_BATCH_STACK_REDIS", "127.0.0.1:6379")
POOL = "gemini_batch_jobs"
DAG = "gemini_batch_extract"
USER = "admin"
DEFAULT_DIR = Path(os.environ.get("GEMINI_BATCH_STACK_DIR") or Path(tempfile.gettempdir()) / "gemini-batch-stack")


def log(msg: str) -> None:
    print(f"[stack] {msg}", file=sys.stderr, flush=True)


# ---- Postgres and Redis, reached without Airflow ---------------------------------------------------------------


def _pg_connect(dbname: str = "postgres"):
    import psycopg2

    conn = psycopg2.connect(dbname=dbname, connect_timeout=3, **PG)
    conn.autocommit = True
    return conn


def _pg_exec(sql: str) -> None:
    conn = _pg_connect()
    try:
        with conn.cursor() as cur:
            cur.execute(sql)
    finally:
        conn.close()


def postgres_reason() -> str | None:
    """None when Postgres answers, else why not."""
    try:
        _pg_connect().close()
        return None
    except Exception as exc:
        return (
            f"Postgres on {PG['host']}:{PG['port']} not reachable ({' '.join(str(exc).split()) or type(exc).__name__})"
        )


def _redis(*command: str, db: int = 0) -> Any:
    import redis

    client = redis.Redis(host=REDIS[0], port=REDIS[1], db=db, socket_connect_timeout=3, socket_timeout=5)
    try:
        return client.execute_command(*command)
    finally:
        client.close()


def redis_reason() -> str | None:
    try:
        _redis("PING")
        return None
    except Exception as exc:
        return f"Redis on {REDIS[0]}:{REDIS[1]} not reachable ({str(exc).strip() or type(exc).__name__})"


def pick_redis_db() -> int:
    """An empty Redis database, 1..15 (0 is everyone's default), chosen at random so parallel stacks don't clash."""
    candidates = list(range(1, 16))
    secrets.SystemRandom().shuffle(candidates)
    for db in candidates:
        if _redis("DBSIZE", db=db) == 0:
            # claim it at once: a marker key makes it non-empty for the next stack looking
            _redis("SET", "gemini-batch-stack", str(os.getpid()), db=db)
            return db
    raise RuntimeError("no empty Redis database among 1..15")


# ---- processes --------------------------------------------------------------------------------------------------


def _alive(pid: int, create_time: float | None) -> bool:
    import psutil

    try:
        proc = psutil.Process(pid)
        return proc.status() != psutil.STATUS_ZOMBIE and (
            create_time is None or abs(proc.create_time() - create_time) < 1
        )
    except psutil.Error:
        return False


def _create_time(pid: int) -> float | None:
    import psutil

    try:
        return psutil.Process(pid).create_time()
    except psutil.Error:
        return None


def stop_groups(procs: dict[str, dict], grace: float = 20.0) -> None:
    """SIGTERM every process group, wait up to ``grace`` s together, then SIGKILL what is left."""
    live = {name: p for name, p in procs.items() if _alive(p["pid"], p.get("create_time"))}
    for _name, p in live.items():
        try:
            os.killpg(p["pid"], signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + grace
    while live and time.monotonic() < deadline:
        live = {n: p for n, p in live.items() if _alive(p["pid"], p.get("create_time"))}
        time.sleep(0.2)
    for name, p in live.items():
        log(f"{name} (pid {p['pid']}) did not stop in {grace:.0f}s: killing its process group")
    for p in procs.values():  # also orphans left in a group whose leader already exited
        try:
            os.killpg(p["pid"], signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


class Stack:
    def __init__(
        self,
        folder: Path | str,
        *,
        backend: str = "developer",
        time_scale: float = 600.0,
        faults: dict | None = None,
        workers: int = 2,
        worker_concurrency: int = 2,
        schedule: bool = False,
        pool_slots: int = 10,
    ):
        self.folder = Path(folder).resolve()
        self.home = self.folder / "airflow-home"
        self.logs = self.folder / "logs"
        self.backend, self.time_scale, self.faults, self.schedule = backend, time_scale, faults, schedule
        self.workers, self.worker_concurrency, self.pool_slots = workers, worker_concurrency, pool_slots
        self.state: dict[str, Any] = {}
        self._token: str | None = None
        self._children: list[subprocess.Popen] = []  # reaped at stop when this process started them

    # -- state --
    @property
    def state_file(self) -> Path:
        return self.folder / "stack.json"

    def _save(self) -> None:
        self.state_file.write_text(json.dumps(self.state, indent=2))

    @classmethod
    def load(cls, folder: Path | str) -> Stack:
        stack = cls(folder)
        stack.state = json.loads(stack.state_file.read_text())
        return stack

    @property
    def api_url(self) -> str:
        return self.state["api_url"]

    @property
    def password(self) -> str:
        return self.state["password"]

    @property
    def executor(self) -> str:
        return self.state["executor"]

    @property
    def emulator_url(self) -> str:
        return self.state["emulator_url"]

    @property
    def emulator_dir(self) -> Path:
        return Path(self.state["emulator_dir"])

    def env(self) -> dict[str, str]:
        """The environment of every Airflow process of the stack (and of `bin/airflow` run against it)."""
        return {**os.environ, **self.state["env"]}

    # -- start --
    def start(self) -> Stack:
        t0 = time.monotonic()
        self.folder.mkdir(parents=True, exist_ok=True)
        self.logs.mkdir(exist_ok=True)
        self.home.mkdir(exist_ok=True)
        self.state = {"folder": str(self.folder), "procs": {}, "started": time.time()}
        try:
            self._configure()
            self._save()
            self._start_emulators()
            self._migrate()
            self._start_airflow()
            self._wait_ready()
        except BaseException:
            log(f"start failed; logs in {self.logs}")
            self.stop()
            raise
        log(
            f"up in {time.monotonic() - t0:.0f}s: {self.executor}, api {self.api_url}, user {USER}, "
            f"password in {self.folder / 'passwords.json'}, logs {self.logs}"
        )
        return self

    def _configure(self) -> None:
        from cryptography.fernet import Fernet

        reasons = [r for r in (postgres_reason(), redis_reason()) if r]
        env: dict[str, str] = {
            "AIRFLOW_HOME": str(self.home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "dags"),
            "AIRFLOW__CORE__PLUGINS_FOLDER": str(ROOT / "plugins"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "GEMINI_BATCH_HOME": str(ROOT),
            "AIRFLOW__CORE__FERNET_KEY": Fernet.generate_key().decode(),
            "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_urlsafe(32),
            "AIRFLOW__API__SECRET_KEY": secrets.token_urlsafe(32),
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{USER}:admin",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(self.folder / "passwords.json"),
            # a new DAG file is picked up within seconds, not minutes
            "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
            "AIRFLOW__SCHEDULER__USE_JOB_SCHEDULE": str(self.schedule),
            # the scheduler loops every 0.25 s when idle, not every 1 s: each task of a run starts that much sooner
            "AIRFLOW__SCHEDULER__SCHEDULER_IDLE_SLEEP_TIME": "0.25",
            # a task whose worker died is failed (and retried) after 20 s without a heartbeat, not the default 300 s,
            # looked for every 2 s, not every 10 s
            "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT": "20",
            "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT_DETECTION_INTERVAL": "2",
            # the connections page's Test button (off by default: it runs a hook in the api-server)
            "AIRFLOW__CORE__TEST_CONNECTION": "Enabled",
            "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false",
        }
        if reasons:
            for reason in reasons:
                log(reason)
            log("falling back to the LocalExecutor on SQLite (no Celery workers)")
            env["AIRFLOW__CORE__EXECUTOR"] = "LocalExecutor"
            env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] = f"sqlite:///{self.home / 'airflow.db'}"
            self.state.update(executor="LocalExecutor", database=None, redis_db=None)
        else:
            db = f"gemini_batch_stack_{secrets.token_hex(4)}"
            _pg_exec(f'CREATE DATABASE "{db}"')
            self.state["database"] = db  # saved before anything else can fail, so stop drops it
            redis_db = pick_redis_db()
            self.state["redis_db"] = redis_db
            url = f"postgresql+psycopg2://{PG['user']}@{PG['host']}:{PG['port']}/{db}"
            env.update(
                {
                    "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor",
                    "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": url,
                    "AIRFLOW__CELERY__BROKER_URL": f"redis://{REDIS[0]}:{REDIS[1]}/{redis_db}",
                    "AIRFLOW__CELERY__RESULT_BACKEND": f"db+postgresql+psycopg2://{PG['user']}@{PG['host']}:{PG['port']}/{db}",
                    "AIRFLOW__CELERY__WORKER_CONCURRENCY": str(self.worker_concurrency),
                }
            )
            self.state["executor"] = "CeleryExecutor"
        api_port = free_port()
        api_url = f"http://127.0.0.1:{api_port}"
        env.update(
            {
                "AIRFLOW__API__HOST": "127.0.0.1",
                "AIRFLOW__API__PORT": str(api_port),
                "AIRFLOW__API__BASE_URL": api_url,
                "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{api_url}/execution/",
                "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(free_port()),
            }
        )
        password = secrets.token_urlsafe(12)
        pw_file = self.folder / "passwords.json"
        pw_file.write_text(json.dumps({USER: password}) + "\n")
        pw_file.chmod(0o600)

        emu_port, gcs_port = free_port(), free_port()
        emulator_url, gcs_url = f"http://127.0.0.1:{emu_port}", f"http://127.0.0.1:{gcs_port}"
        developer = {
            "conn_type": "generic",
            "password": "local-emulator",
            "extra": {"backend": "developer", "base_url": emulator_url},
        }
        vertex = {
            "conn_type": "generic",
            "extra": {
                "backend": "vertex",
                "base_url": emulator_url,
                "project": "test-project",
                "location": "us-central1",
                "gcp_conn_id": "gcs_emulator",
            },
        }
        env.update(
            {
                "AIRFLOW_CONN_GEMINI_DEFAULT": json.dumps(developer if self.backend == "developer" else vertex),
                "AIRFLOW_CONN_GEMINI_DEVELOPER": json.dumps(developer),
                "AIRFLOW_CONN_GEMINI_VERTEX": json.dumps(vertex),
                "AIRFLOW_CONN_GCS_EMULATOR": json.dumps(
                    {"conn_type": "google_cloud_platform", "extra": {"is_anonymous": True, "project": "test-project"}}
                ),
                "STORAGE_EMULATOR_HOST": gcs_url,
            }
        )
        self.state.update(
            env=env,
            api_url=api_url,
            password=password,
            emulator_url=emulator_url,
            gcs_url=gcs_url,
            emulator_port=emu_port,
            gcs_port=gcs_port,
            emulator_dir=str(self.folder / "emulator"),
            backend=self.backend,
        )

    def _track(self, name: str, proc: subprocess.Popen) -> None:
        self._children.append(proc)
        self.state["procs"][name] = {
            "pid": proc.pid,
            "create_time": _create_time(proc.pid),
            "log": str(self.logs / f"{name}.log"),
        }
        self._save()

    def _start_emulators(self) -> None:
        gcs = gcs_emulator(self.folder / "gcs", port=self.state["gcs_port"], bucket="test-bucket")
        gcs.log_path = self.logs / "gcs-emulator.log"
        emu = gemini_emulator(
            self.emulator_dir,
            port=self.state["emulator_port"],
            time_scale=self.time_scale,
            faults=self.faults,
            gcs_endpoint=self.state["gcs_url"],
        )
        for name, server in (("gcs-emulator", gcs), ("gemini-emulator", emu)):
            try:
                server.start(timeout=60)
            finally:
                if server.proc is not None:
                    self._track(name, server.proc)
                    self.state["procs"][name]["log"] = str(server.log_path)

    def _airflow(self, *args: str, log_name: str, timeout: float = 600) -> None:
        with (self.logs / f"{log_name}.log").open("ab") as out:
            done = subprocess.run(
                [AIRFLOW, *args], env=self.env(), stdout=out, stderr=subprocess.STDOUT, timeout=timeout, cwd=ROOT
            )
        if done.returncode:
            tail = (self.logs / f"{log_name}.log").read_text()[-3000:]
            raise RuntimeError(f"airflow {' '.join(args)} exited {done.returncode}:\n{tail}")

    def _migrate(self) -> None:
        t0 = time.monotonic()
        self._airflow("db", "migrate", log_name="db-migrate")
        self._airflow(
            "pools",
            "set",
            POOL,
            str(self.pool_slots),
            "Gemini batch jobs in flight",
            "--include-deferred",
            log_name="db-migrate",
        )
        log(f"database migrated, pool {POOL} ({self.pool_slots}, deferred included) in {time.monotonic() - t0:.0f}s")

    def _spawn(self, name: str, *args: str, env: dict | None = None) -> None:
        with (self.logs / f"{name}.log").open("ab") as out:
            proc = subprocess.Popen(
                [AIRFLOW, *args],
                env={**self.env(), **(env or {})},
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=ROOT,
                start_new_session=True,
            )
        self._track(name, proc)
        self.state["procs"][name].update(args=list(args), extra_env=env or {})
        self._save()

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        """Signal one component's whole process group and wait for it. SIGTERM: a clean stop. SIGKILL: a crash of
        its machine, so the tasks it runs in sessions of their own die with it."""
        import psutil

        p = self.state["procs"][name]
        tasks = []
        if sig == signal.SIGKILL and _alive(p["pid"], p.get("create_time")):
            tasks = psutil.Process(p["pid"]).children(recursive=True)
        try:
            os.killpg(p["pid"], sig)
        except ProcessLookupError:
            pass
        for task in tasks:
            try:
                task.send_signal(sig)
            except psutil.Error:
                pass
        for proc in self._children:
            if proc.pid == p["pid"]:
                proc.wait(timeout=60)
        deadline = time.monotonic() + 60
        while _alive(p["pid"], p.get("create_time")) and time.monotonic() < deadline:
            time.sleep(0.2)

    def component_of(self, pid: int) -> str | None:
        """The component that started ``pid``: a task runs in its own session under its worker's processes."""
        import psutil

        try:
            lineage = [psutil.Process(pid), *psutil.Process(pid).parents()]
        except psutil.Error:
            return None
        leaders = {p["pid"]: name for name, p in self.state["procs"].items()}
        return next((leaders[proc.pid] for proc in lineage if proc.pid in leaders), None)

    def restart(self, name: str, sig: int = signal.SIGTERM) -> None:
        """Stop an Airflow component (a clean stop by default) and start it again with the same command."""
        p = self.state["procs"][name]
        self.kill(name, sig)
        self._spawn(name, *p["args"], env=p.get("extra_env"))

    def _start_airflow(self) -> None:
        self._spawn(
            "api-server",
            "api-server",
            "--host",
            "127.0.0.1",
            "--port",
            self.api_url.rsplit(":", 1)[1],
            "--workers",
            "1",
        )
        self._spawn("scheduler", "scheduler", env={"AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(free_port())})
        self._spawn("dag-processor", "dag-processor")
        self._spawn("triggerer", "triggerer")
        if self.executor == "CeleryExecutor":
            for n in range(1, self.workers + 1):
                self._spawn(
                    f"worker-{n}",
                    "celery",
                    "worker",
                    "--celery-hostname",
                    f"worker{n}@%h",
                    "--concurrency",
                    str(self.worker_concurrency),
                    "--pid",
                    str(self.folder / f"worker-{n}.pid"),
                    env={"AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(free_port())},
                )

    def _wait_ready(self, timeout: float = 240) -> None:
        deadline = time.monotonic() + timeout
        pending = {"api-server", "scheduler", "triggerer", "dag_processor"}
        workers = {n for n in self.state["procs"] if n.startswith("worker-")}
        while time.monotonic() < deadline:
            for name, p in self.state["procs"].items():
                if not _alive(p["pid"], p.get("create_time")):
                    raise RuntimeError(f"{name} exited; see {p['log']}:\n{Path(p['log']).read_text()[-3000:]}")
            try:
                health = self._request("GET", "/api/v2/monitor/health", auth=False)
                pending.discard("api-server")
                for part in ("scheduler", "triggerer", "dag_processor"):
                    if (health.get(part) or {}).get("status") == "healthy":
                        pending.discard(part)
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError, ValueError):
                pass
            for name in list(workers):
                if " ready." in Path(self.state["procs"][name]["log"]).read_text(errors="replace"):
                    workers.discard(name)
            if not pending and not workers:
                return
            time.sleep(1)
        raise TimeoutError(f"not ready after {timeout:.0f}s: {sorted(pending | workers)}")

    def wait_parsed(self, dag_id: str, timeout: float = 180) -> dict:
        """The dag-processor has parsed the DAG once the API knows it (and its serialized form answers)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.api("GET", f"/dags/{dag_id}/details")
                return self.api("GET", f"/dags/{dag_id}")
            except ApiError as exc:
                if exc.code != 404 or time.monotonic() > deadline:
                    raise
            time.sleep(1)

    # -- stop --
    def stop(self) -> None:
        if not self.state:
            return
        stop_groups(self.state.get("procs", {}))
        for proc in self._children:
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
        db = self.state.get("database")
        if db:
            try:
                _pg_exec(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
                self.state["database"] = None
            except Exception as exc:
                log(f"could not drop database {db}: {exc}")
        if self.state.get("redis_db") is not None:
            try:
                _redis("FLUSHDB", db=self.state["redis_db"])
                self.state["redis_db"] = None
            except Exception as exc:
                log(f"could not flush Redis database {self.state['redis_db']}: {exc}")
        self.state["stopped"] = time.time()
        if self.state_file.parent.exists():
            self._save()

    def status(self) -> dict[str, str]:
        return {
            name: ("running" if _alive(p["pid"], p.get("create_time")) else "stopped") + f" (pid {p['pid']})"
            for name, p in self.state.get("procs", {}).items()
        }

    def __enter__(self) -> Stack:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    # -- REST API --
    def token(self) -> str:
        """A JWT from SimpleAuthManager: POST /auth/token with the configured user's name and password."""
        body = self._request("POST", "/auth/token", {"username": USER, "password": self.password}, auth=False)
        return body["access_token"]

    def _request(self, method: str, path: str, body: Any = None, *, auth: bool = True, timeout: float = 30) -> Any:
        headers = {"Accept": "application/json"}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        if auth:
            if self._token is None:
                self._token = self.token()
            headers["Authorization"] = f"Bearer {self._token}"
        req = urllib.request.Request(self.api_url + path, data=data, method=method, headers=headers)
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            raw = resp.read()
        return json.loads(raw) if raw else None

    def api(self, method: str, path: str, body: Any = None, **query: Any) -> Any:
        """Call ``/api/v2`` + path as the stack's admin; a 401 (expired token) logs in again once."""
        if query:
            path += "?" + urllib.parse.urlencode(query, doseq=True)
        try:
            return self._request(method, "/api/v2" + path, body)
        except urllib.error.HTTPError as exc:
            if exc.code != 401:
                raise ApiError(exc) from None
            self._token = None
            try:
                return self._request(method, "/api/v2" + path, body)
            except urllib.error.HTTPError as exc2:
                raise ApiError(exc2) from None


class ApiError(Exception):
    def __init__(self, exc: urllib.error.HTTPError):
        self.code = exc.code
        detail = exc.read().decode(errors="replace")[:2000]
        super().__init__(f"{exc.code} {exc.reason} {exc.url}: {detail}")


# ---------------------------------------------------------------- for the tests that drive runs on the stack


def q(value: str) -> str:
    return urllib.parse.quote(value, safe="")


def wait_run(stack: Stack, run_id: str, timeout: float = 360) -> tuple[str, list[dict], int]:
    """Poll the run to its end; also every task instance seen deferred (with its trigger and triggerer job),
    and the most pool slots seen taken by deferred tasks."""
    deadline = time.monotonic() + timeout
    deferred: dict[tuple, dict] = {}
    max_deferred_slots = 0
    while True:
        state = stack.api("GET", f"/dags/{DAG}/dagRuns/{q(run_id)}")["state"]
        tis = stack.api("GET", f"/dags/{DAG}/dagRuns/{q(run_id)}/taskInstances", limit=500)["task_instances"]
        for ti in tis:
            if ti["state"] == "deferred":
                deferred.setdefault((ti["task_id"], ti["map_index"]), ti)
        pool = stack.api("GET", f"/pools/{POOL}")
        max_deferred_slots = max(max_deferred_slots, pool.get("deferred_slots") or 0)
        if state in ("success", "failed"):
            return state, list(deferred.values()), max_deferred_slots
        if time.monotonic() > deadline:
            raise TimeoutError(f"run {run_id} still {state} after {timeout:.0f}s; logs in {stack.logs}")
        time.sleep(1)


def failure_report(stack: Stack, run_id: str) -> str:
    """The failed task instances and the tail of each one's log, for the assertion message."""
    lines = []
    tis = stack.api("GET", f"/dags/{DAG}/dagRuns/{q(run_id)}/taskInstances", limit=500)["task_instances"]
    for ti in tis:
        if ti["state"] not in ("success", "skipped"):
            lines.append(f"{ti['task_id']}[{ti['map_index']}]: {ti['state']}")
    for path in sorted((stack.home / "logs").rglob("*.log")):
        text = path.read_text(errors="replace")
        if "Traceback" in text or "ERROR" in text:
            lines.append(f"--- {path}\n{text[-3000:]}")
    return "\n".join(lines)[-12000:]


def emulator_jobs(stack: Stack) -> list[tuple[str, list[str]]]:
    return submitted_jobs(types.SimpleNamespace(log_path=stack.emulator_dir / "emulator.log"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bin/stack", description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=["start", "stop", "status", "env", "token"])
    parser.add_argument("--dir", type=Path, default=DEFAULT_DIR, help=f"the stack's folder (default {DEFAULT_DIR})")
    parser.add_argument(
        "--backend",
        choices=["developer", "vertex"],
        default="developer",
        help="what gemini_default points at (gemini_developer and gemini_vertex are always there)",
    )
    parser.add_argument("--time-scale", type=float, default=600.0, help="the emulator's time scale")
    parser.add_argument("--faults", type=json.loads, help="the emulator's fault plan (JSON), e.g. slower jobs")
    parser.add_argument("--schedule", action="store_true", help="let the scheduler create the DAG's nightly runs")
    args = parser.parse_args(argv)
    if args.command == "start":
        if (args.dir / "stack.json").exists():
            old = Stack.load(args.dir)
            if any(s.startswith("running") for s in old.status().values()):
                log(f"a stack is already running in {args.dir}; `bin/stack stop` first")
                return 1
        stack = Stack(
            args.dir, backend=args.backend, time_scale=args.time_scale, faults=args.faults, schedule=args.schedule
        ).start()
        print(
            json.dumps(
                {
                    "api_url": stack.api_url,
                    "username": USER,
                    "password": stack.password,
                    "executor": stack.executor,
                    "emulator_url": stack.emulator_url,
                    "folder": str(stack.folder),
                },
                indent=2,
            )
        )
        return 0
    if not (args.dir / "stack.json").exists():
        log(f"no stack in {args.dir}")
        return 1
    stack = Stack.load(args.dir)
    if args.command == "stop":
        stack.stop()
        log(f"stopped; logs kept in {stack.logs}")
    elif args.command == "status":
        for name, state in stack.status().items():
            print(f"{name:16} {state}")
        print(
            f"executor {stack.executor}; api {stack.api_url}; database {stack.state.get('database')}; "
            f"redis db {stack.state.get('redis_db')}"
        )
    elif args.command == "env":  # `eval "$(bin/stack env)"` then bin/airflow talks to the stack
        for key, value in stack.state["env"].items():
            print(f"export {key}={_shell_quote(value)}")
    elif args.command == "token":
        print(stack.token())
    return 0


def _shell_quote(value: str) -> str:
    import shlex

    return shlex.quote(value)


if __name__ == "__main__":
    sys.exit(main())

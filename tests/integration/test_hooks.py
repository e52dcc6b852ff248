"""GeminiBatchHook against real emulator processes: clients built from Airflow
connections (set through AIRFLOW_CONN_* variables), the real google-genai
client (Developer API and Vertex AI), gcsfs against gcp-storage-emulator.
Faults (503 bursts) are injected by the emulator, not mocked."""

from __future__ import annotations

import concurrent.futures
import datetime as dt
import inspect
import json
import logging
import time
import uuid

import orjson
import pytest
from google import genai
from hypothesis import given
from hypothesis import strategies as st

from gemini_batch.core.results import read_output
from gemini_batch.hooks.gemini import GeminiBatchHook, _split_lines, job_stats, state_name
from gemini_emulator.testing import free_port, requests_made
from support.emulators import developer_client, list_calls, seed_job_history
from support.service import KEY, MODEL, SLOW, submit_shard, use_developer, use_vertex, wait_until_ended, write_shard


def keys_of(lines) -> list[str]:
    return [orjson.loads(line)["key"] for line in lines]


# ---------------------------------------------------------------- clients


def test_developer_client_is_built_once_per_connection(emulator, monkeypatch):
    use_developer(monkeypatch, emulator.url)
    hook = GeminiBatchHook()
    assert (hook.backend, hook.base_url) == ("developer", emulator.url)
    client = hook.get_conn()
    assert isinstance(client, genai.Client) and not client.vertexai
    assert list(client.batches.list()) == []  # it reaches the emulator with the key
    assert GeminiBatchHook().get_conn() is client
    assert GeminiBatchHook().get_async_conn() is client.aio

    use_developer(monkeypatch, emulator.url, location="changed")  # a changed connection gets a new client
    assert GeminiBatchHook().get_conn() is not client


def test_connections_are_kept_apart(emulator, start_emulator, monkeypatch, tmp_path):
    other = start_emulator(time_scale=3600)
    use_developer(monkeypatch, emulator.url)
    use_developer(monkeypatch, other.url, conn_id="gemini_other")
    hook, other_hook = GeminiBatchHook(), GeminiBatchHook("gemini_other")
    assert hook.get_conn() is not other_hook.get_conn()
    submit_shard(other_hook, write_shard(tmp_path / "shards"), "only-on-the-other")
    assert hook.find_job("only-on-the-other") is None
    assert other_hook.find_job("only-on-the-other") is not None


def test_missing_key_names_the_connection(monkeypatch):
    monkeypatch.setenv(
        "AIRFLOW_CONN_GEMINI_NOKEY",
        json.dumps({"conn_type": "generic", "extra": {"backend": "developer", "base_url": "http://127.0.0.1:9"}}),
    )
    with pytest.raises(ValueError, match="'gemini_nokey' has no API key"):
        GeminiBatchHook("gemini_nokey").get_conn()


def test_unknown_backend_is_refused(monkeypatch):
    connection = {"conn_type": "generic", "password": KEY, "extra": {"backend": "bard"}}
    monkeypatch.setenv("AIRFLOW_CONN_GEMINI_ODD", json.dumps(connection))
    with pytest.raises(ValueError, match="backend must be one of developer, vertex, got 'bard'"):
        GeminiBatchHook("gemini_odd").get_conn()


def test_key_is_never_logged_nor_shown(start_emulator, monkeypatch, tmp_path, caplog, capfd):
    emulator = start_emulator(time_scale=3600, faults={"http": {"get": {"burst": 1, "codes": [503]}}})
    use_developer(monkeypatch, emulator.url)
    caplog.set_level(logging.DEBUG)
    hook = GeminiBatchHook()
    hook.retry_initial_seconds = 0.05
    job = submit_shard(hook, write_shard(tmp_path / "shards"), "secret-check")
    assert hook.find_job("secret-check").name == job.name
    job = wait_until_ended(hook, job.name)
    assert len(list(hook.iter_output_lines(job))) == 3
    assert not hook.cancel_job(job.name)
    out, err = capfd.readouterr()
    logged = caplog.text + out + err  # stdlib logging (SDK, httpx) and the hook's structlog output
    assert "transient error" in logged  # the 503 retry was logged: the capture sees the hook's log
    for text in (logged, repr(hook), repr(hook.get_conn())):
        assert KEY not in text


# ---------------------------------------------------------------- jobs


def test_create_find_and_cancel(start_emulator, monkeypatch, tmp_path):
    emulator = start_emulator(time_scale=1, faults=SLOW)
    use_developer(monkeypatch, emulator.url)
    hook = GeminiBatchHook()
    manifest = write_shard(tmp_path / "shards")
    live = submit_shard(hook, manifest, "shard-a")
    assert state_name(live) == "JOB_STATE_PENDING"
    assert hook.find_job("shard-a").name == live.name
    assert hook.find_job("shard-b") is None

    newer = submit_shard(hook, manifest, "shard-a")
    assert hook.find_job("shard-a").name == newer.name  # newest first
    assert hook.cancel_job(newer.name)
    assert state_name(wait_until_ended(hook, newer.name)) == "JOB_STATE_CANCELLED"
    assert hook.find_job("shard-a").name == live.name  # a live job wins over a newer dead one
    assert not hook.cancel_job(newer.name)  # already ended: nothing to cancel, no error

    assert hook.cancel_job(live.name)
    wait_until_ended(hook, live.name)
    assert hook.find_job("shard-a").name == newer.name  # only dead ones left: the newest


def test_find_job_pages_lazily_back_to_created_after(start_emulator, monkeypatch, tmp_path):
    data_dir = tmp_path / "emulator"
    seed_job_history(data_dir, 2500)  # 3 pages of 1000, created over the last 30 days, the newest a day ago
    emulator = start_emulator(data_dir=data_dir, time_scale=1, faults=SLOW)
    use_developer(monkeypatch, emulator.url)
    hook = GeminiBatchHook()
    job = submit_shard(hook, write_shard(tmp_path / "shards"), "wanted")

    assert hook.find_job("history-00000").display_name == "history-00000"  # the oldest: on the last page
    assert list_calls(emulator) == 3
    assert {r["query"].split("&")[0] for r in requests_made(emulator, "GET", r"/v1beta/batches")} == {"pageSize=1000"}
    an_hour_ago = dt.datetime.now(dt.timezone.utc) - dt.timedelta(hours=1)
    assert hook.find_job("wanted", created_after=an_hour_ago).name == job.name
    assert hook.find_job("history-02499", created_after=an_hour_ago) is None  # a day old: left out
    assert list_calls(emulator) == 5  # one page each: paging stopped at the first older job
    assert hook.find_job("history-01400", created_after=an_hour_ago - dt.timedelta(days=20)) is not None
    assert list_calls(emulator) == 7  # back 20 days of 30: 2 pages


def test_create_and_list_survive_transient_errors(start_emulator, monkeypatch, tmp_path):
    faults = {"http": {"create": {"burst": 2, "codes": [503, 429]}, "list": {"burst": 2, "codes": [503]}}}
    emulator = start_emulator(time_scale=3600, faults=faults)
    use_developer(monkeypatch, emulator.url)
    hook = GeminiBatchHook()
    hook.retry_initial_seconds = 0.05
    job = submit_shard(hook, write_shard(tmp_path / "shards"), "retried")
    assert hook.find_job("retried").name == job.name
    client = developer_client(emulator.url)  # held: a client that is garbage collected closes its HTTP client
    assert [j.name for j in client.batches.list()] == [job.name]


def test_delete_files_in_parallel_counts_the_gone_without_warning(start_emulator, monkeypatch, tmp_path, caplog, capfd):
    emulator = start_emulator(time_scale=3600, faults={"request_latency_ms": 50})
    use_developer(monkeypatch, emulator.url)
    client = developer_client(emulator.url)
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        uploaded = list(
            pool.map(
                lambda i: client.files.upload(file=_jsonl_file(tmp_path, i), config={"mime_type": "application/jsonl"}),
                range(50),
            )
        )
    # both forms a run records: a name (files/ID) and a URI ending in one
    uris = [f.name if i % 2 else f.uri for i, f in enumerate(uploaded)] + [f"files/gone-{i}" for i in range(10)]
    caplog.set_level(logging.INFO)
    capfd.readouterr()

    assert GeminiBatchHook().delete_files(uris) == {"deleted": 50, "gone": 10, "failed": 0}
    assert list(client.files.list()) == []
    deletes = requests_made(emulator, "DELETE", r"/v1beta/files/[a-z0-9-]+")
    assert len(deletes) == 60 and sorted(r["status"] for r in deletes) == [200] * 50 + [403] * 10
    out, err = capfd.readouterr()
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert "warning" not in (out + err).lower(), out + err  # the hook logs through structlog to stdout


def test_delete_files_in_cloud_storage(vertex_hook, gcs_root):
    folder = gcs_root / "deletes" / uuid.uuid4().hex
    for i in range(3):
        (folder / f"part-{i}.pdf").write_bytes(b"%PDF-1.4")
    uris = [f"{folder}/part-{i}.pdf" for i in range(3)] + [f"{folder}/never-{i}.pdf" for i in range(2)]
    assert vertex_hook.delete_files(uris) == {"deleted": 3, "gone": 2, "failed": 0}
    assert not folder.exists() or list(folder.iterdir()) == []


def test_delete_files_names_real_failures_in_one_warning(monkeypatch, caplog, capfd):
    use_developer(monkeypatch, f"http://127.0.0.1:{free_port()}")  # nothing listens: every delete fails
    hook = GeminiBatchHook()
    hook.retry_attempts, hook.retry_initial_seconds = 2, 0.01
    uris = [f"files/f-{i:02d}" for i in range(12)]
    capfd.readouterr()
    assert hook.delete_files(uris) == {"deleted": 0, "gone": 0, "failed": 12}
    out, _ = capfd.readouterr()
    (warning,) = [line for line in (caplog.text + out).splitlines() if "Could not delete" in line]
    assert "12 of 12 file(s)" in warning and "and 2 more" in warning
    assert sum(uri + ":" in warning for uri in uris) == 10


def _jsonl_file(folder, i: int):
    path = folder / f"upload-{i}.jsonl"
    path.write_bytes(orjson.dumps({"key": f"k{i}", "request": {}}) + b"\n")
    return str(path)


def test_upload_jsonl_reuses_an_active_upload(start_emulator, monkeypatch, tmp_path):
    # Real time: at a time scale of 3600 the 48 h expiry is 48 s away, inside the 2 h re-upload margin.
    emulator = start_emulator(time_scale=1, faults={"file_processing_seconds": 0.5})
    use_developer(monkeypatch, emulator.url)
    hook = GeminiBatchHook()
    shard = hook.storage_path(write_shard(tmp_path / "shards").uri)
    assert hook.upload_jsonl(shard, "gbs-once") == "files/gbs-once"
    first = hook.get_conn().files.get(name="files/gbs-once")
    assert first.state.name == "ACTIVE" and first.mime_type == "application/jsonl"
    assert first.size_bytes == shard.stat().st_size
    assert hook.upload_jsonl(shard, "gbs-once") == "files/gbs-once"
    assert [f.name for f in hook.get_conn().files.list()] == ["files/gbs-once"]
    assert hook.get_conn().files.get(name="files/gbs-once").create_time == first.create_time


def test_upload_jsonl_replaces_an_upload_about_to_expire(emulator, monkeypatch, tmp_path):
    """At a time scale of 3600 the emulator's 48 h file expiry is 48 s away: inside the 2 h margin."""
    use_developer(monkeypatch, emulator.url)
    hook = GeminiBatchHook()
    shard = hook.storage_path(write_shard(tmp_path / "shards").uri)
    hook.upload_jsonl(shard, "gbs-short-lived")
    first = hook.get_conn().files.get(name="files/gbs-short-lived")
    assert hook.upload_jsonl(shard, "gbs-short-lived") == "files/gbs-short-lived"
    again = hook.get_conn().files.get(name="files/gbs-short-lived")
    assert again.create_time > first.create_time and again.state.name == "ACTIVE"


# ---------------------------------------------------------------- outputs


def test_developer_output_is_streamed_line_by_line(start_emulator, monkeypatch, tmp_path):
    emulator = start_emulator(time_scale=3600, faults={"http": {"download": {"burst": 2, "codes": [503]}}})
    use_developer(monkeypatch, emulator.url)
    hook = GeminiBatchHook()
    hook.retry_initial_seconds = 0.05
    manifest = write_shard(tmp_path / "shards", rows=300)
    job = wait_until_ended(hook, submit_shard(hook, manifest, "outputs").name)
    assert state_name(job) == "JOB_STATE_SUCCEEDED" and job.dest.file_name.startswith("files/")
    lines = hook.iter_output_lines(job)
    assert inspect.isgenerator(lines)  # nothing is fetched until iterated
    keys = keys_of(lines)
    assert sorted(keys) == [f"key-{i:05d}" for i in range(300)]
    assert all(orjson.loads(line).get("response") for line in hook.iter_output_lines(job))


def test_job_without_output_yields_nothing(start_emulator, monkeypatch, tmp_path):
    emulator = start_emulator(time_scale=1, faults=SLOW)
    use_developer(monkeypatch, emulator.url)
    hook = GeminiBatchHook()
    job = submit_shard(hook, write_shard(tmp_path / "shards"), "no-output")
    hook.cancel_job(job.name)
    assert list(hook.iter_output_lines(wait_until_ended(hook, job.name))) == []


@pytest.fixture
def vertex_hook(start_emulator, gcs, gcs_root, monkeypatch):
    emulator = start_emulator(time_scale=3600, gcs_endpoint=gcs.url)
    use_vertex(monkeypatch, emulator.url)
    return GeminiBatchHook()


def test_vertex_jobs_and_outputs(vertex_hook, gcs_root):
    hook = vertex_hook
    client = hook.get_conn()
    assert client.vertexai and hook.backend == "vertex"
    assert (client._api_client.project, client._api_client.location) == ("test-project", "us-central1")
    assert GeminiBatchHook().get_conn() is client

    run = f"hooks/{uuid.uuid4().hex}"
    first = write_shard(gcs_root / run / "first", rows=4)
    second = write_shard(gcs_root / run / "second", rows=2)
    dest = f"gs://test-bucket/{run}/output/"  # both jobs write under the same prefix
    job_a = hook.create_job(model=MODEL, src=first.uri, display_name="vertex-a", dest=dest)
    job_a = wait_until_ended(hook, job_a.name)
    job_b = hook.create_job(model=MODEL, src=second.uri, display_name="vertex-b", dest=dest)
    job_b = wait_until_ended(hook, job_b.name)

    assert hook.find_job("vertex-a").name == job_a.name
    assert hook.find_job("vertex-c") is None
    assert state_name(job_a) == "JOB_STATE_SUCCEEDED" and job_a.dest.gcs_uri == dest
    # Each job reads its own output directory, not everything under the shared prefix.
    assert sorted(keys_of(hook.iter_output_lines(job_a))) == [f"key-{i:05d}" for i in range(4)]
    assert sorted(keys_of(hook.iter_output_lines(job_b))) == [f"key-{i:05d}" for i in range(2)]
    assert not hook.cancel_job(job_a.name)


def test_vertex_prefix_is_read_recursively_without_an_output_directory(vertex_hook, gcs_root):
    """A job the service has not (yet) named an output directory for: every *.jsonl under the prefix."""
    run = f"hooks/{uuid.uuid4().hex}"
    for name, keys in (
        ("prediction-model-1/predictions.jsonl", "ab"),
        ("prediction-model-2/deeper/predictions.jsonl", "c"),
    ):
        (gcs_root / run / name).write_bytes(b"".join(orjson.dumps({"key": k}) + b"\n\n" for k in keys))
    (gcs_root / run / "prediction-model-1" / "notes.txt").write_bytes(b'{"key": "not-output"}\n')
    job = genai.types.BatchJob(name="x", dest=genai.types.BatchJobDestination(gcs_uri=f"gs://test-bucket/{run}/"))
    assert sorted(keys_of(vertex_hook.iter_output_lines(job))) == ["a", "b", "c"]


@given(st.lists(st.binary(max_size=30).filter(lambda b: b"\n" not in b and b.strip())), st.data())
def test_split_lines_across_any_chunking(lines, data):
    body = b"".join(line + b"\n" for line in lines)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(body)), max_size=8)))
    chunks = [body[a:b] for a, b in zip([0, *cuts], [*cuts, len(body)], strict=False)]
    assert list(_split_lines(chunks)) == [line.rstrip(b"\r") for line in lines]


def test_a_cancelled_vertex_job_s_exported_rows_are_read(start_emulator, gcs, gcs_root, monkeypatch):
    """Vertex AI exports the rows a cancelled job finished; the hook reads them and the collector keeps them
    (the other rows go to a retry round)."""
    emulator = start_emulator(time_scale=100, gcs_endpoint=gcs.url, faults={"row_seconds": 10, "pending_seconds": 0})
    use_vertex(monkeypatch, emulator.url)
    hook = GeminiBatchHook()
    run = f"hooks/{uuid.uuid4().hex}"
    shard = write_shard(gcs_root / run / "shard", rows=40)  # 0.1 s a row: about four seconds
    job = hook.create_job(model=MODEL, src=shard.uri, display_name="to-cancel", dest=f"gs://test-bucket/{run}/out/")
    deadline = time.monotonic() + 20
    while job_stats(hook.get_job(job.name)).get("succeeded", 0) < 3:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert hook.cancel_job(job.name)
    job = wait_until_ended(hook, job.name)
    assert state_name(job) == "JOB_STATE_CANCELLED" and job_stats(job) == {}, "no stats on a cancelled job"
    outcomes = []
    expected = [f"key-{i:05d}" for i in range(40)]
    reading = read_output(hook.iter_output_lines(job), expected, None, outcomes.append)
    assert 3 <= len(outcomes) < 40 and all(o.status == "succeeded" for o in outcomes)
    assert sorted(reading.unanswered) == sorted(set(expected) - {o.key for o in outcomes})


def test_the_quota_extra_is_a_positive_number_of_tokens(monkeypatch):
    use_developer(monkeypatch, "http://127.0.0.1:1", enqueued_token_limit="3000000")
    assert GeminiBatchHook().enqueued_token_limit == 3_000_000
    use_developer(monkeypatch, "http://127.0.0.1:1")
    assert GeminiBatchHook().enqueued_token_limit is None
    use_developer(monkeypatch, "http://127.0.0.1:1", enqueued_token_limit="lots")
    with pytest.raises(
        ValueError,
        match="connection 'gemini_default': enqueued_token_limit must be a positive number of tokens, got 'lots'",
    ):
        _ = GeminiBatchHook().enqueued_token_limit


# ---------------------------------------------------------------- the connection type: form fields and Test button


def test_test_connection_answers_with_one_cheap_call(emulator, monkeypatch):
    use_developer(monkeypatch, emulator.url)
    assert GeminiBatchHook().test_connection() == (
        True,
        f"Gemini Developer API at {emulator.url} answered the batch jobs list with the API key",
    )
    (call,) = requests_made(emulator, "GET", r"/v1beta/batches")
    assert call["query"] == "pageSize=1"


def test_test_connection_on_vertex(vertex_hook):
    ok, message = vertex_hook.test_connection()
    assert ok, message
    assert message == (
        f"Vertex AI (us-central1) at {vertex_hook.base_url} answered the batch jobs list with the "
        "credentials of connection 'gcs_emulator'"
    )


@pytest.mark.parametrize("case", ["refused", "unreachable", "no key"])
def test_test_connection_says_why_it_failed_without_the_key(case, start_emulator, monkeypatch):
    """The emulator accepts any key, so a rejected key is its fault plan's 403 on the list (what the service answers
    a key without access; a malformed key gets 400 API_KEY_INVALID, with the same hint)."""
    if case == "unreachable":
        url = f"http://127.0.0.1:{free_port()}"  # nothing listens
        expected = f"Gemini Developer API at {url} cannot be reached: ConnectError: [Errno 111] Connection refused"
    elif case == "no key":  # refused before any call
        url = f"http://127.0.0.1:{free_port()}"
        expected = "ValueError: connection 'gemini_default' has no API key: put it in the password field"
    else:
        url = start_emulator(faults={"http": {"list": {"burst": 1, "codes": [403]}}}).url
        expected = (
            f"Gemini Developer API at {url} refused the batch jobs list: 403 PERMISSION_DENIED: Injected "
            "error 403.; check the API key"
        )
    use_developer(monkeypatch, url)
    if case == "no key":
        monkeypatch.setenv(
            "AIRFLOW_CONN_GEMINI_DEFAULT",
            json.dumps({"conn_type": "gemini_batch", "extra": {"backend": "developer", "base_url": url}}),
        )
    started = time.monotonic()
    ok, message = GeminiBatchHook().test_connection()
    assert (ok, message) == (False, expected)
    assert KEY not in message and time.monotonic() - started < 5  # no retries


def test_extras_are_read_bare_or_prefixed_and_blank_is_unset(emulator, monkeypatch):
    """The Airflow 3 form writes bare names, a blank field as null; ``extra__gemini_batch__<name>`` (older forms)
    is read when the bare name is not set."""
    extra = {
        "extra__gemini_batch__base_url": "http://127.0.0.1:1",
        "base_url": emulator.url,  # bare wins
        "extra__gemini_batch__gcp_conn_id": "gcp",
        "gcp_conn_id": "",  # blank: not set
        "extra__gemini_batch__enqueued_token_limit": "5000",
        "enqueued_token_limit": None,
        "backend": None,
    }
    monkeypatch.setenv(
        "AIRFLOW_CONN_GEMINI_FORM", json.dumps({"conn_type": "gemini_batch", "password": KEY, "extra": extra})
    )
    hook = GeminiBatchHook("gemini_form")
    assert (hook.backend, hook.base_url, hook.gcp_conn_id, hook.enqueued_token_limit) == (
        "developer",
        emulator.url,
        "gcp",
        5000,
    )
    assert hook.test_connection()[0]

    monkeypatch.setenv(
        "AIRFLOW_CONN_GEMINI_FORM",
        json.dumps(
            {
                "conn_type": "gemini_batch",
                "password": KEY,
                "extra": {
                    "backend": "developer",
                    "base_url": emulator.url,
                    "project": None,
                    "location": None,
                    "gcp_conn_id": None,
                    "enqueued_token_limit": None,
                },
            }
        ),
    )
    hook = GeminiBatchHook("gemini_form")
    assert (hook.gcp_conn_id, hook.enqueued_token_limit) == (None, None)


def test_prefixed_vertex_extras_reach_the_client(vertex_hook, monkeypatch):
    extra = {
        f"extra__gemini_batch__{name}": value
        for name, value in {
            "backend": "vertex",
            "base_url": vertex_hook.base_url,
            "project": "form-project",
            "location": "europe-west4",
            "gcp_conn_id": "gcs_emulator",
        }.items()
    }
    monkeypatch.setenv("AIRFLOW_CONN_GEMINI_FORM", json.dumps({"conn_type": "gemini_batch", "extra": extra}))
    hook = GeminiBatchHook("gemini_form")
    client = hook.get_conn()
    assert (client.vertexai, client._api_client.project, client._api_client.location) == (
        True,
        "form-project",
        "europe-west4",
    )
    assert hook.test_connection() == (
        True,
        f"Vertex AI (europe-west4) at {vertex_hook.base_url} answered the batch "
        "jobs list with the credentials of connection 'gcs_emulator'",
    )


def _provider_installed() -> bool:
    from importlib import metadata

    entry_points = metadata.entry_points(group="apache_airflow_provider")
    return any(ep.dist and ep.dist.name == "gemini-batch" for ep in entry_points)


@pytest.mark.skipif(
    not _provider_installed(),
    reason="the gemini-batch distribution is not installed in the venv "
    "(pip install --no-deps -e .): no provider entry point",
)
def test_providers_manager_registers_the_connection_type():
    """What the api-server builds the form from (/ui/connections/hook_meta) and tests a connection with."""
    import warnings

    from airflow.api_fastapi.core_api.services.ui.connections import HookMetaService
    from airflow.providers_manager import ProvidersManager

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ProvidersManager.hooks: deprecated for task code, still the server's path
        hook = ProvidersManager().hooks["gemini_batch"]
    assert (hook.hook_class_name, hook.hook_name, hook.connection_id_attribute_name, hook.connection_testable) == (
        "gemini_batch.hooks.gemini.GeminiBatchHook",
        "Gemini Batch",
        "gemini_conn_id",
        True,
    )

    (meta,) = [m for m in HookMetaService.hook_meta_data() if m.connection_type == "gemini_batch"]
    assert meta.hook_class_name == "gemini_batch.hooks.gemini.GeminiBatchHook"
    standard = meta.standard_fields
    assert all(field.hidden for field in (standard.host, standard.url_schema, standard.login, standard.port))
    assert (standard.password.hidden, standard.password.title) == (False, "API key")
    fields = meta.extra_fields
    assert list(fields) == ["backend", "base_url", "project", "location", "gcp_conn_id", "enqueued_token_limit"]
    assert fields["backend"]["schema"]["enum"] == ["developer", "vertex"] and fields["backend"]["value"] == "developer"
    assert fields["location"]["value"] == "us-central1"
    assert fields["enqueued_token_limit"]["schema"]["type"] == ["integer", "null"]
    assert all(field["schema"]["title"] and field["description"] for field in fields.values())


# ---------------------------------------------------------------- the key and the connection in errors


class Recorder:
    """A real HTTP server on a free loopback port that answers every GET with ``answer(path)`` -> (status,
    headers, body) and records the path and headers of each request."""

    def __init__(self, answer):
        import http.server
        import threading

        self.requests: list[tuple[str, dict]] = []
        recorder = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                recorder.requests.append((self.path, {k.lower(): v for k, v in self.headers.items()}))
                status, headers, body = answer(self.path)
                self.send_response(status)
                for name, value in {**headers, "content-length": str(len(body))}.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def recorders():
    started = []

    def start(answer) -> Recorder:
        started.append(Recorder(answer))
        return started[-1]

    yield start
    for recorder in started:
        recorder.close()


def test_output_download_keeps_the_api_key_to_the_configured_origin(recorders, monkeypatch):
    """A redirect within the API's origin keeps the key; one to another origin (a signed download URL on another
    host or port) is followed without it."""
    body = b"".join(orjson.dumps({"key": f"k{i}"}) + b"\n" for i in range(3))
    elsewhere = recorders(lambda path: (200, {"content-type": "application/octet-stream"}, body))

    def api(path: str):
        if path.startswith("/v1beta/files/same:download"):
            return 302, {"location": "/download/v1beta/files/same:download?alt=media"}, b""
        if path.startswith("/download/"):
            return 200, {"content-type": "application/octet-stream"}, body
        return 302, {"location": f"{elsewhere.url}/signed/other?signature=abc"}, b""

    service = recorders(api)
    use_developer(monkeypatch, service.url)
    hook = GeminiBatchHook()

    def output_of(file_name: str):
        job = genai.types.BatchJob(name="batches/x", dest=genai.types.BatchJobDestination(file_name=file_name))
        return keys_of(hook.iter_output_lines(job))

    assert output_of("files/same") == ["k0", "k1", "k2"]
    assert [headers.get("x-goog-api-key") for _, headers in service.requests] == [KEY, KEY]
    assert output_of("files/other") == ["k0", "k1", "k2"]
    assert service.requests[-1][1].get("x-goog-api-key") == KEY
    ((path, headers),) = elsewhere.requests
    assert path == "/signed/other?signature=abc"
    assert "x-goog-api-key" not in headers and KEY not in json.dumps(headers)


def _logged(caplog, capfd) -> str:
    out, err = capfd.readouterr()
    return caplog.text + out + err  # stdlib logging (SDK, httpx) and the hook's structlog output


@pytest.mark.parametrize("refused_by", ["service", "proxy"])
def test_a_refused_key_fails_at_once_naming_the_connection(
    refused_by, start_emulator, recorders, monkeypatch, caplog, capfd
):
    """The service answers a wrong key 400 API_KEY_INVALID; a proxy in front of it may answer 401 and quote the
    key. Either way: one request, no retry (of the call, nor of the task: the error is an AirflowFailException),
    the connection named, the key shown nowhere."""
    from airflow.sdk.exceptions import AirflowFailException

    from gemini_batch.hooks.errors import GeminiAuthError

    if refused_by == "service":
        emulator = start_emulator(time_scale=3600, faults={"api_keys": ["the-right-key-0000"]})
        url, requests = emulator.url, lambda: requests_made(emulator, path_regex=r"/v1beta/.*")
    else:
        error = {
            "error": {"code": 401, "message": f"API key {KEY} is not valid for this proxy", "status": "UNAUTHENTICATED"}
        }
        proxy = recorders(lambda path: (401, {"content-type": "application/json"}, orjson.dumps(error)))
        url, requests = proxy.url, lambda: proxy.requests
    use_developer(monkeypatch, url)
    caplog.set_level(logging.DEBUG)
    hook = GeminiBatchHook()
    hook.retry_initial_seconds = 1.0
    started = time.monotonic()
    with pytest.raises(GeminiAuthError) as raised:
        hook.check_model(MODEL)
    assert time.monotonic() - started < 1.0 and len(requests()) == 1
    assert isinstance(raised.value, AirflowFailException)
    message = str(raised.value)
    assert "'gemini_default'" in message and url in message and "the API key" in message
    assert ("401 UNAUTHENTICATED" if refused_by == "proxy" else "400 INVALID_ARGUMENT") in message
    assert raised.value.__cause__ is None and raised.value.__suppress_context__  # the SDK's error may quote the key
    assert KEY not in message and KEY not in _logged(caplog, capfd)


def test_the_key_is_masked_in_airflow_logs_once_the_connection_is_read(monkeypatch):
    from airflow.sdk._shared.secrets_masker import redact

    use_developer(monkeypatch, "http://127.0.0.1:1")
    monkeypatch.setenv(
        "AIRFLOW_CONN_GEMINI_MASKED",
        json.dumps({"conn_type": "generic", "password": "masked-key-7d2e91", "extra": {"backend": "developer"}}),
    )
    hook = GeminiBatchHook("gemini_masked")
    assert hook.backend == "developer"
    assert redact("the key is masked-key-7d2e91") == "the key is ***"


def test_an_unreachable_service_names_the_url_and_the_connection(monkeypatch):
    import httpx

    url = f"http://127.0.0.1:{free_port()}"  # nothing listens
    use_developer(monkeypatch, url)
    hook = GeminiBatchHook()
    hook.retry_attempts, hook.retry_initial_seconds = 2, 0.01
    with pytest.raises(httpx.ConnectError) as raised:  # still a transport error: callers' transient handling holds
        hook.check_model(MODEL)
    message = str(raised.value)
    assert message.startswith(f"connection 'gemini_default': Gemini Developer API at {url} cannot be reached")
    assert "Connection refused" in message


def test_test_connection_works_on_a_generic_connection(emulator, monkeypatch):
    """The README's connection is ``generic``, a type Airflow itself has no hook for: Airflow's own Test (the
    CLI's and the api-server's core Connection, the worker's SDK Connection) reaches this hook for it."""
    from airflow.models.connection import Connection as CoreConnection
    from airflow.sdk import Connection

    extra = json.dumps({"backend": "developer", "base_url": emulator.url})
    expected = (True, f"Gemini Developer API at {emulator.url} answered the batch jobs list with the API key")
    for kind in (CoreConnection, Connection):
        use_developer(monkeypatch, emulator.url)
        conn = kind(conn_id="gemini_default", conn_type="generic", password=KEY, extra=extra)
        assert conn.test_connection() == expected, kind

        other = kind(conn_id="smtp_relay", conn_type="generic", host="mail.example.com", password="hunter2-secret")
        monkeypatch.setenv("AIRFLOW_CONN_SMTP_RELAY", json.dumps({"conn_type": "generic", "host": "mail.example.com"}))
        ok, message = other.test_connection()
        assert not ok and "not a Gemini Batch connection" in message and "'smtp_relay'" in message, message
    assert len(requests_made(emulator, "GET", r"/v1beta/batches")) == 2  # the other connection called nothing


# ---------------------------------------------------------------- Vertex AI: the staging bucket's region


@pytest.mark.parametrize(
    ("bucket", "data_locations", "region", "usable"),
    [
        ("US-CENTRAL1", None, "us-central1", True),
        ("US", None, "us-central1", True),
        ("US", None, "europe-west4", False),
        ("EU", None, "europe-west4", True),
        ("EU", None, "us-central1", False),
        ("ASIA", None, "asia-northeast1", True),
        ("EUROPE-WEST4", None, "us-central1", False),
        ("NAM4", None, "us-east1", True),
        ("NAM4", None, "us-west1", False),
        ("US", ["US-EAST1", "US-WEST1"], "us-west1", True),
        ("US", ["US-EAST1", "US-WEST1"], "us-central1", False),
        ("EUROPE-WEST4", None, "global", True),
        ("EUR9", None, "europe-west4", None),  # a location this rule does not know: not judged
    ],
)
def test_which_bucket_locations_a_vertex_region_can_use(bucket, data_locations, region, usable):
    from gemini_batch.hooks.gemini import region_can_use_bucket

    assert region_can_use_bucket(region, bucket, data_locations) is usable


def test_vertex_plan_refuses_a_staging_bucket_outside_the_job_region(
    start_emulator, gcs, gcs_root, monkeypatch, tmp_path
):
    from gemini_batch.steps import run_settings, runs
    from gemini_batch.steps.planning import plan_documents
    from support.dagrun import SAMPLES
    from support.emulators import storage_client

    emulator = start_emulator(time_scale=3600, gcs_endpoint=gcs.url)
    use_vertex(monkeypatch, emulator.url)  # location: the default, us-central1
    storage = storage_client(gcs.url)
    name = f"eu-{uuid.uuid4().hex[:12]}"
    storage.create_bucket(name, location="europe-west4")
    assert storage.get_bucket(name).location == "EUROPE-WEST4"
    hook = GeminiBatchHook()
    hook.check_staging_bucket("gs://test-bucket/staging")  # the US multi-region holds us-central1

    params = {
        "source": str(SAMPLES),
        "output": str(tmp_path / "out"),
        "staging_prefix": f"gs://{name}/staging",
        "model": MODEL,
        "prompt": "Return the invoice number as JSON.",
    }
    run = runs.Run.from_params(params, "manual__eu", hook)
    with pytest.raises(run_settings.RunConfigError) as raised:
        plan_documents(run)
    message = str(raised.value)
    assert f"gs://{name}" in message and "EUROPE-WEST4" in message and "us-central1" in message
    assert "'gemini_default'" in message
    assert list(storage.list_blobs(name)) == []  # nothing was uploaded
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").rglob("plan.jsonl"))
    assert not requests_made(emulator, "POST")  # no job was created

"""GeminiBatchSubmitOperator and GeminiBatchJobSensor against real emulator
processes, on real shards written by ShardWriter.

``execute`` is called outside a DAG run, so each test passes a minimal
context: ``ti`` is a stand-in carrying ``dag_id``/``run_id`` and recording
``xcom_push``. A deferral is followed as Airflow does it: the TaskDeferred's
trigger runs to its first event and the task resumes through
``resume_execution``. The whole DAG under ``airflow dags test`` is tested
elsewhere.
"""

from __future__ import annotations

import datetime as dt
import json
import time
import uuid

import pytest
from airflow.sdk.exceptions import AirflowException, AirflowFailException, TaskDeferred
from airflow.sdk.module_loading import import_string

from gemini_batch import provider
from gemini_batch.core.batch_requests import ShardPieces
from gemini_batch.hooks.gemini import GeminiBatchHook, state_name
from gemini_batch.operators import batch as operators
from gemini_batch.operators.batch import (
    GeminiBatchJobSensor,
    GeminiBatchSubmitOperator,
    default_display_name,
    shard_file_name,
)
from gemini_batch.triggers.gemini import GeminiBatchJobTrigger
from gemini_emulator.testing import requests_made
from support.emulators import developer_client, list_calls, seed_job_history
from support.service import (
    MODEL,
    DictTaskStateStore,
    RecordingTaskInstance,
    context,
    first_event,
    submit_shard,
    use_developer,
    use_vertex,
    wait_until_ended,
    write_shard,
)


def run_to_completion(task, ctx: dict):
    """execute, and while it defers: run the trigger, then resume the task with the event."""
    try:
        return task.execute(ctx)
    except TaskDeferred as deferred:
        assert isinstance(deferred.trigger, GeminiBatchJobTrigger) and deferred.method_name == "execute_complete"
        event = first_event(deferred.trigger)
        return task.resume_execution(deferred.method_name, {**(deferred.kwargs or {}), "event": event}, ctx)


def operator(manifest, **kwargs) -> GeminiBatchSubmitOperator:
    return GeminiBatchSubmitOperator(
        task_id=f"submit-{uuid.uuid4().hex[:6]}",
        manifest_uri=manifest.manifest_uri,
        model=MODEL,
        poll_interval=0.2,
        **kwargs,
    )


def submit(manifest, ctx: dict) -> str:
    """Submit without waiting (as the DAG does); the job name from the submission."""
    submission = operator(manifest, wait=False).execute(ctx)
    assert submission["own"] and not submission["adopted"] and submission["manifest_uri"] == manifest.manifest_uri
    return submission["jobs"][0]


def listed_jobs(url: str) -> list:
    client = developer_client(url)
    return list(client.batches.list())


def test_execute_twice_submits_once(start_emulator, monkeypatch, tmp_path, capfd):
    emulator = start_emulator(time_scale=1, faults={"pending_seconds": 3600})
    use_developer(monkeypatch, emulator.url)
    manifest = write_shard(tmp_path / "shards", rows=4)
    first, second = RecordingTaskInstance(), RecordingTaskInstance()
    name = submit(manifest, context(first))
    assert submit(manifest, context(second)) == name  # a new task object: a cleared task
    expected = default_display_name(
        "gemini_batch_extract",
        "manual__2026-01-01",
        manifest.shard_id,
        GeminiBatchHook().storage_path(manifest.keys_uri),
    )
    assert first.pushed == second.pushed == [("job_name", name)]
    assert "Reattaching to batch job " + name in capfd.readouterr().out

    jobs = listed_jobs(emulator.url)
    assert [(j.name, j.display_name) for j in jobs] == [(name, expected)]
    assert len(expected) <= 40 and expected.startswith("gb-") and manifest.shard_id in expected
    client = developer_client(emulator.url)
    assert [f.name for f in client.files.list()] == [f"files/{shard_file_name(expected)}"]

    other_run = RecordingTaskInstance(run_id="manual__2026-01-02")  # another run of the same shard is its own job
    assert submit(manifest, context(other_run)) != name


def test_the_task_state_store_spares_listing_the_account_s_jobs(start_emulator, monkeypatch, tmp_path, capfd):
    data_dir = tmp_path / "emulator"
    seed_job_history(data_dir, 1500)  # more than one list page (1000) of earlier jobs, the newest a day old
    emulator = start_emulator(data_dir=data_dir, time_scale=1, faults={"pending_seconds": 3600})
    use_developer(monkeypatch, emulator.url)
    manifest = write_shard(tmp_path / "shards", rows=3)
    store = DictTaskStateStore()

    # A first try: nothing stored, nothing submitted before, no look-up.
    name = submit(manifest, context(store=store))
    assert list_calls(emulator) == 0
    assert store.values["job_name"] == name
    assert dt.datetime.fromisoformat(store.values["submit_started_at"]) <= GeminiBatchHook().get_job(name).create_time

    # A retry: the stored name is one get, and it reattaches.
    retry = RecordingTaskInstance()
    assert submit(manifest, context(retry, store)) == name
    assert "Reattaching to batch job " + name in capfd.readouterr().out
    assert list_calls(emulator) == 0 and retry.pushed[0] == ("job_name", name)

    # The worker died between create and storing the name: the search pages back only to the submit's start.
    del store.values["job_name"]
    assert submit(manifest, context(store=store)) == name
    assert list_calls(emulator) == 1  # the first page reaches the history, older than the bound
    assert store.values["job_name"] == name
    # Without a store (and no DAG run to bound it), the same search reads the whole history: 2 pages.
    assert submit(manifest, context()) == name
    assert list_calls(emulator) == 3

    # A stored job that ended dead is not reattached to: a new job, still without listing.
    GeminiBatchHook().cancel_job(name)
    wait_until_ended(GeminiBatchHook(), name)
    again = submit(manifest, context(store=store))
    assert again != name and store.values["job_name"] == again and list_calls(emulator) == 3


def test_wait_defers_then_returns_the_outcome(start_emulator, monkeypatch, tmp_path):
    emulator = start_emulator(time_scale=1, faults={"pending_seconds": 1, "running_seconds": 1})
    use_developer(monkeypatch, emulator.url)
    manifest = write_shard(tmp_path / "shards", rows=5)
    task, ctx = operator(manifest, expiry_hours=2), context()
    with pytest.raises(TaskDeferred) as deferred:
        task.execute(ctx)
    trigger = deferred.value.trigger
    job = GeminiBatchHook().get_job(trigger.job_name)
    assert dt.datetime.fromisoformat(trigger.deadline) == job.create_time + dt.timedelta(hours=2)
    assert trigger.poll_interval == 0.2

    outcome = task.resume_execution("execute_complete", {**deferred.value.kwargs, "event": first_event(trigger)}, ctx)
    assert outcome == {
        "job_name": job.name,
        "display_name": job.display_name,
        "shard_id": manifest.shard_id,
        "manifest_uri": manifest.manifest_uri,
        "state": "JOB_STATE_SUCCEEDED",
        "stats": {},
        "error": None,
        "deadline_passed": False,
    }
    # Run again after the job ended: the outcome at once, no deferral, no second job.
    assert operator(manifest).execute(context()) == outcome
    assert len(listed_jobs(emulator.url)) == 1
    assert len(list(GeminiBatchHook().iter_output_lines(GeminiBatchHook().get_job(job.name)))) == 5


def test_deadline_cancels_the_job(start_emulator, monkeypatch, tmp_path):
    emulator = start_emulator(time_scale=3600, faults={"stuck_pending_rate": 1, "job_expiry_hours": 1000})
    use_developer(monkeypatch, emulator.url)
    manifest = write_shard(tmp_path / "shards")
    task = operator(manifest, expiry_hours=2 / 3600)
    outcome = run_to_completion(task, context())
    assert outcome["state"] == "JOB_STATE_EXPIRED" and outcome["deadline_passed"] is True
    assert "cancelled" in outcome["error"]
    assert state_name(wait_until_ended(GeminiBatchHook(), outcome["job_name"])) == "JOB_STATE_CANCELLED"

    # A cleared task does not reattach to the cancelled job: it submits a new one.
    name = submit(manifest, context())
    assert name != outcome["job_name"] and len(listed_jobs(emulator.url)) == 2


def test_a_failed_job_does_not_fail_the_task(start_emulator, monkeypatch, tmp_path, capfd):
    emulator = start_emulator(time_scale=3600, faults={"job_fail_rate": 1, "partial_fraction": 0.5})
    use_developer(monkeypatch, emulator.url)
    manifest = write_shard(tmp_path / "shards", rows=4)
    outcome = run_to_completion(operator(manifest), context())
    assert outcome["state"] == "JOB_STATE_FAILED" and outcome["deadline_passed"] is False
    assert "ended JOB_STATE_FAILED" in capfd.readouterr().out
    rows = list(GeminiBatchHook().iter_output_lines(GeminiBatchHook().get_job(outcome["job_name"])))
    assert 0 < len(rows) < 4  # the rows finished before the failure are there to collect


def test_polling_error_fails_the_task(emulator, monkeypatch, tmp_path):
    use_developer(monkeypatch, emulator.url)
    task = operator(write_shard(tmp_path / "shards"))
    event = {"status": "error", "job_name": "batches/x", "error": "5 polls in a row failed; last: 404"}
    with pytest.raises(AirflowException, match="batches/x failed: 5 polls in a row failed"):
        task.execute_complete(context(), event)


def test_vertex_submit_writes_under_the_shard_folder(start_emulator, gcs, gcs_root, monkeypatch):
    emulator = start_emulator(time_scale=3600, gcs_endpoint=gcs.url)
    use_vertex(monkeypatch, emulator.url)
    folder = gcs_root / "operators" / uuid.uuid4().hex
    manifest = write_shard(folder, rows=3)
    outcome = run_to_completion(operator(manifest), context())
    assert outcome["state"] == "JOB_STATE_SUCCEEDED" and outcome["stats"] == {
        "succeeded": 3,
        "failed": 0,
        "incomplete": 0,
    }
    job = GeminiBatchHook().get_job(outcome["job_name"])
    assert job.dest.gcs_uri == f"{manifest.uri.rsplit('/', 1)[0]}/output/{manifest.shard_id}/"
    assert len(list(GeminiBatchHook().iter_output_lines(job))) == 3
    assert submit(manifest, context()) == job.name


def test_sensor_waits_for_a_job_submitted_elsewhere(start_emulator, monkeypatch, tmp_path):
    emulator = start_emulator(time_scale=1, faults={"pending_seconds": 1, "running_seconds": 1})
    use_developer(monkeypatch, emulator.url)
    job = submit_shard(GeminiBatchHook(), write_shard(tmp_path / "shards"), "elsewhere")
    deferred_sensor = GeminiBatchJobSensor(task_id="wait", job_name=job.name, poll_interval=0.2)
    polling_sensor = GeminiBatchJobSensor(task_id="poke", job_name=job.name, poll_interval=0.2, deferrable=False)
    expected = {
        "job_name": job.name,
        "display_name": "elsewhere",
        "shard_id": None,
        "manifest_uri": None,
        "state": "JOB_STATE_SUCCEEDED",
        "stats": {},
        "error": None,
        "deadline_passed": False,
    }
    assert run_to_completion(deferred_sensor, context()) == expected
    assert polling_sensor.execute(context()) == expected


def test_sensor_only_cancels_at_the_deadline_a_job_its_run_submitted(start_emulator, monkeypatch, tmp_path):
    """A job named alone (submitted elsewhere) is left running past the deadline; the run's own job is cancelled."""
    emulator = start_emulator(time_scale=3600, faults={"stuck_pending_rate": 1, "job_expiry_hours": 1000})
    use_developer(monkeypatch, emulator.url)
    hook = GeminiBatchHook()
    elsewhere = submit_shard(hook, write_shard(tmp_path / "a"), "stuck-elsewhere")
    own = submit_shard(hook, write_shard(tmp_path / "b"), "stuck-own")
    time.sleep(1)

    def poke(job_name) -> dict:
        return GeminiBatchJobSensor(
            task_id=f"poke-{uuid.uuid4().hex[:6]}",
            job_name=job_name,
            poll_interval=0.2,
            deferrable=False,
            expiry_hours=1 / 3600,
        ).execute(context())

    observed = poke(elsewhere.name)
    assert (observed["state"], observed["deadline_passed"]) == ("JOB_STATE_EXPIRED", True)
    assert "left running" in observed["error"]
    assert state_name(hook.get_job(elsewhere.name)) == "JOB_STATE_PENDING"
    cancelled = poke({"jobs": [own.name], "adopted": False, "own": True, "manifest_uri": "m", "shard_id": "s"})
    assert (cancelled["state"], cancelled["deadline_passed"], cancelled["manifest_uri"]) == (
        "JOB_STATE_EXPIRED",
        True,
        "m",
    )
    assert state_name(wait_until_ended(hook, own.name)) == "JOB_STATE_CANCELLED"


class PushedXCom:
    """XCom as the links read it at the end of a task run, from what the stand-in task instance recorded."""

    @staticmethod
    def get_value(*, ti_key, key):
        return dict(ti_key.pushed).get(key)


def links(task, ti) -> dict[str, str]:
    return {link.name: link.get_link(task, ti_key=ti) for link in task.operator_extra_links}


def test_extra_links_are_registered_for_both_operators():
    registered = [import_string(path) for path in provider.get_provider_info()["extra-links"]]
    for task_class in (GeminiBatchSubmitOperator, GeminiBatchJobSensor):
        assert [type(link) for link in task_class.operator_extra_links] == registered
    assert [link.name for link in GeminiBatchJobSensor.operator_extra_links] == ["Gemini batch job", "Batch output"]


def test_vertex_links_open_the_console(start_emulator, gcs, gcs_root, monkeypatch):
    emulator = start_emulator(time_scale=3600, gcs_endpoint=gcs.url)
    use_vertex(monkeypatch, emulator.url)
    monkeypatch.setattr(operators, "XCom", PushedXCom)
    folder = gcs_root / "links" / uuid.uuid4().hex
    manifest = write_shard(folder, rows=2)
    task, ti = operator(manifest), RecordingTaskInstance()
    submitted = links(task, ti)
    assert submitted == {"Gemini batch job": "", "Batch output": ""}  # nothing pushed yet: no link
    outcome = run_to_completion(task, context(ti))
    project, location, job_id = outcome["job_name"].split("/")[1::2]
    assert (project, location) == ("test-project", "us-central1")
    prefix = (
        f"https://console.cloud.google.com/storage/browser/test-bucket/links/{folder.name}/output/{manifest.shard_id}/"
    )
    expected_job = (
        f"https://console.cloud.google.com/vertex-ai/locations/us-central1/batch-predictions/{job_id}"
        "?project=test-project"
    )
    found = links(task, ti)
    assert found["Gemini batch job"] == expected_job
    assert found["Batch output"].startswith(prefix + "prediction-model-")  # the job's own folder, once it ran
    # The sensor, waiting for the same job, links to it too.
    sensor, sensor_ti = (
        GeminiBatchJobSensor(task_id="wait", job_name=outcome["job_name"], poll_interval=0.2),
        RecordingTaskInstance(),
    )
    run_to_completion(sensor, context(sensor_ti))
    assert links(sensor, sensor_ti) == found


def test_developer_links_name_the_results_file(emulator, monkeypatch, tmp_path):
    use_developer(monkeypatch, emulator.url)
    monkeypatch.setattr(operators, "XCom", PushedXCom)
    task, ti = operator(write_shard(tmp_path / "shards")), RecordingTaskInstance()
    outcome = run_to_completion(task, context(ti))
    results_file = GeminiBatchHook().get_job(outcome["job_name"]).dest.file_name
    assert results_file.startswith("files/")
    assert links(task, ti) == {
        "Gemini batch job": "https://aistudio.google.com/batches",  # no page per job
        "Batch output": f"https://generativelanguage.googleapis.com/v1beta/{results_file}:download?alt=media",
    }


def shard_of(folder, texts: list[str]):
    """A shard of one text row per entry, as the build step writes it."""
    from gemini_batch.core.batch_requests import RequestSpec, ShardWriter, build_row

    spec = RequestSpec(model=MODEL, prompt="Return the invoice number as JSON.")
    with ShardWriter(folder) as writer:
        for i, text in enumerate(texts):
            writer.add(build_row(f"key-{i:05d}", spec, text=text))
    (manifest,) = writer.manifests
    return manifest


def row_tokens(manifest) -> list[int]:
    from gemini_emulator import responder

    return [
        responder.request_tokens(json.loads(line)["request"], lambda uri: None)
        for line in open(manifest.uri).read().splitlines()
    ]


def jsonl_uploads(server) -> int:
    return sum("upload_id=" in r["query"] for r in requests_made(server, "POST", "/upload/v1beta/files"))


def test_a_quota_held_by_other_jobs_is_waited_for_then_the_run_fails_naming_what_to_set(
    start_emulator, monkeypatch, tmp_path
):
    """Another job of the model holds the quota and never ends: the shard is refused, waits (deferred, no
    second upload), and once quota_wait_hours pass without progress the task fails with the model, the tokens
    wanted and what to set; it does not wait for ever."""
    holder = write_shard(tmp_path / "holder", rows=3)
    limit = sum(row_tokens(holder)) + 10  # the holder fits; nothing more does
    server = start_emulator(time_scale=1, faults={"pending_seconds": 3600, "enqueued_token_limit": limit})
    use_developer(monkeypatch, server.url)
    submit_shard(GeminiBatchHook(), holder, "another-tools-job")
    manifest = write_shard(tmp_path / "shards", rows=3)
    task, ctx = operator(manifest, wait=False, quota_wait_hours=0.5 / 3600), context()
    with pytest.raises(TaskDeferred) as deferred:
        task.execute(ctx)
    assert deferred.value.method_name == "resume"
    time.sleep(0.6)
    with pytest.raises(AirflowFailException) as failed:
        task.resume_execution("resume", {"event": None}, ctx)
    message = str(failed.value)
    assert f"model {MODEL!r}" in message and f"about {manifest.tokens:,} input tokens" in message
    assert "enqueued_token_limit in connection 'gemini_default'" in message and "quota_wait_hours" in message
    assert jsonl_uploads(server) == 2, "the holder's input and the shard's, each once"
    assert len(listed_jobs(server.url)) == 1


def test_a_shard_alone_over_the_quota_is_split_and_a_request_over_it_alone_is_refused(
    start_emulator, monkeypatch, tmp_path
):
    """No other job in flight and the shard refused: it is split; the small row's piece runs, and the big row,
    alone over the quota, is refused with the quota named, after waiting for the small one to end."""
    manifest = shard_of(tmp_path / "shards", ["Invoice Number: INV-1\n", "Invoice Number: INV-2\n" * 400])
    small, _big = row_tokens(manifest)
    server = start_emulator(
        time_scale=1, faults={"pending_seconds": 1, "running_seconds": 1, "enqueued_token_limit": small * 2}
    )
    use_developer(monkeypatch, server.url)
    task, ctx = operator(manifest, wait=False), context()
    submission = None
    while submission is None:  # follow the deferrals as Airflow would: wait, then resume
        try:
            submission = (
                task.execute(ctx)
                if not hasattr(task, "_tried")
                else task.resume_execution("resume", {"event": None}, ctx)
            )
        except TaskDeferred as deferred:
            assert deferred.method_name == "resume"
            time.sleep(0.2)
        task._tried = True
    assert submission["own"] and len(submission["jobs"]) == 1 and submission["pieces_uri"].endswith(".pieces.json")
    pieces = ShardPieces.load(GeminiBatchHook().storage_path(submission["pieces_uri"]))
    assert [(p.rows, p.job_name is not None) for p in pieces.pieces] == [(1, True), (1, False)]
    assert f"about {-(-manifest.tokens // 2):,} input tokens" in pieces.pieces[1].refused
    assert "enqueued-token quota" in pieces.pieces[1].refused and MODEL in pieces.pieces[1].refused
    assert jsonl_uploads(server) == 3, "the shard and its two pieces, each once"

    outcome = run_to_completion(GeminiBatchJobSensor(task_id="wait", job_name=submission, poll_interval=0.2), ctx)
    assert outcome["state"] == "PIECES" and outcome["pieces_uri"] == submission["pieces_uri"]
    assert [(j["job_name"], j["state"]) for j in outcome["piece_jobs"]] == [
        (submission["jobs"][0], "JOB_STATE_SUCCEEDED")
    ]


def test_on_its_own_the_operator_takes_a_plain_jsonl_file_and_the_sensor_a_job_name(
    start_emulator, monkeypatch, tmp_path
):
    """Outside the DAG, like the upstream operators: a batch JSONL file the user wrote, submitted and waited for;
    a second run of the task reattaches to the job instead of paying twice; the sensor waits for a job by name."""
    emulator = start_emulator(time_scale=3600)
    use_developer(monkeypatch, emulator.url)
    rows = [
        {
            "key": f"invoice-{n}",
            "request": {
                "contents": [{"role": "user", "parts": [{"text": f"Return the invoice number INV-{n} as JSON."}]}]
            },
        }
        for n in range(3)
    ]
    requests_file = tmp_path / "requests.jsonl"
    requests_file.write_text("".join(json.dumps(row) + "\n" for row in rows))

    task = GeminiBatchSubmitOperator(task_id="extract", input_file=str(requests_file), model=MODEL, poll_interval=0.2)
    outcome = run_to_completion(task, context())
    assert outcome["state"] == "JOB_STATE_SUCCEEDED"
    answered = [
        json.loads(line)["key"]
        for line in GeminiBatchHook().iter_output_lines(GeminiBatchHook().get_job(outcome["job_name"]))
    ]
    assert sorted(answered) == ["invoice-0", "invoice-1", "invoice-2"]
    again = GeminiBatchSubmitOperator(task_id="extract", input_file=str(requests_file), model=MODEL, wait=False)
    assert again.execute(context())["jobs"] == [outcome["job_name"]] and len(listed_jobs(emulator.url)) == 1

    waited = run_to_completion(
        GeminiBatchJobSensor(task_id="wait", job_name=outcome["job_name"], poll_interval=0.2), context()
    )
    assert waited["state"] == "JOB_STATE_SUCCEEDED" and waited["job_name"] == outcome["job_name"]
    with pytest.raises(ValueError, match="give a shard's manifest_uri or a plain JSONL input_file"):
        GeminiBatchSubmitOperator(task_id="neither", model=MODEL)

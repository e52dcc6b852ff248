"""GeminiBatchJobTrigger polling real emulator processes with the real async
google-genai client. Each trigger runs under ``asyncio.run`` and the test
takes its first event, as the triggerer (or ``airflow dags test``) would;
faults (503 bursts, jobs stuck in PENDING, expiry) come from the emulator."""

from __future__ import annotations

import json
import re
import time

import pytest
from airflow.sdk.module_loading import import_string

from gemini_batch.hooks.gemini import GeminiBatchHook, state_name
from gemini_batch.triggers.gemini import GeminiBatchJobTrigger
from support.emulators import developer_client
from support.service import KEY, MODEL, deadline_in, first_event, submit_shard, use_developer, use_vertex, write_shard


def test_serialize_round_trips_without_secrets(emulator, monkeypatch):
    use_developer(monkeypatch, emulator.url)
    trigger = GeminiBatchJobTrigger(
        job_name="batches/abc", gemini_conn_id="gemini_default", deadline=deadline_in(60), poll_interval=5
    )
    classpath, kwargs = trigger.serialize()
    assert classpath == "gemini_batch.triggers.gemini.GeminiBatchJobTrigger"
    assert sorted(kwargs) == ["deadline", "gemini_conn_id", "job_name", "poll_interval"]
    assert KEY not in json.dumps(kwargs) and emulator.url not in json.dumps(kwargs)
    assert import_string(classpath)(**kwargs).serialize() == (classpath, kwargs)


def test_deadline_needs_a_time_zone():
    with pytest.raises(ValueError, match="time zone"):
        GeminiBatchJobTrigger(job_name="batches/abc", gemini_conn_id="gemini_default", deadline="2030-01-01T00:00:00")


def test_a_restarted_trigger_resumes_the_same_job(start_emulator, monkeypatch, tmp_path, capfd):
    """The triggerer restarts mid-wait: the trigger re-created from serialize() polls the same job to its end."""
    emulator = start_emulator(time_scale=1, faults={"pending_seconds": 2, "running_seconds": 1})
    use_developer(monkeypatch, emulator.url)
    job = submit_shard(GeminiBatchHook(), write_shard(tmp_path / "shards"), "restart")
    trigger = GeminiBatchJobTrigger(
        job_name=job.name, gemini_conn_id="gemini_default", deadline=deadline_in(600), poll_interval=0.2
    )
    with pytest.raises(TimeoutError):
        first_event(trigger, timeout=1)  # the triggerer dies while the job is PENDING
    assert f"Batch job {job.name} is JOB_STATE_PENDING" in capfd.readouterr().out

    classpath, kwargs = trigger.serialize()
    event = first_event(import_string(classpath)(**kwargs))
    assert event.pop("output").startswith("files/")  # the results file, for the "Batch output" link
    assert event == {
        "status": "terminal",
        "job_name": job.name,
        "state": "JOB_STATE_SUCCEEDED",
        "stats": {},
        "error": None,
    }
    client = developer_client(emulator.url)
    assert [j.name for j in client.batches.list()] == [job.name]


def test_transient_errors_are_waited_out(start_emulator, monkeypatch, tmp_path, capfd):
    emulator = start_emulator(time_scale=3600, faults={"http": {"get": {"burst": 3, "codes": [503, 429]}}})
    use_developer(monkeypatch, emulator.url)
    job = submit_shard(GeminiBatchHook(), write_shard(tmp_path / "shards"), "bursts")
    trigger = GeminiBatchJobTrigger(
        job_name=job.name, gemini_conn_id="gemini_default", deadline=deadline_in(600), poll_interval=0.1
    )
    started = time.monotonic()
    event = first_event(trigger)
    assert (event["status"], event["state"]) == ("terminal", "JOB_STATE_SUCCEEDED")
    assert time.monotonic() - started >= 0.1 + 0.2 + 0.4  # backed off exponentially between the failures
    out = capfd.readouterr().out
    assert out.count("failed (transient)") == 3
    assert out.count("the Developer API reports no row counts through the SDK") == 1  # said once, no numbers made up


def test_deadline_ends_a_wait_the_service_never_ends(start_emulator, monkeypatch, tmp_path):
    emulator = start_emulator(time_scale=3600, faults={"stuck_pending_rate": 1, "job_expiry_hours": 1000})
    use_developer(monkeypatch, emulator.url)
    hook = GeminiBatchHook()
    job = submit_shard(hook, write_shard(tmp_path / "shards"), "stuck")
    trigger = GeminiBatchJobTrigger(
        job_name=job.name, gemini_conn_id="gemini_default", deadline=deadline_in(1.5), poll_interval=10
    )
    started = time.monotonic()
    event = first_event(trigger)
    assert event == {"status": "deadline", "job_name": job.name, "state": "JOB_STATE_PENDING", "stats": {}}
    assert time.monotonic() - started < 5  # slept to the deadline, not a whole poll interval past it
    assert state_name(hook.get_job(job.name)) == "JOB_STATE_PENDING"  # cancelling is the task's decision


def test_an_expired_job_is_a_terminal_event(start_emulator, monkeypatch, tmp_path):
    emulator = start_emulator(time_scale=3600, faults={"seed": 1, "job_expire_rate": 1, "job_expiry_hours": 1})
    use_developer(monkeypatch, emulator.url)
    job = submit_shard(GeminiBatchHook(), write_shard(tmp_path / "shards"), "expires")
    event = first_event(
        GeminiBatchJobTrigger(
            job_name=job.name, gemini_conn_id="gemini_default", deadline=deadline_in(600), poll_interval=0.2
        )
    )
    assert (event["status"], event["state"]) == ("terminal", "JOB_STATE_EXPIRED")


def test_persistent_errors_end_the_wait(emulator, monkeypatch):
    use_developer(monkeypatch, emulator.url)
    trigger = GeminiBatchJobTrigger(
        job_name="batches/nosuchjob", gemini_conn_id="gemini_default", deadline=deadline_in(600), poll_interval=0.02
    )
    event = first_event(trigger)
    assert event["status"] == "error" and event["job_name"] == "batches/nosuchjob"
    assert event["error"].startswith("5 polls in a row failed; last: 404")


def test_vertex_job_reports_completion_stats(start_emulator, gcs, gcs_root, monkeypatch):
    emulator = start_emulator(time_scale=3600, gcs_endpoint=gcs.url)
    use_vertex(monkeypatch, emulator.url)
    hook = GeminiBatchHook()
    manifest = write_shard(gcs_root / "triggers" / f"{time.time_ns()}", rows=5)
    dest = manifest.uri.rsplit("/", 1)[0] + "/output/"
    job = hook.create_job(model=MODEL, src=manifest.uri, display_name="vertex-trigger", dest=dest)
    event = first_event(
        GeminiBatchJobTrigger(
            job_name=job.name, gemini_conn_id="gemini_default", deadline=deadline_in(600), poll_interval=0.2
        )
    )
    assert event.pop("output").startswith(dest + "prediction-model-")  # the job's own folder under the prefix
    assert event == {
        "status": "terminal",
        "job_name": job.name,
        "state": "JOB_STATE_SUCCEEDED",
        "stats": {"succeeded": 5, "failed": 0, "incomplete": 0},
        "error": None,
    }


def test_vertex_progress_is_logged_as_the_counts_change(start_emulator, gcs, gcs_root, monkeypatch, capfd):
    """Airflow logs through structlog to stdout, not through logging: caplog sees none of it, capfd does."""
    emulator = start_emulator(
        time_scale=1, gcs_endpoint=gcs.url, faults={"pending_seconds": 0.3, "running_seconds": 0.1, "row_seconds": 0.3}
    )
    use_vertex(monkeypatch, emulator.url)
    manifest = write_shard(gcs_root / "triggers" / f"{time.time_ns()}", rows=5)
    job = GeminiBatchHook().create_job(
        model=MODEL, src=manifest.uri, display_name="vertex-progress", dest=manifest.uri.rsplit("/", 1)[0] + "/output/"
    )
    event = first_event(
        GeminiBatchJobTrigger(
            job_name=job.name, gemini_conn_id="gemini_default", deadline=deadline_in(600), poll_interval=0.05
        )
    )
    assert event["state"] == "JOB_STATE_SUCCEEDED"
    out = capfd.readouterr().out
    lines = re.findall(rf"Batch job {re.escape(job.name)}: (\d+ of 5 rows done \(\d+ succeeded, \d+ failed\))", out)
    assert len(lines) >= 3 and len(set(lines)) == len(lines), lines  # one line per change, none repeated
    done = [int(line.split()[0]) for line in lines]
    assert done == sorted(done) and lines[-1] == "5 of 5 rows done (5 succeeded, 0 failed)"
    assert "no row counts" not in out

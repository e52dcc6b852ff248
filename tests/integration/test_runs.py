"""Run steps outside a DAG run: parameter checks, the budget gate, and the
clean-up that leaves no job billing, against a real emulator."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest

from gemini_batch.core import jsonl, records, results
from gemini_batch.core.batch_requests import ShardManifest
from gemini_batch.core.locations import as_path
from gemini_batch.hooks.gemini import GeminiBatchHook
from gemini_batch.steps import collection, run_settings, runs
from gemini_batch.steps.budget import check_budget
from gemini_batch.steps.build import build_requests
from gemini_batch.steps.clean_up import clean_up
from gemini_batch.steps.collection import collect_results
from gemini_batch.steps.planning import plan_documents
from gemini_batch.steps.publish import publish_results
from gemini_batch.steps.retry import keys_to_retry, prepare_retry
from gemini_batch.steps.staging import stage_documents
from support.dagrun import read_results
from support.service import submit_shard, use_developer, wait_until_ended, write_shard

SAMPLES = Path(__file__).resolve().parents[2] / "include" / "samples"
# Most tests here are about staged uploads: every part but text is staged (inline_max_mb 0) unless a test says.
PARAMS = {
    "source": str(SAMPLES),
    "output": "/tmp/unused",
    "prompt": "Extract.",
    "model": "gemini-2.5-flash-lite",
    "response_schema": {"type": "object"},
    "inline_max_mb": 0,
}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"response_schema": {"type": "objekt"}}, "response_schema is not a valid JSON schema"),
        ({"prompt": "  "}, "prompt is empty"),
        ({"source": ""}, "source: give a local folder or a gs:// prefix"),
        ({"retention": "forever"}, "retention must be one of"),
    ],
)
def test_bad_parameters_name_the_parameter(change, message):
    with pytest.raises(run_settings.RunConfigError, match=message):
        run_settings.RunSettings.from_params({**PARAMS, **change})


def test_relative_locations_are_inside_the_project():
    settings = run_settings.RunSettings.from_params({**PARAMS, "source": "include/samples"})
    assert settings.source.path == str(SAMPLES)


def test_vertex_needs_a_gcs_staging_prefix():
    with pytest.raises(run_settings.RunConfigError, match="staging_prefix"):
        runs.Run.from_params(PARAMS, "manual__1", SimpleNamespace(backend="vertex", gcp_conn_id=None))


def test_budget_gate_states_the_estimate(tmp_path):
    def run(max_cost_usd):
        return runs.Run.from_params({**PARAMS, "output": str(tmp_path), "max_cost_usd": max_cost_usd}, "manual__1")

    summary = records.to_builtins(plan_documents(run(None)))
    check_budget(run(None), summary)
    check_budget(run(100.0), summary)
    with pytest.raises(
        run_settings.RunConfigError, match=r"estimated cost \$0\.0\d+ for 8 requests .* exceeds max_cost_usd"
    ):
        check_budget(run(0.0001), summary)


def staged_samples(tmp_path, run_id: str):
    """The samples planned and staged by a run on the emulator in use: (the run, its staging counts)."""
    source = tmp_path / "source"
    shutil.copytree(SAMPLES, source)
    run = runs.Run.from_params(
        {**PARAMS, "source": str(source), "output": str(tmp_path / "out")}, run_id, GeminiBatchHook()
    )
    plan_documents(run)
    return run, stage_documents(run)


def test_clean_up_cancels_unfinished_jobs_and_deletes_staged_uploads(start_emulator, monkeypatch, tmp_path):
    server = start_emulator(time_scale=3600, faults={"stuck_pending_rate": 1, "job_expiry_hours": 1000})
    use_developer(monkeypatch, server.url)
    run, staging = staged_samples(tmp_path, "manual__cleanup")
    hook = run.hook
    assert staging == {"staged": 7, "failed": 0}  # 8 requests, the text one inline
    stuck = submit_shard(hook, write_shard(as_path(tmp_path / "shards")), "gb-cleanup-test")
    (job_input,) = [f.name for f in hook.get_conn().files.list() if f.name.startswith("files/gbs-")]

    build_requests(run, 0)  # leases the run's 8 keys

    report = clean_up(run, [stuck.name], [job_input])
    assert report == {"cancelled_jobs": 1, "deleted_files": 8, "released_leases": 8}  # 7 staged + the job's input
    assert run.ledger.current_leases() == {}
    assert hook.get_job(stuck.name).state.name in ("JOB_STATE_CANCELLED", "JOB_STATE_CANCELLING")
    assert list(hook.get_conn().files.list()) == []
    # cancelling again finds nothing to cancel and fails nothing
    assert clean_up(run, [stuck.name])["cancelled_jobs"] == 0
    assert json.loads(json.dumps(report)) == report


def test_clean_up_leaves_a_staged_document_another_runs_claim_holds(start_emulator, monkeypatch, tmp_path):
    """Another run took one key over (its claim holds the lease now): its job reads that upload, so it stays."""
    server = start_emulator(time_scale=3600)
    use_developer(monkeypatch, server.url)
    run, _ = staged_samples(tmp_path, "manual__kept")
    build_requests(run, 0)
    ledger = run.ledger
    with run.staging() as staged:
        taken, part = next(iter(staged.parts.items()))
    generation = ledger.current_leases()[taken]
    assert ledger.try_lease(taken, generation + 1, "another-run-r1") == "another-run-r1"

    report = clean_up(run, [])
    assert report == {"cancelled_jobs": 0, "deleted_files": 6, "released_leases": 7}
    assert [f.uri for f in run.hook.get_conn().files.list()] == [part.uri]
    assert ledger.current_leases() == {taken: generation + 1}


def test_retry_restages_an_upload_that_is_gone(start_emulator, monkeypatch, tmp_path):
    """Another run's clean-up (or the 48 h expiry) removed an upload: the retry uploads it again."""
    server = start_emulator(time_scale=3600)
    use_developer(monkeypatch, server.url)
    hook = GeminiBatchHook()
    run = runs.Run.from_params({**PARAMS, "output": str(tmp_path / "out")}, "manual__retry", hook)
    plan_documents(run)
    stage_documents(run)
    with run.staging() as staged:
        key, gone = next(iter(staged.parts.items()))
    name = "files/" + gone.uri.rsplit("/files/", 1)[-1]
    hook.get_conn().files.delete(name=name)
    outcomes = run.folder.outcomes(0)
    outcomes.parent.mkdir(parents=True, exist_ok=True)
    outcomes.write_text(json.dumps(records.to_builtins(results.missing_outcome(key, "no answer: job EXPIRED"))) + "\n")

    assert keys_to_retry(run, 1) == {key}
    assert hook.get_conn().files.get(name=name).state.name == "ACTIVE"
    assert build_requests(run, 1, only={key})  # one shard, with the fresh upload's URI


def test_a_retry_reads_inline_parts_from_the_source_again_and_a_changed_one_fails_alone(
    start_emulator, monkeypatch, tmp_path
):
    """Inline parts are read when a round is built: a retry reads them again, so nothing expires in between;
    one whose file changed since the plan fails with that reason, and its neighbours are answered."""
    server = start_emulator(time_scale=3600)
    use_developer(monkeypatch, server.url)
    hook = GeminiBatchHook()
    source = tmp_path / "source"
    source.mkdir()
    for name in ("invoice-1.pdf", "invoice-2.pdf", "invoice-3.pdf"):
        shutil.copy(SAMPLES / name, source)
    run = runs.Run.from_params(
        {**PARAMS, "source": str(source), "output": str(tmp_path / "out"), "inline_max_mb": 10}, "manual__inline", hook
    )
    planned = records.to_builtins(plan_documents(run))
    assert planned["routes"] == {"inline": 3, "in_place": 0, "staged": 0}
    assert stage_documents(run) == {"staged": 0, "failed": 0}
    (_first,) = build_requests(run, 0)
    first_round = collect_results(run, 0, [])
    assert first_round["failed"] == 3 and first_round["requests"] == 0  # round 0's job never ran: nothing sent

    shutil.copy(SAMPLES / "invoice-1.pdf", source / "invoice-2.pdf")  # changed after the plan
    (manifest_uri,) = prepare_retry(run, 1)
    assert ShardManifest.load(manifest_uri).rows == 2
    src = hook.upload_jsonl(hook.storage_path(ShardManifest.load(manifest_uri).uri), "gbs-inline-retry")
    job = wait_until_ended(hook, hook.create_job(model=PARAMS["model"], src=src, display_name="inline-retry").name)
    retried = collect_results(run, 1, [{"manifest_uri": manifest_uri, "job_name": job.name, "state": job.state.name}])
    publish_results(run, [first_round, retried])

    published, _summary = read_results(tmp_path / "out")
    assert {d: r["status"] for d, r in published.items()} == {
        "invoice-1.pdf": "succeeded",
        "invoice-2.pdf": "failed",
        "invoice-3.pdf": "succeeded",
    }
    assert published["invoice-2.pdf"]["error"].startswith(
        "not requested: invoice-2.pdf changed since the run planned it"
    )
    assert clean_up(run, [job.name], [src])["deleted_files"] == 1  # the retry's input file only: nothing was staged


def test_a_cleared_run_forgets_its_earlier_rounds(tmp_path):
    """Clearing a finished run re-runs its tasks in the same work folder: stale shards and outcomes must go."""
    run = runs.Run.from_params({**PARAMS, "output": str(tmp_path / "out")}, "manual__cleared")
    folder = run.folder
    plan_documents(run)
    first = build_requests(run, 0)  # nothing staged here: only the Markdown document goes inline
    assert len(first) == 1
    stale = folder.outcomes(1)
    stale.parent.mkdir(parents=True, exist_ok=True)
    stale.write_text(json.dumps(records.to_builtins(results.missing_outcome("k", "old"))) + "\n")

    assert build_requests(run, 0, only=set()) == []  # the second try requests nothing
    assert not folder.shards(0).exists() or list(folder.shards(0).iterdir()) == []
    assert prepare_retry(run, 1) == []  # nothing failed: no round 1, and no stale file
    assert not stale.exists()
    assert run.last_round() == 0


@pytest.mark.parametrize("where", ["local", "gcs"])
def test_each_staging_pass_writes_its_own_file_and_later_passes_win(where, tmp_path, gcs_root):
    """A GCS object cannot be appended to: a second pass (a retry's restaging) adds a file, read back after the
    first."""
    source = tmp_path / "source"
    shutil.copytree(SAMPLES, source)
    output = str(tmp_path / "out") if where == "local" else f"gs://test-bucket/passes/{tmp_path.name}"
    run = runs.Run.from_params(
        {
            **PARAMS,
            "source": str(source),
            "output": output,
            "staging_prefix": f"gs://test-bucket/passes-staging/{tmp_path.name}",
        },
        "manual__passes",
        SimpleNamespace(
            backend="vertex", gcp_conn_id=None, check_model=lambda model: None, check_staging_bucket=lambda uri: None
        ),
    )
    plan_documents(run)
    (source / "invoice-2.pdf").rename(tmp_path / "away.pdf")
    assert stage_documents(run) == {"staged": 6, "failed": 1}
    with run.staging() as staging:
        ((key, error),) = staging.failures()
    assert "invoice-2.pdf" in error

    (tmp_path / "away.pdf").rename(source / "invoice-2.pdf")
    assert stage_documents(run, only={key}) == {"staged": 1, "failed": 0}
    assert sorted(p.name for p in run.folder.staged.iterdir()) == ["pass-00000.jsonl", "pass-00001.jsonl"]
    with run.staging() as staging:
        assert len(staging.parts) == 7 and staging.parts[key].uri.endswith(f"/{key}.pdf")
        assert list(staging.failures()) == []  # staged by the later pass: no longer a failure


def test_a_pass_cut_off_by_a_killed_worker_loses_only_its_last_line(tmp_path):
    """A worker killed mid-staging leaves a half-written line: the records before it still count, the retry's
    pass restages the rest, and nothing raises."""
    source = tmp_path / "source"
    shutil.copytree(SAMPLES, source)
    run = runs.Run.from_params({**PARAMS, "source": str(source), "output": str(tmp_path / "out")}, "manual__cut")
    run.folder.staged.mkdir(parents=True)
    whole = (
        json.dumps({"key": "k1", "uri": "files/a", "mime_type": "application/pdf", "expires_at": None}).encode() + b"\n"
    )
    (run.folder.staged / "pass-00000.jsonl").write_bytes(whole + whole.replace(b"k1", b"k2")[:25])
    with run.staging() as staging:
        assert list(staging.parts) == ["k1"]


def finished_round_0(server_url: str, monkeypatch, tmp_path, name: str):
    """The samples planned, staged and built, and round 0's one job run to its end on the emulator."""

    use_developer(monkeypatch, server_url)
    hook = GeminiBatchHook()
    run = runs.Run.from_params(
        {**PARAMS, "source": str(SAMPLES), "output": str(tmp_path / "out")}, f"manual__{name}", hook
    )
    plan_documents(run)
    stage_documents(run)
    (manifest_uri,) = build_requests(run, 0)
    src = hook.upload_jsonl(hook.storage_path(ShardManifest.load(manifest_uri).uri), f"gbs-{name}")
    job = wait_until_ended(hook, hook.create_job(model=PARAMS["model"], src=src, display_name=name).name)
    return run, job, [{"manifest_uri": manifest_uri, "job_name": job.name, "state": job.state.name}]


def test_an_output_file_gone_before_collection_leaves_its_rows_for_the_next_round(
    start_emulator, monkeypatch, tmp_path
):
    """The service deletes a job's output file 48 h after the job; a collection after that (a long outage, a
    paused DAG) must not fail the task over and over: the job's rows become unanswered, with the cause, and the
    next round requests them again."""
    server = start_emulator(time_scale=3600)
    run, job, jobs = finished_round_0(server.url, monkeypatch, tmp_path, "gone")
    run.hook.get_conn().files.delete(name=job.dest.file_name)  # what the service does after 48 h

    counts = collect_results(run, 0, jobs)
    assert counts["keys"] == counts["failed"] == 8 and counts["succeeded"] == 0
    with run.latest_outcomes(0) as (outcomes, _):
        assert {o["error"] for o in outcomes.records()} == {
            f"no answer: job {job.name} ended {job.state.name} but its output file {job.dest.file_name} cannot be "
            "read: 403 PERMISSION_DENIED"
        }
        assert keys_to_retry(run, 1) == set(outcomes.keys())


def test_a_collection_cut_off_and_retried_writes_the_same_outcomes(start_emulator, monkeypatch, tmp_path):
    """A worker killed mid-collect leaves a half-written outcomes file; the task's retry rewrites it whole from the
    job's output (nothing appended twice, nothing lost). The cut is made on the file; the process kill itself is
    exercised on the full stack (tests/test_stack.py) for stage_documents."""
    server = start_emulator(time_scale=3600)
    run, _, jobs = finished_round_0(server.url, monkeypatch, tmp_path, "cut-collect")

    first = collect_results(run, 0, jobs)
    whole = run.folder.outcomes(0).read_bytes()
    run.folder.outcomes(0).write_bytes(whole[: len(whole) // 2])  # the kill
    assert collect_results(run, 0, jobs) == first
    assert run.folder.outcomes(0).read_bytes() == whole
    assert first["keys"] == 8 and len(whole.splitlines()) == 8


def test_outputs_parsed_in_worker_processes_give_the_outcomes_parsed_here(start_emulator, monkeypatch, tmp_path):
    """A large round's outputs are parsed in spawned processes, each writing a job's outcomes to a file of its own:
    the round's outcomes and counts are exactly those of parsing every output in the task's own process, a job
    whose output is gone included (its rows unanswered, with the cause)."""
    server = start_emulator(time_scale=3600)
    use_developer(monkeypatch, server.url)
    hook = GeminiBatchHook()
    run = runs.Run.from_params(
        {**PARAMS, "source": str(SAMPLES), "output": str(tmp_path / "out"), "inline_max_mb": 10, "max_rows_per_job": 2},
        "manual__parallel-collect",
        hook,
    )
    plan_documents(run)
    manifests = build_requests(run, 0)
    assert len(manifests) == 4  # the 8 sample requests, 2 a job
    jobs = []
    for number, manifest_uri in enumerate(manifests):
        src = hook.upload_jsonl(hook.storage_path(ShardManifest.load(manifest_uri).uri), f"gbs-parallel-{number}")
        job = wait_until_ended(hook, hook.create_job(model=PARAMS["model"], src=src, display_name=f"p{number}").name)
        jobs.append({"manifest_uri": manifest_uri, "job_name": job.name, "state": job.state.name})
    hook.get_conn().files.delete(name=hook.get_job(jobs[2]["job_name"]).dest.file_name)

    def collected(after_bytes: int) -> tuple[dict, list[bytes]]:
        monkeypatch.setattr(collection, "PARSE_PROCESSES_AFTER_BYTES", after_bytes)
        counts = collect_results(run, 0, jobs)
        return counts, sorted(run.folder.outcomes(0).read_bytes().splitlines())

    here, in_processes = collected(2**40), collected(0)
    assert in_processes == here
    counts, lines = here
    assert (counts["keys"], counts["failed"], len(lines)) == (8, 2, 8)
    assert sum(b"cannot be read: 403 PERMISSION_DENIED" in line for line in lines) == 2


def test_answers_are_in_the_ledger_once_collected_so_a_failed_publish_loses_nothing(
    start_emulator, monkeypatch, tmp_path
):
    """The output folder cannot take results.jsonl when publish runs (here a folder stands where the file goes):
    publish fails, but every answer the job paid for is already in the ledger, so the next run over the same
    documents sends no request for them; its summary counts them as reused, not as requests."""
    server = start_emulator(time_scale=3600)
    run, _job, jobs = finished_round_0(server.url, monkeypatch, tmp_path, "publish-fails")
    collected = collect_results(run, 0, jobs)
    assert collected["requests"] == 8 and collected["succeeded"] == 8
    (tmp_path / "out" / "results.jsonl").mkdir()
    with pytest.raises(IsADirectoryError):
        publish_results(run, [collected])

    again = runs.Run.from_params(
        {**PARAMS, "source": str(SAMPLES), "output": str(tmp_path / "out-2")}, "manual__after-failed-publish", run.hook
    )
    planned = records.to_builtins(plan_documents(again))
    assert planned["requests"] == 0 and planned["reused_parts"] == planned["parts"], planned
    summary = publish_results(again, [])
    assert summary["succeeded"] == summary["reused"] == planned["documents"] - planned["rejected"]
    assert (summary["requests"], summary["jobs"]) == (0, 0)
    assert (summary["input_tokens"], summary["estimated_cost_usd"]) == (0, 0.0), "nothing was paid for twice"


def test_a_rounds_outcomes_reach_the_ledger_as_written_and_adopted_ones_as_this_runs(tmp_path):
    """Each outcome goes into the ledger as it was written, whether written here or copied in from a worker's files;
    one read from another run's job (``reused``) is recorded as an answer of the ledger's own (the run that paid may
    have died before recording it)."""
    run = runs.Run.from_params({**PARAMS, "output": str(tmp_path / "out"), "state": str(tmp_path / "ledger")}, "r")
    mine = results.RowOutcome("k1", results.OutcomeStatus.SUCCEEDED, {"total": 1.5}, None, "STOP", 10, 5, "m", None)
    adopted = results.RowOutcome(
        "k2", results.OutcomeStatus.SUCCEEDED, {"total": 2}, None, "STOP", 7, 3, "m", None, reused=True
    )
    failed = results.RowOutcome("k3", results.OutcomeStatus.FAILED, None, "MAX_TOKENS", "MAX_TOKENS", 4, 9, "m", "{")
    outcomes, events = str(tmp_path / "outcomes.jsonl"), str(tmp_path / "events.jsonl")
    with (
        jsonl.writer(str(tmp_path / "worker.outcomes")) as worker_outcomes,
        jsonl.writer(str(tmp_path / "worker.events")) as worker_events,
    ):
        results.OutcomeWriter(worker_outcomes, worker_events, "r", "2026-03-01T10:00:00+00:00")(failed)
    with jsonl.writer(outcomes) as outcomes_out, jsonl.writer(events) as events_out:
        write = results.OutcomeWriter(outcomes_out, events_out, "r", "2026-03-01T10:00:00+00:00")
        write(mine)
        write(adopted)
        write.append_files(str(tmp_path / "worker.outcomes"), str(tmp_path / "worker.events"), 1)

    assert Path(outcomes).read_bytes() == b"".join(records.encode(o) + b"\n" for o in (mine, adopted, failed))
    assert run.ledger.append_encoded(events, write.count, writer="r") == 3
    with run.ledger.view() as view:
        assert view.finished("k1") == records.to_builtins(mine)
        assert view.finished("k2") == {**records.to_builtins(adopted), "reused": False}
        assert view.finished("k3") is None

"""The ledger on its own: the fold, compaction, upgrades from the finished-key store, and leases claimed by
racing threads on a local folder and on the GCS emulator (which honours ifGenerationMatch, like GCS)."""

from __future__ import annotations

import concurrent.futures
import datetime as dt

import orjson
import pytest

from gemini_batch.coordination import claims as claims_module
from gemini_batch.coordination import ledger as ledger_module
from gemini_batch.coordination.claims import FROM_LEDGER, JobState, KeyClaimer
from gemini_batch.coordination.ledger import Claim, Ledger, LedgerEvent, ShardJob, claim_id, now_iso
from gemini_batch.core import records
from gemini_batch.core.locations import as_path
from support.ledgers import all_answered, answered, answers, compacted_twice, key, lease_race


def failed(k: str, run: str = "run-a") -> LedgerEvent:
    return LedgerEvent(k, "failed", run, now_iso(), {"key": k, "status": "failed", "error": "boom"})


@pytest.fixture
def ledger(tmp_path) -> Ledger:
    return Ledger(as_path(tmp_path / "ledger"))


def test_an_empty_ledger_knows_nothing(ledger):
    with ledger.view() as view:
        assert view.finished(key(1)) is None and key(1) not in view and view.finished_count() == 0


def test_the_fold_keeps_the_latest_answer_and_ignores_failures(ledger):
    ledger.append([answered(key(1), {"v": 1}), failed(key(2))], writer="run-a")
    ledger.append([answered(key(1), {"v": 2}, run="run-b")], writer="run-b")
    with ledger.view() as view:
        assert view.finished(key(1))["data"] == {"v": 2}
        assert key(2) not in view
        assert view.finished_count() == 1


def test_a_corrupt_line_costs_only_its_key(ledger, caplog):
    ledger.append([answered(key(1), 1), answered(key(2), 2)], writer="run-a")
    segment = next(ledger.events.iterdir())
    whole = segment.read_bytes()
    first = whole.index(orjson.dumps({"key": key(1)})[:-1])  # line 2: the segment's begin line comes first
    segment.write_bytes(whole[: first + 20] + whole[whole.index(b"\n", first) :])
    with ledger.view() as view:
        assert key(1) not in view and view.finished(key(2))["data"] == 2
    assert "skipping" in caplog.text and "line 2" in caplog.text


def test_a_finished_key_store_of_earlier_versions_is_read_and_folded_in(ledger):
    """Upgrades keep what was paid for: the old store's segments (outcome records at the top level)."""
    ledger.folder.mkdir(parents=True)
    old = {
        "key": key(7),
        "status": "succeeded",
        "data": {"total": 7},
        "error": None,
        "finish_reason": "STOP",
        "input_tokens": 1,
        "output_tokens": 1,
        "model_version": "m",
        "raw_text": None,
        "finished_at": "2026-11-01",
    }
    (ledger.folder / "2026-11-01T02_00_00-manual.jsonl").write_bytes(orjson.dumps(old) + b"\n")
    with ledger.view() as view:
        assert view.finished(key(7))["data"] == {"total": 7}
    assert ledger.compact(writer="upgrade", force=True)
    with ledger.view() as view:
        assert view.unfolded == [] and view.finished(key(7))["data"] == {"total": 7}


def test_compaction_folds_segments_into_a_snapshot_and_loses_nothing(ledger, monkeypatch):
    for batch in range(ledger_module.COMPACT_AFTER_SEGMENTS - 1):
        ledger.append([answered(key(batch * 10 + i), batch) for i in range(10)], writer=f"run-{batch}")
    assert ledger.compact(writer="early") is None  # not enough segments yet
    ledger.append([answered(key(999), "last")], writer="run-last")
    snapshot = ledger.compact(writer="now")
    assert snapshot is not None
    ledger.append([answered(key(1000), "after")], writer="run-after")
    with ledger.view() as view:
        assert view.snapshot_name == f"{snapshot}.json"
        assert [p.name for p in view.unfolded] == [
            next(p.name for p in ledger.events.iterdir() if "run-after" in p.name)
        ]
        assert view.finished_count() == (ledger_module.COMPACT_AFTER_SEGMENTS - 1) * 10 + 2
        assert view.finished(key(999))["data"] == "last" and view.finished(key(1000))["data"] == "after"
        assert view.finished(key(13))["data"] == 1
    # Folded segments stay for their grace, and while a kept snapshot does not list them (the one a reader falls
    # back to if the newest is damaged); a compaction after that removes them.
    assert len(list(ledger.events.iterdir())) == ledger_module.COMPACT_AFTER_SEGMENTS + 1
    monkeypatch.setattr(ledger_module, "SEGMENT_GRACE", dt.timedelta(seconds=-60))
    ledger.compact(writer="later", force=True)
    assert [p.name for p in ledger.events.iterdir()] == [p.name for p in view.unfolded], "'now' does not list it"
    ledger.compact(writer="latest", force=True)
    assert [p.name for p in ledger.events.iterdir()] == []
    assert len([p for p in ledger.snapshots.iterdir() if p.name.endswith(".sqlite")]) == ledger_module.SNAPSHOTS_KEPT
    with ledger.view() as view:
        assert view.finished_count() == (ledger_module.COMPACT_AFTER_SEGMENTS - 1) * 10 + 2


def test_two_runs_compacting_at_once_lose_nothing(ledger):
    for batch in range(20):
        ledger.append([answered(key(batch), batch)], writer=f"run-{batch}")
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        list(pool.map(lambda w: ledger.compact(writer=w, force=True), ["one", "two"]))
    ledger.append([answered(key(50), 50)], writer="late")
    with ledger.view() as view:
        assert view.finished_count() == 21 and all(key(b) in view for b in [*range(20), 50])


def test_sixteen_threads_racing_for_a_local_lease_agree_on_one_winner(ledger):
    holders = lease_race(ledger)
    assert len(set(holders)) == 1 and holders[0].startswith("claim-")
    assert ledger.lease_holder(key(42), 0) == holders[0]


def test_a_claims_local_leases_share_one_file_and_leave_no_private_one(ledger, monkeypatch):
    """Within ``leasing`` each lease is a hard link to one private file of the claim's bytes (no new file a key);
    a held lease stays its holder's, a file with too many names (EMLINK) makes way for a new one, and at the end
    only the leases are left, each reading its claim."""
    import errno
    import os

    ledger.prepare_leases()
    assert ledger.try_lease(key(0), 0, "run-b-r0") == "run-b-r0"  # held by another run before
    real_link, links = os.link, []

    def link(source, target):
        links.append(target)
        if len(links) == 3:  # the shared file is full: the next lease needs a new one
            raise OSError(errno.EMLINK, "Too many links", source)
        real_link(source, target)

    monkeypatch.setattr(ledger_module.os, "link", link)
    with ledger.leasing():
        holders = [ledger.try_lease(key(n), 0, "run-a-r0") for n in range(6)]
    assert holders == ["run-b-r0"] + ["run-a-r0"] * 5
    names = sorted(os.listdir(ledger.leases.path))
    assert names == sorted(f"{key(n)}.000000" for n in range(6))  # no private file left
    inodes = {os.stat(os.path.join(ledger.leases.path, f"{key(n)}.000000")).st_ino for n in range(1, 6)}
    assert len(inodes) == 2  # one shared file, and the one made after EMLINK
    assert [ledger.lease_holder(key(n), 0) for n in range(6)] == holders


def claim_for(run: str, round_: int = 0, *, built: bool = False, shards: str = "/nonexistent") -> Claim:
    return Claim(claim_id(run, round_), "gemini_batch_extract", f"manual__{run}", run, round_, shards, built, now_iso())


def claimer(
    ledger: Ledger, me: Claim, *, jobs: dict | None = None, run_states: dict | None = None, named: dict | None = None
) -> KeyClaimer:
    """A claimer whose service holds ``jobs`` (name -> JobState) and ``named`` (display name -> job name)."""
    ledger.write_claim(me)
    jobs = jobs or {}
    run_states = run_states or {}
    return KeyClaimer(
        ledger,
        me,
        job_state=lambda name: jobs[name],
        run_state=lambda dag, run: run_states.get(run),
        expiry=dt.timedelta(hours=24),
        find_job=lambda display, since: (named or {}).get(display),
    )


def test_two_runs_claiming_the_same_keys_at_once_split_them_without_overlap(ledger):
    keys = [key(n) for n in range(300)]
    a, b = claim_for("run-a"), claim_for("run-b")
    states = {"manual__run-a": "running", "manual__run-b": "running"}
    first, second = claimer(ledger, a, run_states=states), claimer(ledger, b, run_states=states)
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        got_a, got_b = pool.map(lambda c: c.claim(keys), [first, second])
    won_by_a, won_by_b = set(got_b.adopted.get(a.claim, [])), set(got_a.adopted.get(b.claim, []))
    assert won_by_a | won_by_b == set(keys) and not won_by_a & won_by_b
    assert (got_a.won, got_b.won) == (len(won_by_a), len(won_by_b))
    assert set(got_a.adopted) <= {b.claim} and set(got_b.adopted) <= {a.claim}


def built_claim(
    ledger: Ledger, tmp_path, run: str, keys: list[str], job: str | None, display_name: str | None = None
) -> Claim:
    """A claim of another run whose one shard requests ``keys`` (as job ``job``, if submitted; being submitted
    as ``display_name`` when only that is given)."""
    from gemini_batch.core.batch_requests import ShardWriter

    shards = as_path(tmp_path / run / "round-0")
    with ShardWriter(shards, prefix="r0-shard") as writer:
        for k in keys:
            writer.add({"key": k, "request": {}})
    holder = claim_for(run, built=True, shards=str(shards.path))
    ledger.write_claim(holder)
    ledger.prepare_leases()
    for k in keys:
        assert ledger.try_lease(k, 0, holder.claim) == holder.claim
    if job or display_name:
        ledger.record_job(holder.claim, "r0-shard-00000", ShardJob(job, now_iso(), display_name))
    return holder


LIVE = JobState("JOB_STATE_RUNNING", False, False, dt.datetime.now(dt.timezone.utc))
SUCCEEDED = JobState("JOB_STATE_SUCCEEDED", True, False, dt.datetime.now(dt.timezone.utc))
FAILED = JobState("JOB_STATE_FAILED", True, True, dt.datetime.now(dt.timezone.utc))
STUCK = JobState("JOB_STATE_PENDING", False, False, dt.datetime.now(dt.timezone.utc) - dt.timedelta(hours=25))


@pytest.mark.parametrize(
    ("job", "run_state", "round_", "adopt"),
    [
        (LIVE, "failed", 0, True),  # its run died mid-wait, its job still runs: wait for that job
        (SUCCEEDED, "failed", 0, True),  # the job answered: read its answers once
        (SUCCEEDED, "failed", 1, False),  # ...and in a retry round, its failures are ours to request
        (FAILED, "running", 0, False),  # a dead job delivers nothing
        (STUCK, "running", 0, False),  # past its deadline
        (None, "running", 0, True),  # not submitted yet by a live run
        (None, "failed", 0, False),  # its run died before submitting
    ],
)
def test_a_lease_held_by_another_run_is_adopted_or_taken_over(ledger, tmp_path, job, run_state, round_, adopt):
    keys = [key(n) for n in range(5)]
    holder = built_claim(ledger, tmp_path, "run-a", keys, "batches/a" if job else None)
    me = claim_for("run-b", round_)
    result = claimer(ledger, me, jobs={"batches/a": job}, run_states={"manual__run-a": run_state}).claim(keys)
    if adopt:
        assert result.adopted == {holder.claim: keys} and result.won == 0
    else:
        assert result.won == len(keys) and not result.adopted
        assert {ledger.lease_holder(k, 1) for k in keys} == {me.claim}
        assert not any(p.name.endswith(".000000") for p in ledger.leases.iterdir()), "the dead generation is removed"


@pytest.mark.parametrize(
    ("found", "round_", "adopt"),
    [
        (SUCCEEDED, 1, False),  # it made the job after all, which answered: the retry round requests its failures
        (LIVE, 1, True),  # ... still running: wait for it
        (None, 1, True),  # no such job yet: its live run may still be creating it
    ],
)
def test_a_submitter_that_died_between_create_and_record_leaves_a_job_found_by_its_name(
    ledger, tmp_path, found, round_, adopt
):
    """Its run still reads as running (a killed `dags test`, a worker lost before the scheduler notices): the
    job is looked up once by the display name it recorded before the create, and recorded for the next reader."""
    keys = [key(n) for n in range(4)]
    holder = built_claim(ledger, tmp_path, "run-a", keys, None, display_name="gemini-batch-run-a-shard-0")
    named = {"gemini-batch-run-a-shard-0": "batches/found"} if found else {}
    result = claimer(
        ledger,
        claim_for("run-b", round_),
        jobs={"batches/found": found},
        run_states={"manual__run-a": "running"},
        named=named,
    ).claim(keys)
    if adopt:
        assert result.adopted == {holder.claim: keys}
    else:
        assert result.won == len(keys) and not result.adopted
    recorded = ledger.shard_job(holder.claim, "r0-shard-00000")
    assert recorded.job_name == ("batches/found" if found else None)
    assert recorded.display_name == "gemini-batch-run-a-shard-0"


def test_claims_and_job_records_are_never_seen_half_written(ledger, tmp_path):
    """A claim is rewritten (built) while other runs read it: each read is the old record or the new one."""
    import threading

    me = claim_for("run-a")
    ledger.write_claim(me)
    stop = threading.Event()

    def rewrite():
        while not stop.is_set():
            ledger.write_claim(me)
            ledger.record_job(me.claim, "s", ShardJob("batches/x", now_iso(), "d"))

    writer = threading.Thread(target=rewrite)
    writer.start()
    try:
        reads = [(ledger.claim(me.claim), ledger.shard_job(me.claim, "s")) for _ in range(2000)]
    finally:
        stop.set()
        writer.join()
    assert all(claim == me for claim, _ in reads), "never unreadable (None) mid-rewrite"
    assert all(job is None or job.job_name == "batches/x" for _, job in reads)
    assert not [p for p in ledger.claims.iterdir() if p.name.startswith(".write-")], "no private files left"


def test_our_own_earlier_round_is_taken_over_and_a_repeated_build_keeps_its_claim(ledger, tmp_path):
    keys = [key(n) for n in range(3)]
    built_claim(ledger, tmp_path, "run-a", keys, "batches/a")
    retry = claim_for("run-a", 1)
    first = claimer(ledger, retry, jobs={"batches/a": SUCCEEDED}).claim(keys)
    again = claimer(ledger, retry, jobs={"batches/a": SUCCEEDED}).claim(keys)
    assert first.won == again.won == len(keys) and not first.adopted and not again.adopted


def test_a_lease_released_while_it_is_read_is_taken_from_the_ledger(ledger, monkeypatch):
    me = claim_for("run-b")
    ledger.prepare_leases()
    (ledger.leases / f"{key(1)}.000000").write_text("run-a-r0")
    monkeypatch.setattr(Ledger, "lease_holder", lambda self, k, g: None)  # released between listing and reading
    assert claimer(ledger, me).claim([key(1)]).adopted == {FROM_LEDGER: [key(1)]}


def test_a_run_unknown_to_this_airflow_counts_as_alive_for_a_day():
    fresh, old = (
        claim_for("x"),
        Claim(
            "x-r0", "d", "r", "x", 0, "/", False, (dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=2)).isoformat()
        ),
    )

    def unknown(dag_id, run_id):
        raise RuntimeError("no such run here")

    assert claims_module.run_alive(fresh, unknown) and not claims_module.run_alive(old, unknown)


def test_a_run_state_from_the_execution_api_is_read_by_its_value():
    """get_dagrun_state answers the Execution API's enum, whose str() is "DagRunState.RUNNING", not "running"."""
    from airflow.sdk.api.datamodels._generated import DagRunState

    claim = claim_for("x")
    assert claims_module.run_alive(claim, lambda dag_id, run_id: DagRunState.RUNNING)
    assert claims_module.run_alive(claim, lambda dag_id, run_id: DagRunState.QUEUED)
    assert not claims_module.run_alive(claim, lambda dag_id, run_id: DagRunState.FAILED)
    assert not claims_module.run_alive(claim, lambda dag_id, run_id: "success")


def test_slots_for_jobs_in_flight_admit_at_most_the_cap_and_free_when_a_job_ends(ledger):
    ended: set[str] = set()
    free = ended.__contains__
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        took = list(pool.map(lambda n: ledger.take_slot(f"claim-{n}/shard", 3, free), range(16)))
    winners = [n for n, ok in enumerate(took) if ok]
    assert len(winners) == 3, "exactly the cap, among 16 racing shards"
    assert ledger.take_slot(f"claim-{winners[0]}/shard", 3, free), "a holder asking again keeps its slot"
    assert not ledger.take_slot("late/shard", 3, free)
    ended.add(f"claim-{winners[1]}/shard")  # its job ended: its slot is free without anyone releasing it
    assert ledger.take_slot("late/shard", 3, free)
    assert not ledger.take_slot("later/shard", 3, free)


def test_slots_admit_jobs_only_while_their_tokens_fit_the_quota(ledger):
    tokens = {"a/s": 600, "b/s": 300, "c/s": 500, "big/s": 5000}
    ended: set[str] = set()

    def take(holder: str) -> bool:
        return ledger.take_slot(
            holder, 10, ended.__contains__, tokens=tokens[holder], token_budget=1000, tokens_of=tokens.__getitem__
        )

    assert take("a/s") and take("b/s"), "600 + 300 fit in 1,000"
    assert not take("c/s"), "900 held: 500 more would not fit, though slots are free"
    ended.add("a/s")
    assert take("c/s"), "the 600 ended: 300 + 500 fit"
    assert not take("big/s")
    ended.update({"b/s", "c/s"})
    assert take("big/s"), (
        "alone in flight, a job over the quota is admitted: the estimate errs high, the service decides"
    )


def test_a_job_record_written_before_display_names_reads_back(ledger):
    """A ledger from the previous release holds ``{"job_name", "at"}`` per shard: an upgrade still adopts it."""
    folder = ledger.claims / "old-claim.jobs"
    folder.mkdir(parents=True)
    (folder / "s.json").write_bytes(orjson.dumps({"job_name": "batches/old", "at": "2026-11-30T00:00:00+00:00"}))
    assert ledger.shard_job("old-claim", "s") == ShardJob("batches/old", "2026-11-30T00:00:00+00:00")


# ---------------------------------------------------------------------- a damaged ledger


def test_a_truncated_snapshot_is_reported_and_the_one_before_it_answers_with_its_segments(ledger, monkeypatch, caplog):
    keys, _, newest = compacted_twice(ledger, monkeypatch)
    snapshot = ledger.snapshots / f"{newest}.sqlite"
    snapshot.write_bytes(snapshot.read_bytes()[:5000])
    assert answers(ledger, keys) == all_answered(keys)
    assert f"{newest}.sqlite" in caplog.text and "damaged" in caplog.text


@pytest.mark.parametrize("kept", [0, 4096], ids=["all-garbage", "garbage-after-its-first-page"])
def test_a_garbage_snapshot_is_reported_and_the_one_before_it_answers_with_its_segments(
    ledger, monkeypatch, caplog, kept
):
    import random

    keys, _, newest = compacted_twice(ledger, monkeypatch)
    snapshot = ledger.snapshots / f"{newest}.sqlite"
    whole = snapshot.read_bytes()
    snapshot.write_bytes(whole[:kept] + random.Random(7).randbytes(len(whole) - kept))
    assert answers(ledger, keys) == all_answered(keys)
    assert f"{newest}.sqlite" in caplog.text and "damaged" in caplog.text


@pytest.mark.parametrize("cut", [0.5, 0], ids=["cut-in-half", "emptied"])
def test_a_cut_manifest_is_reported_and_loses_no_answered_key(ledger, monkeypatch, caplog, cut):
    keys, _, newest = compacted_twice(ledger, monkeypatch)
    before = answers(ledger, keys)
    manifest = ledger.snapshots / f"{newest}.json"
    whole = manifest.read_bytes()
    manifest.write_bytes(whole[: int(len(whole) * cut)])
    assert answers(ledger, keys) == before == all_answered(keys)
    assert f"{newest}.json" in caplog.text and "damaged" in caplog.text


@pytest.mark.parametrize("where", ["mid-line", "at-a-line-end"])
def test_a_torn_segment_loses_only_its_torn_line_and_reports_it(ledger, caplog, where):
    keys = [key(n) for n in range(10)]
    ledger.append([answered(k, n) for n, k in enumerate(keys)], writer="run-a")
    [segment] = ledger.events.iterdir()
    whole = segment.read_bytes()
    last = whole.index(orjson.dumps({"key": keys[9]})[:-1])
    segment.write_bytes(whole[: last + 120] if where == "mid-line" else whole[:last])
    with ledger.view() as view:
        assert [k for k in keys if k in view] == keys[:9]
        assert [view.finished(k)["data"] for k in keys[:9]] == list(range(9))
        assert [d.path.name for d in view.damaged] == [segment.name]
    assert segment.name in caplog.text
    if where == "mid-line":
        assert keys[9] in caplog.text, "the key whose answer is lost is named"
    else:
        assert "end line" in caplog.text, "a cut between lines shows too: the segment's end line is missing"


def test_a_compaction_that_meets_a_damaged_snapshot_writes_a_sound_one_with_every_key(ledger, monkeypatch):
    """Zeroed pages keep a snapshot's size and header: its sha256 finds them when compaction reads it whole, and
    the answers of newer segments the view read already go into the new snapshot too."""
    keys, older, newest = compacted_twice(ledger, monkeypatch)
    ledger.append([answered(key(10), 10)], writer="run-10")
    keys.append(key(10))
    snapshot = ledger.snapshots / f"{newest}.sqlite"
    whole = snapshot.read_bytes()
    snapshot.write_bytes(whole[:4096] + bytes(len(whole) - 4096))
    after = ledger.compact(writer="after", force=True)
    assert [f"{newest}.sqlite"] == [d.path.name for d in ledger.check().damaged]
    monkeypatch.setattr(ledger_module, "SEGMENT_GRACE", dt.timedelta(hours=1))
    for segment in ledger.events.iterdir():
        segment.unlink()  # only the new snapshot can answer now
    (ledger.snapshots / f"{older}.json").unlink()
    with ledger.view() as view:
        assert view.snapshot_name == f"{after}.json" and not view.damaged
    assert answers(ledger, keys) == all_answered(keys)


def test_a_power_loss_right_after_compaction_loses_nothing(ledger, monkeypatch):
    """A file whose content was not flushed to disk before the power failed reads back empty, while renames and
    removals made before it stay made: compaction must flush a snapshot before anything counts on it."""
    import os

    monkeypatch.setattr(ledger_module, "SEGMENT_GRACE", dt.timedelta(seconds=-60))
    keys = [key(n) for n in range(10)]
    for n in range(5):
        ledger.append([answered(keys[n], n)], writer=f"run-{n}")
    ledger.compact(writer="older", force=True)
    for n in range(5, 10):
        ledger.append([answered(keys[n], n)], writer=f"run-{n}")

    def inodes() -> dict[str, int]:
        return {
            os.path.join(d, f): os.stat(os.path.join(d, f)).st_ino
            for d, _, files in os.walk(ledger.folder.path)
            for f in files
        }

    flushed, real_fsync = set(), os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (flushed.add(os.fstat(fd).st_ino), real_fsync(fd))[1])
    before = set(inodes().values())
    ledger.compact(writer="newest", force=True)
    for path, inode in inodes().items():
        if inode not in before and inode not in flushed:
            os.truncate(path, 0)  # the power fails
    assert answers(ledger, keys) == all_answered(keys)


def test_a_compaction_that_dies_before_its_manifest_leaves_a_ledger_that_reads_and_no_debris(ledger, monkeypatch):
    keys, _, _ = compacted_twice(ledger, monkeypatch)
    ledger.append([answered(key(10), 10)], writer="run-10")
    keys.append(key(10))
    real = ledger_module.replace_whole

    def dies_on_manifests(path, *args, **kwargs):
        if path.name.endswith(".json") and path.parent.name == "snapshots":
            raise KeyboardInterrupt("killed")
        return real(path, *args, **kwargs)

    monkeypatch.setattr(ledger_module, "replace_whole", dies_on_manifests)
    with pytest.raises(KeyboardInterrupt):
        ledger.compact(writer="dies", force=True)
    monkeypatch.setattr(ledger_module, "replace_whole", real)
    assert answers(ledger, keys) == all_answered(keys)
    ledger.compact(writer="next", force=True)
    ledger.compact(writer="after", force=True)
    stems = {p.name.rsplit(".", 1)[0] for p in ledger.snapshots.iterdir()}
    assert not [s for s in stems if "dies" in s], "the dead compaction's snapshot is removed with the old ones"
    assert answers(ledger, keys) == all_answered(keys)


def test_a_ledger_written_without_checksums_still_reads_and_its_next_compaction_adds_them(ledger):
    """Upgrades keep what was paid for: a snapshot, manifest and segment in the previous release's format."""
    import sqlite3

    keys = [key(n) for n in range(4)]
    ledger.snapshots.mkdir(parents=True)
    ledger.events.mkdir(parents=True)
    db = sqlite3.connect(ledger.snapshots.path + "/20260101T000000000000Z-abcd1234-old.sqlite")
    db.execute("CREATE TABLE finished (key TEXT PRIMARY KEY, record BLOB) WITHOUT ROWID")
    db.executemany(
        "INSERT INTO finished VALUES (?, ?)",
        [(k, orjson.dumps(answered(k, n).outcome)) for n, k in enumerate(keys[:2])],
    )
    db.commit()
    db.close()
    (ledger.snapshots / "20260101T000000000000Z-abcd1234-old.json").write_bytes(
        orjson.dumps(
            {
                "sqlite": "20260101T000000000000Z-abcd1234-old.sqlite",
                "segments": ["20251231T000000000000Z-x-run.jsonl"],
                "keys": 2,
                "created_at": "2026-01-01T00:00:00+00:00",
            }
        )
    )
    (ledger.events / "20260102T000000000000Z-abcd1234-run.jsonl").write_bytes(
        b"".join(records.encode(answered(k, n + 2)) + b"\n" for n, k in enumerate(keys[2:]))
    )
    assert answers(ledger, keys) == all_answered(keys)
    assert ledger.check().damaged == []
    assert ledger.compact(writer="upgrade") is not None, "the first compaction after an upgrade adds checksums"
    with ledger.view() as view:
        written = orjson.loads((ledger.snapshots / view.snapshot_name).read_bytes())
    assert written["sha256"] and written["checksum"]
    assert answers(ledger, keys) == all_answered(keys)


def gemini_batch_cli(*args: str, env: dict | None = None):
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root / "plugins"), str(root)]), **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "gemini_batch", *args], capture_output=True, text=True, env=env, timeout=120
    )


def test_ledger_check_and_repair_from_the_command_line(ledger, monkeypatch):
    """A person finds every damaged file with its cause, then sets them aside and rebuilds: nothing is deleted,
    every answer still intact is kept, and the one answer lost is named."""
    keys, _, newest = compacted_twice(ledger, monkeypatch)
    ledger.append([answered(key(n), n) for n in range(10, 13)], writer="torn")
    keys += [key(10), key(11)]
    [torn] = [p for p in ledger.events.iterdir() if "torn" in p.name]
    whole = torn.read_bytes()
    torn.write_bytes(whole[: whole.index(orjson.dumps({"key": key(12)})[:-1]) + 100])
    snapshot = ledger.snapshots / f"{newest}.sqlite"
    snapshot.write_bytes(snapshot.read_bytes()[:5000])
    folder = ledger.folder.path

    found = gemini_batch_cli("ledger", "check", folder)
    assert found.returncode == 1, found.stderr
    assert f"{newest}.sqlite" in found.stdout and "bytes" in found.stdout
    assert torn.name in found.stdout and "line" in found.stdout
    assert key(12) in found.stdout, "the lost answer is named"

    repaired = gemini_batch_cli("ledger", "repair", folder)
    assert repaired.returncode == 0, repaired.stdout + repaired.stderr
    assert "damaged" in repaired.stdout and newest in repaired.stdout and torn.name in repaired.stdout
    aside = {p.name for p in (ledger.folder / "damaged").rglob("*") if p.is_file()}
    assert {f"{newest}.sqlite", f"{newest}.json", torn.name} <= aside, "set aside, not deleted"

    again = gemini_batch_cli("ledger", "check", folder)
    assert again.returncode == 0, again.stdout + again.stderr
    assert answers(ledger, keys) == all_answered(keys)


def test_ledger_check_reads_the_dags_default_ledger(tmp_path):
    ledger = Ledger(as_path(tmp_path / "state" / "my_dag"))
    ledger.append([answered(key(1), 1)], writer="run-a")
    done = gemini_batch_cli(
        "ledger", "check", "--dag-id", "my_dag", env={"GEMINI_BATCH_STATE": str(tmp_path / "state")}
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert str(tmp_path / "state" / "my_dag") in done.stdout and "no damage" in done.stdout

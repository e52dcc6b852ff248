"""The emulator's seeded fault plan (``--faults``), driven by the real google-genai
client (sync and ``client.aio``) against real emulator processes. Nothing is mocked.

Covers per-row errors and their batch stats, seed determinism, answer-shape
faults (fences, prose, truncation, SAFETY/RECITATION), missing rows, whole-job
fates (FAILED, EXPIRED with partial output, stuck PENDING), injected HTTP errors
per endpoint, slow state transitions, a restart (SIGTERM and SIGKILL) in the
middle of a job, and the validation of ``--faults`` itself.
"""

from __future__ import annotations

import asyncio
import io
import json
import subprocess
import sys
import time

import httpx
import orjson
import pytest
from google.genai import errors, types

from support.dagrun import ROOT
from support.emulators import developer_client, upload_jsonl, wait_done

MODEL = "gemini-2.5-flash-lite"
FAST = 3600  # an emulated hour per real second

SCHEMA = {
    "type": "object",
    "properties": {
        "invoice_number": {"type": "string"},
        "total": {"type": "number"},
    },
    "required": ["invoice_number", "total"],
}

STATUS_OF = {4: "DEADLINE_EXCEEDED", 9: "FAILED_PRECONDITION", 13: "INTERNAL", 429: "RESOURCE_EXHAUSTED"}
S = types.JobState


# ---------------------------------------------------------------- helpers


def row(key: str, i: int) -> dict:
    """A request whose JSON answer is ``expected(i)``."""
    return {
        "key": key,
        "request": {
            "contents": [
                {
                    "role": "user",
                    "parts": [
                        {"text": "Extract the invoice fields."},
                        {"text": f"Invoice Number: INV-{i}\nTotal: {i}.5"},
                    ],
                }
            ],
            "generationConfig": {"responseMimeType": "application/json", "responseJsonSchema": SCHEMA},
        },
    }


def expected(i: int) -> dict:
    return {"invoice_number": f"INV-{i}", "total": i + 0.5}


def rows_for(n: int, prefix: str = "k") -> list[dict]:
    return [row(f"{prefix}-{i:04d}", i) for i in range(n)]


def jsonl(rows: list[dict]) -> bytes:
    return b"".join(orjson.dumps(r) + b"\n" for r in rows)


def run_batch(client, rows: list[dict], timeout: float = 20.0) -> types.BatchJob:
    job = client.batches.create(model=MODEL, src=upload_jsonl(client, rows).name)
    return wait_done(client, job.name, timeout)


def parse_jsonl(data: bytes) -> list[dict]:
    return [json.loads(line) for line in data.decode().splitlines() if line.strip()]


def output_rows(client, job: types.BatchJob) -> list[dict]:
    assert job.dest is not None and job.dest.file_name, f"{job.name} has no responses file: {job.dest}"
    return parse_jsonl(client.files.download(file=job.dest.file_name))


def raw_batch(url: str, name: str) -> dict:
    """The REST body of a batch (this SDK version drops batchStats and error)."""
    response = httpx.get(f"{url}/v1beta/{name}", headers={"x-goog-api-key": "test-key"}, timeout=10)
    assert response.status_code == 200, response.text
    return response.json()


COUNTERS = ("requestCount", "successfulRequestCount", "failedRequestCount", "pendingRequestCount")


def stats(body: dict) -> dict[str, int]:
    """The four counters, an absent one read as 0: proto3 JSON leaves zero counters out, as the service does."""
    raw = body["metadata"]["batchStats"]
    assert "0" not in raw.values(), f"a zero counter was sent: {raw}"
    return {k: int(raw.get(k, 0)) for k in COUNTERS}


def text_of(response: dict) -> str:
    parts = response["candidates"][0]["content"]["parts"]
    assert len(parts) == 1
    return parts[0]["text"]


def assert_error_shape(exc: errors.APIError, code: int, status: str) -> None:
    assert exc.code == code
    assert exc.status == status
    assert isinstance(exc.message, str) and exc.message
    assert set(exc.details["error"]) == {"code", "message", "status"}
    assert exc.details["error"]["code"] == code and exc.details["error"]["status"] == status


# ---------------------------------------------------------------- per-row faults


def test_row_error_rate_codes_keys_and_batch_stats(start_emulator):
    emulator = start_emulator(
        time_scale=FAST, faults={"seed": 11, "row_error_rate": 0.5, "row_error_codes": [4, 9, 13, 429]}
    )
    client = developer_client(emulator.url)
    rows = rows_for(200)
    job = run_batch(client, rows)
    assert job.state == S.JOB_STATE_SUCCEEDED  # row errors do not fail the job

    out = output_rows(client, job)
    keys = [r["key"] for r in out]
    assert len(keys) == len(set(keys)) == 200, "every input row is answered exactly once"
    assert set(keys) == {r["key"] for r in rows}

    failed = [r for r in out if "error" in r]
    succeeded = [r for r in out if "response" in r]
    assert len(failed) + len(succeeded) == 200
    assert all(("error" in r) != ("response" in r) for r in out), "a row has exactly one of response / error"
    assert 60 <= len(failed) <= 140, f"{len(failed)} of 200 rows failed with row_error_rate 0.5"

    seen_codes = set()
    for r in failed:
        error = r["error"]
        assert set(error) == {"code", "message"}, "a google.rpc.Status has no status string"
        assert error["code"] in STATUS_OF, error
        assert error["message"]
        seen_codes.add(error["code"])
    assert seen_codes == set(STATUS_OF), f"only codes {seen_codes} drawn among ~100 failed rows"

    by_key = {r["key"]: r for r in succeeded}
    for r in rows:
        if r["key"] in by_key:  # the answers that did not fail are the normal ones
            i = int(r["key"].split("-")[1])
            assert json.loads(text_of(by_key[r["key"]]["response"])) == expected(i)

    body = raw_batch(emulator.url, job.name)
    assert body["done"] is True and "error" not in body
    st = stats(body)
    assert st["requestCount"] == 200
    assert st["requestCount"] == st["successfulRequestCount"] + st["failedRequestCount"]
    assert st["failedRequestCount"] == len(failed)
    assert st["successfulRequestCount"] == len(succeeded)
    assert st["pendingRequestCount"] == 0


def test_row_faults_are_deterministic_per_seed(start_emulator):
    """Same seed and input on fresh emulators: the same failed keys; another seed: others.
    Runs the three emulators concurrently through ``client.aio``."""
    rows = rows_for(120)
    data = jsonl(rows)
    plans = [{"seed": 7, "row_error_rate": 0.3}, {"seed": 7, "row_error_rate": 0.3}, {"seed": 8, "row_error_rate": 0.3}]
    servers = [start_emulator(time_scale=FAST, faults=plan) for plan in plans]

    async def one(url: str) -> dict[str, dict]:
        async with developer_client(url).aio as aclient:
            src = await aclient.files.upload(file=io.BytesIO(data), config={"mime_type": "application/jsonl"})
            while src.state != types.FileState.ACTIVE:
                await asyncio.sleep(0.02)
                src = await aclient.files.get(name=src.name)
            job = await aclient.batches.create(model=MODEL, src=src.name)
            deadline = time.monotonic() + 20
            while not (job := await aclient.batches.get(name=job.name)).done:
                assert time.monotonic() < deadline
                await asyncio.sleep(0.03)
            assert job.state == S.JOB_STATE_SUCCEEDED
            out = parse_jsonl(await aclient.files.download(file=job.dest.file_name))
            return {r["key"]: r.get("error") for r in out}

    async def all_three():
        return await asyncio.gather(*(one(s.url) for s in servers))

    first, again, other = asyncio.run(all_three())
    for result in (first, again, other):
        assert set(result) == {r["key"] for r in rows}
    failed = lambda result: {k for k, e in result.items() if e is not None}  # noqa: E731
    assert 12 <= len(failed(first)) <= 60
    assert failed(first) == failed(again)
    assert first == again, "the same seed draws the same code and message for each failed row"
    assert failed(other) != failed(first), "a different seed fails a different set of rows"
    assert 12 <= len(failed(other)) <= 60


def _fenced(text: str, i: int) -> None:
    assert text.startswith("```json\n") and text.endswith("\n```"), text
    with pytest.raises(json.JSONDecodeError):
        json.loads(text)
    assert json.loads(text[len("```json\n") : -len("\n```")]) == expected(i)


def _prose(text: str, i: int) -> None:
    with pytest.raises(json.JSONDecodeError):
        json.loads(text)
    start, end = text.index("{"), text.rindex("}") + 1
    assert text[:start].strip() and text[end:].strip(), f"JSON not embedded in prose: {text!r}"
    assert json.loads(text[start:end]) == expected(i)


def _truncated(text: str, i: int) -> None:
    full = json.dumps(expected(i), separators=(",", ":"))
    assert text and len(text) < len(full) and full.startswith(text), (text, full)
    with pytest.raises(json.JSONDecodeError):
        json.loads(text)


SHAPE_FAULTS = {
    "fenced_rate": ("STOP", _fenced),
    "prose_rate": ("STOP", _prose),
    "truncated_rate": ("MAX_TOKENS", _truncated),
    "safety_rate": ("SAFETY", None),
    "recitation_rate": ("RECITATION", None),
}


@pytest.mark.parametrize("fault", list(SHAPE_FAULTS))
def test_answer_shape_faults(start_emulator, fault):
    finish, check_text = SHAPE_FAULTS[fault]
    emulator = start_emulator(time_scale=FAST, faults={fault: 1})
    client = developer_client(emulator.url)
    rows = rows_for(12)
    job = run_batch(client, rows)
    assert job.state == S.JOB_STATE_SUCCEEDED
    out = {r["key"]: r for r in output_rows(client, job)}
    assert set(out) == {r["key"] for r in rows}
    for key, r in out.items():
        i = int(key.split("-")[1])
        assert "error" not in r, r  # a shaped answer is still a successful row
        candidate = r["response"]["candidates"][0]
        assert candidate["finishReason"] == finish, (fault, candidate)
        if check_text is None:
            texts = [p.get("text") for p in (candidate.get("content") or {}).get("parts", []) if p.get("text")]
            assert texts == [], f"{finish} candidate carries text: {candidate}"
            assert r["response"]["usageMetadata"]["candidatesTokenCount"] == 0
        else:
            check_text(text_of(r["response"]), i)
        # The SDK reads every shape without choking.
        parsed = types.GenerateContentResponse.model_validate(r["response"])
        assert parsed.candidates[0].finish_reason.value == finish
    st = stats(raw_batch(emulator.url, job.name))
    assert st["successfulRequestCount"] == 12 and st["failedRequestCount"] == 0


def test_missing_rows_leave_a_strict_subset_of_keys(start_emulator):
    emulator = start_emulator(time_scale=FAST, faults={"seed": 3, "missing_rate": 0.3})
    client = developer_client(emulator.url)
    rows = rows_for(100)
    job = run_batch(client, rows)
    assert job.state == S.JOB_STATE_SUCCEEDED
    out = output_rows(client, job)
    keys = [r["key"] for r in out]
    assert len(keys) == len(set(keys)), "no key is answered twice"
    input_keys = {r["key"] for r in rows}
    assert set(keys) < input_keys, "output keys are a strict subset of the input keys"
    missing = input_keys - set(keys)
    assert 12 <= len(missing) <= 50, f"{len(missing)} of 100 rows missing with missing_rate 0.3"
    assert all("response" in r for r in out)
    # The surviving rows still answer their own request.
    for r in out:
        assert json.loads(text_of(r["response"])) == expected(int(r["key"].split("-")[1]))
    st = stats(raw_batch(emulator.url, job.name))
    assert st["requestCount"] == 100 == st["successfulRequestCount"] + st["failedRequestCount"]


# ---------------------------------------------------------------- whole-job fates


def test_job_fail_rate_fails_the_job_with_error_and_partial_output(start_emulator):
    emulator = start_emulator(time_scale=FAST, faults={"job_fail_rate": 1, "partial_fraction": 0.5})
    client = developer_client(emulator.url)
    rows = rows_for(20)
    job = run_batch(client, rows)
    assert job.done and job.state == S.JOB_STATE_FAILED
    assert job.end_time is not None and job.create_time <= job.end_time

    body = raw_batch(emulator.url, job.name)
    assert body["done"] is True
    assert body["metadata"]["state"] == "BATCH_STATE_FAILED"
    error = body["error"]
    assert error["code"] == 13 and set(error) == {"code", "message"} and "failed" in error["message"].lower()
    assert "response" not in body, "a failed operation carries an error, not a response"

    out = output_rows(client, job)  # the partial output stays reachable
    assert len(out) == 10
    assert {r["key"] for r in out} < {r["key"] for r in rows}
    assert stats(body)["pendingRequestCount"] == 10


def test_job_expire_rate_expires_without_results(start_emulator):
    """The Developer API keeps nothing of an EXPIRED batch, even the rows it had answered."""
    # Expiry after 1 emulated hour = 1 real second at this scale.
    emulator = start_emulator(
        time_scale=FAST, faults={"job_expire_rate": 1, "job_expiry_hours": 1, "partial_fraction": 0.25}
    )
    client = developer_client(emulator.url)
    rows = rows_for(40)
    created = client.batches.create(model=MODEL, src=upload_jsonl(client, rows).name)
    time.sleep(0.5)
    midway = client.batches.get(name=created.name)
    assert not midway.done and midway.state in (S.JOB_STATE_PENDING, S.JOB_STATE_RUNNING)
    job = wait_done(client, created.name, timeout=10)
    assert job.state == S.JOB_STATE_EXPIRED
    assert (job.end_time - job.create_time).total_seconds() == pytest.approx(1.0, abs=0.5)
    assert job.dest is None or job.dest.file_name is None
    body = raw_batch(emulator.url, job.name)
    assert body["metadata"]["state"] == "BATCH_STATE_EXPIRED"
    assert "output" not in body["metadata"] and "response" not in body
    assert (
        stats(body)["successfulRequestCount"] == 10 and stats(body)["pendingRequestCount"] == 30
    )  # answered, not kept
    assert not any(f.name.startswith("files/batch-") for f in client.files.list()), "no responses file was generated"


def test_stuck_pending_stays_pending_until_it_expires_without_output(start_emulator):
    emulator = start_emulator(time_scale=FAST, faults={"stuck_pending_rate": 1, "job_expiry_hours": 1.5})
    client = developer_client(emulator.url)
    created = client.batches.create(model=MODEL, src=upload_jsonl(client, rows_for(5)).name)
    assert created.state == S.JOB_STATE_PENDING
    states = []
    deadline = time.monotonic() + 10
    while not (job := client.batches.get(name=created.name)).done:
        states.append(job.state)
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert len(states) >= 10 and set(states) == {S.JOB_STATE_PENDING}, "never leaves PENDING before the deadline"
    assert job.state == S.JOB_STATE_EXPIRED
    assert (job.end_time - job.create_time).total_seconds() == pytest.approx(1.5, abs=0.5)
    assert job.dest is None or job.dest.file_name is None
    body = raw_batch(emulator.url, job.name)
    assert "output" not in body["metadata"] and "response" not in body
    assert stats(body) == {
        "requestCount": 5,
        "successfulRequestCount": 0,
        "failedRequestCount": 0,
        "pendingRequestCount": 5,
    }
    assert not any(f.name.startswith("files/batch-") for f in client.files.list()), "no responses file was generated"


# ---------------------------------------------------------------- HTTP faults


def test_http_create_burst_of_429_then_success(start_emulator):
    emulator = start_emulator(time_scale=FAST, faults={"http": {"create": {"burst": 2, "codes": [429]}}})
    client = developer_client(emulator.url)
    src = upload_jsonl(client, rows_for(3)).name
    for _ in range(2):
        with pytest.raises(errors.ClientError) as exc:
            client.batches.create(model=MODEL, src=src)
        assert_error_shape(exc.value, 429, "RESOURCE_EXHAUSTED")
        assert "exhausted" in exc.value.message.lower()
    job = client.batches.create(model=MODEL, src=src)
    assert [j.name for j in client.batches.list()] == [job.name], "refused creates made no job"
    assert wait_done(client, job.name).state == S.JOB_STATE_SUCCEEDED


def test_http_get_burst_of_503_then_success(start_emulator):
    emulator = start_emulator(
        time_scale=FAST, faults={"file_processing_seconds": 0, "http": {"get": {"burst": 2, "codes": [503]}}}
    )
    client = developer_client(emulator.url)
    uploaded = client.files.upload(file=io.BytesIO(jsonl(rows_for(3))), config={"mime_type": "application/jsonl"})
    assert uploaded.state == types.FileState.ACTIVE  # no files.get needed, so the burst is intact
    job = client.batches.create(model=MODEL, src=uploaded.name)
    for _ in range(2):
        with pytest.raises(errors.ServerError) as exc:
            client.batches.get(name=job.name)
        assert_error_shape(exc.value, 503, "UNAVAILABLE")
    assert wait_done(client, job.name).state == S.JOB_STATE_SUCCEEDED


def test_http_upload_burst_then_success(start_emulator):
    emulator = start_emulator(time_scale=FAST, faults={"http": {"upload": {"burst": 1, "codes": [503]}}})
    client = developer_client(emulator.url)
    with pytest.raises(errors.ServerError) as exc:
        client.files.upload(file=io.BytesIO(jsonl(rows_for(2))), config={"mime_type": "application/jsonl"})
    assert_error_shape(exc.value, 503, "UNAVAILABLE")
    assert list(client.files.list()) == [], "a refused upload leaves no file"
    uploaded = upload_jsonl(client, rows_for(2))
    assert [f.name for f in client.files.list()] == [uploaded.name]


def test_http_download_burst_then_success(start_emulator):
    emulator = start_emulator(time_scale=FAST, faults={"http": {"download": {"burst": 2, "codes": [500, 503]}}})
    client = developer_client(emulator.url)
    job = run_batch(client, rows_for(4))
    assert job.state == S.JOB_STATE_SUCCEEDED
    for _ in range(2):
        with pytest.raises(errors.ServerError) as exc:
            client.files.download(file=job.dest.file_name)
        assert exc.value.code in (500, 503)
        assert_error_shape(exc.value, exc.value.code, {500: "INTERNAL", 503: "UNAVAILABLE"}[exc.value.code])
    assert sorted(r["key"] for r in output_rows(client, job)) == [f"k-{i:04d}" for i in range(4)]


def test_http_rate_one_always_fails_only_that_endpoint(start_emulator):
    emulator = start_emulator(time_scale=FAST, faults={"http": {"list": {"rate": 1.0, "codes": [429, 503]}}})
    client = developer_client(emulator.url)
    job = run_batch(client, rows_for(2))  # create and get are unaffected
    assert job.state == S.JOB_STATE_SUCCEEDED
    codes = []
    for _ in range(8):
        with pytest.raises(errors.APIError) as exc:
            client.batches.list()
        kind = errors.ClientError if exc.value.code == 429 else errors.ServerError
        assert isinstance(exc.value, kind)
        assert_error_shape(exc.value, exc.value.code, {429: "RESOURCE_EXHAUSTED", 503: "UNAVAILABLE"}[exc.value.code])
        codes.append(exc.value.code)
    assert set(codes) <= {429, 503}
    assert list(client.files.list())  # the Files API has its own endpoints (file_get, file_list)

    async def via_aio():
        async with client.aio as aclient:
            with pytest.raises(errors.APIError) as exc:
                await aclient.batches.list()
            return exc.value

    assert asyncio.run(via_aio()).code in (429, 503)
    assert client.batches.get(name=job.name).state == S.JOB_STATE_SUCCEEDED


def test_http_fault_pattern_repeats_with_the_seed(start_emulator):
    """A rate of 0.5 fails some calls; a fresh emulator with the same seed fails the same ones."""
    plan = {"seed": 5, "http": {"list": {"rate": 0.5, "codes": [503]}}}

    def pattern() -> list[bool]:
        client = developer_client(start_emulator(time_scale=FAST, faults=plan).url)
        result = []
        for _ in range(30):
            try:
                client.batches.list()
                result.append(True)
            except errors.ServerError as exc:
                assert exc.code == 503
                result.append(False)
        return result

    first = pattern()
    assert 5 <= first.count(False) <= 25
    assert pattern() == first


# ---------------------------------------------------------------- latencies


def test_slow_states_pending_then_running_then_succeeded(start_emulator):
    # 10 emulated seconds per real second: 0.8 s PENDING, then 0.8 s RUNNING.
    emulator = start_emulator(
        time_scale=10, faults={"pending_seconds": 8, "running_seconds": 8, "file_processing_seconds": 0}
    )
    client = developer_client(emulator.url)
    src = client.files.upload(file=io.BytesIO(jsonl(rows_for(5))), config={"mime_type": "application/jsonl"})
    started = time.monotonic()
    job = client.batches.create(model=MODEL, src=src.name)
    timeline: list[tuple[float, types.JobState]] = [(0.0, job.state)]
    while not job.done:
        assert time.monotonic() - started < 10
        time.sleep(0.04)
        job = client.batches.get(name=job.name)
        timeline.append((time.monotonic() - started, job.state))
        if not job.done:
            assert job.end_time is None and job.dest is None
    order = [s for n, (_, s) in enumerate(timeline) if n == 0 or timeline[n - 1][1] != s]
    assert order == [S.JOB_STATE_PENDING, S.JOB_STATE_RUNNING, S.JOB_STATE_SUCCEEDED], order
    first_running = next(t for t, s in timeline if s == S.JOB_STATE_RUNNING)
    first_done = next(t for t, s in timeline if s == S.JOB_STATE_SUCCEEDED)
    assert 0.6 <= first_running <= 1.3, first_running
    assert 1.4 <= first_done <= 2.6, first_done
    assert job.create_time <= job.update_time <= job.end_time
    assert (job.end_time - job.create_time).total_seconds() == pytest.approx(1.6, abs=0.4)
    assert len(output_rows(client, job)) == 5


# ---------------------------------------------------------------- restart


@pytest.mark.parametrize("kill", [False, True], ids=["sigterm", "sigkill"])
def test_restart_mid_job_finishes_every_row_once(start_emulator, tmp_path, kill):
    data_dir = tmp_path / "persisted"
    # 100 emulated s per real s; 5 emulated s per row: 50 rows take ~2.5 s.
    settings = {
        "data_dir": data_dir,
        "time_scale": 100,
        "faults": {"row_seconds": 5, "pending_seconds": 0, "running_seconds": 0},
    }
    first = start_emulator(**settings)
    client = developer_client(first.url)
    rows = rows_for(50)
    uploaded = upload_jsonl(client, rows)
    job = client.batches.create(model=MODEL, src=uploaded.name)
    deadline = time.monotonic() + 10
    while True:
        body = raw_batch(first.url, job.name)
        st = stats(body)
        if body["metadata"]["state"] == "BATCH_STATE_RUNNING" and 5 <= st["pendingRequestCount"] <= 40:
            break  # really mid-job: some rows done, most still to go
        assert time.monotonic() < deadline and not body.get("done"), body
        time.sleep(0.05)
    assert client.batches.get(name=job.name).state == S.JOB_STATE_RUNNING
    first.stop(kill=kill)
    assert first.proc.poll() is not None

    second = start_emulator(**settings)
    client = developer_client(second.url)
    resumed = client.batches.get(name=job.name)
    assert resumed.state == S.JOB_STATE_RUNNING and not resumed.done, "the job was left unfinished by the stop"
    assert uploaded.name in {f.name for f in client.files.list()}, "the uploaded input survives the restart"
    assert client.files.get(name=uploaded.name).size_bytes == uploaded.size_bytes
    assert job.name in {j.name for j in client.batches.list()}
    done = wait_done(client, job.name, timeout=20)
    assert done.name == job.name and done.state == S.JOB_STATE_SUCCEEDED
    out = output_rows(client, done)
    keys = [r["key"] for r in out]
    assert sorted(keys) == sorted(r["key"] for r in rows), "every key answered exactly once"
    assert all(json.loads(text_of(r["response"])) == expected(int(r["key"].split("-")[1])) for r in out)
    st = stats(raw_batch(second.url, job.name))
    assert st == {"requestCount": 50, "successfulRequestCount": 50, "failedRequestCount": 0, "pendingRequestCount": 0}


# ---------------------------------------------------------------- --faults validation


@pytest.mark.parametrize(
    ("faults", "named"),
    [
        ('{"nope": 1}', "nope"),
        ('{"http": {"bogus": {"rate": 1}}}', "bogus"),
        ('{"row_error_rate": 0.5', "invalid JSON"),
        ('{"http": {"create": {"brust": 2}}}', "brust"),  # a typo inside one endpoint's fault
    ],
    ids=["top-level", "endpoint", "bad-json", "http-fault-field"],
)
def test_invalid_faults_are_refused_with_a_usage_error(tmp_path, faults, named):
    from gemini_emulator.testing import free_port

    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "gemini_emulator",
            "--port",
            str(free_port()),
            "--data-dir",
            str(tmp_path / "d"),
            "--faults",
            faults,
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode != 0
    assert named in proc.stderr, proc.stderr
    # A clean argparse error (exit 2, usage line), not a Python traceback.
    assert "Traceback" not in proc.stderr, proc.stderr
    assert proc.returncode == 2 and "error: --faults:" in proc.stderr, proc.stderr


def test_request_latency_delays_every_api_request_but_not_health(start_emulator):
    emulator = start_emulator(time_scale=FAST, faults={"request_latency_ms": 300})
    client = developer_client(emulator.url)
    start = time.perf_counter()
    assert list(client.batches.list()) == []
    assert time.perf_counter() - start >= 0.3
    start = time.perf_counter()
    assert httpx.get(f"{emulator.url}/healthz").status_code == 200
    assert time.perf_counter() - start < 0.3, "readiness checks are not delayed"

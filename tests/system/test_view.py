"""The "Gemini Batch" view (gemini_batch.ui) on the full stack: two small runs of their own on include/samples (one
that succeeds, one whose schema no answer can match, so its documents fail with a raw answer kept), the view's API
watched while their jobs are in flight, then the view in Chromium, signed in, checked against each run's
summary.json, and an anonymous request refused.

Screenshots: docs/screenshots/gemini-batch-view-{overview,run,document,jobs}.png (and artifacts/browser/)."""

from __future__ import annotations

import json
import shutil
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from test_stack_ui import ARTIFACTS, CHROMIUM, CHROMIUM_ARGS, ROOT, sign_in  # the browser test's set-up, beside this

from support.dagrun import read_results
from support.stack import DAG, failure_report, q, wait_run

SCREENSHOTS = ROOT / "docs" / "screenshots"
PREFIX = "/gemini-batch"
NO_MATCH_SCHEMA = {  # the emulator fills a string, never this pattern: every answer fails validation
    "type": "object",
    "properties": {"code": {"type": "string", "pattern": "^NEVER-[0-9]{40}$"}},
    "required": ["code"],
}

pytestmark = pytest.mark.timeout(900)


@pytest.fixture
def page():
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} not found: install Debian's chromium (bin/test does) or set GEMINI_BATCH_CHROMIUM")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        context = browser.new_context(viewport={"width": 1400, "height": 1000})
        page = context.new_page()
        page.set_default_timeout(60_000)
        yield page
        browser.close()


def view_api(stack, path: str, token: str | None = None) -> tuple[int, dict | str]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    request = urllib.request.Request(stack.api_url + PREFIX + path, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(errors="replace")


def save(page_or_frame, name: str, **kwargs) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / name
    page_or_frame.screenshot(path=str(path), **kwargs)
    shutil.copy(path, ARTIFACTS / name)
    return path


def test_the_gemini_batch_view(stack, page, tmp_path):
    samples = ROOT / "include" / "samples"
    good_src, bad_src = tmp_path / "good", tmp_path / "bad"
    shutil.copytree(samples, good_src)
    bad_src.mkdir()
    for name in ("invoice-2.pdf", "invoice-4.md", "corrupt.pdf"):
        shutil.copy(samples / name, bad_src / name)
    stamp = int(time.time())
    runs = {
        f"view-good-{stamp}": {"source": str(good_src), "output": str(tmp_path / "out-good")},
        f"view-bad-{stamp}": {
            "source": str(bad_src),
            "output": str(tmp_path / "out-bad"),
            "response_schema": NO_MATCH_SCHEMA,
            "retry_rounds": 0,
        },
    }
    sign_in(page, stack)
    for run_id, conf in runs.items():
        conf.update(poll_seconds=1, state=str(tmp_path / "ledger"))
        stack.api("POST", f"/dags/{DAG}/dagRuns", {"dag_run_id": run_id, "logical_date": None, "conf": conf})

    # while they run: the jobs in flight, with the service's progress
    token = stack.token()
    seen_jobs: dict[str, dict] = {}
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        status, body = view_api(stack, "/api/jobs", token)
        assert status == 200, body
        for job in body["jobs"]:
            if job["run_id"] in runs and job.get("job_name"):
                if not seen_jobs:  # the first one: the view while it is in flight
                    page.goto(f"{stack.api_url}/plugin/gemini-batch")
                    page.frame_locator("iframe").first.locator("h2").first.wait_for()
                    save(page, "gemini-batch-view-jobs.png")
                seen_jobs[job["job_name"]] = job
        states = {stack.api("GET", f"/dags/{DAG}/dagRuns/{q(r)}")["state"] for r in runs}
        if states <= {"success", "failed"}:
            break
        time.sleep(0.5)
    for run_id in runs:
        state, _, _ = wait_run(stack, run_id)
        assert state == "success", failure_report(stack, run_id)
    assert seen_jobs, "no job of these runs was ever listed in flight"
    assert all(j["progress"] and j["progress"]["state"].startswith("BATCH_STATE_") for j in seen_jobs.values()), (
        seen_jobs
    )
    assert any(j["progress"]["counted"] for j in seen_jobs.values()), seen_jobs  # batchStats, read raw

    summaries = {run_id: read_results(Path(conf["output"]))[1] for run_id, conf in runs.items()}
    good, bad = summaries.values()
    assert good["succeeded"] == 7 and good["rejected"] == 1
    assert bad["failed"] == 2 and bad["rejected"] == 1 and bad["succeeded"] == 0

    # anonymous: refused, JSON and page alike; a forged token too
    for path in ("/api/pipelines", "/api/jobs", "/", f"/api/results?dag_id={DAG}&run_id=x"):
        assert view_api(stack, path)[0] == 401, path
    assert view_api(stack, "/api/pipelines", "forged.token.value")[0] == 403

    # the API: every pipeline DAG (the YAML ones too), the runs as their summary.json says
    status, body = view_api(stack, "/api/pipelines", token)
    assert status == 200, body
    pipelines = {p["dag_id"]: p for p in body["pipelines"]}
    assert DAG in pipelines and {"invoices_nightly", "contracts_weekly"} <= set(pipelines), sorted(pipelines)
    shown = {r["run_id"]: r for r in pipelines[DAG]["runs"]}
    for run_id, summary in summaries.items():
        assert shown[run_id]["summary"] == summary, run_id
        assert shown[run_id]["output"] == runs[run_id]["output"]
    status, body = view_api(stack, f"/api/results?dag_id={DAG}&run_id={q(f'view-bad-{stamp}')}&status=failed", token)
    assert status == 200 and {d["document"] for d in body["documents"]} == {"invoice-2.pdf", "invoice-4.md"}
    status, body = view_api(
        stack, f"/api/document?dag_id={DAG}&run_id={q(f'view-bad-{stamp}')}&name=invoice-4.md", token
    )
    assert status == 200 and next(iter(body["raw_answers"].values()))["raw_text"], body

    # the browser: the view in Airflow's navigation, in its iframe
    page.goto(f"{stack.api_url}/plugin/gemini-batch")
    frame = page.frame_locator("iframe").first
    section = frame.locator(f'section[data-dag-id="{DAG}"]')
    section.wait_for()
    for run_id, summary in summaries.items():
        row = section.locator(f'tr[data-run-id="{run_id}"]')
        for name in ("documents", "succeeded", "failed", "rejected", "requests"):
            assert row.locator(f'td[data-field="{name}"]').inner_text() == f"{summary[name]:,}", (run_id, name)
        cost = row.locator('td[data-field="estimated_cost_usd"]').inner_text()
        assert float(cost.lstrip("$").replace(",", "")) == pytest.approx(summary["estimated_cost_usd"], rel=1e-6)
    assert section.locator("svg rect.bar.spend").count() >= 1
    assert section.locator("svg rect.bar.failed").count() >= 1
    save(page, "gemini-batch-view-overview.png")

    # one run's results: filter by status, search by name, a failed document's raw answer
    section.locator(f'tr[data-run-id="view-bad-{stamp}"] a').first.click()
    results = frame.locator("table.results")
    results.wait_for()
    assert frame.locator('b[data-field="failed"]').inner_text() == str(bad["failed"])
    assert frame.locator("tr.result").count() == bad["documents"]
    frame.get_by_label("Status").select_option("failed")
    frame.get_by_role("button", name="Filter").click()
    frame.locator('tr.result[data-status="rejected"]').wait_for(state="detached")  # the filtered page is in
    assert frame.locator("tr.result").count() == bad["failed"]
    frame.get_by_label("Search").fill("INVOICE-4")
    frame.get_by_role("button", name="Filter").click()
    frame.get_by_role("link", name="invoice-2.pdf").wait_for(state="detached")
    assert [t.strip() for t in frame.locator("tr.result td:first-child").all_inner_texts()] == ["invoice-4.md"]
    save(page, "gemini-batch-view-run.png")
    frame.get_by_role("link", name="invoice-4.md").click()
    frame.locator("pre.raw").first.wait_for()
    assert frame.locator(".doc-error").inner_text() == body["document"]["error"]
    save(page, "gemini-batch-view-document.png")

    # and without the session: the iframe's page itself is refused
    anonymous = page.context.browser.new_context()
    try:
        response = anonymous.new_page().goto(f"{stack.api_url}{PREFIX}/")
        assert response is not None and response.status == 401
    finally:
        anonymous.close()
    print(f"[view] jobs seen in flight: {json.dumps(list(seen_jobs.values()))[:2000]}")

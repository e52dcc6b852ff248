"""The "Gemini Batch" view (gemini_batch.ui): its pure pieces (run rows, spend per day, the results browser's pages
read from a byte cursor, raw answers of failed parts, the SVG charts) and its FastAPI app through a TestClient.

The app runs behind Airflow's own ``get_user`` with real JWTs signed by Airflow's token signer. The auth manager is
a stub (SimpleAuthManager's tokens and users, with per-user DAG access, which SimpleAuthManager's roles cannot
express), installed as the API server's auth manager; only the revoked-token lookup (a DB query) is stubbed.
The metadata queries (gemini_batch.ui.metadata) are replaced by fixed answers here; the system tier runs them
against a real stack's database (tests/system/test_view.py: this file's basename differs, as pytest needs).
"""

from __future__ import annotations

import datetime as dt
import io
import re

import orjson
import pytest

from gemini_batch.core import records
from gemini_batch.core.results import DocumentRecord, DocumentStatus, OutcomeStatus, PartRecord, RowOutcome, Usage
from gemini_batch.hooks.progress import developer_progress
from gemini_batch.steps.run_settings import run_slug
from gemini_batch.ui import charts, data, pages

UTC = dt.timezone.utc
T0 = dt.datetime(2026, 11, 1, 2, 0, tzinfo=UTC)


def record(name: str, status: str = "succeeded", **fields) -> DocumentRecord:
    if status == "succeeded":
        return DocumentRecord(
            name,
            DocumentStatus.SUCCEEDED,
            {"invoice_number": f"N-{name}", "total": 1.5},
            parts=(PartRecord(f"k-{name}", None, OutcomeStatus.SUCCEEDED, "STOP", None, False),),
            usage=Usage(100, 20),
            **fields,
        )
    if status == "failed":
        return DocumentRecord(
            name,
            DocumentStatus.FAILED,
            None,
            "answer is not JSON",
            parts=(PartRecord(f"k-{name}", (1, 2), OutcomeStatus.FAILED, "MAX_TOKENS", "answer is not JSON", False),),
        )
    return DocumentRecord(name, DocumentStatus.REJECTED, None, "unsupported file type: Word document (DOCX)")


def results_file(path, records_):
    path.write_bytes(b"".join(records.encode(r) + b"\n" for r in records_))
    return path


# ---------------------------------------------------------------------------------------------------- pure pieces


def test_run_rows_spend_per_day_and_totals():
    rows = [
        data.RunRow(
            "d",
            "r1",
            "success",
            T0,
            T0 + dt.timedelta(minutes=3),
            {
                "documents": 8,
                "succeeded": 7,
                "failed": 0,
                "rejected": 1,
                "reused": 0,
                "requests": 8,
                "jobs": 1,
                "input_tokens": 1000,
                "output_tokens": 200,
                "estimated_cost_usd": 0.001,
            },
        ),
        data.RunRow(
            "d",
            "r2",
            "success",
            T0 + dt.timedelta(hours=3),
            T0 + dt.timedelta(hours=4),
            {
                "documents": 2,
                "succeeded": 1,
                "failed": 1,
                "rejected": 0,
                "reused": 1,
                "requests": 1,
                "jobs": 1,
                "input_tokens": 10,
                "output_tokens": 5,
                "estimated_cost_usd": 0.002,
            },
        ),
        data.RunRow(
            "d", "r3", "success", T0 + dt.timedelta(days=1), None, {"documents": 1, "estimated_cost_usd": None}
        ),
        data.RunRow("d", "r4", "running", T0 + dt.timedelta(days=2), None),  # no summary yet
    ]
    assert data.spend_per_day(rows) == [(dt.date(2026, 11, 1), pytest.approx(0.003))]
    total = data.totals(rows)
    assert (total["runs"], total["documents"], total["succeeded"], total["failed"], total["rejected"]) == (
        3,
        11,
        8,
        1,
        1,
    )
    assert total["tokens"] == 1215 and total["cost"] == pytest.approx(0.003)
    assert rows[0].duration == dt.timedelta(minutes=3) and rows[0].tokens == 1200
    assert rows[3].count("documents") is None and rows[3].cost is None and rows[3].duration is not None


def test_schema_fields():
    assert data.schema_fields({"type": "object", "properties": {"b": {}, "a": {}}}) == ["b", "a"]
    assert data.schema_fields(None) == [] and data.schema_fields({"type": "array"}) == []


def test_results_pages_follow_the_cursor_filter_and_stop_early(tmp_path):
    docs = [record(f"doc-{i:03d}.pdf", "failed" if i % 5 == 0 else "succeeded") for i in range(23)]
    path = results_file(tmp_path / "results.jsonl", [*docs, record("x.docx", "rejected")])
    seen, cursor = [], 0
    with path.open("rb") as fh:
        while cursor is not None:
            page = data.results_page(fh, cursor=cursor, limit=10)
            seen += [r.document for r in page.records]
            cursor = page.next_cursor
    assert seen == [d.document for d in docs] + ["x.docx"]

    with path.open("rb") as fh:
        failed = data.results_page(fh, status="failed", limit=100)
        assert [r.document for r in failed.records] == [f"doc-{i:03d}.pdf" for i in range(0, 23, 5)]
        assert failed.next_cursor is None
        hit = data.results_page(fh, search="DOC-01", limit=3)  # case-insensitive substring
        assert [r.document for r in hit.records] == ["doc-010.pdf", "doc-011.pdf", "doc-012.pdf"]
        assert hit.next_cursor is not None
        # the page stops reading after its last record: the lines after the next one are never read
        assert hit.scanned == 14


def test_a_damaged_line_is_counted_not_fatal():
    lines = records.encode(record("a.pdf")) + b"\n{not json\n" + records.encode(record("b.pdf")) + b"\n"
    page = data.results_page(io.BytesIO(lines), limit=10)
    assert [r.document for r in page.records] == ["a.pdf", "b.pdf"] and page.unreadable == 1


def test_find_document_and_its_raw_answers():
    lines = [records.encode(record(n, s)) + b"\n" for n, s in (("a.pdf", "succeeded"), ("b.pdf", "failed"))]
    found = data.find_document(lines, "b.pdf")
    assert found is not None and found.status == "failed" and found.parts[0].finish_reason == "MAX_TOKENS"
    assert data.find_document(lines, "nope.pdf") is None

    def outcome(key, status, raw):
        return records.encode(RowOutcome(key, status, None, "bad", "MAX_TOKENS", 1, 1, "m", raw)) + b"\n"

    rounds = [
        [outcome("k-b.pdf", OutcomeStatus.FAILED, '{"invoice_num'), outcome("k-a.pdf", OutcomeStatus.FAILED, "x")],
        [outcome("k-b.pdf", OutcomeStatus.FAILED, "second try, cut off")],
    ]
    raw = data.raw_answers(rounds, ["k-b.pdf"])
    assert raw == {
        "k-b.pdf": {
            "round": 1,
            "status": "failed",
            "finish_reason": "MAX_TOKENS",
            "error": "bad",
            "raw_text": "second try, cut off",
        }
    }


def test_charts_are_plain_escaped_svg():
    svg = charts.spend_chart([(dt.date(2026, 11, 1), 0.25), (dt.date(2026, 11, 2), 1.0)])
    assert svg.startswith("<svg") and "<script" not in svg and svg.count('class="bar spend"') == 2
    assert 'data-cost="1.000000"' in svg
    svg = charts.status_chart([("<run>", {"succeeded": 7, "rejected": 1})])
    assert "&lt;run&gt;" in svg and "<run>" not in svg
    assert 'data-status="succeeded" data-count="7"' in svg and 'data-status="rejected" data-count="1"' in svg
    assert "No priced runs" in charts.spend_chart([])
    assert "3 of 10 rows done" in charts.progress_bar(2, 1, 10)


def test_developer_progress_reads_batch_stats_as_the_service_writes_them():
    answer = {
        "name": "batches/abc",
        "metadata": {
            "name": "batches/abc",
            "state": "BATCH_STATE_RUNNING",
            "batchStats": {"requestCount": "10", "successfulRequestCount": "6", "pendingRequestCount": "4"},
        },
    }  # proto3 JSON: int64 as strings, zero counts (failed) left out
    progress = developer_progress(answer)
    assert (progress["total"], progress["succeeded"], progress["failed"], progress["pending"]) == (10, 6, 0, 4)
    assert progress["state"] == "BATCH_STATE_RUNNING" and progress["counted"]
    assert developer_progress({"name": "batches/q", "metadata": {"state": "BATCH_STATE_PENDING"}})["counted"] is False


def test_pages_escape_what_they_show():
    links = pages.Links("/gemini-batch", "")
    row = data.RunRow("d", "manual__<x>", "success", T0, T0, {"documents": 1, "succeeded": 1}, output="/o")
    html = pages.runs_table([row], links)
    assert "manual__&lt;x&gt;" in html and "<x>" not in html
    assert 'href="/dags/d/runs/manual__%3Cx%3E"' in html and 'target="_top"' in html
    evil = record("<img src=x onerror=alert(1)>.txt", "failed")
    html = pages.run_page(row, data.ResultsPage([evil]), [], links, status=None, search=None, cursor=0)
    assert "<img" not in html


# ------------------------------------------------------------------------------------------------- the FastAPI app


@pytest.fixture
def view(monkeypatch, tmp_path):
    """The app with a stub auth manager: alice may read DAG ``pipeline_a`` only, bob both pipelines."""
    monkeypatch.setenv("AIRFLOW__API_AUTH__JWT_SECRET", "test-secret-for-the-view-" + "0123456789abcdef" * 4)
    from airflow.api_fastapi import app as api_app
    from airflow.api_fastapi.auth.managers.simple.simple_auth_manager import SimpleAuthManager
    from airflow.api_fastapi.auth.managers.simple.user import SimpleAuthManagerUser
    from airflow.api_fastapi.common.db.common import _get_session
    from airflow.models.revoked_token import RevokedToken
    from fastapi.testclient import TestClient

    from gemini_batch.ui import app as view_app
    from gemini_batch.ui import metadata

    readable = {"alice": {"pipeline_a", "other_dag"}, "bob": {"pipeline_a", "pipeline_b", "other_dag"}}

    class StubAuthManager(SimpleAuthManager):
        def is_authorized_dag(self, *, method, user, access_entity=None, details=None):
            return method == "GET" and details is not None and details.id in readable.get(user.username, set())

        def get_authorized_dag_ids(self, *, user, method="GET", session=None):
            return set(readable.get(user.username, set())) if method == "GET" else set()

    manager = StubAuthManager()
    monkeypatch.setattr(api_app._AuthManagerState, "instance", manager)
    monkeypatch.setattr(RevokedToken, "is_revoked", classmethod(lambda cls, jti: False))

    output = tmp_path / "out"
    output.mkdir()
    results_file(output / "results.jsonl", [record("a.pdf"), record("b.pdf", "failed"), record("c.docx", "rejected")])
    work = output / "_work" / run_slug("run_a") / "round-0"
    work.mkdir(parents=True)
    (work / "outcomes.jsonl").write_bytes(
        records.encode(RowOutcome("k-b.pdf", OutcomeStatus.FAILED, None, "x", "MAX_TOKENS", 5, 9, "m", '{"tot')) + b"\n"
    )
    summary = {
        "documents": 3,
        "succeeded": 1,
        "failed": 1,
        "rejected": 1,
        "reused": 0,
        "requests": 2,
        "jobs": 1,
        "retry_rounds": 0,
        "input_tokens": 105,
        "output_tokens": 29,
        "estimated_cost_usd": 0.0000123,
    }
    runs = {
        ("pipeline_a", "run_a"): data.RunRow(
            "pipeline_a", "run_a", "success", T0, T0 + dt.timedelta(minutes=2), summary, str(output)
        ),
        ("pipeline_b", "run_b"): data.RunRow("pipeline_b", "run_b", "success", T0, T0, summary, str(output)),
    }
    monkeypatch.setattr(metadata, "pipeline_dag_ids", lambda session: ["pipeline_a", "pipeline_b"])
    monkeypatch.setattr(
        metadata, "runs", lambda session, dag_ids, **kw: [r for k, r in runs.items() if k[0] in set(dag_ids)]
    )
    monkeypatch.setattr(
        metadata,
        "run",
        lambda session, dag_id, run_id: (
            (runs[(dag_id, run_id)], {"response_schema": {"properties": {"total": {}}}})
            if (dag_id, run_id) in runs
            else None
        ),
    )
    monkeypatch.setattr(
        metadata,
        "jobs_in_flight",
        lambda session, dag_ids: [
            {"dag_id": d, "run_id": "run_x", "task_id": "jobs.wait", "map_index": 0, "job_name": None} for d in dag_ids
        ],
    )
    app = view_app.create_app()
    app.dependency_overrides[_get_session] = lambda: None
    client = TestClient(app, root_path="/gemini-batch")

    def token(username):
        return manager.generate_jwt(SimpleAuthManagerUser(username=username, role="viewer"))

    client.token = token  # type: ignore[attr-defined]
    return client


def auth(view, username):
    return {"Authorization": f"Bearer {view.token(username)}"}


@pytest.mark.parametrize(
    "path",
    [
        "/",
        "/api/pipelines",
        "/api/jobs",
        "/run?dag_id=pipeline_a&run_id=run_a",
        "/api/results?dag_id=pipeline_a&run_id=run_a",
        "/api/document?dag_id=pipeline_a&run_id=run_a&name=a.pdf",
    ],
)
def test_anonymous_and_forged_requests_are_refused(view, path):
    assert view.get(path).status_code == 401
    assert view.get(path, headers={"Authorization": "Bearer not-a-jwt"}).status_code == 403
    assert view.get(path, cookies={"_token": "forged"}).status_code == 403


def test_a_user_sees_only_the_pipelines_they_may_read(view):
    alice = view.get("/api/pipelines", headers=auth(view, "alice")).json()
    assert [p["dag_id"] for p in alice["pipelines"]] == ["pipeline_a"]  # other_dag is not a pipeline
    assert alice["pipelines"][0]["totals"]["documents"] == 3
    bob = view.get("/api/pipelines", headers=auth(view, "bob")).json()
    assert [p["dag_id"] for p in bob["pipelines"]] == ["pipeline_a", "pipeline_b"]
    assert [j["dag_id"] for j in view.get("/api/jobs", headers=auth(view, "alice")).json()["jobs"]] == ["pipeline_a"]
    html = view.get("/", headers=auth(view, "alice")).text
    assert 'data-dag-id="pipeline_a"' in html and "pipeline_b" not in html
    # another DAG's run: refused, by page and by API
    for path in (
        "/run?dag_id=pipeline_b&run_id=run_b",
        "/api/results?dag_id=pipeline_b&run_id=run_b",
        "/api/document?dag_id=pipeline_b&run_id=run_b&name=a.pdf",
    ):
        assert view.get(path, headers=auth(view, "alice")).status_code == 403, path
        assert view.get(path, headers=auth(view, "bob")).status_code == 200, path
    # a DAG the user may read that is not a pipeline: not found
    assert view.get("/api/results?dag_id=other_dag&run_id=r", headers=auth(view, "alice")).status_code == 404


def test_the_ui_cookie_is_enough(view):
    assert view.get("/", cookies={"_token": view.token("alice")}).status_code == 200


def test_results_browser_filters_searches_and_shows_a_failed_part(view):
    h = auth(view, "alice")
    page = view.get("/api/results?dag_id=pipeline_a&run_id=run_a", headers=h).json()
    assert [d["document"] for d in page["documents"]] == ["a.pdf", "b.pdf", "c.docx"]
    assert page["columns"] == ["total"] and page["next_cursor"] is None
    failed = view.get("/api/results?dag_id=pipeline_a&run_id=run_a&status=failed", headers=h).json()
    assert [d["document"] for d in failed["documents"]] == ["b.pdf"]
    first = view.get("/api/results?dag_id=pipeline_a&run_id=run_a&limit=1", headers=h).json()
    second = view.get(
        f"/api/results?dag_id=pipeline_a&run_id=run_a&limit=1&cursor={first['next_cursor']}", headers=h
    ).json()
    assert [d["document"] for d in second["documents"]] == ["b.pdf"]
    assert view.get("/api/results?dag_id=pipeline_a&run_id=run_a&status=nope", headers=h).status_code == 422

    html = view.get("/run?dag_id=pipeline_a&run_id=run_a&search=C.DOC", headers=h).text
    assert re.findall(r'<tr class="result" data-status="(\w+)"', html) == ["rejected"]
    assert 'href="/dags/pipeline_a/runs/run_a"' in html  # the run in Airflow's UI (the mount's root, stripped)

    doc = view.get("/api/document?dag_id=pipeline_a&run_id=run_a&name=b.pdf", headers=h).json()
    assert doc["document"]["parts"][0]["finish_reason"] == "MAX_TOKENS"
    assert doc["raw_answers"]["k-b.pdf"]["raw_text"] == '{"tot'
    html = view.get("/document?dag_id=pipeline_a&run_id=run_a&name=b.pdf", headers=h).text
    assert "{&quot;tot" in html and "MAX_TOKENS" in html
    assert view.get("/api/document?dag_id=pipeline_a&run_id=run_a&name=zz", headers=h).status_code == 404


def test_the_plugin_registers_the_app_and_the_view():
    from gemini_batch.ui.plugin import GeminiBatchViewPlugin

    plugin = GeminiBatchViewPlugin()
    (app,) = plugin.fastapi_apps
    assert app["url_prefix"] == "/gemini-batch" and not app["url_prefix"].startswith(("/api", "/ui", "/auth"))
    (view,) = plugin.external_views
    assert view["url_route"] == "gemini-batch" and view["destination"] == "nav" and not view["href"].startswith("/")
    assert orjson.dumps(plugin.external_views)  # plain data, as the UI's plugins endpoint serves it

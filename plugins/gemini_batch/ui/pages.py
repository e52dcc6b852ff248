"""The view's HTML, rendered on the server: the pipelines overview (charts, runs, jobs in flight), one run's
results browser and one document. Every value is escaped; links into Airflow's own UI open in the top window
(the view is shown in an iframe). No script: filters are a GET form, pages are links.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from html import escape
from typing import Any
from urllib.parse import quote, urlencode

from gemini_batch.core.results import DocumentRecord
from gemini_batch.ui import charts
from gemini_batch.ui.data import STATUSES, ResultsPage, RunRow, cell, spend_per_day, totals

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:16px 20px;color:#1f2933;font-size:14px}
h1{font-size:20px;margin:0 0 12px}h2{font-size:17px;margin:22px 0 8px}h3{font-size:15px;margin:14px 0 6px}
a{color:#1565c0}table{border-collapse:collapse;margin:6px 0 12px;font-size:13px}
th,td{border-bottom:1px solid #e3e3e3;padding:4px 8px;text-align:left;vertical-align:top}
th{background:#f5f7fa;font-weight:600;white-space:nowrap}td.n,th.n{text-align:right;font-variant-numeric:tabular-nums}
.status{display:inline-block;padding:1px 7px;border-radius:9px;font-size:12px;color:#fff}
.succeeded,.success{background:#2e7d32}.failed{background:#c62828}.rejected{background:#757575}
.running,.queued,.deferred{background:#1565c0}.muted{color:#6b7280}.card{border:1px solid #e3e3e3;border-radius:8px;
padding:10px 14px;margin:10px 0 18px}.totals span{margin-right:18px}.charts{display:flex;flex-wrap:wrap;gap:18px}
.charts>div{flex:1 1 460px}pre{background:#f5f7fa;padding:8px;white-space:pre-wrap;word-break:break-word;
max-height:360px;overflow:auto}form.filters{margin:8px 0}form.filters>*{margin-right:8px}.err{color:#c62828}
"""


def layout(title: str, body: str, crumbs: Sequence[tuple[str, str | None]] = ()) -> str:
    trail = " › ".join(
        f'<a href="{escape(href)}">{escape(text)}</a>' if href else escape(text) for text, href in crumbs
    )
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        f"<title>{escape(title)}</title><style>{CSS}</style></head><body>"
        + (f'<nav class="muted">{trail}</nav>' if trail else "")
        + f"<h1>{escape(title)}</h1>{body}</body></html>"
    )


def _badge(status: str) -> str:
    return f'<span class="status {escape(status)}">{escape(status)}</span>'


def _n(value: int | None) -> str:
    return "" if value is None else f"{value:,}"


def usd(value: float | None) -> str:
    if value is None:
        return ""
    return f"${value:,.6f}".rstrip("0").rstrip(".") if value < 1 else f"${value:,.2f}"


def duration(delta: dt.timedelta | None) -> str:
    if delta is None:
        return ""
    seconds = int(delta.total_seconds())
    hours, rest = divmod(seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    return f"{hours}h {minutes:02d}m" if hours else f"{minutes}m {seconds:02d}s"


def when(moment: dt.datetime | None) -> str:
    return moment.astimezone(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC") if moment else ""


class Links:
    """Where the view's pages and Airflow's own pages are, from the mount's root path."""

    def __init__(self, root: str, airflow_root: str):
        self.root, self.airflow = root.rstrip("/"), airflow_root.rstrip("/")

    def home(self) -> str:
        return f"{self.root}/"

    def run(self, dag_id: str, run_id: str, **query: Any) -> str:
        params = {"dag_id": dag_id, "run_id": run_id, **{k: v for k, v in query.items() if v not in (None, "")}}
        return f"{self.root}/run?{urlencode(params)}"

    def document(self, dag_id: str, run_id: str, name: str) -> str:
        return f"{self.root}/document?{urlencode({'dag_id': dag_id, 'run_id': run_id, 'name': name})}"

    def airflow_run(self, dag_id: str, run_id: str) -> str:
        return f"{self.airflow}/dags/{quote(dag_id, safe='')}/runs/{quote(run_id, safe='')}"

    def airflow_dag(self, dag_id: str) -> str:
        return f"{self.airflow}/dags/{quote(dag_id, safe='')}"


RUN_COLUMNS = (
    "Run",
    "State",
    "Started",
    "Documents",
    "Succeeded",
    "Failed",
    "Rejected",
    "Reused",
    "Requests",
    "Tokens",
    "Cost",
    "Duration",
    "Airflow",
)


def runs_table(rows: Sequence[RunRow], links: Links) -> str:
    head = "".join(
        f'<th class="{"n" if c not in ("Run", "State", "Started", "Airflow") else ""}">{c}</th>' for c in RUN_COLUMNS
    )
    body = []
    for row in rows:
        name = (
            f'<a href="{escape(links.run(row.dag_id, row.run_id))}">{escape(row.run_id)}</a>'
            if row.output
            else escape(row.run_id)
        )
        body.append(
            f'<tr data-run-id="{escape(row.run_id)}"><td>{name}</td><td>{_badge(row.state)}</td>'
            f"<td>{when(row.start)}</td>"
            + "".join(
                f'<td class="n" data-field="{f}">{_n(row.count(f))}</td>'
                for f in ("documents", "succeeded", "failed", "rejected", "reused", "requests")
            )
            + f'<td class="n" data-field="tokens">{_n(row.tokens)}</td>'
            f'<td class="n" data-field="estimated_cost_usd">{usd(row.cost)}</td>'
            f'<td class="n">{duration(row.duration)}</td>'
            f'<td><a target="_top" href="{escape(links.airflow_run(row.dag_id, row.run_id))}">open run</a></td></tr>'
        )
    if not body:
        body.append(f'<tr><td colspan="{len(RUN_COLUMNS)}" class="muted">No runs yet.</td></tr>')
    return f'<table class="runs"><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>'


def jobs_table(jobs: Sequence[Mapping[str, Any]], links: Links) -> str:
    if not jobs:
        return '<p class="muted" id="no-jobs">No batch jobs in flight.</p>'
    rows = []
    for job in jobs:
        progress = job.get("progress") or {}
        if progress.get("counted"):
            bar = charts.progress_bar(progress["succeeded"], progress["failed"], progress["total"])
            done = progress["succeeded"] + progress["failed"]
            text = f"{done:,} of {progress['total']:,} rows ({progress['failed']:,} failed)"
        elif job.get("error"):
            bar, text = "", f'<span class="err">{escape(job["error"])}</span>'
        else:
            bar, text = "", '<span class="muted">no row counts yet</span>'
        task = job["task_id"] + (f"[{job['map_index']}]" if job.get("map_index", -1) >= 0 else "")
        rows.append(
            f'<tr class="job"><td>{escape(job["dag_id"])}</td>'
            f'<td><a target="_top" href="{escape(links.airflow_run(job["dag_id"], job["run_id"]))}">'
            f"{escape(job['run_id'])}</a></td><td>{escape(task)}</td>"
            f"<td><code>{escape(job.get('job_name') or '')}</code></td>"
            f"<td>{escape(str(progress.get('state') or ''))}</td><td>{bar}</td><td>{text}</td></tr>"
        )
    return (
        '<table class="jobs"><thead><tr><th>DAG</th><th>Run</th><th>Task</th><th>Job</th><th>State</th>'
        f"<th>Progress</th><th></th></tr></thead><tbody>{''.join(rows)}</tbody></table>"
    )


def overview(panels: Sequence[tuple[str, Sequence[RunRow]]], jobs: Sequence[Mapping[str, Any]], links: Links) -> str:
    """Every pipeline DAG the user may read: its charts and runs; the jobs in flight above them."""
    parts = ["<h2>Jobs in flight</h2>", jobs_table(jobs, links)]
    if not panels:
        parts.append('<p class="muted">No Gemini Batch pipelines you may read.</p>')
    for dag_id, rows in panels:
        total = totals(rows)
        finished = [r for r in reversed(rows) if r.summary is not None][-40:]
        status_runs = [(r.run_id, {s: r.count(s) or 0 for s in STATUSES}) for r in finished]
        parts.append(
            f'<section class="card pipeline" data-dag-id="{escape(dag_id)}">'
            f'<h2><a target="_top" href="{escape(links.airflow_dag(dag_id))}">{escape(dag_id)}</a></h2>'
            f'<p class="totals"><span>{total["runs"]:,} runs with results</span>'
            f"<span>{total['documents']:,} documents</span><span>{total['succeeded']:,} succeeded</span>"
            f"<span>{total['failed']:,} failed</span><span>{total['rejected']:,} rejected</span>"
            f"<span>{total['tokens']:,} tokens</span><span>{usd(total['cost']) or '$0'} estimated</span></p>"
            f'<div class="charts"><div>{charts.spend_chart(spend_per_day(rows))}</div>'
            f"<div>{charts.status_chart(status_runs)}</div></div>"
            f"<h3>Runs</h3>{runs_table(rows, links)}</section>"
        )
    return "".join(parts)


def _status_select(current: str | None) -> str:
    options = ['<option value="">any status</option>'] + [
        f'<option value="{s}"{" selected" if s == current else ""}>{s}</option>' for s in STATUSES
    ]
    return f'<select name="status" aria-label="Status">{"".join(options)}</select>'


def run_page(
    row: RunRow,
    page: ResultsPage | None,
    columns: Sequence[str],
    links: Links,
    *,
    status: str | None,
    search: str | None,
    cursor: int,
    problem: str | None = None,
) -> str:
    summary = row.summary or {}
    facts = [
        ("State", _badge(row.state)),
        ("Output", f"<code>{escape(row.output or '')}</code>"),
        *((name.capitalize(), f'<b data-field="{name}">{_n(row.count(name))}</b>') for name in STATUSES),
        ("Documents", f'<b data-field="documents">{_n(row.count("documents"))}</b>'),
        ("Reused", _n(row.count("reused"))),
        ("Requests", _n(row.count("requests"))),
        ("Jobs", _n(row.count("jobs"))),
        ("Tokens", _n(row.tokens)),
        ("Cost", f'<b data-field="estimated_cost_usd">{usd(row.cost)}</b>'),
        ("Duration", duration(row.duration)),
        ("Airflow", f'<a target="_top" href="{escape(links.airflow_run(row.dag_id, row.run_id))}">open run</a>'),
    ]
    parts = [
        '<div class="card summary">'
        + " ".join(f'<span style="margin-right:16px">{k}: {v}</span>' for k, v in facts)
        + ("" if summary else '<p class="muted">No summary yet: the run has not published its results.</p>')
        + "</div>",
        f'<form class="filters" method="get" action="{escape(links.root)}/run">'
        f'<input type="hidden" name="dag_id" value="{escape(row.dag_id)}">'
        f'<input type="hidden" name="run_id" value="{escape(row.run_id)}">'
        f"{_status_select(status)}"
        f'<input type="search" name="search" placeholder="document name contains…" aria-label="Search" '
        f'value="{escape(search or "")}"><button type="submit">Filter</button></form>',
    ]
    if problem:
        parts.append(f'<p class="err">{escape(problem)}</p>')
    if page is not None:
        head = "<th>Document</th><th>Status</th>" + "".join(f"<th>{escape(c)}</th>" for c in columns) + "<th>Error</th>"
        body = []
        for record in page.records:
            data = record.data if isinstance(record.data, Mapping) else {}
            values = "".join(f"<td>{escape(cell(data.get(c)))}</td>" for c in columns)
            body.append(
                f'<tr class="result" data-status="{escape(record.status)}">'
                f'<td><a href="{escape(links.document(row.dag_id, row.run_id, record.document))}">'
                f"{escape(record.document)}</a></td><td>{_badge(record.status)}</td>{values}"
                f'<td class="err">{escape(cell(record.error, 160))}</td></tr>'
            )
        if not body:
            body.append(f'<tr><td colspan="{len(columns) + 3}" class="muted">No documents match.</td></tr>')
        parts.append(f'<table class="results"><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>')
        nav = []
        if cursor:
            nav.append(f'<a href="{escape(links.run(row.dag_id, row.run_id, status=status, search=search))}">first</a>')
        if page.next_cursor is not None:
            next_href = links.run(row.dag_id, row.run_id, status=status, search=search, cursor=page.next_cursor)
            nav.append(f'<a class="next" href="{escape(next_href)}">next page</a>')
        if page.unreadable:
            nav.append(f'<span class="err">{page.unreadable} unreadable line(s) skipped</span>')
        parts.append(f"<p>{' · '.join(nav)}</p>")
    return "".join(parts)


def document_page(record: DocumentRecord, raw: Mapping[str, Mapping[str, Any]], data_json: str) -> str:
    parts = [
        f"<p>{_badge(record.status)} {'(reused from an earlier run)' if record.reused else ''} "
        f"input tokens {record.usage.input_tokens:,}, output tokens {record.usage.output_tokens:,}</p>"
    ]
    if record.error:
        parts.append(f'<h2>Error</h2><p class="err doc-error">{escape(record.error)}</p>')
    parts.append("<h2>Data</h2>" + (f"<pre>{escape(data_json)}</pre>" if record.data is not None else "<p>none</p>"))
    rows = []
    for part in record.parts:
        pages = f"{part.pages[0]}–{part.pages[1]}" if part.pages else "whole"
        rows.append(
            f'<tr class="part"><td><code>{escape(part.key[:16])}…</code></td><td>{pages}</td>'
            f"<td>{_badge(part.status)}</td><td>{escape(part.finish_reason or '')}</td>"
            f'<td>{"yes" if part.reused else ""}</td><td class="err">{escape(part.error or "")}</td></tr>'
        )
    parts.append(
        "<h2>Parts</h2><table><thead><tr><th>Key</th><th>Pages</th><th>Status</th><th>Finish reason</th>"
        f"<th>Reused</th><th>Error</th></tr></thead><tbody>{''.join(rows)}</tbody></table>"
        if rows
        else '<h2>Parts</h2><p class="muted">None (the document was rejected before any request).</p>'
    )
    for part in record.parts:
        if part.status == "succeeded":
            continue
        answer = raw.get(part.key)
        parts.append(f"<h3>Raw answer of part {escape(part.key[:16])}…</h3>")
        if answer is None:
            parts.append('<p class="muted">Not in the run\'s work files (deleted with retention "all"?).</p>')
        elif answer.get("raw_text"):
            parts.append(
                f'<p class="muted">round {answer["round"]}, finish reason {escape(str(answer["finish_reason"]))}</p>'
                f'<pre class="raw">{escape(answer["raw_text"])}</pre>'
            )
        else:
            parts.append('<p class="muted">The service gave no text for this part.</p>')
    return "".join(parts)

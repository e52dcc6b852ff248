"""The view's data, without Airflow: a run's row from its summary, spend per day, the results browser's pages
read streaming from results.jsonl, and the raw answers of failed parts from the run's outcome files.

Everything here takes plain values or iterables of lines, so it is tested without a database or a server, and
memory stays flat however large results.jsonl is: a page reads from a byte cursor to its last row and stops.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import IO, Any

import msgspec

from gemini_batch.core.records import RecordError, decode
from gemini_batch.core.results import DocumentRecord

STATUSES = ("succeeded", "failed", "rejected")
SUMMARY_COUNTS = ("documents", "succeeded", "failed", "rejected", "reused", "requests", "jobs")
MAX_PAGE = 500


@dataclass(frozen=True)
class RunRow:
    """One run as the runs table and the charts show it; the counts are None until the run has a summary."""

    dag_id: str
    run_id: str
    state: str
    start: dt.datetime | None
    end: dt.datetime | None
    summary: Mapping[str, Any] | None = None
    output: str | None = None

    def count(self, name: str) -> int | None:
        if self.summary is None:
            return None
        value = self.summary.get(name)
        return value if isinstance(value, int) else None

    @property
    def tokens(self) -> int | None:
        if self.summary is None:
            return None
        return (self.count("input_tokens") or 0) + (self.count("output_tokens") or 0)

    @property
    def cost(self) -> float | None:
        value = (self.summary or {}).get("estimated_cost_usd")
        return float(value) if isinstance(value, (int, float)) else None

    @property
    def duration(self) -> dt.timedelta | None:
        if self.start is None:
            return None
        return (self.end or dt.datetime.now(dt.timezone.utc)) - self.start

    @property
    def day(self) -> dt.date | None:
        when = self.start or self.end
        return when.astimezone(dt.timezone.utc).date() if when else None


def spend_per_day(rows: Iterable[RunRow]) -> list[tuple[dt.date, float]]:
    """Each day's estimated cost (the day a run started, UTC), oldest first; days without a priced run left out."""
    days: dict[dt.date, float] = {}
    for row in rows:
        if row.day is not None and row.cost is not None:
            days[row.day] = days.get(row.day, 0.0) + row.cost
    return sorted(days.items())


def totals(rows: Iterable[RunRow]) -> dict[str, Any]:
    """The summed counts, tokens and cost of the runs that have a summary."""
    out: dict[str, Any] = dict.fromkeys(SUMMARY_COUNTS, 0)
    out.update(runs=0, tokens=0, cost=0.0)
    for row in rows:
        if row.summary is None:
            continue
        out["runs"] += 1
        for name in SUMMARY_COUNTS:
            out[name] += row.count(name) or 0
        out["tokens"] += row.tokens or 0
        out["cost"] += row.cost or 0.0
    return out


def schema_fields(schema: Any) -> list[str]:
    """The top-level fields of a response schema (an object schema's properties), in its order; [] for free JSON."""
    if isinstance(schema, Mapping) and isinstance(schema.get("properties"), Mapping):
        return [str(name) for name in schema["properties"]]
    return []


# ---------------------------------------------------------------------------------------------- the results browser


class _Head(msgspec.Struct, forbid_unknown_fields=False):
    """What filtering needs of a results.jsonl line, decoded without its data."""

    document: str = ""
    status: str = ""


_head = msgspec.json.Decoder(_Head)


@dataclass
class ResultsPage:
    """One page of a run's results: its records, where the next page starts (a byte offset into results.jsonl;
    None at the end), and the lines read and skipped as not records (a damaged line is shown, not fatal)."""

    records: list[DocumentRecord] = field(default_factory=list)
    next_cursor: int | None = None
    scanned: int = 0
    unreadable: int = 0


def matches(head: _Head, status: str | None, search: str | None) -> bool:
    if status and head.status != status:
        return False
    return not search or search.casefold() in head.document.casefold()


def results_page(
    fh: IO[bytes], *, cursor: int = 0, limit: int = 50, status: str | None = None, search: str | None = None
) -> ResultsPage:
    """Up to ``limit`` records of results.jsonl (open, binary, seekable) from byte ``cursor`` on, filtered by status
    and by a case-insensitive substring of the document's name; reading stops after the page's last record."""
    limit = max(1, min(limit, MAX_PAGE))
    page = ResultsPage()
    fh.seek(cursor)
    position = cursor
    for line in fh:
        start, position = position, position + len(line)
        if not line.strip():
            continue
        page.scanned += 1
        try:
            head = _head.decode(line)
        except msgspec.DecodeError:
            page.unreadable += 1
            continue
        if not matches(head, status, search):
            continue
        if len(page.records) == limit:
            page.next_cursor = start
            return page
        try:
            page.records.append(decode(line, DocumentRecord))
        except RecordError:
            page.unreadable += 1
    return page


def find_document(lines: Iterable[bytes], document: str) -> DocumentRecord | None:
    """The record of ``document`` in results.jsonl's lines (streamed; only its line is decoded whole)."""
    for line in lines:
        try:
            head = _head.decode(line)
        except msgspec.DecodeError:
            continue
        if head.document == document:
            try:
                return decode(line, DocumentRecord)
            except RecordError:
                return None
    return None


class _Outcome(msgspec.Struct, forbid_unknown_fields=False):
    """What the document view shows of an outcome (the work file's line), without its data."""

    key: str = ""
    status: str = ""
    error: str | None = None
    finish_reason: str | None = None
    raw_text: str | None = None


_outcome = msgspec.json.Decoder(_Outcome)


def raw_answers(rounds: Sequence[Iterable[bytes]], keys: Iterable[str]) -> dict[str, dict[str, Any]]:
    """For each of ``keys``, its latest outcome over the rounds' outcome files (round 0 first): round, status,
    finish reason, error and the model's raw text (kept for failed answers)."""
    wanted = set(keys)
    found: dict[str, dict[str, Any]] = {}
    if not wanted:
        return found
    for round_, lines in enumerate(rounds):
        for line in lines:
            if not any(key.encode() in line for key in wanted):  # cheap: most lines are other keys
                continue
            try:
                outcome = _outcome.decode(line)
            except msgspec.DecodeError:
                continue
            if outcome.key in wanted:
                found[outcome.key] = {
                    "round": round_,
                    "status": outcome.status,
                    "finish_reason": outcome.finish_reason,
                    "error": outcome.error,
                    "raw_text": outcome.raw_text,
                }
    return found


def cell(value: Any, width: int = 80) -> str:
    """A data value as one short line of a table cell."""
    if value is None:
        return ""
    if isinstance(value, str):
        text = value
    else:
        text = msgspec.json.encode(value).decode()
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"

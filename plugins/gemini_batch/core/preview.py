"""The preview: a few documents answered online before the batch, and what they say the whole run will cost.

Which documents (``sample``): the largest and the smallest of the planned
documents (by their estimated input tokens, then bytes), the rest drawn at
random with a fixed seed, so a retried or repeated preview of the same plan
picks the same documents. Rejected documents and documents without parts are
never picked.

What they say (``project``), from the tokens the service billed for each
sampled part against the estimate ``core.cost`` made of the same part before
anything was sent:

- input tokens scale with the document (pages, bytes), and the estimate
  already follows them. The projection is a ratio estimate: the whole plan's
  estimated input tokens times (the sample's billed input tokens / the
  sample's estimated input tokens). Sampling the largest and the smallest
  keeps that ratio honest across sizes.
- output tokens (answer + thinking) follow the schema, not the document's
  size: the sample's mean billed output tokens per request times the plan's
  requests.
- batch cost: those tokens at the batch price (``PriceTable.cost``).
  ``remaining`` is the same for the requests the batch still sends once the
  preview's answers are in the ledger (the sample's own requests left out):
  what the batch bills.
- the preview itself was billed at the online (standard) price, twice the
  batch one: ``preview_cost_usd``. What the run costs in all (the budget and
  the approval use it) is ``run_cost_usd`` = remaining batch + preview.

A sample of one or two documents is an anecdote, not a measurement; the
projection says how many requests it rests on.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, ClassVar

import msgspec
import orjson

from gemini_batch.core.cost import CostEstimate, PriceTable
from gemini_batch.core.records import Record

SAMPLE_SEED = 27  # the fixed seed of the random picks: the same plan, the same sample
DATA_SHOWN_CHARS = 240  # each document's data in the approval prompt, trimmed
DOCUMENTS_SHOWN = 5


class Candidate(Record, frozen=True):
    """A planned document the preview may pick: its place in the plan and its size."""

    kind: ClassVar[str] = "preview candidate"

    index: int  # its line in the plan
    estimated_tokens: int  # the estimate's input tokens of its parts
    size: int  # bytes


def sample(candidates: Iterable[Candidate], n: int, seed: int = SAMPLE_SEED) -> list[int]:
    """The plan indexes of ``n`` documents: the largest, the smallest, the rest at random (``seed``); in plan order."""
    pool = sorted(candidates, key=lambda c: (c.estimated_tokens, c.size, c.index))
    if n <= 0 or not pool:
        return []
    if n >= len(pool):
        return sorted(c.index for c in pool)
    chosen = [pool.pop()]  # the largest
    if n > 1:
        chosen.append(pool.pop(0))  # the smallest
    chosen += random.Random(seed).sample(pool, n - len(chosen))
    return sorted(c.index for c in chosen)


class SampledPart(Record, frozen=True):
    """One request of the preview: what the estimate said and what the service billed."""

    kind: ClassVar[str] = "preview part"

    key: str
    estimated_input_tokens: int
    input_tokens: int
    output_tokens: int
    requested: bool = True  # among the plan's requests (not answered before the run): the batch would send it
    online: bool = True  # sent online by this preview (False: its answer was already in the ledger, free)


class Projection(Record, frozen=True):
    """The whole run's tokens and batch cost, projected from the sample (see the module docstring)."""

    kind: ClassVar[str] = "preview projection"

    sample_requests: int  # the sampled requests it rests on
    input_ratio: float | None  # billed / estimated input tokens in the sample; None: nothing to compare
    output_tokens_per_request: float | None
    requests: int  # the plan's requests
    input_tokens: int
    output_tokens: int
    batch_cost_usd: float | None  # all the plan's requests at the batch price; None: no price for the model
    remaining_requests: int  # what the batch still sends after the preview
    remaining_input_tokens: int
    remaining_output_tokens: int
    remaining_batch_cost_usd: float | None
    preview_cost_usd: float | None  # what the preview's online calls cost (online price: 1 / batch discount)
    run_cost_usd: float | None  # remaining batch + preview: what the run costs in all
    estimate_usd: float | None  # the plan's estimate (core.cost heuristic), for comparison


def project(parts: Sequence[SampledPart], planned: CostEstimate, prices: PriceTable, model: str) -> Projection:
    """The run projected from the sampled ``parts`` (each key once) and the plan's estimate ``planned`` (its
    requests and estimated tokens). With no usable sample the projection is the estimate itself."""
    unique = list({part.key: part for part in parts}.values())
    measured = [part for part in unique if part.input_tokens or part.output_tokens]  # a failed row bills nothing
    estimated_in = sum(part.estimated_input_tokens for part in measured)
    ratio = sum(part.input_tokens for part in measured) / estimated_in if estimated_in else None
    per_request = sum(part.output_tokens for part in measured) / len(measured) if measured else None

    def tokens(requests: int, estimated_input: int, estimated_output: int) -> tuple[int, int]:
        input_tokens = round(estimated_input * ratio) if ratio is not None else estimated_input
        output = round(requests * per_request) if per_request is not None else estimated_output
        return input_tokens, output

    input_tokens, output_tokens = tokens(planned.requests, planned.input_tokens, planned.output_tokens)
    sent = [part for part in unique if part.requested]  # the plan's requests the preview answered
    remaining_requests = max(0, planned.requests - len(sent))
    share = remaining_requests / planned.requests if planned.requests else 0.0
    remaining_input, remaining_output = tokens(
        remaining_requests,
        max(0, planned.input_tokens - sum(part.estimated_input_tokens for part in sent)),
        round(planned.output_tokens * share),
    )
    online = [part for part in unique if part.online]
    preview_cost = online_cost(prices, model, sum(p.input_tokens for p in online), sum(p.output_tokens for p in online))
    batch = prices.cost(model, input_tokens, output_tokens)
    remaining = prices.cost(model, remaining_input, remaining_output)
    return Projection(
        sample_requests=len(measured),
        input_ratio=None if ratio is None else round(ratio, 4),
        output_tokens_per_request=None if per_request is None else round(per_request, 1),
        requests=planned.requests,
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        batch_cost_usd=_usd(batch),
        remaining_requests=remaining_requests,
        remaining_input_tokens=remaining_input,
        remaining_output_tokens=remaining_output,
        remaining_batch_cost_usd=_usd(remaining),
        preview_cost_usd=_usd(preview_cost),
        run_cost_usd=_usd(None if remaining is None or preview_cost is None else remaining + preview_cost),
        estimate_usd=planned.usd,
    )


def online_cost(prices: PriceTable, model: str, input_tokens: int, output_tokens: int) -> float | None:
    """What ``model`` bills for these tokens answered online: the standard price, the batch one over its discount."""
    batch = prices.cost(model, input_tokens, output_tokens)
    return None if batch is None else batch / prices.batch_discount


def _usd(value: float | None) -> float | None:
    return None if value is None else round(value, 6)


class PreviewDocument(Record, frozen=True):
    """preview.json's line for one previewed document: what it cost to answer."""

    kind: ClassVar[str] = "preview document"

    document: str
    status: str
    parts: int
    input_tokens: int
    output_tokens: int
    online_requests: int  # parts sent online (the others were answered in the ledger already)
    cost_usd: float | None  # at the online price


class PreviewReport(Record, frozen=True):
    """preview.json, and (with ``shown``) what the preview task hands to the budget and the approval."""

    kind: ClassVar[str] = "preview report"

    model: str
    documents: list[PreviewDocument]
    projection: Projection
    shown: list[dict] = msgspec.field(default_factory=list)  # a few documents' data, trimmed, for a person


def shown_records(records: Iterable[Mapping[str, Any]], limit: int = DOCUMENTS_SHOWN) -> list[dict]:
    """A few preview records for a person: document, status, data (JSON, trimmed) or error."""
    shown: list[dict] = []
    for record in records:
        if len(shown) >= limit:
            break
        value = record.get("data") if record.get("status") == "succeeded" else record.get("error")
        text = value if isinstance(value, str) and record.get("status") != "succeeded" else orjson.dumps(value).decode()
        if len(text) > DATA_SHOWN_CHARS:
            text = text[: DATA_SHOWN_CHARS - 1] + "…"
        shown.append({"document": record.get("document"), "status": record.get("status"), "data": text})
    return shown


def describe(report: Mapping[str, Any]) -> str:
    """The preview in a few lines of text (the approval prompt's): each shown document's data, then the run's cost."""
    projection = report["projection"]
    lines = [f"Preview: {len(report['documents'])} document(s) answered online by {report['model']}:"]
    for shown in report.get("shown") or []:
        lines.append(f"- {shown['document']} ({shown['status']}): {shown['data']}")
    lines.append("")
    lines.append(
        f"Projected for the whole run: {money(projection['run_cost_usd'])} = the batch's "
        f"{projection['remaining_requests']:,} remaining requests ({projection['remaining_input_tokens']:,} input + "
        f"{projection['remaining_output_tokens']:,} output tokens) at {money(projection['remaining_batch_cost_usd'])}"
        f" + the preview's {money(projection['preview_cost_usd'])} (online price); the estimate before the preview "
        f"was {money(projection['estimate_usd'])} for {projection['requests']:,} requests."
    )
    return "\n".join(lines)


def money(usd: float | None) -> str:
    return "an unknown cost" if usd is None else f"${usd:.4f}"

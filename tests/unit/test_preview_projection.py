"""The preview's pure parts: which documents it samples, how it projects the run's cost, and what the approval prompt
shows of it (issue 27)."""

from __future__ import annotations

import types

import pytest

from gemini_batch.core import preview
from gemini_batch.core.cost import CostEstimate, load_prices
from gemini_batch.core.preview import Candidate, SampledPart
from gemini_batch.core.settings import BY_NAME
from gemini_batch.operators.approval import approval_body, cost_to_approve, describe_cost
from gemini_batch.steps import budget
from gemini_batch.steps.run_settings import RunConfigError

MODEL = "gemini-2.5-flash-lite"  # 0.10 / 0.40 per million standard, half that in batches


def candidates(*tokens: int) -> list[Candidate]:
    return [Candidate(index, estimated, 1000 + index) for index, estimated in enumerate(tokens)]


def test_the_sample_is_the_largest_the_smallest_and_the_rest_at_random_with_a_fixed_seed():
    pool = candidates(500, 20, 9000, 300, 301, 302, 303, 304, 305, 306)
    picked = preview.sample(pool, 4)
    assert picked == sorted(picked), "in plan order"
    assert {2, 1} <= set(picked) and len(picked) == 4  # 9000 tokens (largest), 20 (smallest)
    assert preview.sample(list(reversed(pool)), 4) == picked, "the same plan gives the same sample"
    assert preview.sample(pool, 4, seed=1) != picked or preview.sample(pool, 4, seed=2) != picked
    assert preview.sample(pool, 1) == [2]
    assert preview.sample(pool, 2) == [1, 2]
    assert preview.sample(pool, 0) == [] and preview.sample([], 3) == []
    assert preview.sample(pool[:3], 50) == [0, 1, 2]


def test_equal_sizes_are_ordered_by_bytes_then_place():
    pool = [Candidate(0, 100, 5), Candidate(1, 100, 9), Candidate(2, 100, 1)]
    assert preview.sample(pool, 2) == [1, 2]


def test_the_projection_scales_billed_input_by_the_estimate_and_output_per_request():
    prices = load_prices()
    planned = CostEstimate(requests=10, input_tokens=100_000, output_tokens=5_000, usd=0.02)
    sampled = [
        SampledPart("a", estimated_input_tokens=20_000, input_tokens=10_000, output_tokens=40),
        SampledPart("b", estimated_input_tokens=5_000, input_tokens=2_500, output_tokens=60),
        SampledPart("b", estimated_input_tokens=5_000, input_tokens=2_500, output_tokens=60),  # a duplicate: once
    ]
    projection = preview.project(sampled, planned, prices, MODEL)
    assert projection.sample_requests == 2
    assert projection.input_ratio == 0.5 and projection.output_tokens_per_request == 50
    assert (projection.input_tokens, projection.output_tokens) == (50_000, 500)
    assert projection.batch_cost_usd == pytest.approx(prices.cost(MODEL, 50_000, 500), abs=1e-6)
    # The batch still sends the other 8 requests: the plan's estimate without the sample's, scaled the same way.
    assert projection.remaining_requests == 8
    assert (projection.remaining_input_tokens, projection.remaining_output_tokens) == (37_500, 400)
    assert projection.remaining_batch_cost_usd == pytest.approx(prices.cost(MODEL, 37_500, 400), abs=1e-6)
    # The preview was billed online: twice the batch price.
    online = prices.cost(MODEL, 12_500, 100) * 2
    assert projection.preview_cost_usd == pytest.approx(online, abs=1e-6)
    assert projection.run_cost_usd == pytest.approx(online + prices.cost(MODEL, 37_500, 400), abs=2e-6)
    assert projection.estimate_usd == 0.02


def test_answers_already_in_the_ledger_cost_nothing_and_failed_rows_do_not_count():
    prices = load_prices()
    planned = CostEstimate(requests=4, input_tokens=4_000, output_tokens=400, usd=0.001)
    sampled = [
        SampledPart("a", 1_000, 3_000, 90, requested=False, online=False),  # answered by an earlier run
        SampledPart("b", 1_000, 0, 0),  # failed online: billed nothing, tells nothing
    ]
    projection = preview.project(sampled, planned, prices, MODEL)
    assert projection.sample_requests == 1 and projection.input_ratio == 3.0
    assert projection.preview_cost_usd == 0
    assert projection.remaining_requests == 3


def test_without_a_sample_or_a_price_the_projection_says_so():
    prices = load_prices()
    planned = CostEstimate(requests=3, input_tokens=3_000, output_tokens=300, usd=0.001)
    empty = preview.project([], planned, prices, MODEL)
    assert (empty.input_tokens, empty.output_tokens, empty.input_ratio) == (3_000, 300, None)
    unpriced = preview.project([SampledPart("a", 100, 200, 10)], planned, prices, "gemini-unpriced-9")
    assert unpriced.batch_cost_usd is None and unpriced.preview_cost_usd is None and unpriced.run_cost_usd is None


def test_the_setting_is_declared_once_with_bounds():
    setting = BY_NAME["preview_documents"]
    assert setting.default == 0
    assert setting.schema == {"type": "integer", "minimum": 0, "maximum": 50}


PLANNED = {"requests": 8, "estimate": {"requests": 8, "input_tokens": 40_000, "output_tokens": 900, "usd": 0.0034}}


def report(run_cost: float | None = 0.0033) -> dict:
    records = [
        {"document": "a.pdf", "status": "succeeded", "data": {"invoice_number": "INV-1", "notes": "x" * 500}},
        {"document": "b.md", "status": "failed", "data": None, "error": "answer is not JSON: empty answer"},
    ]
    projection = {
        "sample_requests": 3,
        "input_ratio": 0.5,
        "output_tokens_per_request": 30.0,
        "input_tokens": 20_000,
        "output_tokens": 240,
        "batch_cost_usd": 0.0017,
        "requests": 8,
        "remaining_requests": 5,
        "remaining_input_tokens": 800,
        "remaining_output_tokens": 110,
        "remaining_batch_cost_usd": 0.0001,
        "preview_cost_usd": 0.0032,
        "run_cost_usd": run_cost,
        "estimate_usd": 0.0034,
    }
    return {"model": MODEL, "documents": [{}, {}], "projection": projection, "shown": preview.shown_records(records)}


def test_the_approval_prompt_shows_the_preview_and_the_projected_cost():
    body = approval_body(PLANNED, report(), threshold=0.001)
    assert "$0.0033 projected from a preview of 2 document(s)" in body
    assert "- a.pdf (succeeded): {" in body and '"invoice_number":"INV-1"' in body
    assert "- b.md (failed): answer is not JSON: empty answer" in body
    assert "x" * 300 not in body and "…" in body, "data is trimmed"
    assert "Projected for the whole run: $0.0033" in body and "the preview's $0.0032 (online price)" in body
    assert "the estimate before the preview was $0.0034 for 8 requests" in body
    assert cost_to_approve(PLANNED, report()) == 0.0033
    # Without a preview (or a price for its projection): the estimate, as before.
    assert cost_to_approve(PLANNED, None) == cost_to_approve(PLANNED, report(None)) == 0.0034
    assert describe_cost(PLANNED, None).startswith("$0.0034 for 8 requests")
    assert "Preview" not in approval_body(PLANNED, None, threshold=0.001)


def fake_run(limit: float | None):
    return types.SimpleNamespace(
        settings=types.SimpleNamespace(max_cost_usd=limit, spec=types.SimpleNamespace(model=MODEL)),
        prices=load_prices(),
    )


def test_the_budget_uses_the_projection_when_there_is_one():
    planned = {"plan_uri": "x", "documents": 8, "rejected": 0, "parts": 8, "reused_parts": 0, "duplicate_parts": 0}
    planned |= PLANNED
    budget.check_budget(fake_run(0.0033), planned, report(0.0033))  # the estimate ($0.0034) would be over
    with pytest.raises(RunConfigError, match=r"projected cost \$0\.0040 .* exceeds max_cost_usd \$0\.0035"):
        budget.check_budget(fake_run(0.0035), planned, report(0.004))
    with pytest.raises(RunConfigError, match="estimated cost"):
        budget.check_budget(fake_run(0.0033), planned, None)

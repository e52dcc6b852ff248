"""Cost estimates: the documented heuristic's arithmetic, the batch discount,
the shipped price table, and clear errors."""

from __future__ import annotations

import math
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gemini_batch.core import records
from gemini_batch.core.batch_requests import RequestSpec
from gemini_batch.core.cost import CostEstimate, ModelPrice, PriceTable, estimate_request, load_prices
from gemini_batch.core.keys import canonical_json
from support.emulators import BATCH_MODELS

SCHEMA = {"type": "object", "properties": {"invoice_number": {"type": "string"}, "total": {"type": "number"}}}


def table(discount: float = 0.5) -> PriceTable:
    return PriceTable(
        as_of="2026-01-01",
        source="test",
        batch_discount=discount,
        models={
            "gemini-2.5-flash": ModelPrice(1.0, 10.0),
            "gemini-2.5-pro": ModelPrice(2.0, 20.0),
            "gemini-3-flash-preview": ModelPrice(3.0, 30.0),
            "gemini-2.0-flash": ModelPrice(4.0, 40.0),
        },
        aliases={"gemini-flash-latest": "gemini-3-flash-preview"},
    )


def test_pdf_arithmetic_on_a_known_table():
    prompt = "x" * 41  # 11 tokens at 4 bytes each, rounded up
    spec = RequestSpec(model="gemini-2.5-flash", prompt=prompt, response_schema=SCHEMA)
    schema_tokens = math.ceil(len(canonical_json(SCHEMA)) / 4)
    estimate = estimate_request(spec, mime_type="application/pdf", pages=3, size=50_000, prices=table())
    input_tokens = 11 + schema_tokens + 3 * (258 + 250)
    output_tokens = max(64, 2 * schema_tokens)  # 2.5 Flash at "low" thinks 0 tokens
    assert estimate == CostEstimate(
        1, input_tokens, output_tokens, (input_tokens * 1.0 + output_tokens * 10.0) / 1e6 * 0.5
    )


@pytest.mark.parametrize(
    ("mime_type", "size", "document_tokens"),
    [
        ("text/plain", 4001, 1001),
        ("text/markdown", 0, 0),
        ("image/png", 9_000_000, 258),
        ("image/jpeg", 10, 258),
    ],
)
def test_text_by_size_and_images_by_count(mime_type, size, document_tokens):
    spec = RequestSpec(model="gemini-2.0-flash", prompt="abcd")  # 1 token; free JSON
    estimate = estimate_request(spec, mime_type=mime_type, pages=None, size=size, prices=table())
    assert (estimate.input_tokens, estimate.output_tokens) == (1 + document_tokens, 512)


@pytest.mark.parametrize(
    ("model", "thinking", "thinking_tokens"),
    [
        ("gemini-2.5-flash", "low", 0),
        ("gemini-2.5-pro", "low", 128),
        ("gemini-3-flash-preview", "low", 512),
        ("gemini-flash-latest", "low", 0),  # an alias gets a thinking budget of 0
        ("gemini-2.0-flash", "low", 0),
        ("gemini-2.5-flash", "model-default", 2048),
        ("gemini-3-flash-preview", "model-default", 2048),
        ("gemini-2.0-flash", "model-default", 0),
    ],
)
def test_output_allows_for_the_thinking_the_spec_asks_for(model, thinking, thinking_tokens):
    spec = RequestSpec(model=model, prompt="p", thinking=thinking)
    estimate = estimate_request(spec, mime_type="text/plain", pages=None, size=100, prices=table())
    assert estimate.output_tokens == 512 + thinking_tokens


def test_max_output_tokens_caps_answer_and_thinking():
    spec = RequestSpec(model="gemini-3-flash-preview", prompt="p", max_output_tokens=300)
    assert estimate_request(spec, mime_type="text/plain", pages=None, size=100, prices=table()).output_tokens == 300


def test_a_small_schema_still_allows_a_minimum_answer():
    spec = RequestSpec(model="gemini-2.5-flash", prompt="p", response_schema={"type": "string"})
    assert estimate_request(spec, mime_type="image/png", pages=None, size=1, prices=table()).output_tokens == 64


def test_batch_discount_is_applied():
    spec = RequestSpec(model="gemini-2.5-flash", prompt="Extract.", response_schema=SCHEMA)
    full = estimate_request(spec, mime_type="application/pdf", pages=10, size=1, prices=table(discount=1.0))
    half = estimate_request(spec, mime_type="application/pdf", pages=10, size=1, prices=table(discount=0.5))
    assert half.usd == pytest.approx(full.usd / 2)
    assert (half.input_tokens, half.output_tokens) == (full.input_tokens, full.output_tokens)


@given(pages=st.integers(1, 2000), more=st.integers(1, 2000), model=st.sampled_from(sorted(load_prices().models)))
def test_more_pages_cost_more(pages, more, model):
    prices = load_prices()
    spec = RequestSpec(model=model, prompt="Extract the fields.", response_schema=SCHEMA)
    fewer = estimate_request(spec, mime_type="application/pdf", pages=pages, size=1, prices=prices)
    larger = estimate_request(spec, mime_type="application/pdf", pages=pages + more, size=1, prices=prices)
    assert larger.input_tokens > fewer.input_tokens and larger.usd > fewer.usd


def test_estimates_add_up():
    spec = RequestSpec(model="gemini-2.5-flash", prompt="p")
    a = estimate_request(spec, mime_type="text/plain", pages=None, size=400, prices=table())
    b = estimate_request(spec, mime_type="application/pdf", pages=2, size=1, prices=table())
    total = sum([a, b], CostEstimate.zero())
    assert total == CostEstimate(2, a.input_tokens + b.input_tokens, a.output_tokens + b.output_tokens, a.usd + b.usd)
    assert records.to_builtins(CostEstimate(1, 2, 3, 0.1234567891).rounded()) == {
        "requests": 1,
        "input_tokens": 2,
        "output_tokens": 3,
        "usd": 0.123457,
    }


def test_a_model_without_a_price_has_tokens_but_no_cost():
    spec = RequestSpec(model="models/gemini-9-ultra", prompt="p")
    estimate = estimate_request(spec, mime_type="text/plain", pages=None, size=400, prices=table())
    assert estimate.usd is None and estimate.input_tokens > 100 and estimate.rounded().usd is None
    priced = estimate_request(
        RequestSpec(model="gemini-2.5-flash", prompt="p"), mime_type="text/plain", pages=None, size=400, prices=table()
    )
    assert (estimate + priced).usd is None and (priced + priced).usd == 2 * priced.usd
    assert re.match(
        r"no price for model 'models/gemini-9-ultra' \(prices as of .*; priced: gemini-2\.0-flash, gemini-2\.5-flash, "
        r"gemini-2\.5-pro.*\); set it in the Airflow Variable gemini_batch_prices",
        table().no_price(spec.model),
    )


@pytest.mark.parametrize(
    ("mime_type", "pages", "message"),
    [
        ("application/pdf", None, "a PDF estimate needs its page count"),
        ("application/zip", None, "no token estimate for mime type 'application/zip'"),
    ],
)
def test_inputs_the_heuristic_cannot_price(mime_type, pages, message):
    with pytest.raises(ValueError, match=message):
        estimate_request(
            RequestSpec(model="gemini-2.5-flash", prompt="p"), mime_type=mime_type, pages=pages, size=1, prices=table()
        )


def test_shipped_table_prices_the_models_served_today():
    prices = load_prices()
    assert prices.batch_discount == 0.5 and prices.as_of == "2026-12-01" and prices.source.startswith("https://")
    priced = [m for m in BATCH_MODELS if prices.price(m) is not None]
    for model in priced:
        assert prices.price(model).output_per_million > prices.price(model).input_per_million > 0
    assert sorted(set(BATCH_MODELS) - set(priced)) == [  # no published price for them in the table yet
        "gemini-2.5-flash-image",
        "gemini-3.5-flash",
        "gemini-3.5-flash-lite",
        "gemini-3.6-flash",
    ]
    assert prices.price("models/gemini-2.5-flash-lite") == ModelPrice(0.10, 0.40)
    assert prices.price("gemini-3.8-flash") == ModelPrice(0.75, 3.75)
    assert prices.price("gemini-2.5-flash") is None, "shut down 2026-12-01"
    assert all(prices.price(alias) is not None for alias in prices.aliases)


def test_overrides_add_and_replace_prices():
    prices = load_prices(
        overrides={
            "models": {
                "gemini-3.5-flash-lite": {"input_per_million": 0.2, "output_per_million": 0.8},
                "gemini-3.8-flash": {"input_per_million": 1, "output_per_million": 5},
            },
            "as_of": "2027-01-01",
        }
    )
    assert prices.price("gemini-3.5-flash-lite") == ModelPrice(0.2, 0.8)
    assert prices.price("gemini-3.8-flash") == ModelPrice(1.0, 5.0)
    assert prices.price("gemini-2.5-flash-lite") == ModelPrice(0.10, 0.40) and prices.as_of == "2027-01-01"
    with pytest.raises(ValueError, match=r"with the Variable gemini_batch_prices: not a valid price table"):
        load_prices(overrides={"models": {"m": {"input_per_million": 1}}})


def test_loading_a_broken_table_names_the_file(tmp_path):
    path = tmp_path / "prices.json"
    path.write_text('{"as_of": "x", "source": "y", "batch_discount": 0.5, "models": {"m": {"input_per_million": 1}}}')
    with pytest.raises(ValueError, match=rf"{path}: not a valid price table: KeyError: 'output_per_million'"):
        load_prices(path)
    path.write_text("{")
    with pytest.raises(ValueError, match=rf"{path}: not a valid price table: JSONDecodeError"):
        load_prices(str(path))

"""What a run will cost, estimated before anything is submitted.

Cost alerts arrive hours after a batch is billed, so a run states its price
up front. The estimate is a heuristic from what is known without calling the
model; the real usage is recorded from the answers afterwards.

Heuristic, per request:

- input tokens: the prompt and the JSON schema at 4 bytes (UTF-8) per token;
  plus the document: text at 4 bytes per token; a PDF at 258 tokens per page
  (Gemini reads each page as an image) plus 250 per page for the text it
  extracts alongside; an image at 258 tokens.
- output tokens: the answer plus thinking. The answer is allowed twice the
  schema's tokens (an object repeats the schema's keys and fills its values;
  arrays may hold several items), at least 64; free JSON gets 512. Thinking
  follows the spec: a token budget counts in full, the "low" level counts
  512, a thinking model left at its default counts 2048, a model that does
  not think counts 0. ``max_output_tokens`` caps answer plus thinking.
- price: (input x input price + output x output price) / 1e6 x the batch
  discount, from the package's ``prices.json`` (standard paid-tier prices; output
  prices include thinking), with any overrides (the Airflow Variable
  ``gemini_batch_prices``) laid over it. A model without a price has tokens
  but no cost: ``usd`` is None, the cost unknown.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import msgspec

from gemini_batch.core.batch_requests import RequestSpec, thinking_config
from gemini_batch.core.keys import canonical_json, normalize_model
from gemini_batch.core.records import Record

DEFAULT_PRICES = Path(__file__).with_name("prices.json")  # package data: installed with the package

TEXT_BYTES_PER_TOKEN = 4
PAGE_IMAGE_TOKENS = 258
PDF_TEXT_TOKENS_PER_PAGE = 250
IMAGE_TOKENS = 258
FREE_JSON_OUTPUT_TOKENS = 512
MIN_ANSWER_TOKENS = 64
ANSWER_TOKENS_PER_SCHEMA_TOKEN = 2
LOW_LEVEL_THINKING_TOKENS = 512
DEFAULT_THINKING_TOKENS = 2048
_NOT_THINKING_BY_DEFAULT = ("gemini-2.0", "gemini-2.5-flash-lite")


class CostEstimate(Record, frozen=True):
    """What requests are estimated to cost (``usd`` rounded to 6 places where stored: ``rounded``)."""

    kind: ClassVar[str] = "cost estimate"

    requests: int
    input_tokens: int
    output_tokens: int
    usd: float | None  # None: a request's model has no price, so the total is unknown

    @classmethod
    def zero(cls) -> CostEstimate:
        return cls(0, 0, 0, 0.0)

    def __add__(self, other: CostEstimate) -> CostEstimate:
        if not isinstance(other, CostEstimate):
            return NotImplemented
        usd = None if self.usd is None or other.usd is None else self.usd + other.usd
        return CostEstimate(
            self.requests + other.requests,
            self.input_tokens + other.input_tokens,
            self.output_tokens + other.output_tokens,
            usd,
        )

    def rounded(self) -> CostEstimate:
        """The estimate as stored and shown: ``usd`` to the millionth of a dollar."""
        return msgspec.structs.replace(self, usd=None if self.usd is None else round(self.usd, 6))


@dataclass(frozen=True)
class ModelPrice:
    input_per_million: float
    output_per_million: float


@dataclass(frozen=True)
class PriceTable:
    as_of: str
    source: str
    batch_discount: float  # the factor batch prices are of standard ones (0.5: half price)
    models: Mapping[str, ModelPrice]
    aliases: Mapping[str, str]  # alias -> a model in ``models``

    def model_id(self, model: str) -> str:
        """The model a name is priced as (an alias resolved), whether or not it has a price."""
        bare = normalize_model(model)
        return self.aliases.get(bare, bare)

    def price(self, model: str) -> ModelPrice | None:
        """The model's price; None when the table has none."""
        return self.models.get(self.model_id(model))

    def cost(self, model: str, input_tokens: int, output_tokens: int) -> float | None:
        """What ``model`` bills in Batch Mode for these tokens (USD); None: the table has no price for it."""
        price = self.price(model)
        if price is None:
            return None
        usd = (input_tokens * price.input_per_million + output_tokens * price.output_per_million) / 1e6
        return usd * self.batch_discount

    def no_price(self, model: str) -> str:
        """Why ``model`` cannot be priced, naming the priced models and where to add one."""
        known = ", ".join(sorted({*self.models, *self.aliases}))
        return (
            f"no price for model {model!r} (prices as of {self.as_of}; priced: {known}); set it in the Airflow "
            f'Variable {PRICES_VARIABLE}, e.g. {{"models": {{"{normalize_model(model)}": '
            f'{{"input_per_million": 0.1, "output_per_million": 0.4}}}}}}'
        )


PRICES_VARIABLE = "gemini_batch_prices"


def load_prices(path: str | Path | None = None, overrides: Mapping | None = None) -> PriceTable:
    """The price table (the package's ``prices.json`` by default), with ``overrides`` laid over
    it: a mapping like the file's, whose ``models`` and ``aliases`` add to or replace the file's and whose
    ``as_of``, ``source`` and ``batch_discount`` replace them."""
    path = Path(path) if path is not None else DEFAULT_PRICES
    where = str(path)
    try:
        data = json.loads(path.read_text())
        if overrides:
            where = f"{path} with the Variable {PRICES_VARIABLE}"
            data = {
                **data,
                **{k: v for k, v in overrides.items() if k not in ("models", "aliases")},
                "models": {**data["models"], **(overrides.get("models") or {})},
                "aliases": {**data.get("aliases", {}), **(overrides.get("aliases") or {})},
            }
        return PriceTable(
            as_of=data["as_of"],
            source=data["source"],
            batch_discount=float(data["batch_discount"]),
            models={
                name: ModelPrice(float(price["input_per_million"]), float(price["output_per_million"]))
                for name, price in data["models"].items()
            },
            aliases=dict(data.get("aliases", {})),
        )
    except (json.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError) as exc:
        raise ValueError(f"{where}: not a valid price table: {type(exc).__name__}: {exc}") from None


def estimate_request(
    spec: RequestSpec, *, mime_type: str, pages: int | None, size: int, prices: PriceTable
) -> CostEstimate:
    """One request for a document part of ``size`` bytes (``pages`` pages when it is a PDF)."""
    input_tokens = estimate_input_tokens(spec, mime_type=mime_type, pages=pages, size=size)
    if spec.response_schema is None:
        answer_tokens = FREE_JSON_OUTPUT_TOKENS
    else:
        answer_tokens = max(MIN_ANSWER_TOKENS, ANSWER_TOKENS_PER_SCHEMA_TOKEN * _schema_tokens(spec))
    output_tokens = answer_tokens + _thinking_tokens(spec, prices.model_id(spec.model))
    if spec.max_output_tokens is not None:
        output_tokens = min(output_tokens, spec.max_output_tokens)
    return CostEstimate(1, input_tokens, output_tokens, prices.cost(spec.model, input_tokens, output_tokens))


def estimate_input_tokens(spec: RequestSpec, *, mime_type: str, pages: int | None, size: int) -> int:
    """The input tokens of one request: the prompt, the schema and the document part."""
    schema = _schema_tokens(spec) if spec.response_schema is not None else 0
    return _text_tokens(len(spec.prompt.encode())) + schema + _document_tokens(mime_type, pages, size)


def _schema_tokens(spec: RequestSpec) -> int:
    return _text_tokens(len(canonical_json(spec.response_schema)))


def _text_tokens(size: int) -> int:
    return math.ceil(size / TEXT_BYTES_PER_TOKEN)


def _document_tokens(mime_type: str, pages: int | None, size: int) -> int:
    if mime_type == "application/pdf":
        if pages is None:
            raise ValueError("a PDF estimate needs its page count (pages)")
        return pages * (PAGE_IMAGE_TOKENS + PDF_TEXT_TOKENS_PER_PAGE)
    if mime_type.startswith("image/"):
        return IMAGE_TOKENS
    if mime_type.startswith("text/"):
        return _text_tokens(size)
    raise ValueError(f"no token estimate for mime type {mime_type!r}: expected application/pdf, image/* or text/*")


def _thinking_tokens(spec: RequestSpec, priced_model: str) -> int:
    config = thinking_config(spec)
    if config is not None:
        return int(config["thinkingBudget"]) if "thinkingBudget" in config else LOW_LEVEL_THINKING_TOKENS
    if spec.thinking == "model-default" and not priced_model.startswith(_NOT_THINKING_BY_DEFAULT):
        return DEFAULT_THINKING_TOKENS
    return 0

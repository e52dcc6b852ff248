"""The emulator's model catalogue (``gemini_emulator/models.json``) and the pipeline's price table
(``plugins/gemini_batch/core/prices.json``) describe the same generation models."""

from __future__ import annotations

import json
from pathlib import Path

from gemini_emulator.models import Catalogue

PRICES = Path(__file__).resolve().parents[2] / "plugins" / "gemini_batch" / "core" / "prices.json"

# Live batch generation models the price table does not price, and why; each is a model to price when Google
# publishes a price (set it in prices.json or in the Airflow Variable gemini_batch_prices meanwhile).
UNPRICED = {
    "gemini-3.5-flash-lite": "prices.json: no published price (its notes say so)",
    "gemini-3.6-flash": "no price in prices.json yet",
    "gemini-3.5-flash": "no price in prices.json yet",
    "gemini-2.5-flash-image": "an image model, billed per image, which the token price table does not model",
}


def test_the_catalogue_serves_every_priced_model_and_prices_every_batch_model():
    """The rule, both ways, for the Developer API (the pipeline's default backend):

    * every model priced in ``prices.json`` (its ``models``, its ``aliases`` and what they point to) is live in
      the catalogue and answers generation batches (``batchGenerateContent``): the pipeline never prices a
      model the service no longer serves, nor estimates with a price for a model it cannot batch;
    * every live catalogue model that answers generation batches is priced, directly or through an alias,
      or is listed in ``UNPRICED`` with the reason. Shut-down models (answered by their successor) and
      embedding models are outside the table and the rule.
    """
    prices = json.loads(PRICES.read_text())
    catalogue = Catalogue.load()
    live = {m.id for m in catalogue.live(surface="developer") if m.batch_kind() == "generate"}
    priced = set(prices["models"]) | set(prices["aliases"])
    assert set(prices["aliases"].values()) <= set(prices["models"]), "an alias points to a priced model"
    assert priced - live == set(), "priced, but not a live batch generation model of the catalogue"
    assert live - priced - set(UNPRICED) == set(), "served for batches, but neither priced nor listed as unpriced"
    assert set(UNPRICED) <= live - priced, "listed as unpriced, but priced or not served: drop it from UNPRICED"


def test_shut_down_models_are_routed_or_refused_and_embedding_models_answer_embeddings():
    catalogue = Catalogue.load()
    assert catalogue.for_batches("gemini-2.5-flash") == "gemini-3.5-flash-lite"
    assert catalogue.for_batches("gemini-2.0-flash") is None
    assert catalogue.for_batches("gemini-embedding-001", "embed", "developer") == "gemini-embedding-001"
    assert catalogue.for_batches("gemini-embedding-001") is None, "no generation batches of an embedding model"
    assert catalogue.for_batches("text-embedding-005", "embed", "developer") is None, "served on Vertex AI only"
    assert catalogue.for_batches("text-embedding-005", "embed", "vertex") == "text-embedding-005"

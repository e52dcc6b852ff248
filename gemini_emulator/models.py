"""The models the emulator serves, and their lifecycle: listed while live; after their shutdown date unlisted
and unknown to ``models.get``, their batch requests refused, or answered by the model Google routes them to."""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

GENERATE_METHODS = ("generateContent", "countTokens", "createCachedContent", "batchGenerateContent")
SURFACES = ("developer", "vertex")
BATCH_METHODS = {"generate": "batchGenerateContent", "embed": "asyncBatchEmbedContent"}


@dataclass(frozen=True)
class Model:
    id: str
    display_name: str
    methods: tuple[str, ...] = GENERATE_METHODS
    thinking: bool = False
    shutdown: dt.date | None = None
    routed_to: str | None = None
    surfaces: tuple[str, ...] = SURFACES
    dimensions: int = 0  # an embedding model's vector size

    def live(self, today: dt.date) -> bool:
        return self.shutdown is None or today < self.shutdown

    def batch_kind(self) -> str | None:
        """``generate`` or ``embed``: the batches the model answers (None: no batches)."""
        return next((kind for kind, method in BATCH_METHODS.items() if method in self.methods), None)

    def developer_view(self) -> dict:
        """``models.get`` on the Developer API (the ``Model`` resource)."""
        view = {
            "name": f"models/{self.id}",
            "version": "001",
            "displayName": self.display_name,
            "inputTokenLimit": 1048576,
            "outputTokenLimit": 65536,
            "supportedGenerationMethods": list(self.methods),
        }
        if self.thinking:
            view["thinking"] = True
        return view

    def vertex_view(self) -> dict:
        """A Vertex AI publisher model."""
        return {
            "name": f"publishers/google/models/{self.id}",
            "versionId": "001",
            "launchStage": "GA",
            "openSourceCategory": "PROPRIETARY",
        }


@dataclass(frozen=True)
class Catalogue:
    models: dict[str, Model]

    @classmethod
    def load(cls, path: Path | None = None) -> Catalogue:
        """``path``, or the shipped ``models.json``; a clear ValueError for a file that is not a catalogue."""
        where = path or "gemini_emulator/models.json"
        try:
            text = path.read_text() if path else resources.files(__package__).joinpath("models.json").read_text()
            entries = json.loads(text)["models"]
            models = {
                e["id"]: Model(
                    id=e["id"],
                    display_name=e.get("displayName", e["id"]),
                    methods=tuple(e.get("methods", GENERATE_METHODS)),
                    thinking=bool(e.get("thinking", False)),
                    shutdown=dt.date.fromisoformat(e["shutdown"]) if e.get("shutdown") else None,
                    routed_to=e.get("routed_to"),
                    surfaces=tuple(e.get("surfaces", SURFACES)),
                    dimensions=int(e.get("dimensions", 0)),
                )
                for e in entries
            }
        except (OSError, json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"--models: {where} is not a model catalogue: {type(exc).__name__}: {exc}") from None
        return cls(models)

    def live(self, today: dt.date | None = None, surface: str | None = None) -> list[Model]:
        today = today or dt.datetime.now(dt.timezone.utc).date()
        return [m for m in self.models.values() if m.live(today) and (surface is None or surface in m.surfaces)]

    def get(self, model_id: str, today: dt.date | None = None, surface: str | None = None) -> Model | None:
        """The live model of that id (served on ``surface``), or None (unknown, or shut down)."""
        model = self.models.get(model_id)
        today = today or dt.datetime.now(dt.timezone.utc).date()
        if model is None or (surface is not None and surface not in model.surfaces):
            return None
        return model if model.live(today) else None

    def for_batches(self, model_id: str, kind: str = "generate", surface: str | None = None) -> str | None:
        """The model that answers a ``kind`` batch (``generate``, ``embed``) for ``model_id``: itself, or
        where a shut-down model is routed; None when such batches of it are refused."""
        model = self.models.get(model_id)
        if model is None or model.batch_kind() != kind or (surface is not None and surface not in model.surfaces):
            return None
        if model.live(dt.datetime.now(dt.timezone.utc).date()):
            return model.id
        return model.routed_to

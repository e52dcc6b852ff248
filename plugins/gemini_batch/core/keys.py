"""Deterministic request keys.

A key names one answer: the same document part asked the same question of the
same model the same way gets the same key on any machine, so re-runs skip work
already done and outputs join to inputs by key, never by line order. Anything
that could change the answer changes the key.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from typing import Any

import orjson

PIPELINE_VERSION = "1"  # bump when the way requests are built changes meaningfully

_SHA256_HEX = re.compile(r"[0-9a-f]{64}")


def normalize_model(model: str) -> str:
    """The bare model id, so ``models/x``, ``publishers/google/models/x`` and ``x`` share keys and prices."""
    bare = model.strip().rsplit("/", 1)[-1]
    if not bare:
        raise ValueError(f"model {model!r} names no model id")
    return bare


def canonical_json(value: Any) -> bytes:
    """Equal JSON values give equal bytes on any machine: object keys sorted, no whitespace."""
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)


def request_key(
    document_sha256: str,
    pages: tuple[int, int] | None,
    *,
    prompt: str,
    model: str,
    response_schema: dict | None,
    options: Mapping | None = None,
) -> str:
    """64 hex chars: sha256 over everything that decides the answer.

    ``pages`` is the 1-based inclusive page range of a split document part,
    or None for the whole document. ``options`` are the request settings
    besides prompt, model and schema (thinking, output limit).
    """
    if not _SHA256_HEX.fullmatch(document_sha256):
        raise ValueError(f"document_sha256 must be 64 lowercase hex characters, got {document_sha256!r}")
    if pages is not None:
        first, last = pages
        if not 1 <= first <= last:
            raise ValueError(f"pages must be a 1-based range (first, last) with first <= last, got {pages!r}")
    identity = {
        "pipeline_version": PIPELINE_VERSION,
        "document_sha256": document_sha256,
        "pages": pages,
        "prompt": prompt,
        "model": normalize_model(model),
        "response_schema": response_schema,
        "options": dict(options or {}),
    }
    return hashlib.sha256(canonical_json(identity)).hexdigest()

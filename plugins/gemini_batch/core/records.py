"""Records read back from files: the one way a stored record becomes its dataclass."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import TypeVar

T = TypeVar("T")


def from_record(cls: type[T], data: Mapping, what: str) -> T:
    """The dataclass ``cls`` from a record read back from a file: extra fields are ignored, a missing one is named
    (unless it has a default: records written before the field existed)."""
    fields = dataclasses.fields(cls)  # type: ignore[arg-type]  # every caller passes a dataclass
    missing = [f.name for f in fields if f.name not in data and f.default is dataclasses.MISSING]
    if missing:
        raise ValueError(f"{what} lacks {', '.join(missing)}")
    return cls(**{f.name: data[f.name] for f in fields if f.name in data})

"""Durable state under ``--data-dir``: one JSON document per record.

Records are small (metadata only) and kept in memory too; payloads (uploaded
bytes, input and output JSONL) live in files beside them. Every write goes
through a temporary file and ``os.replace`` so a killed emulator never leaves a
half-written record, and a restarted one picks up where it stopped.
"""

from __future__ import annotations

import os
import secrets
import string
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson

_ALPHABET = string.ascii_lowercase + string.digits


def new_id(length: int = 12) -> str:
    return "".join(secrets.choice(_ALPHABET) for _ in range(length))


def write_json_atomic(path: Path, value: Any) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    tmp.write_bytes(orjson.dumps(value))
    os.replace(tmp, path)


class RecordStore:
    """A keyed collection of JSON records persisted in one folder."""

    def __init__(self, folder: Path, summed: str | None = None):
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self._records: dict[str, dict[str, Any]] = {}
        self._summed = summed  # a numeric field whose total over all records ``total`` keeps at hand
        self._total = 0
        for path in sorted(folder.glob("*.json")):
            self._records[path.stem] = record = orjson.loads(path.read_bytes())
            self._total += self._amount(record)

    def _amount(self, record: dict[str, Any] | None) -> int:
        return int(record.get(self._summed) or 0) if record is not None and self._summed else 0

    def total(self) -> int:
        """The ``summed`` field added over every record, in constant time."""
        return self._total

    def blob_path(self, record_id: str, suffix: str) -> Path:
        return self.folder / f"{record_id}.{suffix}"

    def get(self, record_id: str) -> dict[str, Any] | None:
        with self._lock:
            record = self._records.get(record_id)
            return dict(record) if record is not None else None

    def put(self, record_id: str, record: dict[str, Any]) -> None:
        with self._lock:
            self._total += self._amount(record) - self._amount(self._records.get(record_id))
            self._records[record_id] = dict(record)
            write_json_atomic(self.folder / f"{record_id}.json", record)

    def update(self, record_id: str, **changes: Any) -> dict[str, Any]:
        with self._lock:
            record = dict(self._records[record_id])
            record.update(changes)
            self.put(record_id, record)
            return record

    def delete(self, record_id: str) -> None:
        with self._lock:
            self._total -= self._amount(self._records.pop(record_id, None))
            for path in self.folder.glob(f"{record_id}.*"):
                path.unlink(missing_ok=True)

    def values(self) -> Iterator[dict[str, Any]]:
        with self._lock:
            snapshot = [dict(r) for r in self._records.values()]
        return iter(snapshot)

    def next_ordinal(self) -> int:
        """A counter that survives restarts (used to seed per-job faults)."""
        with self._lock:
            path = self.folder / "_ordinal"
            n = int(path.read_text()) + 1 if path.exists() else 1
            path.write_text(str(n))
            return n

"""A ledger event: one line of a ledger segment, what happened to a key in a run.

Defined here, below the ledger, because the processes that parse a round's
outputs write the events of its outcomes too (they import no Airflow): the
task's process then copies them into the ledger instead of decoding every
outcome again.
"""

from __future__ import annotations

from typing import Any, ClassVar

import orjson

from gemini_batch.core import records
from gemini_batch.core.records import Record, StrEnum


class EventKind(StrEnum):
    """What a ledger event says happened to its key; BEGIN and END (key "") frame a segment."""

    ANSWERED = "answered"  # the outcome succeeded
    FAILED = "failed"
    BEGIN = "begin"
    END = "end"


class LedgerEvent(Record, frozen=True):
    """One line of a segment: what happened to a key in a run.

    ``event`` is an ``EventKind`` as written; read back it stays the string it was, so a kind a newer version
    writes is read (and skipped) rather than taken for damage."""

    kind: ClassVar[str] = "ledger event"

    key: str
    event: str  # an EventKind
    run: str  # the run's slug
    at: str  # ISO 8601 UTC
    outcome: Any = None  # the RowOutcome record (read back: its dict); an end line: {"events": <count>}

    @classmethod
    def decode(cls, line: bytes) -> LedgerEvent:
        """The event of a segment line, or (a finished-store record of earlier versions: no ``event``) its record as
        an answered event; records.RecordError otherwise."""
        try:
            return records.decode(line, cls)
        except records.RecordError:
            data = orjson.loads(line)  # JSONDecodeError is a ValueError too
            if isinstance(data, dict) and "event" not in data and isinstance(data.get("key"), str):
                return cls(
                    data["key"], EventKind.ANSWERED, data.get("run") or "legacy", data.get("finished_at") or "", data
                )
            raise


class OutcomeEvents:
    """The event lines of outcomes already encoded, for run ``run`` at ``at``: what ``LedgerEvent(key, kind, run, at,
    msgspec.Raw(outcome))`` encodes to, joined from its parts (building and encoding each event cost a tenth of
    reading its row)."""

    def __init__(self, run: str, at: str):
        self.run, self.at = run, at
        tail = b',"run":' + records.encode(run) + b',"at":' + records.encode(at) + b',"outcome":'
        self._answered, self._failed = (b',"event":' + records.encode(kind) + tail for kind in ("answered", "failed"))

    def line(self, key: str, answered: bool, outcome: bytes) -> bytes:
        """The event of ``outcome`` (of ``key``): ANSWERED if it succeeded, else FAILED."""
        return b'{"key":' + records.encode(key) + (self._answered if answered else self._failed) + outcome + b"}"

"""A key -> JSON record map on disk, for joins whose sides do not fit in memory.

Publishing joins every document to the latest outcome of each of its keys,
and planning asks, for every key, whether an earlier run already answered it.
Held in dicts, both grow with the run (outcomes carry the extracted data) and
with the whole history of runs (the finished store); held here, in a private
SQLite database that SQLite keeps in a file it has already unlinked and
drops when closed, memory stays at the page cache's size.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import orjson

CACHE_KIB = 16 * 1024


class RecordIndex:
    """Records by key, each with an optional status to select on; use as a context manager (it closes the file)."""

    def __init__(self) -> None:
        # "": a private temporary database on disk. Writes stay in one transaction that is never committed:
        # nothing outlives the connection anyway.
        self._db = sqlite3.connect("", check_same_thread=False)  # a generator may resume on another thread
        self._db.executescript(f"""
            PRAGMA cache_size = -{CACHE_KIB};
            PRAGMA journal_mode = OFF;
            PRAGMA synchronous = OFF;
            CREATE TABLE records (key TEXT PRIMARY KEY, status TEXT, record BLOB) WITHOUT ROWID;
        """)

    def __enter__(self) -> RecordIndex:
        return self

    def __exit__(self, *exc: object) -> None:
        self._db.close()

    def put(self, records: Iterable[Mapping], *, replace: bool = True) -> None:
        """Add records (each with a ``key``; ``status`` if any); an existing key is replaced, or kept if not
        ``replace``."""
        verb = "INSERT OR REPLACE" if replace else "INSERT OR IGNORE"
        # Row by row from the generator: a list of orjson.dumps results would hold about 4 KB per record.
        self._db.executemany(
            f"{verb} INTO records VALUES (?, ?, ?)", ((r["key"], r.get("status"), orjson.dumps(r)) for r in records)
        )

    def put_lines(self, records: Iterable[tuple[str, str | None, bytes]]) -> None:
        """Add records already encoded, as (key, status, JSON): a JSON lines file's, each line as it is."""
        self._db.executemany("INSERT OR REPLACE INTO records VALUES (?, ?, ?)", records)

    def add(self, key: str) -> bool:
        """Add a key without a record; False if it is there already (a set of keys that stays on disk)."""
        return self._db.execute("INSERT OR IGNORE INTO records (key) VALUES (?)", (key,)).rowcount == 1

    def get(self, key: str) -> dict[str, Any] | None:
        row = self._db.execute("SELECT record FROM records WHERE key = ?", (key,)).fetchone()
        return orjson.loads(row[0]) if row else None

    def __contains__(self, key: object) -> bool:
        return self._db.execute("SELECT 1 FROM records WHERE key = ?", (key,)).fetchone() is not None

    def __len__(self) -> int:
        return self._db.execute("SELECT count(*) FROM records").fetchone()[0]

    def keys(self, status: str | None = None) -> Iterator[str]:
        for (key,) in self._select("key", status):
            yield key

    def records(self, status: str | None = None) -> Iterator[dict[str, Any]]:
        for (record,) in self._select("record", status):
            yield orjson.loads(record)

    def _select(self, column: str, status: str | None) -> sqlite3.Cursor:
        # A cursor of its own: the caller may look keys up while it iterates.
        if status is None:
            return self._db.cursor().execute(f"SELECT {column} FROM records ORDER BY key")
        return self._db.cursor().execute(f"SELECT {column} FROM records WHERE status = ? ORDER BY key", (status,))

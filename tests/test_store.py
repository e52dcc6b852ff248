"""The finished-key store, on a local folder and on gcp-storage-emulator."""

from __future__ import annotations

import logging

import pytest

from gemini_batch.locations import as_path
from gemini_batch.store import FinishedStore


def record(key: str, value: str) -> dict:
    return {"key": key, "data": {"value": value}}


def load(store: FinishedStore) -> dict:
    with store.index() as index:
        return {r["key"]: r for r in index.records()}


def test_missing_folder_is_an_empty_store(tmp_path):
    assert load(FinishedStore(as_path(tmp_path / "nothing-yet"))) == {}


def test_segments_accumulate_and_later_ones_win(tmp_path):
    store = FinishedStore(as_path(tmp_path / "state"))
    assert store.add([record("k1", "old"), record("k2", "two")], segment="2026-11-01T00:00:00+00:00") == 2
    assert store.add((r for r in [record("k1", "new")]), segment="2026-11-02T00:00:00+00:00") == 1

    loaded = load(FinishedStore(as_path(tmp_path / "state")))
    assert loaded == {"k1": record("k1", "new"), "k2": record("k2", "two")}
    names = sorted(p.name for p in (tmp_path / "state").iterdir())
    assert names == ["2026-11-01T00_00_00_00_00.jsonl", "2026-11-02T00_00_00_00_00.jsonl"], "no partial files left"


def test_rewriting_a_segment_replaces_it(tmp_path):
    store = FinishedStore(as_path(tmp_path / "state"))
    store.add([record("k1", "a"), record("k2", "b")], segment="run")
    store.add([record("k1", "c")], segment="run")
    assert load(store) == {"k1": record("k1", "c")}


def test_corrupt_lines_are_skipped_with_a_warning(tmp_path, caplog):
    store = FinishedStore(as_path(tmp_path / "state"))
    store.add([record("k1", "a")], segment="good")
    (tmp_path / "state" / "damaged.jsonl").write_bytes(b'{"key": "k2", "data": 1}\n{"key": "k3", "da\n\n{"no_key": 1}\n')
    with caplog.at_level(logging.WARNING, logger="gemini_batch.store"):
        loaded = load(store)
    assert set(loaded) == {"k1", "k2"}
    assert "damaged.jsonl line 2" in caplog.text and "line 4" in caplog.text


@pytest.mark.parametrize("where", ["local", "gcs"])
def test_a_record_without_a_key_is_refused_and_nothing_is_published(where, tmp_path, request):
    folder = as_path(tmp_path / "state") if where == "local" else request.getfixturevalue("gcs_root") / "state" / "no-key"
    store = FinishedStore(folder)
    with pytest.raises(ValueError, match="without a key"):
        store.add([record("k1", "a"), {"data": 1}], segment="bad")
    assert load(store) == {}


def test_store_on_gcs(gcs_root):
    store = FinishedStore(gcs_root / "state" / "test_store_on_gcs")
    assert load(store) == {}
    store.add([record("k1", "a")], segment="run-1")
    store.add([record("k2", "b")], segment="run-2")
    assert load(FinishedStore(gcs_root / "state" / "test_store_on_gcs")) == {"k1": record("k1", "a"), "k2": record("k2", "b")}

"""RecordIndex: the on-disk key -> record map that publish and the finished store join through."""

from __future__ import annotations

import os

from gemini_batch.core.record_index import RecordIndex


def test_put_get_replace_and_keep():
    with RecordIndex() as index:
        index.put([{"key": "b", "status": "failed", "n": 1}, {"key": "a", "status": "succeeded", "n": 2}])
        index.put([{"key": "b", "status": "succeeded", "n": 3}])  # a later round wins
        index.put([{"key": "a", "status": "failed", "n": 4}, {"key": "c", "n": 5}], replace=False)  # only c is new
        assert index.get("b") == {"key": "b", "status": "succeeded", "n": 3}
        assert index.get("a")["n"] == 2 and index.get("c") == {"key": "c", "n": 5} and index.get("zz") is None
        assert "a" in index and "zz" not in index and len(index) == 3
        assert list(index.keys()) == ["a", "b", "c"]
        assert list(index.keys("succeeded")) == ["a", "b"] and list(index.keys("failed")) == []


def test_lookups_while_iterating_and_many_records():
    with RecordIndex() as index:
        index.put(
            {"key": f"k{i:06d}", "status": "succeeded" if i % 3 else "failed", "data": "x" * 100} for i in range(30_000)
        )
        failed = 0
        for key in index.keys("failed"):  # a second query while the first cursor is open
            failed += index.get(key)["status"] == "failed"
        assert failed == 10_000 and len(index) == 30_000


def test_no_file_is_left_behind(tmp_path, monkeypatch):
    monkeypatch.setenv("SQLITE_TMPDIR", str(tmp_path))
    with RecordIndex() as index:
        index.put({"key": f"k{i}", "blob": "y" * 1000} for i in range(50_000))  # past the page cache: spills to disk
        assert index.get("k49999")["blob"] == "y" * 1000
    assert os.listdir(tmp_path) == []

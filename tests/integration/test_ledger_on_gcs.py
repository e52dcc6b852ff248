"""The ledger on gs:// (the GCS emulator): leases raced by threads, a damaged snapshot found by its checksum."""

from __future__ import annotations

import concurrent.futures
import datetime as dt
import hashlib
import uuid

import pytest

from gemini_batch.coordination import ledger as ledger_module
from gemini_batch.coordination.ledger import Ledger, LedgerEvent, now_iso
from gemini_batch.core.locations import as_path


def key(n: int) -> str:
    return hashlib.sha256(str(n).encode()).hexdigest()


def answered(k: str, data, run: str = "run-a") -> LedgerEvent:
    outcome = {
        "key": k,
        "status": "succeeded",
        "data": data,
        "error": None,
        "finish_reason": "STOP",
        "input_tokens": 3,
        "output_tokens": 2,
        "model_version": "m",
        "raw_text": None,
        "reused": False,
    }
    return LedgerEvent(k, "answered", run, now_iso(), outcome)


@pytest.fixture
def ledger(tmp_path) -> Ledger:
    return Ledger(as_path(tmp_path / "ledger"))


def lease_race(ledger: Ledger, contenders: int = 16) -> list[str]:
    ledger.prepare_leases()
    k = key(42)
    with concurrent.futures.ThreadPoolExecutor(contenders) as pool:
        holders = list(pool.map(lambda n: ledger.try_lease(k, 0, f"claim-{n}"), range(contenders)))
    return holders


def test_sixteen_threads_racing_for_a_gcs_lease_agree_on_one_winner(gcs_root):
    holders = lease_race(Ledger(gcs_root / "ledgers" / uuid.uuid4().hex))
    assert len(set(holders)) == 1 and holders[0].startswith("claim-")


# ---------------------------------------------------------------------- a damaged ledger


def compacted_twice(ledger: Ledger, monkeypatch) -> tuple[list[str], str, str]:
    """Answered keys 0-9, one segment each: 0-4 folded into an older snapshot, 5-9 only into the newest; every
    folded segment is past its grace, so each compaction prunes all it may."""
    monkeypatch.setattr(ledger_module, "SEGMENT_GRACE", dt.timedelta(seconds=-60))
    for n in range(5):
        ledger.append([answered(key(n), n)], writer=f"run-{n}")
    older = ledger.compact(writer="older", force=True)
    for n in range(5, 10):
        ledger.append([answered(key(n), n)], writer=f"run-{n}")
    newest = ledger.compact(writer="newest", force=True)
    return [key(n) for n in range(10)], older, newest


def answers(ledger: Ledger, keys: list[str]) -> dict[str, object]:
    """What a new view of the ledger answers for each key (None: not answered), and its count."""
    with ledger.view() as view:
        return {"count": view.finished_count(), **{k: (view.finished(k) or {}).get("data") for k in keys}}


def all_answered(keys: list[str]) -> dict[str, object]:
    return {"count": len(keys), **{k: n for n, k in enumerate(keys)}}


def test_a_damaged_snapshot_on_gcs_is_found_by_its_checksum_as_it_is_copied(gcs_root, monkeypatch, caplog):
    """Zeroed pages keep its size and header; the sha256 taken while copying it from the bucket finds them."""
    ledger = Ledger(gcs_root / "ledgers" / uuid.uuid4().hex)
    keys, _, newest = compacted_twice(ledger, monkeypatch)
    snapshot = ledger.snapshots / f"{newest}.sqlite"
    whole = snapshot.read_bytes()
    snapshot.write_bytes(whole[:4096] + bytes(len(whole) - 4096))
    assert answers(ledger, keys) == all_answered(keys)
    assert f"{newest}.sqlite" in caplog.text and "sha256" in caplog.text
    assert [d.path.name for d in ledger.check().damaged] == [f"{newest}.sqlite"]
    ledger.repair()
    assert ledger.check().damaged == []
    assert {p.name for p in (ledger.folder / "damaged" / "snapshots").iterdir()} == {
        f"{newest}.sqlite",
        f"{newest}.json",
    }
    assert answers(ledger, keys) == all_answered(keys)

"""What the ledger tests share: keys and answers, a lease raced by threads, a ledger compacted twice."""

from __future__ import annotations

import concurrent.futures
import datetime as dt
import hashlib

from gemini_batch.coordination import ledger as ledger_module
from gemini_batch.coordination.ledger import EventKind, Ledger, LedgerEvent, now_iso


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
    return LedgerEvent(k, EventKind.ANSWERED, run, now_iso(), outcome)


def lease_race(ledger: Ledger, contenders: int = 16) -> list[str]:
    ledger.prepare_leases()
    k = key(42)
    with concurrent.futures.ThreadPoolExecutor(contenders) as pool:
        holders = list(pool.map(lambda n: ledger.try_lease(k, 0, f"claim-{n}"), range(contenders)))
    return holders


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

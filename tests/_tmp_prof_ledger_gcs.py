import time, logging, uuid, sys
import pytest
sys.path[:0] = ["/work/main/tests"]
from test_ledger import *  # noqa
import test_ledger as T

def test_prof(gcs_root, monkeypatch):
    ledger = Ledger(gcs_root / "ledgers" / uuid.uuid4().hex)
    t = time.perf_counter()
    def lap(what):
        nonlocal t
        now = time.perf_counter(); print(f"{what}: {now - t:.2f}s", file=sys.stderr); t = now
    keys, _, newest = T.compacted_twice(ledger, monkeypatch); lap("compacted twice")
    snapshot = ledger.snapshots / f"{newest}.sqlite"
    whole = snapshot.read_bytes()
    snapshot.write_bytes(whole[:4096] + bytes(len(whole) - 4096)); lap("damage")
    T.answers(ledger, keys); lap("answers")
    ledger.check(); lap("check")
    import cProfile, pstats
    pr = cProfile.Profile(); pr.enable()
    ledger.repair(); lap("repair")
    pr.disable(); pstats.Stats(pr).sort_stats("cumulative").print_stats(25)

"""The ledger on gs:// (the GCS emulator): leases raced by threads, a damaged snapshot found by its checksum."""

from __future__ import annotations

import uuid

from gemini_batch.coordination.ledger import Ledger
from support.ledgers import all_answered, answers, compacted_twice, lease_race


def test_sixteen_threads_racing_for_a_gcs_lease_agree_on_one_winner(gcs_root):
    holders = lease_race(Ledger(gcs_root / "ledgers" / uuid.uuid4().hex))
    assert len(set(holders)) == 1 and holders[0].startswith("claim-")


# ---------------------------------------------------------------------- a damaged ledger


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

"""The benchmarks still run (their numbers are bin/bench's job, not the tests'): small sizes, real emulator."""

from __future__ import annotations

from pathlib import Path

from bench import collect, prepare


def test_collection_benchmark_writes_one_outcome_per_key_sent(tmp_path: Path):
    *floors, ours = collect.run(tmp_path, keys=2_500)
    made = ours.extra["generated"]
    assert made["jobs"] == 1 and made["keys"] == 2_500
    # every fault kind the generator drew ends as a failed outcome, missing rows included
    failures = sum(made[kind] for kind in ("truncated", "off_schema", "row_error", "missing"))
    assert ours.extra["keys"] == 2_500 and ours.extra["failed"] == failures > 0
    for floor in floors:  # one core and all cores
        assert floor.extra["rows"] == made["rows"] + made["jobs"], "the floor parses every line, the unknown key's too"


def test_preparation_benchmark_inlines_or_stages_every_pdf_and_times_the_baseline(tmp_path: Path):
    rows = {row.case.split(" (")[0]: row for row in prepare.run(tmp_path, 30)}
    inline, staged = rows["ours, PDFs inline"], rows["ours, PDFs uploaded first"]
    assert inline.extra["staged"] == 0 and inline.extra["rows"] == 30 and inline.extra["valid"]
    assert (
        staged.extra["staged"] == staged.extra["rows"] == 30 and staged.extra["failed"] == 0 and staged.extra["valid"]
    )
    assert rows["sequential baseline"].extra["documents"] == 30
    floors = [row for case, row in rows.items() if case.startswith("request floor")]
    assert floors and all(row.extra["documents"] == 30 for row in floors)
    assert "x baseline" in inline.compare and inline.met is not None and staged.met is None

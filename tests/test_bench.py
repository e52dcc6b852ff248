"""The benchmarks still run (their numbers are bin/bench's job, not the tests'): small sizes, real emulator."""

from __future__ import annotations

from pathlib import Path

from bench import collect, prepare


def test_collection_benchmark_writes_one_outcome_per_key_sent(tmp_path: Path):
    floor, ours = collect.run(tmp_path, keys=2_500)
    made = ours.extra["generated"]
    assert made["jobs"] == 1 and made["keys"] == 2_500
    # every fault kind the generator drew ends as a failed outcome, missing rows included
    failures = sum(made[kind] for kind in ("truncated", "off_schema", "row_error", "missing"))
    assert ours.extra["keys"] == 2_500 and ours.extra["failed"] == failures > 0
    assert floor.extra["rows"] == made["rows"] + made["jobs"], "the floor parses every line, the unknown key's too"


def test_preparation_benchmark_stages_every_pdf_and_times_the_baseline(tmp_path: Path):
    rows = {row.case.split(" (")[0]: row for row in prepare.run(tmp_path, 30)}
    ours = rows["ours: plan, stage, build, validate"]
    assert ours.extra["staged"] == ours.extra["rows"] == 30 and ours.extra["failed"] == 0 and ours.extra["valid"]
    assert rows["sequential baseline"].extra["documents"] == 30
    assert "x baseline" in ours.compare and ours.met is not None

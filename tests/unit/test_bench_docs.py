"""bin/bench rewrites the tables of docs/performance.md it measured, and nothing else."""

from __future__ import annotations


def test_bench_rewrites_only_the_tables_of_the_benchmarks_that_ran_between_the_markers():
    from bench.__main__ import BEGIN, END, write_docs
    from bench.common import Row

    docs = (
        f"# Performance\n\nHand-written text.\n\n{BEGIN}\n### preparation\n\nMeasured long ago:\n\n| old |\n\n"
        f"### collection\n\nMeasured long ago:\n\n| old collection |\n\n{END}\n\nHow each is measured.\n"
    )
    rows = [
        Row("collection", "ours", "1.00 GB", 7.161, "143 MB/s", 196.2, "3.8x the floor", ">=2x", False),
        Row("ledger", "plan 1,000 new PDFs", "ledger of 0 keys", 1.16, "860 docs/s", 189.1),
    ]
    written = write_docs(docs, rows, "2026-12-06 on 2 cores")
    assert written.startswith("# Performance\n\nHand-written text.\n\n" + BEGIN)
    assert written.endswith(END + "\n\nHow each is measured.\n")
    section = written.split(BEGIN)[1].split(END)[0]
    assert [line for line in section.splitlines() if line.startswith("### ")] == [
        "### preparation",
        "### collection",
        "### ledger",
    ]  # the benchmarks' own order, the one not run kept
    assert "| old |" in section and "old collection" not in section
    assert "Measured 2026-12-06 on 2 cores (`bin/bench --only collection`)" in section
    assert "| ours | 1.00 GB | 7.16 | 143 MB/s | 196.2 | 3.8x the floor |" in section  # targets are not written
    assert write_docs(written, rows, "2026-12-06 on 2 cores") == written  # stable: rewriting changes nothing

"""Run every benchmark and print one table: ``bin/bench`` (``--quick`` for a smoke run of a minute or two).

1. preparation: 1,000 and 10,000 PDFs (inline, and uploaded first) against the
   sequential baseline, the hash-only floor and the request floor (read,
   sha256, base64, write; one core and all), on loopback and with a 50 ms
   network round trip;
2. collection: a 1 GB output JSONL against a bare orjson loop (one core, all cores);
3. end-to-end: 2,000 PDFs, the whole ``dags test`` run against the
   hand-written script, 50 ms per request;
4. orchestration: the demo DAG under ``dags test`` split into Airflow and our
   tasks, and the triggerer's CPU per waiting job;
5. scaling: preparation and collection at 1k, 10k and 100k documents;
6. ledger: planning 1,000 new PDFs against 0, 100k and 1M answered keys;
7. sink: 10k and 100k results.jsonl records upserted into PostgreSQL (127.0.0.1:5432), then again as a re-run.

Targets are printed beside the numbers, never asserted. Generated inputs are
kept in the work folder (default /tmp/gemini-batch-bench) for the next run;
every row is also appended to artifacts/bench/results.jsonl.

With ``--write-docs`` (the default when every benchmark runs at full size) the
tables of the benchmarks that ran replace theirs in docs/performance.md,
between the ``<!-- bench:begin -->`` and ``<!-- bench:end -->`` markers; the
other benchmarks' tables and the text around the markers stay as they are.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import re
import sys
import time
from pathlib import Path

from bench import collect, end_to_end, ledger, orchestration, prepare, sink
from bench.common import ROOT, Row

CHOICES = ["preparation", "collection", "end-to-end", "orchestration", "scaling", "ledger", "sink"]

DOCS = ROOT / "docs" / "performance.md"
BEGIN, END = "<!-- bench:begin -->", "<!-- bench:end -->"
BENCH_ORDER = (
    "preparation",
    "collection",
    "end to end",
    "orchestration",
    "scaling",
    "ledger",
    "sink",
)  # Row.bench values
DOC_COLUMNS = ("case", "size", "seconds", "rate", "peak_rss_mb", "compare")  # targets stay in the printed table

COLUMNS = (
    ("bench", "benchmark"),
    ("case", "case"),
    ("size", "size"),
    ("seconds", "s"),
    ("rate", "rate"),
    ("peak_rss_mb", "peak RSS MB"),
    ("compare", "compared"),
    ("target", "target"),
    ("met", "met"),
)


def main() -> None:
    parser = argparse.ArgumentParser(prog="bin/bench", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes only: checks the benchmarks run")
    parser.add_argument("--only", choices=CHOICES, action="append")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/gemini-batch-bench"))
    parser.add_argument(
        "--write-docs",
        nargs="?",
        type=Path,
        const=DOCS,
        default=None,
        metavar="FILE",
        help="replace the tables of the benchmarks that ran in FILE (default docs/performance.md); "
        "on by default when every benchmark runs at full size",
    )
    parser.add_argument("--no-write-docs", action="store_true", help="do not touch docs/performance.md")
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    chosen = set(args.only or CHOICES)
    small, large = (200, 1_000) if args.quick else (1_000, 10_000)

    plans = []
    if "preparation" in chosen:
        plans += [
            lambda: prepare.run(args.workdir, small),
            lambda: prepare.run(args.workdir, large),
            lambda: prepare.run(args.workdir, small, latency_ms=50),
        ]
    if "collection" in chosen:
        plans.append(lambda: collect.run(args.workdir, 20 if args.quick else 1024))
    if "end-to-end" in chosen:
        plans.append(lambda: end_to_end.run(args.workdir, 200 if args.quick else 2_000))
    if "orchestration" in chosen:
        plans.append(lambda: orchestration.run(args.workdir, quick=args.quick))
    if "scaling" in chosen:
        for count in (small, large) if args.quick else (1_000, 10_000, 100_000):
            plans.append(
                lambda count=count: [
                    r
                    for r in prepare.run(args.workdir, count, baseline=False, staged=False, bench="scaling")
                    if r.case.startswith("ours")
                ]
            )
            plans.append(
                lambda count=count: [
                    r for r in collect.run(args.workdir, keys=count, bench="scaling") if r.case.startswith("ours")
                ]
            )

    if "ledger" in chosen:
        plans.append(lambda: ledger.run(args.workdir, small, (0, 2_000, 20_000) if args.quick else ledger.SIZES))
    if "sink" in chosen:
        plans.append(lambda: sink.run(args.workdir, (small, large) if args.quick else sink.SIZES))

    rows: list[Row] = []
    started = time.perf_counter()
    for plan in plans:
        for row in plan():
            rows.append(row)
            print(f"  {row.bench}: {row.case}, {row.size}: {row.seconds} s, {row.rate}", file=sys.stderr, flush=True)
    flat_memory(rows)
    print(table(rows))
    print(
        f"\n{len(rows)} rows in {time.perf_counter() - started:.0f} s on {platform.node()} "
        f"({platform.processor() or platform.machine()}, Python {platform.python_version()})"
    )
    record(rows, args.quick)
    docs = args.write_docs or (DOCS if not (args.only or args.quick) else None)
    if docs and not args.no_write_docs:
        measured = f"{dt.date.today().isoformat()} on {machine()}" + (
            " with --quick (small sizes: a smoke run, not representative)" if args.quick else ""
        )
        docs.write_text(write_docs(docs.read_text(), rows, measured))
        print(f"tables of {', '.join(sorted({row.bench for row in rows}))} written to {docs}")


def flat_memory(rows: list[Row], base: str = "10,000", large: str = "100,000", most: float = 1.1) -> None:
    """Mark each scaling row of the largest size with its peak RSS against the same case at ``base`` documents
    (the target: memory flat as inputs grow, within ``most`` times)."""

    def of_size(row: Row, count: str) -> bool:  # "100,000 PDFs", "108.9 MB, 100,000 keys in 10 jobs"
        return re.search(rf"(?<![\d,]){re.escape(count)} ", row.size) is not None

    scaling = [row for row in rows if row.bench == "scaling"]
    for row in scaling:
        if not of_size(row, large):
            continue
        kind = row.case.split(":")[0]
        smaller = [r for r in scaling if r.case.split(":")[0] == kind and of_size(r, base) and r.peak_rss_mb]
        if smaller and row.peak_rss_mb:
            ratio = row.peak_rss_mb / smaller[0].peak_rss_mb
            row.compare = f"{row.compare}; peak RSS {ratio:.2f}x the {base} run's".lstrip("; ")
            row.target, row.met = f"peak RSS <={most}x the {base} run's", ratio <= most


def cell(row: Row, name: str) -> str:
    value = getattr(row, name)
    if value is None:
        return ""
    if name == "met":
        return "yes" if value else "NO"
    if name == "seconds":
        return f"{value:.3g}"  # 0.013, 14.9, 487
    return f"{value:,.1f}" if isinstance(value, float) else str(value)


def table(rows: list[Row], columns: tuple[str, ...] = tuple(name for name, _ in COLUMNS)) -> str:
    """A Markdown table (it reads as plain text too)."""
    titles = dict(COLUMNS)
    lines = ["| " + " | ".join(titles[name] for name in columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(row, name) for name in columns) + " |" for row in rows]
    return "\n".join(lines)


def machine() -> str:
    """The machine, as a reader of the docs compares it with theirs: CPU model, cores usable, Python."""
    model = ""
    try:
        model = next(
            (
                line.split(":", 1)[1].strip()
                for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")
            ),
            "",
        )
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"{cores} cores ({model or platform.machine()}), {platform.system()}, Python {platform.python_version()}"


def write_docs(text: str, rows: list[Row], measured: str) -> str:
    """``text`` (docs/performance.md) with the section between BEGIN and END holding, per benchmark, a ``### name``
    heading, when and where it was measured, and its table: those of the benchmarks in ``rows`` new, the others as
    they were. Everything outside the markers is kept as written."""
    try:
        head, rest = text.split(BEGIN, 1)
        section, tail = rest.split(END, 1)
    except ValueError:
        raise SystemExit(f"bench: the {BEGIN} and {END} markers are missing from the docs file") from None
    blocks: dict[str, str] = {}
    name = None
    for line in section.strip("\n").splitlines():
        if line.startswith("### "):
            name = line[4:].strip()
            blocks[name] = ""
        elif name is not None:
            blocks[name] += line + "\n"
    for bench in dict.fromkeys(row.bench for row in rows):
        command = "bin/bench --only " + ("end-to-end" if bench == "end to end" else bench)
        blocks[bench] = (
            f"\nMeasured {measured} (`{command}`):\n\n"
            f"{table([row for row in rows if row.bench == bench], DOC_COLUMNS)}\n\n"
        )
    order = sorted(blocks, key=lambda b: BENCH_ORDER.index(b) if b in BENCH_ORDER else len(BENCH_ORDER))
    body = "".join(f"### {b}\n{blocks[b].rstrip()}\n\n" for b in order)
    return f"{head}{BEGIN}\n{body}{END}{tail}"


def record(rows: list[Row], quick: bool) -> None:
    target = ROOT / "artifacts" / "bench" / "results.jsonl"
    target.parent.mkdir(parents=True, exist_ok=True)
    at = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    with target.open("a") as out:
        for row in rows:
            out.write(json.dumps({"at": at, "quick": quick, **row.to_json()}) + "\n")


if __name__ == "__main__":
    main()

"""The collect step: every key of a round turned into an outcome, read from its job's output (downloads spooled to
local files, parsed here or, once the outputs are large, in a worker process per core), from another run's job or
from the ledger; the round's outcomes recorded in the ledger at once."""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import functools
import logging
import os
import tempfile
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import ClassVar

import msgspec
from airflow.sdk import ObjectStoragePath

from gemini_batch.coordination.claims import FROM_LEDGER
from gemini_batch.coordination.ledger import now_iso
from gemini_batch.core import jsonl, records, results
from gemini_batch.core.batch_requests import ShardManifest, ShardPieces
from gemini_batch.core.locations import as_path
from gemini_batch.core.processes import cores, worker_pool
from gemini_batch.core.records import Record
from gemini_batch.hooks.gemini import GeminiBatchHook
from gemini_batch.steps.runs import Run

log = logging.getLogger(__name__)
# A round's outputs are parsed in the task's process until they pass this size, then in a process per core
# (GEMINI_BATCH_PARSE_PROCESSES_AFTER_MB; 0: from the first output).
PARSE_PROCESSES_AFTER_BYTES = int(float(os.environ.get("GEMINI_BATCH_PARSE_PROCESSES_AFTER_MB", "64")) * 2**20)


def collect_results(run: Run, round_: int, jobs: Iterable[Mapping]) -> dict:
    """Turn every key of round ``round_`` into an outcome: answered, failed, or missing from its job's output.
    ``jobs``: what the round's submit and wait tasks handed on, one per shard; returns the round's counts."""
    jobs_by_manifest = {job["manifest_uri"]: job for job in jobs if job}
    tally = Tally()
    manifests = _manifests(run.folder.shards(round_))
    if not manifests:
        return records.to_builtins(tally.counts())  # nothing was requested in this round: no outcomes file
    slug = run.folder.slug
    with tempfile.TemporaryDirectory(prefix="gemini-batch-collect-") as spool:
        events = os.path.join(spool, "events.jsonl")
        with (
            jsonl.writer(run.folder.outcomes(round_)) as outcomes_out,
            jsonl.writer(events) as events_out,
        ):
            write = results.OutcomeWriter(outcomes_out, events_out, slug, now_iso())
            tally.write = write
            with OutputReader(run.service, run.settings.spec.response_schema, write, spool) as reader:
                _collect_round(run, manifests, jobs_by_manifest, reader, tally)
        # What was paid for survives a failed publish, and a later run reuses it. Adopted answers too: the run
        # that paid may have died before recording them.
        run.ledger.append_encoded(events, write.count, writer=slug)
    return records.to_builtins(tally.counts())


def _collect_round(
    run: Run,
    manifests: list[ObjectStoragePath],
    jobs_by_manifest: Mapping[str, Mapping],
    reader: OutputReader,
    tally: Tally,
) -> None:
    for manifest_file in manifests:
        manifest = ShardManifest.load(manifest_file)
        if manifest.piece_of is not None:
            continue  # collected with the shard it was split from
        expected = manifest.keys(manifest_file.conn_id)
        job = jobs_by_manifest.get(manifest.manifest_uri)
        if manifest.adopts is not None:
            _collect_adopted(run, manifest, job, expected, tally)
        elif job is None:
            tally.missing(expected, "no answer: the shard's job was not submitted")
        elif job.get("pieces_uri"):
            _collect_pieces(job, manifest_file.conn_id, reader, tally)
        else:
            tally.job_names.append(job["job_name"])
            tally.requests += len(expected)
            reader.read(job["job_name"], expected, functools.partial(job_read, job, tally))


def _collect_pieces(outcome: Mapping, conn_id: str | None, reader: OutputReader, tally: Tally) -> None:
    """A shard the service refused whole, submitted as pieces: each piece's job, or why it was refused."""
    pieces = ShardPieces.load(as_path(outcome["pieces_uri"], conn_id=conn_id))
    jobs = {job["job_name"]: job for job in outcome.get("piece_jobs") or []}
    for piece in pieces.pieces if pieces else []:
        expected = ShardManifest.load(as_path(piece.manifest_uri, conn_id=conn_id)).keys(conn_id)
        if piece.refused is not None:
            tally.missing(expected, piece.refused)
        elif piece.job_name is None:
            tally.missing(expected, "no answer: the shard's piece was not submitted")
        else:
            job = jobs.get(piece.job_name) or {"job_name": piece.job_name, "state": None}
            tally.job_names.append(piece.job_name)
            tally.requests += len(expected)
            reader.read(piece.job_name, expected, functools.partial(job_read, job, tally))


def _collect_adopted(
    run: Run, manifest: ShardManifest, outcome: Mapping | None, expected: list[str], tally: Tally
) -> None:
    """Outcomes of keys another run requested: from the jobs its claim submitted, or from the ledger."""
    if manifest.adopts == FROM_LEDGER:
        remaining = []
        with run.ledger.view() as ledger:
            for key in expected:
                if (record := ledger.finished(key)) is not None:
                    tally.write(msgspec.structs.replace(records.convert(record, results.RowOutcome), reused=True))
                    tally.keys += 1
                    tally.succeeded += 1
                else:
                    remaining.append(key)
        tally.missing(remaining, "no answer: another run released its lease before its answer reached the ledger")
        return
    remaining = expected
    for job in (outcome or {}).get("adopted_jobs") or []:
        if not remaining:
            break
        reading = results.read_output(
            run.service.iter_output_lines(run.service.get_job(job["job_name"])),
            remaining,
            run.settings.spec.response_schema,
            tally.write,
            adopted=True,
        )
        log.info("Job %s of claim %s (%s), adopted: %s", job["job_name"], manifest.adopts, job["state"], reading)
        tally.add(reading)
        remaining = reading.unanswered
    tally.missing(remaining, f"no answer: the job of run claim {manifest.adopts} that requested it gave none")


def _manifests(shard_folder: ObjectStoragePath) -> list[ObjectStoragePath]:
    if not shard_folder.exists():
        return []
    return sorted(p for p in shard_folder.iterdir() if p.name.endswith(".manifest.json"))


def job_read(job: Mapping, tally: Tally, reading: results.OutputReading) -> None:
    """Count one of this run's jobs' reading; the keys it did not answer fail, each with the reason."""
    log.info("Job %s (%s): %s", job["job_name"], job["state"], reading)
    tally.add(reading)
    reason = f"no answer: job {job['job_name']} ended {job['state']} before this row finished"
    if reading.unavailable:  # the rows not read yet go to the next round
        reason = f"no answer: job {job['job_name']} ended {job['state']} but its {reading.unavailable}"
        log.warning(
            "Job %s: %s; %d row(s) read before that, the rest will be retried",
            job["job_name"],
            reading.unavailable,
            reading.outcomes,
        )
    tally.missing(reading.unanswered, reason)


class OutputReader:
    """Reads a round's job outputs into its outcomes, using every core once the outputs are large.

    Each output is downloaded (through the hook, here) to a file in the local
    folder ``spool`` and parsed by ``results.read_output_file`` into an
    outcomes file and an events file of its own, which are then appended to
    the round's (``write``), in the order the jobs were read. Parsing runs
    here until the round's outputs pass ``PARSE_PROCESSES_AFTER_BYTES``, then
    in spawned processes, one per core, while this one downloads the next
    (files both ways: pickling outcomes back cost more than parsing them). At
    most two outputs per process wait on disk.
    """

    def __init__(
        self, hook: GeminiBatchHook, response_schema: Mapping | None, write: results.OutcomeWriter, spool: str
    ):
        self.hook, self.response_schema, self.write, self.spool = hook, response_schema, write, spool
        self.workers = cores()
        self.pending: collections.deque = collections.deque()  # (reading or its future, files, done)
        self.read_bytes = 0
        self.processes: concurrent.futures.ProcessPoolExecutor | None = None
        self.pools = contextlib.ExitStack()
        self.spooled = 0

    def __enter__(self) -> OutputReader:
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            if exc[0] is None:
                while self.pending:
                    self._finish_oldest()
        finally:
            self.pools.close()

    def read(self, job_name: str, expected: list[str], done: Callable[[results.OutputReading], None]) -> None:
        """Read job ``job_name``'s output for the keys ``expected``; ``done`` gets the reading, in job order."""
        self.spooled += 1
        output, outcomes, events = (
            os.path.join(self.spool, f"{self.spooled:05d}.{kind}.jsonl") for kind in ("output", "outcomes", "events")
        )
        unavailable = None
        with open(output, "wb", buffering=2**20) as out:
            try:
                for line in self.hook.iter_output_lines(self.hook.get_job(job_name)):
                    out.write(line)
                    out.write(b"\n")
            except results.OutputUnavailable as exc:  # the rows read so far count; the rest are unanswered
                unavailable = str(exc)
            self.read_bytes += out.tell()
        if self.processes is None and self.read_bytes > PARSE_PROCESSES_AFTER_BYTES and self.workers > 1:
            self.processes = self.pools.enter_context(worker_pool(self.workers))
            log.info(
                "Parsing outputs in %d worker processes from here (%.1f MB read)", self.workers, self.read_bytes / 2**20
            )
        parse = functools.partial(
            results.read_output_file,
            output,
            expected,
            self.response_schema,
            outcomes,
            events,
            run=self.write.lines.run,
            at=self.write.lines.at,
            unavailable=unavailable,
        )
        reading = self.processes.submit(parse) if self.processes else parse()
        self.pending.append((reading, (output, outcomes, events), done))
        while len(self.pending) > 2 * self.workers or (self.pending and self.processes is None):
            self._finish_oldest()

    def _finish_oldest(self) -> None:
        reading, (output, outcomes, events), done = self.pending.popleft()
        if isinstance(reading, concurrent.futures.Future):
            reading = reading.result()
        self.write.append_files(outcomes, events, reading.outcomes)
        for path in (output, outcomes, events):
            os.unlink(path)
        done(reading)


def _no_outcomes_file(outcome: results.RowOutcome) -> None:
    raise RuntimeError(f"outcome of {outcome.key} read before the round's outcomes file was opened")


@dataclass
class Tally:
    """A round's counts as its outcomes are written (``write``: the round's outcomes file)."""

    keys: int = 0
    succeeded: int = 0
    failed: int = 0
    requests: int = 0  # rows of this run's own jobs: what it sent
    job_names: list[str] = field(default_factory=list)  # this run's own jobs, not adopted ones
    write: Callable[[results.RowOutcome], None] = field(default=_no_outcomes_file)

    def add(self, reading: results.OutputReading) -> None:
        self.keys += reading.outcomes
        self.succeeded += reading.succeeded
        self.failed += reading.failed

    def missing(self, keys: list[str], reason: str) -> None:
        for key in keys:
            self.write(results.missing_outcome(key, reason))
        self.keys += len(keys)
        self.failed += len(keys)

    def counts(self) -> RoundCounts:
        return RoundCounts(self.keys, self.succeeded, self.failed, self.requests, list(self.job_names))


class RoundCounts(Record, frozen=True):
    """What a round's collect task hands to publish (through XCom): its keys' outcomes counted, and this run's own
    jobs and requests."""

    kind: ClassVar[str] = "round counts"

    keys: int = 0
    succeeded: int = 0
    failed: int = 0
    requests: int = 0  # rows of this run's own jobs: what it sent
    job_names: list[str] = msgspec.field(default_factory=list)  # this run's own jobs, not adopted ones

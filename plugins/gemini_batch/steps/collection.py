"""Reading a round's job outputs into its outcomes: downloads spooled to local files, parsed here or, once the
outputs are large, in a worker process per core."""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import functools
import logging
import os
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import ClassVar

import msgspec

from gemini_batch.core import jsonl, results
from gemini_batch.core.processes import cores, worker_pool
from gemini_batch.core.records import Record
from gemini_batch.hooks.gemini import GeminiBatchHook

log = logging.getLogger(__name__)
# A round's outputs are parsed in the task's process until they pass this size, then in a process per core
# (GEMINI_BATCH_PARSE_PROCESSES_AFTER_MB; 0: from the first output).
PARSE_PROCESSES_AFTER_BYTES = int(float(os.environ.get("GEMINI_BATCH_PARSE_PROCESSES_AFTER_MB", "64")) * 2**20)


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

    Each output is downloaded (through the hook, here) to a local spool file
    and parsed by ``results.read_output_file`` into an outcomes file of its
    own, which is then appended to the round's outcomes, in the order the jobs
    were read. Parsing runs here until the round's outputs pass
    ``PARSE_PROCESSES_AFTER_BYTES``, then in spawned processes, one per core,
    while this one downloads the next (files both ways: pickling outcomes
    back cost more than parsing them). At most two outputs per process wait
    on disk.
    """

    def __init__(self, hook: GeminiBatchHook, response_schema: Mapping | None, write: jsonl.Writer):
        self.hook, self.response_schema, self.write = hook, response_schema, write
        self.workers = cores()
        self.pending: collections.deque = collections.deque()  # (reading or its future, output, outcomes, done)
        self.read_bytes = 0
        self.processes: concurrent.futures.ProcessPoolExecutor | None = None
        self.pools = contextlib.ExitStack()
        self.spool = tempfile.TemporaryDirectory(prefix="gemini-batch-outputs-")
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
            self.spool.cleanup()

    def read(self, job_name: str, expected: list[str], done: Callable[[results.OutputReading], None]) -> None:
        """Read job ``job_name``'s output for the keys ``expected``; ``done`` gets the reading, in job order."""
        self.spooled += 1
        output, outcomes = (
            os.path.join(self.spool.name, f"{self.spooled:05d}.{kind}.jsonl") for kind in ("output", "outcomes")
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
            results.read_output_file, output, expected, self.response_schema, outcomes, unavailable=unavailable
        )
        self.pending.append((self.processes.submit(parse) if self.processes else parse(), output, outcomes, done))
        while len(self.pending) > 2 * self.workers or (self.pending and self.processes is None):
            self._finish_oldest()

    def _finish_oldest(self) -> None:
        reading, output, outcomes, done = self.pending.popleft()
        if isinstance(reading, concurrent.futures.Future):
            reading = reading.result()
        self.write.append_file(outcomes)
        for path in (output, outcomes):
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

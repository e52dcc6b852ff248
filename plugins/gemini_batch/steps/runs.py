"""One extraction run: its settings, its work folder, and the steps the DAG's tasks call.

Each task opens the run once (``Run.from_context``: settings checked once,
the ledger, the hook) and calls one method, its step. A step reads what
earlier steps wrote into the run's work folder and writes its own output
there, so a task can be retried or cleared on its own and XCom carries only
URIs and counts. What outlives the run (answers, leases, claims, jobs) is the
ledger's. Work folder layout, every file JSON lines (``gemini_batch.core.jsonl``)::

    <work>/plan.jsonl                      one line per discovered document
    <work>/staged/pass-<n>.jsonl           per key: its staged URI and expiry, or why it could not be staged
    <work>/staged/pass-round-<r>.jsonl     per key: why a text part (sent inline) could not be read for round r
    <shards>/round-<r>/*.jsonl             the requests of round r (+ .keys, .manifest.json)
    <work>/round-<r>/outcomes.jsonl        one outcome per key requested in round r

``<shards>`` is the work folder, or for Vertex AI the run's folder under the
gs:// staging prefix (Vertex reads its input from Cloud Storage only).
Each staging pass (the stage task, a retry's restaging) writes a file of its
own, read back in order with a later pass winning: a GCS object cannot be
appended to.
"""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import Iterable, Iterator, Mapping

import msgspec
import orjson
from airflow.providers.common.compat.lineage.hook import get_hook_lineage_collector
from airflow.sdk import ObjectStoragePath

from gemini_batch.coordination.claims import FROM_LEDGER, KeyClaimer, RunState, job_finder, job_state, run_state_of
from gemini_batch.coordination.ledger import Claim, EventKind, LedgerEvent, claim_id, now_iso
from gemini_batch.core import documents, jsonl, records, results
from gemini_batch.core.batch_requests import (
    ShardManifest,
    ShardPieces,
    inline_budget,
    write_adoption,
)
from gemini_batch.core.cost import PriceTable, load_prices
from gemini_batch.core.locations import as_path, is_gcs, uri_of
from gemini_batch.core.planned import Route, Routing
from gemini_batch.core.record_index import RecordIndex
from gemini_batch.core.settings import MAX_RETRY_ROUNDS, Retention
from gemini_batch.core.staged import StagedPart, StageFailure, stage_record
from gemini_batch.hooks.errors import StagingBucketUnusable, UnknownModel
from gemini_batch.hooks.gemini import GeminiBatchHook
from gemini_batch.hooks.uploads import FilesApiStager, GcsStager, shard_file_name
from gemini_batch.steps import plan
from gemini_batch.steps.collection import OutputReader, RoundCounts, Tally, job_read
from gemini_batch.steps.run_settings import (
    RunConfigError,
    RunFolder,
    RunSettings,
    prices_with_overrides,
)
from gemini_batch.steps.staging import Staging

log = logging.getLogger(__name__)
LINEAGE_EXTRA = "gemini_batch"  # the hook-lineage extra of a run's totals, read by operators.lineage_run_facets
FAILURES_LOGGED = 100  # the task log names this many failed documents with their reason; results.jsonl has all


# Input tokens one job may hold unless the connection states the quota: under the published tier-1
# enqueued-token quotas of the flash and pro models. A shard the service still refuses alone is split by the
# submit (operators); a 429 while other jobs are in flight is waited out.
DEFAULT_TOKENS_PER_JOB = 2_000_000


class Run:
    """One run as each of its tasks opens it: settings checked once, work folder, ledger and hook.

    Its methods are the DAG's steps, in order: ``plan``, ``check_budget``,
    ``stage``, ``build``, then per round ``collect`` and ``retry``, then
    ``publish`` and ``clean_up``.
    """

    def __init__(
        self,
        settings: RunSettings,
        run_id: str,
        hook: GeminiBatchHook | None = None,
        *,
        run_state: RunState | None = None,
        prices: PriceTable | None = None,
    ):
        self.settings = settings
        self.hook = hook
        self.prices = prices or load_prices()
        self.folder = RunFolder(settings, run_id, hook.backend if hook else "developer")
        self.ledger = settings.ledger()
        self.run_state: RunState = run_state or (lambda dag_id, run_id: None)

    @classmethod
    def from_context(cls, context: Mapping) -> Run:
        """The run of the task in ``context``: its params rendered and checked (RunConfigError names a bad one)."""
        hook = GeminiBatchHook(context["params"]["gemini_conn_id"])
        settings = RunSettings.from_context(context, gcp_conn_id=hook.gcp_conn_id)
        return cls(settings, context["run_id"], hook, run_state=run_state_of(context), prices=prices_with_overrides())

    @classmethod
    def from_params(cls, params: Mapping, run_id: str, hook: GeminiBatchHook | None = None, **kwargs) -> Run:
        """A run outside Airflow (tests, benchmarks): params as the DAG's, already rendered."""
        settings = RunSettings.from_params(params, gcp_conn_id=hook.gcp_conn_id if hook else None)
        return cls(settings, run_id, hook, **kwargs)

    @property
    def service(self) -> GeminiBatchHook:
        """The hook, for the steps that talk to the service (a run opened without one can only plan)."""
        if self.hook is None:
            raise RuntimeError("this run was opened without a hook: it can plan, not reach the service")
        return self.hook

    # ------------------------------------------------------------------ plan and stage

    def plan(self) -> plan.PlanSummary:
        """Every document, keyed; a key the ledger holds as answered (by any earlier run) is reused, not requested.

        First the service is asked for the model: an unknown or shut-down one fails the run before anything else;
        so does, on Vertex AI, a staging bucket the connection's region cannot use.
        """
        if self.hook is not None:
            try:
                self.hook.check_model(self.settings.spec.model)
                if self.settings.staging_prefix is not None:
                    self.hook.check_staging_bucket(uri_of(self.settings.staging_prefix))
            except (UnknownModel, StagingBucketUnusable) as exc:
                raise RunConfigError(str(exc)) from None
        settings = self.settings
        routing = Routing(
            inline_max_bytes=min(settings.inline_max_bytes, inline_budget(settings.spec, settings.max_bytes)),
            in_place=self.hook is not None and self.hook.backend == "vertex" and is_gcs(settings.source),
        )
        with self.ledger.view() as finished:
            summary = plan.plan_run(
                settings.source,
                settings.spec,
                self.folder.plan,
                finished=finished,
                limits=settings.limits,
                routing=routing,
                prices=self.prices,
            )
        log.info(
            "Planned %d requests: %d inline, %d referenced in place, %d to upload first",
            summary.requests,
            summary.routes[Route.INLINE],
            summary.routes[Route.IN_PLACE],
            summary.routes[Route.STAGED],
        )
        return summary

    def check_budget(self, summary: Mapping) -> None:
        """Over ``max_cost_usd``, or a budget set for a model without a price: fail before anything is submitted.
        ``summary``: the plan's summary as XCom carries it."""
        planned = records.convert(summary, plan.PlanSummary)
        estimate, limit = planned.estimate, self.settings.max_cost_usd
        if estimate.usd is None:
            message = self.prices.no_price(self.settings.spec.model)
            if limit is not None:
                raise RunConfigError(f"max_cost_usd ${limit:.4f} is set but the cost cannot be estimated: {message}")
            log.warning("The cost of this run is unknown: %s", message)
            return
        if limit is not None and estimate.usd > limit:
            raise RunConfigError(
                f"estimated cost ${estimate.usd:.4f} for {planned.requests} requests "
                f"({estimate.input_tokens:,} input + {estimate.output_tokens:,} output tokens) exceeds "
                f"max_cost_usd ${limit:.4f}; nothing was submitted"
            )

    def stage(self, *, only: set[str] | None = None) -> dict:
        """Stage every part to request (or the keys in ``only``) in one pass, recording each part's result."""
        items = (
            i for i in plan.parts_to_stage(self.folder.plan, self.settings.source) if only is None or i.key in only
        )
        stager: GcsStager | FilesApiStager
        if self.service.backend == "vertex":
            stager = GcsStager(self.folder.documents_prefix(), documents.open_planned)
        else:
            stager = FilesApiStager(self.service.get_conn(), documents.open_planned)
        counts = {"staged": 0, "failed": 0}
        with jsonl.writer(self.folder.next_pass()) as write:
            for result in stager.stage(items):
                write(result)
                counts["staged" if isinstance(result, StagedPart) else "failed"] += 1
        return counts

    @contextlib.contextmanager
    def staging(self) -> Iterator[Staging]:
        """The latest staging of each key: a later pass wins."""
        with RecordIndex() as index:
            for path in self.folder.passes():
                index.put(
                    {
                        **records.to_builtins(r := stage_record(data)),
                        "status": "failed" if isinstance(r, StageFailure) else "staged",
                    }
                    for data in jsonl.read(path)
                )
            yield Staging(index)

    # ------------------------------------------------------------------ build, collect, retry

    def reset_round(self, round_: int) -> None:
        """Forget what an earlier try of this run left for this round: a cleared run must not collect stale shards."""
        shards = self.folder.shards(round_)
        if shards.exists():
            shards.fs.rm(shards.path, recursive=True)
        self.folder.outcomes(round_).unlink(missing_ok=True)
        self.folder.unreadable(round_).unlink(missing_ok=True)

    def build(self, round_: int, *, only: set[str] | None = None) -> list[str]:
        """Claim round ``round_``'s keys, write the shards of those this run won and one adoption manifest per claim
        whose keys another run requests; return the manifest URIs (what the submit tasks map over)."""
        self.reset_round(round_)
        folder, ledger, hook = self.folder, self.ledger, self.hook
        me = Claim(
            claim_id(folder.slug, round_),
            self.settings.dag_id,
            folder.run_id,
            folder.slug,
            round_,
            uri_of(folder.shards(round_)),
            built=False,
            created_at=now_iso(),
        )
        ledger.write_claim(me)  # before any lease names it: a run that finds the lease must find the claim
        claimer = KeyClaimer(
            ledger,
            me,
            job_state=lambda name: job_state(hook, name),
            run_state=self.run_state,
            expiry=self.settings.expiry,
            conn_id=hook.gcp_conn_id if hook else None,
            find_job=job_finder(hook) if hook else None,
        )
        claimed = claimer.claim(plan.keys_to_request(folder.plan, only))
        with self.staging() as staged:
            manifests, unbuilt = plan.build_shards(
                folder.plan,
                self.settings.source,
                staged.parts,
                self.settings.spec,
                folder.shards(round_),
                max_rows=self.settings.max_rows,
                max_bytes=self.settings.max_bytes,
                max_tokens=(hook.enqueued_token_limit if hook else None) or DEFAULT_TOKENS_PER_JOB,
                only=only,
                skip=claimed.elsewhere(),
                prefix=f"r{round_}-shard",  # the shard id names the job: a retry of the same keys is a new job
                claim=me.claim,
                ledger=uri_of(ledger.folder),
            )
        manifests += [
            write_adoption(
                folder.shards(round_),
                f"r{round_}-adopt-{number:05d}",
                keys,
                adopts=holder,
                ledger=uri_of(ledger.folder),
            )
            for number, (holder, keys) in enumerate(sorted(claimed.adopted.items()))
        ]
        ledger.write_claim(msgspec.structs.replace(me, built=True))
        if unread := [StageFailure(key, error) for key, error in unbuilt.items() if error]:
            with jsonl.writer(folder.unreadable(round_)) as write:
                for failure in unread:
                    write(failure)
        if unbuilt:
            log.warning(
                "%d part(s) could not be staged or read and are not requested; see %s",
                len(unbuilt),
                uri_of(folder.staged),
            )
        return [m.manifest_uri for m in manifests]

    def retry(self, round_: int) -> list[str]:
        """Round ``round_``'s shards of the keys that failed so far; none past the run's retry_rounds."""
        failed = self.keys_to_retry(round_) if round_ <= self.settings.retry_rounds else set()
        if not failed:  # no later round runs either: none may keep what an earlier try of this run left
            for later in range(round_, MAX_RETRY_ROUNDS + 1):
                self.reset_round(later)
            return []
        return self.build(round_, only=failed)

    def keys_to_retry(self, round_: int) -> set[str]:
        """Keys whose latest outcome failed, staged again first.

        Staging again costs one lookup per key when the upload is still there; it
        replaces a Files API upload that expired (48 h) or is about to, or that
        another run's clean-up deleted, so a retry never sends a dead URI.
        """
        with self.latest_outcomes(round_ - 1) as (latest, _):
            failed = set(latest.keys("failed"))
        with self.staging() as staged:
            restage = {key for key in failed if key in staged.parts}
        if restage:
            log.info("Checking the staged uploads of %d key(s) to retry", len(restage))
            self.stage(only=restage)
        return failed

    def collect(self, round_: int, jobs: Iterable[Mapping]) -> dict:
        """Turn every key of round ``round_`` into an outcome: answered, failed, or missing from its job's output."""
        jobs_by_manifest = {job["manifest_uri"]: job for job in jobs if job}
        tally = Tally()
        manifests = _manifests(self.folder.shards(round_))
        if not manifests:
            return records.to_builtins(tally.counts())  # nothing was requested in this round: no outcomes file
        outcomes = self.folder.outcomes(round_)
        with (
            jsonl.writer(outcomes) as write,
            OutputReader(self.service, self.settings.spec.response_schema, write) as reader,
        ):
            tally.write = write
            for manifest_file in manifests:
                manifest = ShardManifest.load(manifest_file)
                if manifest.piece_of is not None:
                    continue  # collected with the shard it was split from
                expected = manifest.keys(manifest_file.conn_id)
                job = jobs_by_manifest.get(manifest.manifest_uri)
                if manifest.adopts is not None:
                    self._collect_adopted(manifest, job, expected, tally)
                elif job is None:
                    tally.missing(expected, "no answer: the shard's job was not submitted")
                elif job.get("pieces_uri"):
                    self._collect_pieces(job, manifest_file.conn_id, reader, tally)
                else:
                    tally.job_names.append(job["job_name"])
                    tally.requests += len(expected)
                    reader.read(job["job_name"], expected, functools.partial(job_read, job, tally))
        self._record_answers(outcomes)
        return records.to_builtins(tally.counts())

    @staticmethod
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

    def _record_answers(self, outcomes: ObjectStoragePath) -> None:
        """Put a round's outcomes in the ledger as soon as they are read: what was paid for survives a failed
        publish, and a later run reuses it. Adopted answers too: the run that paid may have died before
        recording them."""
        at, slug = now_iso(), self.folder.slug
        succeeded = results.OutcomeStatus.SUCCEEDED
        self.ledger.append(
            (
                LedgerEvent(
                    o.key,
                    EventKind.ANSWERED if o.status == succeeded else EventKind.FAILED,
                    slug,
                    at,
                    msgspec.structs.replace(o, reused=False) if o.reused else o,
                )
                for o in jsonl.read_records(outcomes, results.RowOutcome)
            ),
            writer=slug,
        )

    def _collect_adopted(
        self, manifest: ShardManifest, outcome: Mapping | None, expected: list[str], tally: Tally
    ) -> None:
        """Outcomes of keys another run requested: from the jobs its claim submitted, or from the ledger."""
        if manifest.adopts == FROM_LEDGER:
            remaining = []
            with self.ledger.view() as ledger:
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
                self.service.iter_output_lines(self.service.get_job(job["job_name"])),
                remaining,
                self.settings.spec.response_schema,
                tally.write,
                adopted=True,
            )
            log.info("Job %s of claim %s (%s), adopted: %s", job["job_name"], manifest.adopts, job["state"], reading)
            tally.add(reading)
            remaining = reading.unanswered
        tally.missing(remaining, f"no answer: the job of run claim {manifest.adopts} that requested it gave none")

    @contextlib.contextmanager
    def latest_outcomes(self, last_round: int) -> Iterator[tuple[RecordIndex, dict[str, int]]]:
        """Each key's outcome in the latest round that requested it (indexed on disk: outcomes carry the data), and
        the input and output tokens of all rounds.

        The tokens count every outcome read, not only the latest: failed attempts are billed too (but not what
        was read from another run's job).
        """
        tokens = {"input_tokens": 0, "output_tokens": 0}

        def read(round_: int) -> Iterator[tuple[str, str, bytes]]:
            for line in jsonl.lines(self.folder.outcomes(round_)):
                outcome = records.decode(line, results.RowOutcome)  # checks the record
                if not outcome.reused:  # another run's job: that run was billed
                    tokens["input_tokens"] += outcome.input_tokens
                    tokens["output_tokens"] += outcome.output_tokens
                yield outcome.key, outcome.status, line.rstrip()  # indexed as written

        with RecordIndex() as latest:
            for round_ in range(last_round + 1):
                latest.put_lines(read(round_))
            yield latest, tokens

    def last_round(self) -> int:
        rounds = range(self.settings.retry_rounds + 1)
        return max((r for r in rounds if self.folder.outcomes(r).exists()), default=0)

    # ------------------------------------------------------------------ publish and clean up

    def publish(self, collected: Iterable[Mapping]) -> dict:
        """Write results.jsonl and summary.json from the rounds ``collect`` returned.

        The summary's requests, jobs, tokens and cost are what this run sent and pays for: rows of its own
        jobs in every round; answers taken from the ledger or another run's job count in ``reused`` only.

        Lineage (hook-level: what a TaskFlow task can report; a no-op without the OpenLineage listener): the
        source folder in, results.jsonl out, and the run's totals (jobs, tokens) and job ids as extra
        ``LINEAGE_EXTRA``.
        """
        settings, ledger = self.settings, self.ledger
        rounds_read = [records.convert(counts, RoundCounts) for counts in collected]
        job_names = [name for counts in rounds_read for name in counts.job_names]
        requests = sum(counts.requests for counts in rounds_read)
        results_file = settings.output / "results.jsonl"  # one object for its writes and its lineage: one dataset
        rounds = self.last_round()
        totals = results.RunTotals()
        unsucceeded = 0
        with self.latest_outcomes(rounds) as (outcomes, tokens), ledger.view() as finished, self.staging() as staged:
            # A key whose latest staging (or inline read) failed was not requested after it: that failure is its
            # latest news, unless another run's job answered it meanwhile.
            unstaged = [
                records.to_builtins(results.missing_outcome(key, f"not requested: {error}"))
                for key, error in staged.failures()
                if (outcome := outcomes.get(key)) is None or outcome["status"] != results.OutcomeStatus.SUCCEEDED
            ]
            outcomes.put(unstaged)
            with jsonl.writer(results_file) as write:
                for doc in plan.read_plan(self.folder.plan):
                    answered = {
                        p.key: records.convert(o, results.RowOutcome) for p in doc.parts if (o := outcomes.get(p.key))
                    }
                    reused = {p.key: r for p in doc.parts if p.reused and (r := finished.finished(p.key)) is not None}
                    record = results.document_record(doc, answered, reused)
                    totals.add(record)
                    write(record)
                    if record.status != results.DocumentStatus.SUCCEEDED:
                        unsucceeded += 1
                        if unsucceeded <= FAILURES_LOGGED:
                            log.warning("%s %s: %s", record.status.capitalize(), record.document, record.error)
            if unsucceeded > FAILURES_LOGGED:
                log.warning(
                    "... and %d more documents failed or were rejected; all are in %s",
                    unsucceeded - FAILURES_LOGGED,
                    uri_of(results_file),
                )
        ledger.compact(writer=self.folder.slug)
        report = records.to_builtins(
            totals.summary(
                requests=requests,
                jobs=len(job_names),
                retry_rounds=rounds,
                **tokens,
                estimated_cost_usd=_rounded(self.prices.cost(settings.spec.model, **tokens)),  # None: no price
            )
        )
        (settings.output / "summary.json").write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2))
        lineage = get_hook_lineage_collector()
        for add, path in ((lineage.add_input_asset, settings.source), (lineage.add_output_asset, results_file)):
            add(path, uri=uri_of(path) if is_gcs(path) else f"file://{path.path}")
        lineage.add_extra(settings.output, LINEAGE_EXTRA, {**report, "job_names": job_names})
        return report

    def clean_up(self, job_names: Iterable[str] = (), job_inputs: Iterable[str] = ()) -> dict:
        """Cancel this run's unfinished jobs (no orphaned billing), delete files per ``retention``, release leases.

        The run's jobs are those its claims recorded in the ledger (every shard
        and piece, the name recorded before each create); ``job_names`` and
        ``job_inputs`` add others. staged: the staged documents and the jobs'
        uploaded input files; all: also
        the jobs' output files and the run's work folders. A staged document whose
        key another run's claim now holds is left alone: that run's job reads it
        (the Files API deletes it after 48 h anyway). The run's leases are released
        last, so no other run takes a key over while this one still deletes.
        """
        settings, folder, ledger, hook = self.settings, self.folder, self.ledger, self.service
        mine = {claim_id(folder.slug, round_) for round_ in range(settings.retry_rounds + 1)}
        recorded = [job for claim in sorted(mine) for job in ledger.claim_jobs(claim)]
        job_names = list(dict.fromkeys([*job_names, *(job.job_name for job in recorded if job.job_name)]))
        if hook.backend == "developer":  # the SDK does not report a Developer API job's input: it is named after it
            job_inputs = [
                *job_inputs,
                *(f"files/{shard_file_name(job.display_name)}" for job in recorded if job.display_name),
            ]
        cancelled = sum(bool(hook.cancel_job(name)) for name in job_names)
        leases = ledger.current_leases()
        run_keys = set(plan.keys_to_request(folder.plan)) if folder.plan.exists() else set()
        held = ledger.holders({key: leases[key] for key in run_keys if key in leases})
        counts = {"deleted": 0, "gone": 0, "failed": 0}
        kept = 0
        if settings.retention in (Retention.STAGED, Retention.ALL):
            uris = list(dict.fromkeys(job_inputs))
            if settings.retention == Retention.ALL:
                for name in job_names:
                    job = hook.get_job(name)
                    if job.dest and job.dest.file_name:
                        uris.append(job.dest.file_name)
            with self.staging() as staged:
                for key, part in staged.parts.items():
                    if held.get(key) is None or held[key] in mine:
                        uris.append(part.uri)
                    else:
                        kept += 1
            counts = hook.delete_files(uri for uri in uris if uri)
        if kept:
            log.info("Left %d staged document(s) in place: another run's claim holds their keys", kept)
        if settings.retention == Retention.ALL:
            for path in {uri_of(folder.work): folder.work, uri_of(folder.remote): folder.remote}.values():
                if path.exists():
                    path.fs.rm(path.path, recursive=True)
        released = ledger.release({key: leases[key] for key, holder in held.items() if holder in mine})
        return {
            "cancelled_jobs": cancelled,
            "deleted_files": counts["deleted"] + counts["gone"],
            "released_leases": released,
        }


# ------------------------------------------------------------------ helpers


def _rounded(usd: float | None) -> float | None:
    return None if usd is None else round(usd, 6)


def _manifests(shard_folder: ObjectStoragePath) -> list[ObjectStoragePath]:
    if not shard_folder.exists():
        return []
    return sorted(p for p in shard_folder.iterdir() if p.name.endswith(".manifest.json"))

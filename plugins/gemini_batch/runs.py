"""The steps of one extraction run, as the DAG's tasks call them.

Each step reads what earlier steps wrote into the run's work folder and
writes its own output there, so a task can be retried or cleared on its own
and XCom carries only URIs and counts. Work folder layout::

    <work>/plan.jsonl                      one line per discovered document
    <work>/staged/pass-<n>.jsonl           key -> staged URI (and expiry), one file per staging pass
    <work>/stage-failures/pass-<n>.jsonl   key -> why it could not be staged in that pass
    <work>/stage-failures/pass-round-<r>.jsonl  key -> why a text part (inline) could not be read for round r
    <shards>/round-<r>/shard-*.jsonl       the requests of round r (+ .keys, .manifest.json)
    <work>/round-<r>/outcomes.jsonl        one outcome per key requested in round r

``<shards>`` is the work folder, or for Vertex AI the run's folder under the
gs:// staging prefix (Vertex reads its input from Cloud Storage only).
Each staging pass (the stage task, a retry's restaging) writes files of its
own, read back in order with later passes winning: a GCS object cannot be
appended to.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import hashlib
import logging
import os
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jsonschema
import orjson
from airflow.sdk import ObjectStoragePath

from gemini_batch import documents, plan, results
from gemini_batch.batch_requests import RequestSpec, ShardManifest
from gemini_batch.claims import FROM_LEDGER, KeyClaimer, job_state
from gemini_batch.cost import load_prices
from gemini_batch.ledger import Claim, Ledger, LedgerEvent, claim_id, now_iso
from gemini_batch.locations import as_path, is_gcs, uri_of
from gemini_batch.record_index import RecordIndex
from gemini_batch.staging import FilesApiStager, GcsStager, StagedPart

log = logging.getLogger(__name__)
WRITE_BATCH_BYTES = 2**20
FAILURES_LOGGED = 100  # the task log names this many failed documents with their reason; results.jsonl has all

PROJECT_ROOT = Path(__file__).resolve().parents[2]
RETENTIONS = ("keep", "staged", "all")
LEDGER_ROOT_ENV = "GEMINI_BATCH_STATE"  # where each DAG's ledger lives unless the state param names one
TEMPLATED_PARAMS = ("source", "output", "state", "staging_prefix")


RunState = Callable[[str, str], "str | None"]  # (dag id, run id) -> the run's state, from Airflow; None: unknown


class RunConfigError(ValueError):
    """A run's parameters cannot work; the message names the parameter."""


@dataclass(frozen=True)
class RunSettings:
    """A run's parameters, checked once, from the DAG params."""

    source: ObjectStoragePath
    output: ObjectStoragePath
    spec: RequestSpec
    gemini_conn_id: str = "gemini_default"
    dag_id: str = "gemini_batch_extract"
    state: ObjectStoragePath | None = None  # the ledger's folder (from_params: default_ledger(dag_id) if not given)
    staging_prefix: ObjectStoragePath | None = None  # Vertex: gs:// prefix for documents, shards and outputs
    limits: documents.Limits = field(default_factory=documents.Limits)
    max_rows: int = 10_000
    max_bytes: int = 100 * 2**20
    max_cost_usd: float | None = None
    retry_rounds: int = 2
    retention: str = "staged"
    expiry: dt.timedelta = dt.timedelta(hours=24)

    @classmethod
    def from_params(
        cls, params: Mapping, *, gcp_conn_id: str | None = None, dag_id: str = "gemini_batch_extract",
    ) -> RunSettings:
        try:
            spec = RequestSpec(
                model=params["model"], prompt=params["prompt"], response_schema=params.get("response_schema"),
                thinking=params.get("thinking", "low"),
            )
            limits = documents.Limits(
                max_pages=int(params.get("max_pages", 50)), max_part_bytes=int(params.get("max_part_mb", 50)) * 2**20,
            )
            if spec.response_schema is not None:
                results.check_schema(spec.response_schema)
        except jsonschema.SchemaError as exc:
            raise RunConfigError(f"response_schema is not a valid JSON schema: {exc.message}") from None
        except (ValueError, TypeError) as exc:
            raise RunConfigError(f"invalid parameters: {exc}") from None
        try:
            load_prices().model_id(spec.model)  # a model without a price is unknown here: fail before any upload
        except ValueError as exc:
            raise RunConfigError(f"model: {exc} (a new model needs its prices in include/prices.json)") from None
        if params.get("retention", "staged") not in RETENTIONS:
            raise RunConfigError(f"retention must be one of {RETENTIONS}, got {params['retention']!r}")
        source = _location(params["source"], "source", gcp_conn_id)
        output = _location(params["output"], "output", gcp_conn_id)
        state = (_location(params["state"], "state", gcp_conn_id) if params.get("state")
                 else default_ledger(dag_id, gcp_conn_id))
        for name, location in (("output", output), ("state", state)):
            if location is not None and _inside(location, source):
                raise RunConfigError(f"{name} {uri_of(location)} is inside source {uri_of(source)}: "
                                     "the run's own files would be read as documents")
        staging = params.get("staging_prefix")
        return cls(
            source=source,
            output=output,
            spec=spec,
            gemini_conn_id=params.get("gemini_conn_id") or "gemini_default",
            dag_id=dag_id,
            state=state,
            staging_prefix=_location(staging, "staging_prefix", gcp_conn_id) if staging else None,
            limits=limits,
            max_rows=int(params.get("max_rows_per_job", 10_000)),
            max_bytes=int(params.get("max_mb_per_job", 100)) * 2**20,
            max_cost_usd=params.get("max_cost_usd"),
            retry_rounds=int(params.get("retry_rounds", 2)),
            retention=params.get("retention", "staged"),
            expiry=dt.timedelta(hours=float(params.get("expiry_hours", 24))),
        )

    @classmethod
    def from_context(cls, context: Mapping, *, gcp_conn_id: str | None = None) -> RunSettings:
        """The run's params with the location ones rendered, so ``gs://landing/{{ ds }}/`` means that day's folder."""
        render = dict(context)
        if render.get("ds") is None:  # a manual run without a logical date: the day it runs
            render["ds"] = context["dag_run"].run_after.strftime("%Y-%m-%d")
        params = dict(context["params"])
        for name in TEMPLATED_PARAMS:
            if isinstance(params.get(name), str):
                params[name] = context["task"].render_template(params[name], render)
        return cls.from_params(params, gcp_conn_id=gcp_conn_id, dag_id=context["dag"].dag_id)

    def ledger(self) -> Ledger:
        return Ledger(self.state or default_ledger(self.dag_id))


def default_ledger(dag_id: str, gcp_conn_id: str | None = None) -> ObjectStoragePath:
    """``$GEMINI_BATCH_STATE/<dag id>``, else ``$AIRFLOW_HOME/gemini_batch/ledger/<dag id>``: never the run's
    output or date, so every run of the DAG shares it. Workers on several machines need a shared one (gs://)."""
    root = os.environ.get(LEDGER_ROOT_ENV) or os.path.join(
        os.environ.get("AIRFLOW_HOME") or os.path.expanduser("~/airflow"), "gemini_batch", "ledger")
    return _location(root.rstrip("/") + "/" + dag_id, LEDGER_ROOT_ENV, gcp_conn_id)


def _location(value: str, name: str, conn_id: str | None) -> ObjectStoragePath:
    if not isinstance(value, str) or not value.strip():
        raise RunConfigError(f"{name}: give a local folder or a gs:// prefix, got {value!r}")
    value = value.strip()
    if "://" not in value and not Path(value).is_absolute():
        value = str(PROJECT_ROOT / value)  # relative to the project, wherever Airflow runs from
    return as_path(value, conn_id=conn_id if value.startswith("gs://") else None)


def _inside(path: ObjectStoragePath, folder: ObjectStoragePath) -> bool:
    """``path`` is ``folder`` or below it (local paths compared where their symlinks lead)."""
    if is_gcs(path) != is_gcs(folder):
        return False
    inner, outer = (uri_of(p) if is_gcs(p) else os.path.realpath(p.path) for p in (path, folder))
    return (inner.rstrip("/") + "/").startswith(outer.rstrip("/") + "/")


class RunFolder:
    """Where one run keeps its work files (see the module docstring)."""

    def __init__(self, settings: RunSettings, run_id: str, backend: str):
        self.run_id = run_id
        self.slug = run_slug(run_id)
        self.work = settings.output / "_work" / self.slug
        if backend == "vertex":
            if settings.staging_prefix is None or not is_gcs(settings.staging_prefix):
                raise RunConfigError("staging_prefix: Vertex AI reads documents and requests from Cloud Storage; "
                                     "give a gs://bucket/prefix")
            self.remote = settings.staging_prefix / self.slug
        else:
            self.remote = self.work
        self.plan = self.work / "plan.jsonl"
        self.staged = self.work / "staged"
        self.stage_failures = self.work / "stage-failures"

    def shards(self, round_: int) -> ObjectStoragePath:
        return self.remote / f"round-{round_}"

    def outcomes(self, round_: int) -> ObjectStoragePath:
        return self.work / f"round-{round_}" / "outcomes.jsonl"

    def unreadable(self, round_: int) -> ObjectStoragePath:
        """Text parts go inline, read when round ``round_`` is built: failing that is their staging failure."""
        return self.stage_failures / f"pass-round-{round_}.jsonl"

    def documents_prefix(self) -> ObjectStoragePath:
        """Vertex: staged documents are shared by key across runs, so they live beside the runs."""
        return self.remote.parent / "documents"


def run_slug(run_id: str) -> str:
    """A folder- and display-name-safe, unique form of a run id."""
    readable = re.sub(r"[^a-z0-9]+", "-", run_id.lower()).strip("-")[:40]
    return f"{readable}-{hashlib.sha256(run_id.encode()).hexdigest()[:8]}"


# ------------------------------------------------------------------ plan and stage


def plan_documents(settings: RunSettings, folder: RunFolder) -> plan.PlanSummary:
    """Every document, keyed; a key the ledger holds as answered (by any earlier run) is reused, not requested."""
    with settings.ledger().view() as finished:
        return plan.plan_run(
            settings.source, settings.spec, folder.plan, finished=finished, limits=settings.limits, prices=load_prices(),
        )


def check_budget(summary: Mapping, max_cost_usd: float | None) -> None:
    estimate = summary["estimate"]
    if max_cost_usd is not None and estimate["usd"] > max_cost_usd:
        raise RunConfigError(
            f"estimated cost ${estimate['usd']:.4f} for {summary['requests']} requests "
            f"({estimate['input_tokens']:,} input + {estimate['output_tokens']:,} output tokens) exceeds "
            f"max_cost_usd ${max_cost_usd:.4f}; nothing was submitted"
        )


def stage_documents(settings: RunSettings, folder: RunFolder, hook, *, only: set[str] | None = None) -> dict:
    """Stage every part to request (or the keys in ``only``); record the pass in its own staged and failures files."""
    items = (i for i in plan.parts_to_stage(folder.plan, settings.source) if only is None or i.key in only)
    if hook.backend == "vertex":
        stager = GcsStager(folder.documents_prefix(), documents.open_part)
    else:
        stager = FilesApiStager(hook.get_conn(), documents.open_part)
    staged = failed = 0
    name = f"pass-{len(_passes(folder.staged)):05d}.jsonl"
    for pass_folder in (folder.staged, folder.stage_failures):
        pass_folder.mkdir(parents=True, exist_ok=True)
    with (folder.staged / name).open("wb") as ok_out, (folder.stage_failures / name).open("wb") as failed_out:
        for result in stager.stage(items):
            if isinstance(result, StagedPart):
                ok_out.write(orjson.dumps(result.to_json()) + b"\n")
                staged += 1
            else:
                failed_out.write(orjson.dumps({"key": result.key, "error": result.error}) + b"\n")
                failed += 1
    return {"staged": staged, "failed": failed}


class StagedParts(Mapping[str, StagedPart]):
    """The latest staging of each key, read through an on-disk index (a run may stage millions of parts)."""

    def __init__(self, index: RecordIndex):
        self._index = index

    def __getitem__(self, key: str) -> StagedPart:
        record = self._index.get(key)
        if record is None:
            raise KeyError(key)
        return StagedPart.from_json(record)

    def __contains__(self, key: object) -> bool:
        return key in self._index

    def __iter__(self) -> Iterator[str]:
        return self._index.keys()

    def __len__(self) -> int:
        return len(self._index)


@contextlib.contextmanager
def read_staged(folder: RunFolder) -> Iterator[StagedParts]:
    """The latest staging of each key: a later pass wins."""
    with RecordIndex() as index:
        for path in _passes(folder.staged):
            index.put(StagedPart.from_json(record).to_json() for record in _read_jsonl(path))  # checked records
        yield StagedParts(index)


def read_stage_failures(folder: RunFolder) -> dict[str, str]:
    """Why each key that no pass staged could not be staged (its latest reason)."""
    with read_staged(folder) as staged:
        return {f["key"]: f["error"] for f in _read_passes(folder.stage_failures) if f["key"] not in staged}


# ------------------------------------------------------------------ build, collect, retry


def reset_round(folder: RunFolder, round_: int) -> None:
    """Forget what an earlier try of this run left for this round: a cleared run must not collect stale shards."""
    shards = folder.shards(round_)
    if shards.exists():
        shards.fs.rm(shards.path, recursive=True)
    folder.outcomes(round_).unlink(missing_ok=True)
    folder.unreadable(round_).unlink(missing_ok=True)


def build_round(
    settings: RunSettings, folder: RunFolder, round_: int, hook, *, only: set[str] | None = None,
    run_state: RunState = lambda dag_id, run_id: None,
) -> list[str]:
    """Claim round ``round_``'s keys, write the shards of those this run won and one adoption manifest per claim
    whose keys another run requests; return the manifest URIs (what the submit tasks map over)."""
    reset_round(folder, round_)
    ledger = settings.ledger()
    me = Claim(claim_id(folder.slug, round_), settings.dag_id, folder.run_id, folder.slug, round_,
               uri_of(folder.shards(round_)), built=False, created_at=now_iso())
    ledger.write_claim(me)  # before any lease names it: a run that finds the lease must find the claim
    claimer = KeyClaimer(ledger, me, job_state=lambda name: job_state(hook, name), run_state=run_state,
                         expiry=settings.expiry, conn_id=hook.gcp_conn_id if hook else None)
    claimed = claimer.claim(plan.keys_to_request(folder.plan, only))
    with read_staged(folder) as staged:
        manifests, unbuilt = plan.build_shards(
            folder.plan, settings.source, staged, settings.spec, folder.shards(round_),
            max_rows=settings.max_rows, max_bytes=settings.max_bytes, only=claimed.won,
            prefix=f"r{round_}-shard",  # the shard id names the job: a retry of the same keys is a new job
            claim=me.claim, ledger=uri_of(ledger.folder),
        )
    manifests += _write_adoptions(folder.shards(round_), round_, claimed.adopted, uri_of(ledger.folder))
    ledger.write_claim(dataclasses.replace(me, built=True))
    if unread := [{"key": key, "error": error} for key, error in unbuilt.items() if error]:
        folder.stage_failures.mkdir(parents=True, exist_ok=True)
        folder.unreadable(round_).write_bytes(b"".join(orjson.dumps(failure) + b"\n" for failure in unread))
    if unbuilt:
        log.warning("%d part(s) could not be staged or read and are not requested; see %s",
                    len(unbuilt), uri_of(folder.stage_failures))
    return [m.manifest_uri for m in manifests]


def _write_adoptions(
    folder: ObjectStoragePath, round_: int, adopted: Mapping[str, list[str]], ledger_uri: str,
) -> list[ShardManifest]:
    """One manifest per claim this round waits for instead of requesting its keys."""
    written = []
    folder.mkdir(parents=True, exist_ok=True)
    for number, (holder, keys) in enumerate(sorted(adopted.items())):
        shard_id = f"r{round_}-adopt-{number:05d}"
        keys_path, manifest_path = folder / f"{shard_id}.keys", folder / f"{shard_id}.manifest.json"
        keys_path.write_bytes(b"".join(key.encode() + b"\n" for key in keys))
        manifest = ShardManifest(shard_id, "", len(keys), 0, uri_of(keys_path), uri_of(manifest_path),
                                 ledger=ledger_uri, adopts=holder)
        manifest_path.write_bytes(orjson.dumps(manifest.to_json(), option=orjson.OPT_INDENT_2))
        written.append(manifest)
    return written


def retry_round(
    settings: RunSettings, folder: RunFolder, round_: int, hook, *, run_state: RunState = lambda dag_id, run_id: None,
) -> list[str]:
    """Round ``round_``'s shards of the keys that failed so far; none past the run's retry_rounds."""
    failed = keys_to_retry(settings, folder, round_, hook) if round_ <= settings.retry_rounds else set()
    if not failed:
        reset_round(folder, round_)
        return []
    return build_round(settings, folder, round_, hook, only=failed, run_state=run_state)


def keys_to_retry(settings: RunSettings, folder: RunFolder, round_: int, hook) -> set[str]:
    """Keys whose latest outcome failed, staged again first.

    Staging again costs one lookup per key when the upload is still there; it
    replaces a Files API upload that expired (48 h) or is about to, or that
    another run's clean-up deleted, so a retry never sends a dead URI.
    """
    with latest_outcomes(folder, round_ - 1) as (latest, _):
        failed = set(latest.keys("failed"))
    with read_staged(folder) as staged:
        restage = {key for key in failed if key in staged}
    if restage:
        log.info("Checking the staged uploads of %d key(s) to retry", len(restage))
        stage_documents(settings, folder, hook, only=restage)
    return failed


def collect_round(settings: RunSettings, folder: RunFolder, round_: int, jobs: Iterable[Mapping], hook) -> dict:
    """Turn every key of round ``round_`` into an outcome: answered, failed, or missing from its job's output."""
    jobs_by_manifest = {job["manifest_uri"]: job for job in jobs if job}
    counts = {"keys": 0, "succeeded": 0, "failed": 0, "jobs": 0}
    manifests = _manifests(folder.shards(round_))
    if not manifests:
        return counts  # nothing was requested in this round: no outcomes file, the round did not happen
    target = folder.outcomes(round_)
    target.parent.mkdir(parents=True, exist_ok=True)
    with jsonl_writer(target) as write:  # orjson writes a RowOutcome dataclass as its to_json()

        def write_missing(keys: list[str], reason: str) -> None:
            for key in keys:
                write(results.missing_outcome(key, reason))
            counts["keys"] += len(keys)
            counts["failed"] += len(keys)

        for manifest_file in manifests:
            manifest = ShardManifest.load(manifest_file)
            with as_path(manifest.keys_uri, conn_id=manifest_file.conn_id).open("rb") as keys_file:
                expected = [line.decode().strip() for line in keys_file if line.strip()]
            job = jobs_by_manifest.get(manifest.manifest_uri)
            if manifest.adopts is not None:
                counts = _collect_adopted(settings, manifest, job, expected, hook, write, write_missing, counts)
                continue
            if job is None:
                write_missing(expected, "no answer: the shard's job was not submitted")
                continue
            counts["jobs"] += 1
            reading = results.read_output(
                hook.iter_output_lines(hook.get_job(job["job_name"])), expected, settings.spec.response_schema, write)
            del expected  # the reading holds the keys from here on
            log.info("Job %s (%s): %s", job["job_name"], job["state"], reading)
            counts["keys"] += reading.outcomes
            counts["succeeded"] += reading.succeeded
            counts["failed"] += reading.failed
            reason = f"no answer: job {job['job_name']} ended {job['state']} before this row finished"
            if reading.unavailable:  # the rows not read yet go to the next round
                reason = f"no answer: job {job['job_name']} ended {job['state']} but its {reading.unavailable}"
                log.warning("Job %s: %s; %d row(s) read before that, the rest will be retried",
                            job["job_name"], reading.unavailable, reading.outcomes)
            write_missing(reading.unanswered, reason)
    return counts


def _collect_adopted(settings: RunSettings, manifest: ShardManifest, outcome: Mapping | None, expected: list[str],
                     hook, write, write_missing, counts: dict) -> dict:
    """Outcomes of keys another run requested: from the jobs its claim submitted, or from the ledger."""
    if manifest.adopts == FROM_LEDGER:
        with settings.ledger().view() as ledger:
            remaining = []
            for key in expected:
                if (record := ledger.finished(key)) is not None:
                    write(dataclasses.replace(results.RowOutcome.from_json(record), reused=True))
                    counts["keys"] += 1
                    counts["succeeded"] += 1
                else:
                    remaining.append(key)
        write_missing(remaining, "no answer: another run released its lease before its answer reached the ledger")
        return counts
    remaining = expected
    for job in (outcome or {}).get("adopted_jobs") or []:
        if not remaining:
            break
        reading = results.read_output(hook.iter_output_lines(hook.get_job(job["job_name"])), remaining,
                                      settings.spec.response_schema, write, adopted=True)
        log.info("Job %s of claim %s (%s), adopted: %s", job["job_name"], manifest.adopts, job["state"], reading)
        counts["keys"] += reading.outcomes
        counts["succeeded"] += reading.succeeded
        counts["failed"] += reading.failed
        remaining = reading.unanswered
    write_missing(remaining, f"no answer: the job of run claim {manifest.adopts} that requested it gave none")
    return counts


@contextlib.contextmanager
def latest_outcomes(folder: RunFolder, last_round: int) -> Iterator[tuple[RecordIndex, dict[str, int]]]:
    """Each key's outcome in the latest round that requested it (indexed on disk: outcomes carry the data), and
    the input and output tokens of all rounds.

    The tokens count every outcome read, not only the latest: failed attempts are billed too (but not what
    was read from another run's job).
    """
    tokens = {"input_tokens": 0, "output_tokens": 0}

    def read(round_: int) -> Iterator[dict]:
        for data in _read_jsonl(folder.outcomes(round_)):
            outcome = results.RowOutcome.from_json(data)  # checks the record
            if not outcome.reused:  # another run's job: that run was billed
                tokens["input_tokens"] += outcome.input_tokens
                tokens["output_tokens"] += outcome.output_tokens
            yield data

    with RecordIndex() as latest:
        for round_ in range(last_round + 1):
            latest.put(read(round_))
        yield latest, tokens


def last_round(folder: RunFolder, retry_rounds: int) -> int:
    return max((r for r in range(retry_rounds + 1) if folder.outcomes(r).exists()), default=0)


# ------------------------------------------------------------------ publish and clean up


def publish(settings: RunSettings, folder: RunFolder, summary: Mapping, *, jobs: int) -> dict:
    """Write results.jsonl and summary.json (contract 6) and append this run's answers to the ledger."""
    rounds = last_round(folder, settings.retry_rounds)
    ledger = settings.ledger()
    totals = results.RunTotals()
    unsucceeded = 0
    settings.output.mkdir(parents=True, exist_ok=True)
    with latest_outcomes(folder, rounds) as (outcomes, tokens), ledger.view() as finished:
        outcomes.put((results.missing_outcome(key, f"not requested: {error}").to_json()
                      for key, error in read_stage_failures(folder).items()), replace=False)
        with jsonl_writer(settings.output / "results.jsonl") as write:
            for doc in plan.read_plan(folder.plan):
                answered = {p.key: results.RowOutcome.from_json(o) for p in doc.parts if (o := outcomes.get(p.key))}
                reused = {p.key: r for p in doc.parts if p.reused and (r := finished.finished(p.key)) is not None}
                record = results.document_record(doc, answered, reused)
                totals.add(record)
                write(record)
                if record["status"] != "succeeded":
                    unsucceeded += 1
                    if unsucceeded <= FAILURES_LOGGED:
                        log.warning("%s %s: %s", record["status"].capitalize(), record["document"], record["error"])
        if unsucceeded > FAILURES_LOGGED:
            log.warning("... and %d more documents failed or were rejected; all are in %s",
                        unsucceeded - FAILURES_LOGGED, uri_of(settings.output / "results.jsonl"))
        at = now_iso()
        # Adopted answers too: the run that paid for them may have died before it could record them.
        ledger.append((LedgerEvent(o["key"], "answered" if o["status"] == "succeeded" else "failed", folder.slug, at,
                                   {**o, "reused": False}) for o in outcomes.records()), writer=folder.slug)
    ledger.compact(writer=folder.slug)
    report = totals.to_json(
        requests=summary["requests"], jobs=jobs, retry_rounds=rounds, **tokens,
        estimated_cost_usd=round(summary["estimate"]["usd"], 6),
    )
    (settings.output / "summary.json").write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2))
    return report


def clean_up(
    settings: RunSettings, folder: RunFolder, hook, job_names: Iterable[str], job_inputs: Iterable[str] = (),
) -> dict:
    """Cancel this run's unfinished jobs (no orphaned billing), delete files per ``retention``, release leases.

    staged: the staged documents and the jobs' uploaded input files; all: also
    the jobs' output files and the run's work folders. A staged document whose
    key another run's claim now holds is left alone: that run's job reads it
    (the Files API deletes it after 48 h anyway). The run's leases are released
    last, so no other run takes a key over while this one still deletes.
    """
    job_names = list(dict.fromkeys(job_names))
    cancelled = sum(bool(hook.cancel_job(name)) for name in job_names)
    ledger = settings.ledger()
    mine = {claim_id(folder.slug, round_) for round_ in range(settings.retry_rounds + 1)}
    leases = ledger.current_leases()
    run_keys = set(plan.keys_to_request(folder.plan)) if folder.plan.exists() else set()
    held = ledger.holders({key: leases[key] for key in run_keys if key in leases})
    counts = {"deleted": 0, "gone": 0, "failed": 0}
    kept = 0
    if settings.retention in ("staged", "all"):
        uris = list(dict.fromkeys(job_inputs))
        if settings.retention == "all":
            for name in job_names:
                job = hook.get_job(name)
                uris.append(job.dest.file_name if job.dest else None)
        with read_staged(folder) as staged:
            for key, part in staged.items():
                if held.get(key) is None or held[key] in mine:
                    uris.append(part.uri)
                else:
                    kept += 1
        counts = hook.delete_files(uri for uri in uris if uri)
    if kept:
        log.info("Left %d staged document(s) in place: another run's claim holds their keys", kept)
    if settings.retention == "all":
        for path in {uri_of(folder.work): folder.work, uri_of(folder.remote): folder.remote}.values():
            if path.exists():
                path.fs.rm(path.path, recursive=True)
    released = ledger.release({key: leases[key] for key, holder in held.items() if holder in mine})
    return {"cancelled_jobs": cancelled, "deleted_files": counts["deleted"] + counts["gone"],
            "released_leases": released}


# ------------------------------------------------------------------ helpers


def _manifests(shard_folder: ObjectStoragePath) -> list[ObjectStoragePath]:
    if not shard_folder.exists():
        return []
    return sorted(p for p in shard_folder.iterdir() if p.name.endswith(".manifest.json"))


def _read_jsonl(path: ObjectStoragePath) -> Iterator[dict]:
    """Each record of a JSONL work file; a last line cut off by a killed worker is skipped (its pass is redone)."""
    if not path.exists():
        return
    with path.open("rb") as fh:
        for line in fh:
            if not line.endswith(b"\n"):
                log.warning("%s ends in a cut-off line (its writer was stopped); ignoring %d bytes", path, len(line))
                return
            if line.strip():
                yield orjson.loads(line)


@contextlib.contextmanager
def jsonl_writer(path: ObjectStoragePath) -> Iterator[Callable[[Any], None]]:
    """A function writing records as JSON lines to ``path``, in batches of about 1 MB.

    One write through ObjectStoragePath's file wrapper costs more than
    encoding a record: collecting a large output wrote at half the speed.
    The batch is a bytearray, not a list of lines: each bytes object
    orjson.dumps returns keeps about 4 KB allocated, whatever its length.
    """
    batch = bytearray()

    def write(record: Any) -> None:
        batch.extend(orjson.dumps(record, option=orjson.OPT_APPEND_NEWLINE))
        if len(batch) >= WRITE_BATCH_BYTES:
            out.write(batch)
            batch.clear()

    with path.open("wb") as out:
        yield write
        out.write(batch)


def _passes(pass_folder: ObjectStoragePath) -> list[ObjectStoragePath]:
    """The files of a folder written one per staging pass, oldest first."""
    if not pass_folder.exists():
        return []
    return sorted(p for p in pass_folder.iterdir() if p.name.startswith("pass-") and p.name.endswith(".jsonl"))


def _read_passes(pass_folder: ObjectStoragePath) -> Iterator[dict]:
    for path in _passes(pass_folder):
        yield from _read_jsonl(path)

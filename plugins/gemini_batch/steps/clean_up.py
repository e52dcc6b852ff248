"""The clean-up step: the run's unfinished jobs cancelled, its files deleted as its ``retention`` says, its leases
released."""

from __future__ import annotations

import logging
from collections.abc import Iterable

from gemini_batch.coordination.ledger import claim_id
from gemini_batch.core.locations import uri_of
from gemini_batch.core.settings import Retention
from gemini_batch.hooks.uploads import shard_file_name
from gemini_batch.steps import plan
from gemini_batch.steps.runs import Run

log = logging.getLogger(__name__)


def clean_up(run: Run, job_names: Iterable[str] = (), job_inputs: Iterable[str] = ()) -> dict:
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
    settings, folder, ledger, hook = run.settings, run.folder, run.ledger, run.service
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
        with run.staging() as staged:
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

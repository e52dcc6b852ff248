"""The build step: a round's keys claimed in the ledger, then the shards of the keys this run won written, and an
adoption manifest per claim of another run that requests the others."""

from __future__ import annotations

import logging

import msgspec

from gemini_batch.coordination.claims import KeyClaimer, job_finder, job_state
from gemini_batch.coordination.ledger import Claim, claim_id, now_iso
from gemini_batch.core import jsonl
from gemini_batch.core.batch_requests import write_adoption
from gemini_batch.core.locations import uri_of
from gemini_batch.core.staged import StageFailure
from gemini_batch.steps import plan
from gemini_batch.steps.runs import Run

log = logging.getLogger(__name__)

# Input tokens one job may hold unless the connection states the quota: under the published tier-1
# enqueued-token quotas of the flash and pro models. A shard the service still refuses alone is split by the
# submit (operators); a 429 while other jobs are in flight is waited out.
DEFAULT_TOKENS_PER_JOB = 2_000_000


def build_requests(run: Run, round_: int, *, only: set[str] | None = None) -> list[str]:
    """Claim round ``round_``'s keys (all the plan requests, or those in ``only``), write the shards of those this
    run won and one adoption manifest per claim whose keys another run requests; return the manifest URIs (what
    the submit tasks map over)."""
    run.reset_round(round_)
    folder, ledger, hook = run.folder, run.ledger, run.hook
    me = Claim(
        claim_id(folder.slug, round_),
        run.settings.dag_id,
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
        run_state=run.run_state,
        expiry=run.settings.expiry,
        conn_id=hook.gcp_conn_id if hook else None,
        find_job=job_finder(hook) if hook else None,
    )
    claimed = claimer.claim(plan.keys_to_request(folder.plan, only))
    with run.staging() as staged:
        manifests, unbuilt = plan.build_shards(
            folder.plan,
            run.settings.source,
            staged.parts,
            run.settings.spec,
            folder.shards(round_),
            max_rows=run.settings.max_rows,
            max_bytes=run.settings.max_bytes,
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

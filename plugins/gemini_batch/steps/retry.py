"""The retry step: a round's shards of the keys whose latest outcome failed, their uploads checked (and staged
again) first."""

from __future__ import annotations

import logging

from gemini_batch.core.settings import MAX_RETRY_ROUNDS
from gemini_batch.steps.build import build_requests
from gemini_batch.steps.runs import Run
from gemini_batch.steps.staging import stage_documents

log = logging.getLogger(__name__)


def prepare_retry(run: Run, round_: int) -> list[str]:
    """Round ``round_``'s shards of the keys that failed so far (their manifest URIs); none past the run's
    retry_rounds."""
    failed = keys_to_retry(run, round_) if round_ <= run.settings.retry_rounds else set()
    if not failed:  # no later round runs either: none may keep what an earlier try of this run left
        for later in range(round_, MAX_RETRY_ROUNDS + 1):
            run.reset_round(later)
        return []
    return build_requests(run, round_, only=failed)


def keys_to_retry(run: Run, round_: int) -> set[str]:
    """Keys whose latest outcome before round ``round_`` failed, staged again first.

    Staging again costs one lookup per key when the upload is still there; it
    replaces a Files API upload that expired (48 h) or is about to, or that
    another run's clean-up deleted, so a retry never sends a dead URI.
    """
    with run.latest_outcomes(round_ - 1) as (latest, _):
        failed = set(latest.keys("failed"))
    with run.staging() as staged:
        restage = {key for key in failed if key in staged.parts}
    if restage:
        log.info("Checking the staged uploads of %d key(s) to retry", len(restage))
        stage_documents(run, only=restage)
    return failed

"""What the service's errors mean, in one place: transient (retry), refused credentials (fail at once), gone
(403 or 404 on a name: the Files API answers 403 for a file that expired or never existed), and the retry
policy every call to the service shares."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import tenacity
from airflow.sdk.exceptions import AirflowFailException
from google.genai import errors

TRANSIENT_CODES = frozenset({408, 429, 500, 502, 503, 504})
# ErrorInfo reasons Google APIs give for a key or token that is wrong, expired, blocked or not allowed.
AUTH_REASONS = frozenset(
    {
        "API_KEY_INVALID",
        "API_KEY_EXPIRED",
        "API_KEY_SERVICE_BLOCKED",
        "SERVICE_DISABLED",
        "CREDENTIALS_MISSING",
        "ACCESS_TOKEN_EXPIRED",
        "ACCESS_TOKEN_SCOPE_INSUFFICIENT",
        "IAM_PERMISSION_DENIED",
    }
)
GONE_CODES = frozenset({403, 404})
MAX_BACKOFF_SECONDS = 60


class QuotaExhausted(Exception):
    """A create answered 429 RESOURCE_EXHAUSTED: the model's enqueued-token quota (or a rate limit) is full for
    now. Not retried here: the caller waits, deferred, for other jobs to end."""


class OnlineRequestFailed(Exception):
    """An online request (``models.generate_content``) the service refused, or kept failing once retries were spent:
    that request fails, not the task."""


class UnknownModel(ValueError):
    """The service does not serve the model for batch jobs; the message names the ones it does."""


class GeminiAuthError(AirflowFailException):
    """The service (or a proxy before it) refused the connection's credentials. Retrying the call or the task cannot
    fix that, so a task fails at once."""


class StagingBucketUnusable(ValueError):
    """Vertex AI: the staging bucket is missing, or in a location the connection's region cannot use."""


class FileVanished(Exception):
    """The upload went away while we waited for it (another run found it unusable and replaced it, or cleaned
    up): staging the part again is the fix, so it counts as transient."""


def is_auth_error(exc: BaseException) -> bool:
    """The service (or a proxy before it) refused the credentials: a 401, or a 400/403 whose ErrorInfo reason is
    about the key or token (a bare 403 is also the Files API's answer for a file that is gone). No retry helps."""
    if not isinstance(exc, errors.APIError):
        return False
    if exc.code == 401:
        return True
    error = exc.details.get("error", exc.details) if isinstance(exc.details, dict) else {}
    reasons = {item.get("reason") for item in error.get("details") or [] if isinstance(item, dict)}
    return exc.code in (400, 403) and bool(reasons & AUTH_REASONS)


def is_transient(exc: BaseException) -> bool:
    if is_auth_error(exc):
        return False
    if isinstance(exc, errors.APIError):
        return exc.code in TRANSIENT_CODES
    return isinstance(exc, (httpx.TransportError, TimeoutError, ConnectionError, FileVanished))


def is_gone(exc: BaseException) -> bool:
    """A name the service does not have (any more): a 404, or a 403 that is not about the credentials."""
    return isinstance(exc, errors.APIError) and exc.code in GONE_CODES and not is_auth_error(exc)


def retry_policy(*, attempts: int, initial_seconds: float, log: Any, what: Callable[[], str]) -> tenacity.Retrying:
    """Transient errors retried ``attempts`` times with exponential backoff and jitter, each retry logged."""
    return tenacity.Retrying(
        retry=tenacity.retry_if_exception(is_transient),
        stop=tenacity.stop_after_attempt(attempts),
        wait=tenacity.wait_exponential_jitter(initial=initial_seconds, max=MAX_BACKOFF_SECONDS),
        before_sleep=lambda state: log.warning(
            "%s: transient error, attempt %d: %s",
            what(),
            state.attempt_number,
            state.outcome.exception() if state.outcome else None,
        ),
        reraise=True,
    )

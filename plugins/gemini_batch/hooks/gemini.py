"""The one place that turns an Airflow connection into a google-genai client.

Everything that talks to the batch service goes through ``GeminiBatchHook``:
it keeps one client per connection per process (several polls through a
closed client fail), retries transient errors on every call that is safe to
repeat, and streams job outputs instead of reading them whole. The API key
lives only in the connection's password and the client: it is never logged,
templated or handed to a trigger.
"""

from __future__ import annotations

import concurrent.futures
import datetime as dt
import hashlib
import threading
from collections.abc import Callable, Iterable, Iterator
from functools import cached_property
from typing import Any, TypeVar

import httpx
import orjson
from airflow.sdk import BaseHook, ObjectStoragePath
from airflow.sdk.log import mask_secret
from google import genai
from google.genai import errors, types

from gemini_batch.core.keys import normalize_model
from gemini_batch.core.locations import as_path
from gemini_batch.core.results import OutputUnavailable
from gemini_batch.hooks.errors import (
    GeminiAuthError,
    OnlineRequestFailed,
    QuotaExhausted,
    StagingBucketUnusable,
    UnknownModel,
    is_auth_error,
    is_gone,
    retry_policy,
)
from gemini_batch.hooks.uploads import FilesApiUploads

T = TypeVar("T")

BACKENDS = ("developer", "vertex")
DEFAULT_LOCATION = "us-central1"
DEVELOPER_BASE_URL = "https://generativelanguage.googleapis.com"
DEVELOPER_API_VERSION = "v1beta"  # what the SDK's Developer client speaks; downloads use the same path
JSONL_MIME_TYPE = "application/jsonl"
TERMINAL_STATES = frozenset(
    {
        "JOB_STATE_SUCCEEDED",
        "JOB_STATE_FAILED",
        "JOB_STATE_CANCELLED",
        "JOB_STATE_EXPIRED",
        "JOB_STATE_PARTIALLY_SUCCEEDED",
    }
)
IN_FLIGHT_STATES = ("JOB_STATE_QUEUED", "JOB_STATE_PENDING", "JOB_STATE_RUNNING")
IN_FLIGHT_WINDOW = dt.timedelta(hours=72)  # the longest a job may queue before the service expires it
# A job in one of these will deliver nothing more: never reattach to it.
DEAD_STATES = frozenset({"JOB_STATE_FAILED", "JOB_STATE_CANCELLING", "JOB_STATE_CANCELLED", "JOB_STATE_EXPIRED"})
DOWNLOAD_CHUNK_BYTES = 2**20
DOWNLOAD_TIMEOUT = httpx.Timeout(120.0, connect=15.0)
MAX_REDIRECTS = 5
DEFAULT_PORTS = {"http": 80, "https": 443}
TEST_TIMEOUT_MS = 15_000  # test_connection's one call: the UI waits for it
# Jobs asked for per list page: the emulator's maximum (Google APIs lower a larger page size to their own
# maximum, AIP-158), so even an unbounded search through 3,000 earlier jobs is 3 pages.
LIST_PAGE_SIZE = 1000
# How far the service's clock may be behind ours: a search for jobs created after a time we took starts this early.
CLOCK_SKEW = dt.timedelta(minutes=5)
DELETE_WORKERS = 16
FAILURES_NAMED = 10  # a failed clean-up's warning names this many
# A batch row's request fields besides contents and generationConfig that the SDK takes in its config.
ONLINE_REQUEST_FIELDS = ("systemInstruction", "safetySettings", "tools", "toolConfig", "cachedContent", "labels")

_clients: dict[str, tuple[str, genai.Client]] = {}  # conn id -> (fingerprint of the connection, client)
_clients_lock = threading.Lock()


# A multi-region holds the regions whose names start so; a predefined dual-region is its two regions.
MULTI_REGIONS = {"US": "us-", "EU": "europe-", "ASIA": "asia-"}
DUAL_REGIONS = {
    "NAM4": {"us-central1", "us-east1"},
    "EUR4": {"europe-north1", "europe-west4"},
    "ASIA1": {"asia-northeast1", "asia-northeast2"},
}


def region_can_use_bucket(region: str, location: str, data_locations: Iterable[str] | None = None) -> bool | None:
    """Whether a Vertex AI batch job in ``region`` can read and write a bucket at ``location`` (its metadata's
    ``location``; a configurable dual-region's regions in ``data_locations``): the bucket must be in the job's
    region or in a dual- or multi-region holding it; a ``global`` job can use any. None: a location not known here."""
    region, location = region.lower(), location.upper()
    if region == "global":
        return True
    if "-" not in region:  # a multi-region job location ("us", "eu"): only its own multi-region is known to fit
        return True if location == region.upper() else None
    if data_locations:
        return region in {name.lower() for name in data_locations}
    if location in DUAL_REGIONS:
        return region in DUAL_REGIONS[location]
    if location in MULTI_REGIONS:
        return region.startswith(MULTI_REGIONS[location])
    if "-" in location:  # a region (or a zone of one)
        return location.lower() == region or location.lower().startswith(region + "-")
    return None


def state_name(job: types.BatchJob) -> str | None:
    return job.state.name if job.state else None


def deadline_of(created: dt.datetime, expiry: dt.timedelta) -> dt.datetime:
    """When a job created at ``created`` is given up on (cancelled, its rows retried): from its create time, so
    neither a restart nor another run that waits for it extends it."""
    return created.astimezone(dt.timezone.utc) + expiry


def name_of(job: types.BatchJob) -> str:
    """A job's resource name: the service always gives one (the SDK types it optional)."""
    if not job.name:
        raise ValueError(f"the service answered with a batch job that has no name: {job!r}")
    return job.name


def is_terminal(job: types.BatchJob) -> bool:
    # BatchJob.done does not count JOB_STATE_PARTIALLY_SUCCEEDED (Vertex) as an end.
    return job.done or state_name(job) in TERMINAL_STATES


def job_stats(job: types.BatchJob) -> dict[str, int]:
    """Row counts as the SDK maps them: Vertex ``completionStats`` only (it drops the Developer API's ``batchStats``).
    The service leaves a zero count out (proto3 JSON), so an absent count is 0; no stats at all (a queued or
    cancelled job) is none."""
    stats = job.completion_stats
    if stats is None:
        return {}
    counts = {"succeeded": stats.successful_count, "failed": stats.failed_count, "incomplete": stats.incomplete_count}
    return {name: count or 0 for name, count in counts.items()}


def job_error(job: types.BatchJob) -> str | None:
    if job.error is None:
        return None
    return job.error.message or f"error code {job.error.code}"


class GeminiBatchHook(BaseHook):
    """Gemini batch jobs on the Developer API or Vertex AI, chosen by the connection's ``backend`` extra."""

    conn_name_attr = "gemini_conn_id"
    default_conn_name = "gemini_default"
    conn_type = "gemini_batch"
    hook_name = "Gemini Batch"

    retry_attempts = 5
    retry_initial_seconds = 1.0

    def __init__(self, gemini_conn_id: str = default_conn_name, **kwargs):
        super().__init__(**kwargs)
        self.gemini_conn_id = gemini_conn_id

    def __repr__(self) -> str:
        return f"{type(self).__name__}(gemini_conn_id={self.gemini_conn_id!r})"

    @cached_property
    def connection(self):
        """The connection, its key registered with Airflow's secrets masker as it is read: whatever path read it
        (a task, a trigger, a test outside Airflow's runner), no log line shows the key."""
        connection = self.get_connection(self.gemini_conn_id)
        if connection.password:
            mask_secret(connection.password, name="password")
        return connection

    @cached_property
    def extra(self) -> dict[str, Any]:
        return self.connection.extra_dejson

    def _extra(self, name: str) -> Any:
        """An extra by its bare name (what JSON extras and the Airflow 3 connection form write) or, failing that,
        as ``extra__gemini_batch__<name>`` (older forms' key); an empty value (a blank form field) is not set."""
        for key in (name, f"extra__{GeminiBatchHook.conn_type}__{name}"):
            value = self.extra.get(key)
            if value not in (None, ""):
                return value
        return None

    @property
    def backend(self) -> str:
        backend = self._extra("backend") or "developer"
        if backend not in BACKENDS:
            raise ValueError(
                f"connection {self.gemini_conn_id!r}: backend must be one of {', '.join(BACKENDS)}, got {backend!r}"
            )
        return backend

    @property
    def base_url(self) -> str | None:
        return self._extra("base_url")

    @property
    def gcp_conn_id(self) -> str | None:
        return self._extra("gcp_conn_id")

    @property
    def location(self) -> str:
        """Vertex AI: the region (or ``global``) the batch jobs run in."""
        return self._extra("location") or DEFAULT_LOCATION

    @property
    def enqueued_token_limit(self) -> int | None:
        """The account's enqueued-token quota per model (the ``enqueued_token_limit`` extra), when it is known."""
        value = self._extra("enqueued_token_limit")
        if value is None:
            return None
        try:
            limit = int(value)
        except (TypeError, ValueError):
            limit = 0
        if limit < 1:
            raise ValueError(
                f"connection {self.gemini_conn_id!r}: enqueued_token_limit must be a positive number of "
                f"tokens, got {value!r}"
            )
        return limit

    # ------------------------------------------------------------------ clients

    def get_conn(self) -> genai.Client:
        """The process's client for this connection; rebuilt only when the connection changed."""
        fingerprint = self._fingerprint()
        with _clients_lock:
            cached = _clients.get(self.gemini_conn_id)
            if cached is not None and cached[0] == fingerprint:
                return cached[1]
            client = self._build_client()
            _clients[self.gemini_conn_id] = (fingerprint, client)
            return client

    def get_async_conn(self):
        """The async face of the same client (the SDK keeps one HTTP session per event loop)."""
        return self.get_conn().aio

    def _fingerprint(self) -> str:
        conn = self.connection
        fields = [self.backend, conn.host, conn.login, conn.password, conn.port, conn.schema, self.extra]
        return hashlib.sha256(orjson.dumps(fields, option=orjson.OPT_SORT_KEYS)).hexdigest()

    def _http_options(self) -> types.HttpOptions | None:
        return types.HttpOptions(base_url=self.base_url) if self.base_url else None

    def _build_client(self) -> genai.Client:
        if self.backend == "vertex":
            return self._vertex_client()
        if not self.connection.password:
            # The SDK cannot build a Developer client without a key, and the emulator refuses calls without one.
            raise ValueError(f"connection {self.gemini_conn_id!r} has no API key: put it in the password field")
        self.log.info(
            "Gemini Developer API client for connection %s (base URL %s)",
            self.gemini_conn_id,
            self.base_url or DEVELOPER_BASE_URL,
        )
        return genai.Client(api_key=self.connection.password, http_options=self._http_options())

    def _vertex_client(self) -> genai.Client:
        from airflow.providers.google.common.hooks.base_google import GoogleBaseHook
        from google.auth.credentials import AnonymousCredentials
        from google.oauth2.credentials import Credentials

        gcp_conn_id = self.gcp_conn_id or GoogleBaseHook.default_conn_name
        credentials, gcp_project = GoogleBaseHook(gcp_conn_id=gcp_conn_id).get_credentials_and_project_id()
        if isinstance(credentials, AnonymousCredentials) and self.base_url:
            # An emulator set-up. The Vertex emulator, like the service, refuses a request without an
            # ``Authorization: Bearer`` header, and anonymous credentials send none: use a static token.
            credentials = Credentials(token="anonymous")
        project = self._extra("project") or gcp_project
        if not project:
            raise ValueError(
                f"connection {self.gemini_conn_id!r}: no project in its extra nor in connection {gcp_conn_id!r}"
            )
        self.log.info(
            "Vertex AI client for connection %s: project %s, location %s, credentials from %s",
            self.gemini_conn_id,
            project,
            self.location,
            gcp_conn_id,
        )
        return genai.Client(
            vertexai=True,
            project=project,
            location=self.location,
            credentials=credentials,
            http_options=self._http_options(),
        )

    def test_connection(self) -> tuple[bool, str]:
        """What the UI's Test button and ``airflow connections test`` run: one cheap authenticated call, the first
        page of batch jobs (the endpoint the hook depends on, on both backends), without retries, so the answer
        is quick. Never raises (the caller shows the message as it is); the API key is kept out of the message."""
        key = None
        try:
            key = self.connection.password
            where, credentials = self._endpoint(), self._credentials()
            client = self._build_client()  # not get_conn: a tested connection's id is transient, nothing to cache
            config = types.ListBatchJobsConfig(page_size=1, http_options=types.HttpOptions(timeout=TEST_TIMEOUT_MS))
            client.batches.list(config=config)  # the pager fetches its first page at once
        except errors.APIError as exc:
            hint = f"; check {credentials}" if exc.code in (400, 401, 403) else ""
            reason = f"{exc.code} {exc.status}: {_redact(exc.message or '', key)}"
            return False, f"{where} refused the batch jobs list: {reason}{hint}"
        except httpx.TransportError as exc:
            return False, f"{where} cannot be reached: {type(exc).__name__}: {_redact(str(exc), key)}"
        except Exception as exc:
            return False, _redact(f"{type(exc).__name__}: {exc}", key)
        return True, f"{where} answered the batch jobs list with {credentials}"

    def _endpoint(self) -> str:
        """The backend and where its calls go, as a person reads them."""
        if self.backend == "vertex":
            return f"Vertex AI ({self.location}) at {self.base_url or 'its Google endpoint'}"
        return f"Gemini Developer API at {self.base_url or DEVELOPER_BASE_URL}"

    def _credentials(self) -> str:
        if self.backend == "vertex":
            from airflow.providers.google.common.hooks.base_google import GoogleBaseHook

            return f"the credentials of connection {self.gcp_conn_id or GoogleBaseHook.default_conn_name!r}"
        return "the API key"

    def _retry(self, call: Callable[..., T], *args, **kwargs) -> T:
        """``call`` with transient errors retried. What it raises names the connection and never quotes the key:
        refused credentials are a GeminiAuthError at once; an unreachable service, once retries are spent, the same
        httpx error naming where it was sent."""
        retrying = retry_policy(
            attempts=self.retry_attempts,
            initial_seconds=self.retry_initial_seconds,
            log=self.log,
            what=lambda: str(getattr(call, "__name__", call)),
        )
        try:
            return retrying(call, *args, **kwargs)
        except errors.APIError as exc:
            if is_auth_error(exc):
                raise self._auth_error(exc) from None  # the service's own error may quote the key
            if self._quotes_key(str(exc)):
                raise type(exc)(
                    exc.code, orjson.loads(self._scrub(orjson.dumps(exc.details).decode())), exc.response
                ) from None
            raise
        except httpx.TransportError as exc:
            unreachable = self._unreachable(exc)
            if self._quotes_key(str(exc)):
                raise unreachable from None
            raise unreachable from exc

    def _quotes_key(self, text: str) -> bool:
        return self._scrub(text) != text

    def _scrub(self, text: str) -> str:
        return _redact(text, self.connection.password)

    def _auth_error(self, exc: errors.APIError) -> GeminiAuthError:
        return GeminiAuthError(
            f"connection {self.gemini_conn_id!r}: {self._endpoint()} refused {self._credentials()}: {exc.code} "
            f"{exc.status}: {self._scrub(exc.message or '')} (not retried: fix the connection's credentials)"
        )

    def _unreachable(self, exc: httpx.TransportError) -> httpx.TransportError:
        """The same kind of error (so it stays transient to whoever retries it further up), naming where it went."""
        try:
            url = exc.request.url
            sent = f" ({exc.request.method} {url.scheme}://{url.netloc.decode()}{url.path})"
        except RuntimeError:  # no request attached
            sent = ""
        message = self._scrub(
            f"connection {self.gemini_conn_id!r}: {self._endpoint()} cannot be reached{sent}: "
            f"{type(exc).__name__}: {exc}"
        )
        try:
            return type(exc)(message, request=exc.request)
        except RuntimeError:
            return type(exc)(message)

    # ------------------------------------------------------------------ storage and uploads

    def storage_path(self, uri: str) -> ObjectStoragePath:
        """A local path, or a ``gs://`` URI read with the connection's Google Cloud credentials."""
        return as_path(uri, conn_id=self.gcp_conn_id)

    def upload_jsonl(self, path: ObjectStoragePath, name: str) -> str:
        """Upload a shard to the Files API as ``files/<name>``, streamed; an earlier usable upload is reused.

        ``name`` is deterministic (at most 40 lowercase letters, digits, dashes), so a retry after a
        lost response finds the upload instead of making a second one.
        """
        if self.backend != "developer":
            raise ValueError("the Files API belongs to the Developer API; Vertex AI reads shards from gs://")
        uploads = FilesApiUploads(self.get_conn())
        file = self._retry(
            uploads.ensure,
            name,
            lambda: path.fs.open(path.path, "rb"),  # an io.IOBase, which the SDK streams
            mime_type=JSONL_MIME_TYPE,
            display_name=path.name,
        )
        return str(file.name)

    def check_staging_bucket(self, uri: str) -> None:
        """Vertex AI: fail before anything is uploaded when the bucket of ``uri`` is missing or in a location the
        connection's region cannot use (the service finds that only when a job fails). A location that cannot be
        read (credentials without storage.buckets.get) or is not known here is a warning, not a stop."""
        if self.backend != "vertex":
            return
        path = self.storage_path(uri)
        bucket = f"gs://{path.bucket}"
        try:
            metadata = path.fs.info(path.bucket)
        except FileNotFoundError:
            raise StagingBucketUnusable(
                f"staging bucket {bucket} does not exist (or the credentials of connection "
                f"{self.gcp_conn_id!r} cannot see it)"
            ) from None
        except OSError as exc:
            self.log.warning(
                "The location of staging bucket %s cannot be read, so it is not checked against region %s: %s",
                bucket,
                self.location,
                exc,
            )
            return
        location = metadata.get("location")
        data_locations = (metadata.get("customPlacementConfig") or {}).get("dataLocations")
        usable = region_can_use_bucket(self.location, location, data_locations) if location else None
        if usable is None:
            self.log.warning(
                "Staging bucket %s is in %s: not known to be usable from region %s, not checked",
                bucket,
                location or "an unknown location",
                self.location,
            )
        elif not usable:
            where = f"{location} ({', '.join(data_locations)})" if data_locations else location
            raise StagingBucketUnusable(
                f"staging bucket {bucket} is in {where}, but connection {self.gemini_conn_id!r} runs Vertex AI batch "
                f"jobs in {self.location}: a job reads and writes only buckets in its own region or a dual- or "
                f"multi-region holding it. Stage in a bucket in {self.location.upper()}, or set the connection's "
                "location to the bucket's region"
            )

    # ------------------------------------------------------------------ models

    def check_model(self, model: str) -> None:
        """Fail before anything is uploaded when the service does not serve ``model`` for batches (unknown, or
        shut down: a shut-down model's requests may be routed to another model, billed at its price), naming
        the batch-capable models it does serve."""
        bare = normalize_model(model)
        try:
            found = self._retry(self.get_conn().models.get, model=bare)
        except errors.ClientError as exc:
            if exc.code not in (400, 404):
                raise
            found = None
        if found is not None and (
            self.backend == "vertex" or "batchGenerateContent" in (found.supported_actions or [])
        ):
            return
        available = self.batch_models()
        listed = f"; batch-capable models: {', '.join(available)}" if available else ""
        why = "does not serve it for batch jobs" if found is not None else "does not know it (unknown or shut down)"
        raise UnknownModel(f"model {model!r}: the service {why}{listed}")

    def batch_models(self) -> list[str]:
        """The models the Developer API lists as batch-capable (Vertex AI lists publisher models without their
        methods: empty there)."""
        if self.backend == "vertex":
            return []
        models = self._retry(lambda: list(self.get_conn().models.list(config={"page_size": 1000})))
        return sorted(
            normalize_model(m.name) for m in models if m.name and "batchGenerateContent" in (m.supported_actions or [])
        )

    # ------------------------------------------------------------------ jobs

    def create_job(self, *, model: str, src: str, display_name: str, dest: str | None = None) -> types.BatchJob:
        """Create a batch job; a retry first looks for the job an attempt with a lost response may have made.

        That job is no older than the first attempt, so the look-up pages only back to then.
        """
        config = types.CreateBatchJobConfig(display_name=display_name, dest=dest)
        started: dt.datetime | None = None

        def create() -> types.BatchJob:
            nonlocal started
            if started is None:
                started = dt.datetime.now(dt.timezone.utc)
            else:
                earlier = self.find_job(display_name, created_after=started - CLOCK_SKEW)
                if earlier is not None and state_name(earlier) not in DEAD_STATES:
                    return earlier
            try:
                return self.get_conn().batches.create(model=model, src=src, config=config)
            except errors.ClientError as exc:
                if exc.code == 429:
                    raise QuotaExhausted(f"{exc.code} {exc.status}: {exc.message}") from exc
                raise

        job = self._retry(create)
        self.log.info("Batch job %s (%s) for %s: %s", job.name, display_name, src, state_name(job))
        return job

    def find_job(self, display_name: str, created_after: dt.datetime | None = None) -> types.BatchJob | None:
        """The newest live job with this display name, else the newest dead one, else None.

        ``created_after`` (aware) leaves out older jobs; on the Developer API, which lists every job of the
        account newest first, paging stops at the first older one instead of reading the whole history.
        """
        jobs = self._retry(self._jobs_named, display_name, created_after)
        jobs.sort(key=lambda job: job.create_time or dt.datetime.min.replace(tzinfo=dt.timezone.utc), reverse=True)
        return next((job for job in jobs if state_name(job) not in DEAD_STATES), jobs[0] if jobs else None)

    def _jobs_named(self, display_name: str, created_after: dt.datetime | None) -> list[types.BatchJob]:
        batches = self.get_conn().batches
        if self.backend == "vertex":  # filtered by the service: a few jobs, in no promised order
            config = types.ListBatchJobsConfig(filter=f'display_name="{display_name}"', page_size=LIST_PAGE_SIZE)
            return [job for job in batches.list(config=config) if not _created_before(job, created_after)]
        # The Developer API has no list filter: page (lazily: the pager fetches a page when it runs out)
        # through the jobs, newest first, back to created_after.
        named = []
        for job in batches.list(config=types.ListBatchJobsConfig(page_size=LIST_PAGE_SIZE)):
            if _created_before(job, created_after):
                break
            if job.display_name == display_name:
                named.append(job)
        return named

    def jobs_in_flight(self, model: str) -> list[types.BatchJob]:
        """The account's unfinished jobs of ``model``: what holds its enqueued-token quota now.

        Only jobs created in the last ``IN_FLIGHT_WINDOW`` can still be in flight (the service expires older
        ones), so the Developer API's list, newest first, is paged back only that far.
        """
        wanted = normalize_model(model)
        batches = self.get_conn().batches
        if self.backend == "vertex":
            found = [
                job
                for state in IN_FLIGHT_STATES
                for job in self._retry(
                    lambda state=state: list(
                        batches.list(
                            config=types.ListBatchJobsConfig(filter=f"state={state}", page_size=LIST_PAGE_SIZE)
                        )
                    )
                )
            ]
        else:
            since = dt.datetime.now(dt.timezone.utc) - IN_FLIGHT_WINDOW

            def recent() -> list[types.BatchJob]:
                jobs = []
                for job in batches.list(config=types.ListBatchJobsConfig(page_size=LIST_PAGE_SIZE)):
                    if _created_before(job, since):
                        break
                    jobs.append(job)
                return jobs

            found = self._retry(recent)
        return [job for job in found if not is_terminal(job) and job.model and normalize_model(job.model) == wanted]

    def get_job(self, name: str) -> types.BatchJob:
        return self._retry(self.get_conn().batches.get, name=name)

    def cancel_job(self, name: str) -> bool:
        """Ask the service to cancel a job; False when it had already ended (nothing to cancel)."""
        if is_terminal(self.get_job(name)):
            return False
        try:
            self._retry(self.get_conn().batches.cancel, name=name)
        except errors.ClientError as exc:
            if exc.code == 400 and exc.status == "FAILED_PRECONDITION":  # it ended since we looked
                return False
            raise
        self.log.info("Cancelled batch job %s", name)
        return True

    # ------------------------------------------------------------------ online calls (the preview)

    def generate_content(self, model: str, request: dict) -> dict:
        """One request answered online (``models.generate_content``): ``request`` is a batch row's request (REST
        form: contents, generationConfig, systemInstruction, ...), the answer the REST ``GenerateContentResponse``,
        as a batch output row carries it. Transient errors (429 included: the online rate limits) are retried;
        another refusal, or one still failing after the retries, raises OnlineRequestFailed (a refused key:
        GeminiAuthError)."""
        contents = [types.Content.model_validate_json(orjson.dumps(content)) for content in request["contents"]]
        config_fields = {
            **(request.get("generationConfig") or {}),
            **{name: request[name] for name in ONLINE_REQUEST_FIELDS if name in request},
        }
        config = types.GenerateContentConfig.model_validate_json(orjson.dumps(config_fields))
        config.automatic_function_calling = types.AutomaticFunctionCallingConfig(disable=True)  # one call, as sent
        try:
            response = self._retry(
                self.get_conn().models.generate_content, model=normalize_model(model), contents=contents, config=config
            )
        except errors.APIError as exc:
            raise OnlineRequestFailed(f"{exc.code} {exc.status}: {self._scrub(exc.message or '')}") from None
        return response.model_dump(
            mode="json",
            by_alias=True,
            exclude_none=True,
            exclude={"sdk_http_response", "automatic_function_calling_history", "parsed"},
        )

    # ------------------------------------------------------------------ clean-up

    def delete_files(self, uris: Iterable[str]) -> dict[str, int]:
        """Delete ``gs://`` objects and Files API files (``files/ID`` or a URI ending in it), 16 at a time.

        Counts ``deleted``, ``gone`` (already deleted or expired: no warning) and ``failed``; clean-up is
        best effort (Files API uploads expire anyway), so failures are one warning, not an error.
        """
        uris = list(uris)
        with concurrent.futures.ThreadPoolExecutor(DELETE_WORKERS, thread_name_prefix="delete") as pool:
            outcomes = list(pool.map(self._delete_one, uris))
        failures = [
            (uri, outcome) for uri, outcome in zip(uris, outcomes, strict=False) if isinstance(outcome, Exception)
        ]
        if failures:
            self.log.warning(
                "Could not delete %d of %d file(s): %s%s",
                len(failures),
                len(uris),
                "; ".join(f"{uri}: {exc}" for uri, exc in failures[:FAILURES_NAMED]),
                f"; and {len(failures) - FAILURES_NAMED} more" if len(failures) > FAILURES_NAMED else "",
            )
        return {"deleted": outcomes.count("deleted"), "gone": outcomes.count("gone"), "failed": len(failures)}

    def _delete_one(self, uri: str) -> str | Exception:
        """ "deleted", "gone", or the error that stopped it."""
        try:
            if uri.startswith("gs://"):
                self._retry(self.storage_path(uri).unlink)
            else:
                self._retry(self.get_conn().files.delete, name="files/" + uri.rsplit("files/", 1)[-1])
        except FileNotFoundError:
            return "gone"
        except errors.ClientError as exc:
            return "gone" if is_gone(exc) else exc
        except Exception as exc:
            return exc
        return "deleted"

    # ------------------------------------------------------------------ outputs

    def iter_output_lines(self, job: types.BatchJob) -> Iterator[bytes]:
        """Each non-blank line of a finished job's output, streamed (memory stays flat); none if it has none."""
        if self.backend == "vertex":
            return self._gcs_output_lines(job)
        return self._files_api_output_lines(job)

    def _files_api_output_lines(self, job: types.BatchJob) -> Iterator[bytes]:
        # client.files.download returns the whole file at once; stream the same request with httpx instead.
        file_name = job.dest.file_name if job.dest else None
        if not file_name:
            return
        url = f"{(self.base_url or DEVELOPER_BASE_URL).rstrip('/')}/{DEVELOPER_API_VERSION}/{file_name}:download"
        with httpx.Client(timeout=DOWNLOAD_TIMEOUT) as http:
            try:
                response = self._retry(self._start_download, http, url)
            except errors.ClientError as exc:
                if not is_gone(exc):
                    raise
                raise OutputUnavailable(f"output file {file_name} cannot be read: {exc.code} {exc.status}") from exc
            try:
                yield from _split_lines(response.iter_bytes(DOWNLOAD_CHUNK_BYTES))
            finally:
                response.close()

    def _start_download(self, http: httpx.Client, url: str) -> httpx.Response:
        """The download's response, streamed. The service redirects to its /download/ path; redirects are followed
        here, not by httpx (which drops only ``Authorization`` across origins), so the key goes only to the
        configured endpoint's origin: a redirect elsewhere (a signed download URL) is followed without it."""
        target = httpx.URL(url)
        params: dict[str, str] | None = {"alt": "media"}  # a redirect's target carries its own query
        for _ in range(MAX_REDIRECTS + 1):
            same_origin = _origin(target) == _origin(httpx.URL(url))
            headers = {"x-goog-api-key": self.connection.password or ""} if same_origin else {}
            response = http.send(
                http.build_request("GET", target, params=params, headers=headers), stream=True, follow_redirects=False
            )
            if not response.is_redirect:
                break
            response.close()
            target, params = response.url.join(response.headers["location"]), None
        else:
            raise httpx.TooManyRedirects(
                f"the download of {url} was redirected more than {MAX_REDIRECTS} times", request=response.request
            )
        try:
            errors.APIError.raise_for_response(response)
        except errors.APIError:
            response.close()
            raise
        return response

    def _gcs_output_lines(self, job: types.BatchJob) -> Iterator[bytes]:
        # The job's own output directory when the service names it: the destination prefix may also hold
        # the output of an earlier job that wrote there.
        location = (job.output_info and job.output_info.gcs_output_directory) or (job.dest and job.dest.gcs_uri)
        if not location:
            return
        for path in sorted(self.storage_path(location).rglob("*.jsonl"), key=lambda p: p.path):
            try:
                stream = path.fs.open(path.path, "rb")
            except FileNotFoundError as exc:  # deleted between listing and reading
                raise OutputUnavailable(f"output {path} cannot be read: it is gone") from exc
            with stream:
                yield from _split_lines(stream)


class GeminiGenericConnectionHook(GeminiBatchHook):
    """What Airflow resolves a ``generic`` connection to (core Airflow has no hook for that type), so that its Test
    (``airflow connections test``, the UI's button) works on a Gemini connection kept as ``generic``. A generic
    connection that is not one (no ``backend`` extra, and another id than ``gemini_default``) is not tested."""

    conn_type = "generic"
    hook_name = "Generic"

    def test_connection(self) -> tuple[bool, str]:
        try:
            gemini = self.gemini_conn_id == self.default_conn_name or self._extra("backend") is not None
        except Exception as exc:
            return False, f"{type(exc).__name__}: {exc}"
        if not gemini:
            return False, (
                f"connection {self.gemini_conn_id!r} is a generic connection, not a Gemini Batch connection "
                "(that has a 'backend' extra: developer or vertex): there is nothing to test it with"
            )
        return super().test_connection()


def _redact(message: str, key: str | None) -> str:
    """A message from the SDK or httpx may quote the key: never show it. A key of 5 characters or fewer (no real
    key; the emulator's "local") is left alone, as Airflow's log masking does: it would mangle words."""
    return message.replace(key, "***") if key and len(key) > 5 else message


def _origin(url: httpx.URL) -> tuple[str, str, int | None]:
    return url.scheme, url.host, url.port or DEFAULT_PORTS.get(url.scheme)


def _created_before(job: types.BatchJob, when: dt.datetime | None) -> bool:
    return when is not None and job.create_time is not None and job.create_time < when


def _split_lines(chunks: Iterable[bytes]) -> Iterator[bytes]:
    """Lines without their line ends from arbitrary chunks; blank lines are no rows and are dropped."""
    partial: list[bytes] = []
    for chunk in chunks:
        *complete, rest = chunk.split(b"\n")
        for piece in complete:
            line = b"".join(partial) + piece if partial else piece
            partial.clear()
            if line.strip():
                yield line.rstrip(b"\r")
        if rest:
            partial.append(rest)
    line = b"".join(partial)
    if line.strip():
        yield line.rstrip(b"\r")

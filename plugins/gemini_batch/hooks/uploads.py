"""Put each part where a batch request can point at it, once: the parts the plan routes ``staged`` (those too
large to travel inline, Routing).

Developer API: the Files API, under a name derived from the part's key, so a
second run (or a retry after a lost response) finds the upload instead of
making another. Files expire after 48 h; the expiry is recorded so a late
retry re-stages rather than sending a dead URI.
Vertex AI: objects under a GCS staging prefix, named by key.

Both read each part through ``documents.open_planned``: only as the plan
hashed its document, else the part fails (an upload that proves wrong once
sent is deleted). They stream it (or the temporary PDF of a page range) and
never hold a whole file in memory; uploads run in a bounded pool and
transient errors (429, 5xx, timeouts) are retried with backoff.
"""

from __future__ import annotations

import concurrent.futures
import datetime as dt
import hashlib
import logging
import shutil
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager
from typing import BinaryIO

from airflow.sdk import ObjectStoragePath
from google import genai
from google.genai import errors, types

from gemini_batch.core.documents import SourceChanged
from gemini_batch.core.locations import printable, uri_of
from gemini_batch.core.staged import StagedPart, StageFailure, StageItem
from gemini_batch.hooks.errors import FileVanished, is_gone, retry_policy

log = logging.getLogger(__name__)

# documents.open_planned: (source, path, pages, the plan's sha256) -> the part's bytes, checked against the plan
OpenPart = Callable[[ObjectStoragePath, str, "tuple[int, int] | None", str], AbstractContextManager[BinaryIO]]

EXPIRY_MARGIN = dt.timedelta(hours=2)  # longer than a batch job may take to read its inputs once submitted
CHUNK_BYTES = 8 * 2**20
EXTENSIONS = {"application/pdf": ".pdf", "image/png": ".png", "image/jpeg": ".jpg", "image/webp": ".webp"}


class StagingError(Exception):
    """A part that cannot be staged for a reason a retry will not fix."""


def shard_file_name(display_name: str) -> str:
    """The Files API name of a job's input (from the job's display name): at most 40 lowercase letters, digits or
    dashes."""
    return "gbs-" + hashlib.sha256(display_name.encode()).hexdigest()[:36]


def files_api_name(key: str) -> str:
    """The Files API name of a key's upload (ids are at most 40 lowercase letters, digits or dashes)."""
    return "gb-" + key[:37]


class _Stager:
    """The bounded pool and the retry policy both stagers share."""

    def __init__(self, open_part: OpenPart, *, workers: int = 16, attempts: int = 5, backoff_seconds: float = 1.0):
        self.open_part = open_part
        self.workers = workers
        self._retry = retry_policy(attempts=attempts, initial_seconds=backoff_seconds, log=log, what=lambda: "Staging")

    def stage(self, items: Iterable[StageItem]) -> Iterator[StagedPart | StageFailure]:
        """Stage every item; yield one result per item as uploads finish (not in input order)."""
        items = iter(items)
        with concurrent.futures.ThreadPoolExecutor(self.workers, thread_name_prefix="stage") as pool:
            in_flight: dict[concurrent.futures.Future, StageItem] = {}

            def refill() -> None:
                while len(in_flight) < self.workers * 2:
                    item = next(items, None)
                    if item is None:
                        return
                    in_flight[pool.submit(self._stage_one, item)] = item

            refill()
            while in_flight:
                done, _ = concurrent.futures.wait(in_flight, return_when=concurrent.futures.FIRST_COMPLETED)
                for future in done:
                    item = in_flight.pop(future)
                    try:
                        yield future.result()
                    except SourceChanged as exc:  # the message names the document and says why
                        log.warning("Staging %s: %s", item.key, exc)
                        yield StageFailure(item.key, str(exc))
                    except Exception as exc:
                        where = printable(uri_of(item.source / item.path))
                        log.warning("Staging %s (%s) failed: %s", item.key, where, exc)
                        yield StageFailure(item.key, f"staging {where} failed: {exc}")
                refill()

    def _open(self, item: StageItem) -> AbstractContextManager[BinaryIO]:
        """The part's bytes, only as the plan hashed them (``documents.open_planned``)."""
        return self.open_part(item.source, item.path, item.pages, item.sha256)

    def _stage_one(self, item: StageItem) -> StagedPart:
        return self._retry.copy()(self._attempt, item)  # a copy per call: retry state is per part

    def _attempt(self, item: StageItem) -> StagedPart:
        raise NotImplementedError


class FilesApiUploads:
    """Files API uploads under names the caller derives from content, so each is made once.

    ``ensure`` uploads first: two requests (start, then the bytes with
    finalize), and the file's state comes with the answer. A 409 at the
    start (the name exists: an earlier run, a concurrent one, or our own
    attempt whose response was lost) sends no bytes; the existing file is
    then read and reused while it is usable, or, FAILED or expiring within
    ``margin``, deleted and uploaded again. It returns once the file is
    ACTIVE: a job fails the rows, or refuses the input, of a file still PROCESSING.
    """

    def __init__(
        self, client: genai.Client, *, margin: dt.timedelta = EXPIRY_MARGIN, processing_timeout: float = 600.0
    ):
        self.client = client
        self.margin = margin
        self.processing_timeout = processing_timeout

    def ensure(
        self,
        name: str,
        open_stream: Callable[[], AbstractContextManager[BinaryIO]],
        *,
        mime_type: str,
        display_name: str,
    ) -> types.File:
        uploaded = self._upload(name, open_stream, mime_type, display_name)
        if uploaded is not None:
            return self._active(uploaded)
        existing = self._get(name)
        if existing is not None and self._usable(existing):
            return self._active(existing)
        if existing is not None:
            log.info(
                "Files API: %s is unusable (state %s, expires %s, margin %s); uploading again",
                name,
                existing.state.value if existing.state else None,
                existing.expiration_time,
                self.margin,
            )
            self._delete(name)
        uploaded = self._upload(name, open_stream, mime_type, display_name)
        if uploaded is None:  # another run uploaded it in between: theirs is new
            uploaded = self._get(name)
        if uploaded is None:
            raise StagingError(f"{name} exists and is gone again at once (409, then 404)")
        return self._active(uploaded)

    def _upload(
        self, name: str, open_stream: Callable[[], AbstractContextManager[BinaryIO]], mime_type: str, display_name: str
    ) -> types.File | None:
        """The new file, or None when the name exists (409).

        A stream that fails as it closes, once uploaded (its source changed while it was read), takes the upload
        back: what it sent is not what the name stands for.
        """
        uploaded = None
        try:
            with open_stream() as stream:
                uploaded = self.client.files.upload(
                    file=stream,  # type: ignore[arg-type]  # an io.IOBase: the stream open_part gives
                    config=types.UploadFileConfig(name=name, mime_type=mime_type, display_name=display_name),
                )
        except errors.APIError as exc:
            if exc.code != 409:
                raise
            return None
        except BaseException:
            if uploaded is not None:
                self._delete(name)
            raise
        return uploaded

    def _usable(self, file: types.File) -> bool:
        if file.state == types.FileState.FAILED:
            return False
        expires = file.expiration_time
        return expires is None or expires - self.margin > dt.datetime.now(dt.timezone.utc)

    def _active(self, file: types.File) -> types.File:
        deadline = time.monotonic() + self.processing_timeout
        delay = 0.05  # a small file is usually ACTIVE within a fraction of a second
        while file.state == types.FileState.PROCESSING:
            if time.monotonic() > deadline:
                raise StagingError(f"{file.name} still PROCESSING after {self.processing_timeout:.0f} s")
            time.sleep(delay)
            delay = min(delay * 2, 10.0)
            name = str(file.name)
            current = self._get(name)
            if current is None:
                raise FileVanished(f"{name} was deleted while it was PROCESSING")
            file = current
        if file.state == types.FileState.FAILED:
            raise StagingError(f"the Files API could not process {file.name}: {file.error or 'state FAILED'}")
        return file

    def _get(self, name: str) -> types.File | None:
        try:
            return self.client.files.get(name=name)
        except errors.ClientError as exc:
            if is_gone(exc):
                return None
            raise

    def _delete(self, name: str) -> None:
        try:
            self.client.files.delete(name=name)
        except errors.ClientError as exc:
            if not is_gone(exc):
                raise


class FilesApiStager(_Stager):
    """Stage parts through the Gemini Files API (Developer API), each under ``files_api_name(key)``."""

    def __init__(
        self,
        client: genai.Client,
        open_part: OpenPart,
        *,
        margin: dt.timedelta = EXPIRY_MARGIN,
        processing_timeout: float = 600.0,
        **kwargs,
    ):
        super().__init__(open_part, **kwargs)
        self.uploads = FilesApiUploads(client, margin=margin, processing_timeout=processing_timeout)

    def _attempt(self, item: StageItem) -> StagedPart:
        file = self.uploads.ensure(
            files_api_name(item.key),
            lambda: self._open(item),
            mime_type=item.mime_type,
            display_name=_display_name(item),
        )
        expires = file.expiration_time.astimezone(dt.timezone.utc).isoformat() if file.expiration_time else None
        return StagedPart(item.key, str(file.uri), file.mime_type or item.mime_type, expires)


class GcsStager(_Stager):
    """Stage parts as objects under a GCS prefix (Vertex AI), named by key."""

    def __init__(self, prefix: ObjectStoragePath, open_part: OpenPart, **kwargs):
        super().__init__(open_part, **kwargs)
        self.prefix = prefix

    def _attempt(self, item: StageItem) -> StagedPart:
        target = self.prefix / f"{item.key}{EXTENSIONS.get(item.mime_type, '')}"
        # A GCS object appears only once its upload completes, so one that exists is whole and as planned: one
        # whose copy failed, or whose source changed while it was read (seen as the stream closes), is removed.
        if not target.exists():
            opened = False
            try:
                with self._open(item) as stream:
                    opened = True
                    with target.open("wb") as out:
                        shutil.copyfileobj(stream, out, CHUNK_BYTES)
            except BaseException:
                if opened:
                    target.unlink(missing_ok=True)
                raise
        return StagedPart(item.key, uri_of(target), item.mime_type, None)


def _display_name(item: StageItem) -> str:
    name = printable(item.path.rsplit("/", 1)[-1])
    if item.pages:
        name += f" p{item.pages[0]}-{item.pages[1]}"
    return name[:512]

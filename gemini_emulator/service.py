"""The emulated service: Files API, Developer API batches and Vertex AI
batch prediction jobs, with a background runner that moves jobs through their
states on the (scaled) clock."""

from __future__ import annotations

import base64
import collections
import concurrent.futures
import datetime as dt
import fnmatch
import hashlib
import logging
import os
import re
import secrets
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson

from . import discovery, responder
from .config import HOUR, EmulatorConfig, HttpFaultInjector
from .errors import HTTP_OF_GRPC, ApiError, invalid, not_found, precondition, row_status, vertex_row_status
from .store import RecordStore, new_id

log = logging.getLogger(__name__)

TERMINAL = frozenset({"SUCCEEDED", "FAILED", "CANCELLED", "EXPIRED"})
CANCELLED = {  # the error a cancelled job ends with: google.rpc.Code 1 (CANCELLED)
    "developer": {"code": 1, "message": "The batch was cancelled."},
    "vertex": {"code": 1, "message": "CANCELED"},
}
ROW_ERROR_MESSAGES = {
    4: "Deadline expired before the request could complete. Please retry.",
    9: "The request could not be processed in the current system state. Please retry.",
    13: "An internal error has occurred. Please retry.",
    429: "Resource has been exhausted (e.g. check quota).",
}
_KEY_IN_BROKEN_LINE = re.compile(rb'"key"\s*:\s*"((?:[^"\\]|\\.)*)"')
_FILE_ID = re.compile(r"^[a-z0-9-]{1,40}$")
JOB_ID_LENGTH = 36  # batches/<36 lowercase letters and digits>, as the service names them


def rfc3339(ts: float | None) -> str | None:
    if ts is None:
        return None
    return dt.datetime.fromtimestamp(ts, dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def vertex_time(ts: float) -> str:
    """A Vertex AI output row's ``processed_time``: milliseconds and a numeric offset (``...18:13:16.826+00:00``)."""
    return dt.datetime.fromtimestamp(ts, dt.timezone.utc).isoformat(timespec="milliseconds")


def _lines(path: Path) -> Iterator[tuple[int, bytes]]:
    """The non-blank lines of a JSONL file, numbered from 1."""
    with path.open("rb") as fh:
        for line_no, line in enumerate(fh, 1):
            if line.strip():
                yield line_no, line


def _page(
    items: list[dict], page_size: int | None, page_token: str | None, default: int, maximum: int
) -> tuple[list[dict], str | None]:
    size = min(max(int(page_size or default), 1), maximum)
    try:
        start = int(base64.urlsafe_b64decode(page_token.encode()).decode()) if page_token else 0
    except (ValueError, UnicodeDecodeError):
        raise invalid(f"Invalid page token: {page_token!r}") from None
    page = items[start : start + size]
    end = start + size
    token = base64.urlsafe_b64encode(str(end).encode()).decode() if end < len(items) else None
    return page, token


def _ends_with_newline(path: Path) -> bool:
    with path.open("rb") as fh:
        fh.seek(-1, os.SEEK_END)
        return fh.read(1) == b"\n"


_CLAUSE = re.compile(r'\s*(NOT\s+|-)?([a-z_.]+)\s*(!=|>=|<=|=|:|>|<)\s*("(?:[^"\\]|\\.)*"|[^\s"()]+)\s*')
_FILTER_FIELDS = {
    "display_name": lambda j: j["display_name"],
    "state": lambda j: f"JOB_STATE_{j['state']}",
    "model": lambda j: j["model"],
    "create_time": lambda j: rfc3339(j["create_time"]),
    "update_time": lambda j: rfc3339(j["update_time"]),
    "start_time": lambda j: rfc3339(j["start_time"]),
    "end_time": lambda j: rfc3339(j["end_time"]),
}


def _filter_clauses(text: str) -> list:
    """An AIP-160 filter of Vertex AI's ``batchPredictionJobs.list``: comparisons joined by ``AND`` (or
    juxtaposed), each ``field op value`` with ``=``, ``!=``, ``:`` (has), ``<``, ``>``, ``<=``, ``>=`` on
    display_name, state, model and the times; ``*`` in a value is a wildcard; ``NOT`` or ``-`` negates."""
    clauses = []
    rest = text.strip()
    while rest:
        match = _CLAUSE.match(rest)
        if not match or match[2] not in _FILTER_FIELDS:
            raise invalid(
                f'Invalid filter {text!r}: expected comparisons such as display_name="x", '
                f'display_name:"prefix*", state=JOB_STATE_SUCCEEDED or create_time>"2026-01-01T00:00:00Z", '
                f"joined by AND."
            )
        negate, field, op, value = match.groups()
        if value.startswith('"'):
            value = value[1:-1].replace('\\"', '"')
        clauses.append(_comparison(_FILTER_FIELDS[field], op, value, bool(negate)))
        rest = rest[match.end() :]
        if rest.startswith("AND ") or rest == "AND":
            rest = rest[3:].lstrip()
        elif rest.startswith("OR "):
            raise invalid(f"Invalid filter {text!r}: the emulator joins comparisons with AND only.")
    return clauses


def _comparison(get, op: str, value: str, negate: bool):
    def test(job: dict) -> bool:
        actual = get(job)
        if op in ("=", ":", "!="):
            hit = actual is not None and (fnmatch.fnmatchcase(actual, value) if "*" in value else actual == value)
            hit = not hit if op == "!=" else hit
        elif actual is None:
            hit = False
        else:
            hit = {"<": actual < value, ">": actual > value, "<=": actual <= value, ">=": actual >= value}[op]
        return hit != negate

    return test


def contents_fingerprint(contents: Any) -> str:
    """sha256 of a request's ``contents`` as canonical JSON: the same document and prompt give the same one, sent
    online or in a batch row (tests compare what went where)."""
    return hashlib.sha256(orjson.dumps(contents, option=orjson.OPT_SORT_KEYS)).hexdigest()


def model_id(model: str) -> str:
    return model.rsplit("/", 1)[-1]


class Emulator:
    """All state and behaviour; the HTTP layer in ``app.py`` only translates."""

    def __init__(self, config: EmulatorConfig):
        self.config = config
        self.faults = config.faults
        config.data_dir.mkdir(parents=True, exist_ok=True)
        self.files = RecordStore(config.data_dir / "files", summed="size_bytes")
        self.uploads = RecordStore(config.data_dir / "uploads")
        self.jobs = RecordStore(config.data_dir / "jobs")
        self._attempts: collections.Counter[str] = collections.Counter()  # answers per key, this process
        self._attempts_lock = threading.Lock()
        self.gcs_cache = config.data_dir / "gcs-cache"
        self.gcs_cache.mkdir(exist_ok=True)
        self.http_faults = HttpFaultInjector(config.faults)
        self._gcs_client = None
        self._admission = threading.Lock()
        self._runner = JobRunner(self)
        self._online_calls: collections.defaultdict[str, collections.deque] = collections.defaultdict(collections.deque)
        self._online_lock = threading.Lock()

    # ---------------------------------------------------------------- lifecycle

    def start(self) -> None:
        self._runner.start()

    def stop(self) -> None:
        self._runner.stop()

    def inject(self, endpoint: str) -> None:
        code = self.http_faults.error_for(endpoint)
        if code is not None:
            log.warning("fault: HTTP %d on %s", code, endpoint)  # the record tests read to see the fault happened
        if code == 429:
            raise ApiError(429, "Resource has been exhausted (e.g. check quota).")
        if code is not None:
            raise ApiError(code, "The service is currently unavailable." if code == 503 else f"Injected error {code}.")

    def expires_at(self, job: dict) -> tuple[float, bool]:
        """When the job ends EXPIRED if still active, and whether its finished rows are then exported.

        Developer API: 48 h after creation, pending or running, with no results. Vertex AI: 72 h in the
        queue (no results), or 24 h running, after which the rest is cancelled and the finished rows exported.
        """
        f, hours = self.faults, self.config.real_seconds
        if job["surface"] == "developer":
            return job["create_time"] + hours(f.job_expiry_hours * HOUR), False
        if job["start_time"] is None:
            return job["create_time"] + hours(f.vertex_queue_hours * HOUR), False
        return job["start_time"] + hours(f.vertex_run_hours * HOUR), True

    # ---------------------------------------------------------------- Files API

    def start_upload(self, file_meta: dict, size: int, mime_type: str) -> str:
        self.inject("upload")
        if size < 0:
            raise invalid("X-Goog-Upload-Header-Content-Length is required.")
        if size > self.faults.max_input_bytes:
            raise invalid(f"File size {size} bytes exceeds the maximum of {self.faults.max_input_bytes} bytes.")
        used = self.files.total()  # every stored file: an upper bound; only near the quota count the live ones
        if used + size > self.faults.files_storage_bytes:
            used = sum(int(f["size_bytes"]) for f in self.files.values() if not self._file_expired(f))
        if used + size > self.faults.files_storage_bytes:
            raise ApiError(
                429, f"Files storage quota exceeded: {used} of {self.faults.files_storage_bytes} bytes in use."
            )
        if not mime_type:
            raise invalid("X-Goog-Upload-Header-Content-Type (the file's MIME type) is required.")
        file_id = None
        if file_meta.get("name"):
            file_id = str(file_meta["name"]).removeprefix("files/")
            if not _FILE_ID.match(file_id):
                raise invalid(
                    f"Invalid file name {file_meta['name']!r}: use up to 40 lowercase letters, digits or dashes."
                )
            if self.files.get(file_id) and not self._file_expired(self.files.get(file_id)):
                raise ApiError(409, f"File files/{file_id} already exists.")
        upload_id = new_id(24)
        self.uploads.put(
            upload_id,
            {
                "file_id": file_id or new_id(),
                "display_name": file_meta.get("displayName"),
                "mime_type": mime_type,
                "size_bytes": size,
                "received": 0,
            },
        )
        self.uploads.blob_path(upload_id, "part").touch()
        return upload_id

    def store_upload(self, file_meta: dict, data: bytes, mime_type: str) -> dict:
        """A one-shot upload (the raw or multipart protocol): the resumable protocol's steps at once."""
        upload_id = self.start_upload(file_meta, len(data), mime_type)
        self.upload_chunk_target(upload_id, 0).write_bytes(data)
        return self.record_chunk(upload_id, len(data), finalize=True)

    def upload_chunk_target(self, upload_id: str, offset: int) -> Path:
        upload = self.uploads.get(upload_id)
        if upload is None:
            raise not_found(f"Upload session {upload_id} does not exist or has been finalized.")
        if offset != upload["received"]:
            raise invalid(f"Upload offset {offset} does not match the {upload['received']} bytes received so far.")
        return self.uploads.blob_path(upload_id, "part")

    def record_chunk(self, upload_id: str, nbytes: int, finalize: bool) -> dict | None:
        upload = self.uploads.update(upload_id, received=self.uploads.get(upload_id)["received"] + nbytes)
        if upload["received"] > upload["size_bytes"]:
            self.uploads.delete(upload_id)
            raise invalid(f"Received {upload['received']} bytes, more than the declared {upload['size_bytes']}.")
        if not finalize:
            return None
        if upload["received"] != upload["size_bytes"]:
            raise invalid(f"Upload finalized after {upload['received']} of {upload['size_bytes']} declared bytes.")
        file_id = upload["file_id"]
        blob = self.files.blob_path(file_id, "bin")
        os.replace(self.uploads.blob_path(upload_id, "part"), blob)
        self.uploads.delete(upload_id)
        return self._add_file(file_id, blob, upload["mime_type"], upload["display_name"], source="UPLOADED")

    def _add_file(self, file_id: str, blob: Path, mime_type: str, display_name: str | None, source: str) -> dict:
        digest = hashlib.sha256()
        with blob.open("rb") as fh:
            while chunk := fh.read(1 << 20):
                digest.update(chunk)
        now = time.time()
        processing = 0.0
        if source != "GENERATED":
            media = mime_type.startswith(("video/", "audio/"))
            processing = self.config.real_seconds(
                max(self.faults.file_processing_seconds, self.faults.media_processing_seconds if media else 0.0)
            )
        record = {
            "id": file_id,
            "display_name": display_name,
            "mime_type": mime_type,
            "size_bytes": blob.stat().st_size,
            "sha256": base64.b64encode(digest.digest()).decode(),
            "create_time": now,
            "active_time": now + processing,
            "expire_time": now + self.config.real_seconds(self.faults.file_ttl_hours * HOUR),
            "source": source,
        }
        self.files.put(file_id, record)
        return record

    def _file_expired(self, record: dict) -> bool:
        return time.time() >= record["expire_time"]

    def get_file(self, file_id: str) -> dict:
        record = self.files.get(file_id)
        if record is None or self._file_expired(record):
            raise ApiError(403, f"You do not have permission to access the File {file_id} or it may not exist.")
        return record

    def list_files(self, page_size: int | None, page_token: str | None) -> tuple[list[dict], str | None]:
        live = [f for f in self.files.values() if not self._file_expired(f)]
        live.sort(key=lambda f: f["create_time"], reverse=True)
        return _page(live, page_size, page_token, default=10, maximum=100)

    def delete_file(self, file_id: str) -> None:
        self.get_file(file_id)
        self.files.delete(file_id)

    def download_path(self, file_id: str) -> Path:
        self.inject("download")
        record = self.get_file(file_id)
        if record["source"] != "GENERATED":
            raise invalid("Only generated files can be downloaded; uploaded files can't be downloaded.")
        return self.files.blob_path(file_id, "bin")

    def file_view(self, record: dict, base_url: str) -> dict:
        state = "ACTIVE" if time.time() >= record["active_time"] else "PROCESSING"
        view = {
            "name": f"files/{record['id']}",
            "mimeType": record["mime_type"],
            "sizeBytes": str(record["size_bytes"]),
            "createTime": rfc3339(record["create_time"]),
            "updateTime": rfc3339(max(record["create_time"], min(time.time(), record["active_time"]))),
            "expirationTime": rfc3339(record["expire_time"]),
            "sha256Hash": record["sha256"],
            "uri": f"{base_url}/v1beta/files/{record['id']}",
            "state": state,
            "source": record["source"],
        }
        if record.get("display_name"):
            view["displayName"] = record["display_name"]
        if record["source"] == "GENERATED":
            view["downloadUri"] = f"{base_url}/download/v1beta/files/{record['id']}:download?alt=media"
        return view

    def resolve_file(self, uri: str) -> tuple[Path, str]:
        """Local path and mime type of a ``fileData.fileUri`` (Files API or gs://)."""
        if uri.startswith("gs://"):
            return self._gcs_fetch(uri)
        match = re.search(r"(?:^|/)files/([a-z0-9-]+)$", uri)
        if not match:
            raise responder.RowFailure(3, f"Invalid fileUri {uri!r}: expected a Files API URI or a gs:// URI.")
        record = self.files.get(match[1])
        if record is None or self._file_expired(record):
            raise responder.RowFailure(
                7, f"You do not have permission to access the File {match[1]} or it may not exist."
            )
        if time.time() < record["active_time"]:
            raise responder.RowFailure(9, f"The File {match[1]} is not in an ACTIVE state and usage is not allowed.")
        return self.files.blob_path(match[1], "bin"), record["mime_type"]

    # ---------------------------------------------------------------- GCS

    def gcs(self):
        if not self.config.gcs_endpoint:
            raise precondition(
                "The emulator was started without --gcs-endpoint; the Vertex AI surface and gs:// URIs need a "
                "GCS emulator."
            )
        if self._gcs_client is None:
            from google.auth.credentials import AnonymousCredentials
            from google.cloud import storage

            self._gcs_client = storage.Client(
                project="gemini-emulator",
                credentials=AnonymousCredentials(),
                client_options={"api_endpoint": self.config.gcs_endpoint},
            )
        return self._gcs_client

    @staticmethod
    def _split_gs(uri: str) -> tuple[str, str]:
        bucket, _, name = uri.removeprefix("gs://").partition("/")
        return bucket, name

    def _expand_gcs(self, uri: str) -> list[str]:
        """A ``gs://`` URI with ``*`` wildcards: the objects it matches (sorted); others as they are."""
        if "*" not in uri:
            return [uri]
        bucket, pattern = self._split_gs(uri)
        prefix = pattern.split("*", 1)[0]
        matches = sorted(
            f"gs://{bucket}/{blob.name}"
            for blob in self.gcs().list_blobs(bucket, prefix=prefix)
            if fnmatch.fnmatchcase(blob.name, pattern)
        )
        if not matches:
            raise invalid(f"No files match the input URI {uri}.")
        return matches

    def _gcs_fetch(self, uri: str) -> tuple[Path, str]:
        from google.api_core.exceptions import NotFound

        bucket, name = self._split_gs(uri)
        try:
            blob = self.gcs().bucket(bucket).get_blob(name)
        except ApiError as exc:
            raise responder.RowFailure(9, exc.message) from None
        if blob is None:
            raise responder.RowFailure(3, f"Cannot fetch content from {uri}: the object does not exist.")
        cached = self.gcs_cache / hashlib.sha256(f"{uri}#{blob.generation}".encode()).hexdigest()
        if not cached.exists():
            tmp = cached.with_suffix(f".{threading.get_ident()}.tmp")
            try:
                blob.download_to_filename(str(tmp))
            except NotFound:
                raise responder.RowFailure(3, f"Cannot fetch content from {uri}: the object does not exist.") from None
            os.replace(tmp, cached)
        return cached, blob.content_type or "application/octet-stream"

    # ---------------------------------------------------------------- batches (both surfaces)

    def _answering_model(
        self, model: str, surface: str, project: str = "", location: str = "", kind: str = "generate"
    ) -> str:
        """The model that answers a ``kind`` batch for ``model`` (a shut-down one may be routed); 404 as the
        service answers when there is none."""
        answering = self.config.models.for_batches(model_id(model), kind, surface)
        if answering is None:
            if surface == "vertex":
                raise not_found(
                    f"Publisher Model `projects/{project}/locations/{location}/{model}` was not found or your "
                    f"project does not have access to it."
                )
            method = "asyncBatchEmbedContent" if kind == "embed" else "batchGenerateContent"
            raise not_found(
                f"{model} is not found for API version v1beta, or is not supported for {method}. "
                f"Call ListModels to see the list of available models and their supported methods."
            )
        return answering

    def _vertex_kind(self, model: str) -> str:
        """What a Vertex AI batch prediction job of ``model`` does: ``embed`` for an embedding model."""
        found = self.config.models.models.get(model_id(model))
        return "embed" if found is not None and found.batch_kind() == "embed" else "generate"

    def get_model(self, name: str, surface: str) -> dict:
        model = self.config.models.get(model_id(name), surface=surface)
        if model is None:
            if surface == "vertex":
                raise not_found(f"Publisher Model `{name}` was not found or your project does not have access to it.")
            raise not_found(
                f"models/{model_id(name)} is not found for API version v1beta, or is not supported for "
                "generateContent. Call ListModels to see the list of available models and their supported methods."
            )
        return model.vertex_view() if surface == "vertex" else model.developer_view()

    def list_models(self, surface: str, page_size: int | None, page_token: str | None) -> tuple[list[dict], str | None]:
        views = [
            m.vertex_view() if surface == "vertex" else m.developer_view()
            for m in self.config.models.live(surface=surface)
        ]
        return _page(views, page_size, page_token, default=50, maximum=1000)

    def _scan_input(self, path: Path, require_key: bool) -> int:
        """Validate a JSONL input the way the service does before accepting it.

        A line that is not JSON fails only its own row (later); a missing or
        duplicate key, or an input that is too large, rejects the whole job.
        """
        size = path.stat().st_size
        if size > self.faults.max_input_bytes:
            raise invalid(f"Input file is {size} bytes; the maximum is {self.faults.max_input_bytes} bytes.")
        seen: dict[str, int] = {}
        rows = 0
        with path.open("rb") as fh:
            for line_no, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                rows += 1
                if rows > self.faults.max_requests:
                    raise invalid(f"Input has more than {self.faults.max_requests} requests.")
                try:
                    row = orjson.loads(line)
                except orjson.JSONDecodeError:
                    continue
                key = row.get("key") if isinstance(row, dict) else None
                if key is None:
                    if require_key:
                        raise invalid(
                            f"Line {line_no}: the request has no 'key'; every line needs a unique string 'key'."
                        )
                    continue
                if not isinstance(key, str) or not key:
                    raise invalid(f"Line {line_no}: 'key' must be a non-empty string, got {key!r}.")
                if key in seen:
                    raise invalid(
                        f"Line {line_no}: duplicate key {key!r} (first used on line {seen[key]}); "
                        f"keys must be unique within a batch."
                    )
                seen[key] = line_no
        if rows == 0:
            raise invalid("The input contains no requests.")
        return rows

    def _new_job(self, **fields: Any) -> dict:
        """Store a new PENDING job; the quota is checked and the job stored under one lock, so two creates
        at once cannot both take the last of it. A refused job's input is removed."""
        with self._admission:
            try:
                self._check_quota(fields["answered_by"], fields.get("tokens"))
            except ApiError:
                self.jobs.blob_path(fields["id"], "input.jsonl").unlink(missing_ok=True)
                raise
            return self._store_new_job(fields)

    def _store_new_job(self, fields: dict) -> dict:
        ordinal = self.jobs.next_ordinal()
        f = self.faults
        fate = "normal"
        if f.chance("stuck", ordinal) < f.stuck_pending_rate:
            fate = "stuck"
        elif f.chance("expire", ordinal) < f.job_expire_rate:
            fate = "expire"
        elif f.chance("fail", ordinal) < f.job_fail_rate:
            fate = "fail"
        now = time.time()
        job = {
            "ordinal": ordinal,
            "fate": fate,
            "state": "PENDING",
            "create_time": now,
            "update_time": now,
            "start_time": None,
            "end_time": None,
            "processed": False,
            "stats": {"succeeded": 0, "failed": 0, "processed": 0},
            "error": None,
            "cancel_requested": False,
            **fields,
        }
        self.jobs.put(job["id"], job)
        return job

    def create_batch(self, model: str, batch: Any, kind: str = "generate") -> dict:
        """``models.batchGenerateContent`` (``kind`` generate) or ``models.asyncBatchEmbedContent`` (embed)
        of the request body's ``batch``."""
        self.inject("create")
        answered_by = self._answering_model(f"models/{model_id(model)}", "developer", kind=kind)
        if not isinstance(batch, dict):
            raise invalid("Missing 'batch' in the request body.")
        schema = "EmbedContentBatch" if kind == "embed" else "GenerateContentBatch"
        batch, problems = discovery.developer().normalise(batch, schema, "batch")
        if problems:
            raise invalid("; ".join(problems[:5]))
        source = batch.get("inputConfig") or {}
        has_file, has_inline = "fileName" in source, "requests" in source
        if has_file == has_inline:
            raise invalid("batch.input_config must set exactly one of file_name or requests.")
        job_id = new_id(JOB_ID_LENGTH)
        input_path = self.jobs.blob_path(job_id, "input.jsonl")
        if has_file:
            file_id = str(source["fileName"]).removeprefix("files/")
            record = self.files.get(file_id)
            if record is None or self._file_expired(record):
                raise ApiError(403, f"You do not have permission to access the File {file_id} or it may not exist.")
            if time.time() < record["active_time"]:
                raise precondition(f"The File {file_id} is not in an ACTIVE state and usage is not allowed.")
            try:
                os.link(self.files.blob_path(file_id, "bin"), input_path)
            except OSError:
                shutil.copyfile(self.files.blob_path(file_id, "bin"), input_path)
        else:
            requests = (source.get("requests") or {}).get("requests") or []
            with input_path.open("wb") as out:
                for item in requests:
                    row = {
                        "key": (item.get("metadata") or {}).get("key"),
                        "request": item.get("request"),
                        "metadata": item.get("metadata"),
                    }
                    out.write(orjson.dumps({k: v for k, v in row.items() if v is not None}))
                    out.write(b"\n")
            if input_path.stat().st_size > self.faults.max_inline_bytes:
                input_path.unlink()
                raise invalid(
                    f"Inlined requests total more than {self.faults.max_inline_bytes} bytes; "
                    f"upload a JSONL file instead."
                )
        try:
            rows = self._scan_input(input_path, require_key=has_file)
            tokens = self._input_tokens(input_path)
        except ApiError:
            input_path.unlink(missing_ok=True)
            raise
        return self._new_job(
            id=job_id,
            surface="developer",
            kind=kind,
            name=f"batches/{job_id}",
            model=f"models/{model_id(model)}",
            display_name=batch.get("displayName") or "",
            request_count=rows,
            input_file=source.get("fileName"),
            inline=has_inline,
            tokens=tokens,
            answered_by=answered_by,
        )

    def _input_tokens(self, input_path: Path) -> int | None:
        """The tokens a new job's requests hold while it is active; counted only when the enqueued-token quota
        is set (it reads every part)."""
        if not self.faults.enqueued_token_limit:
            return None
        total = 0
        for _, line in _lines(input_path):
            try:
                row = orjson.loads(line)
            except orjson.JSONDecodeError:
                continue  # a line that is not JSON fails only its own row, and holds nothing
            if isinstance(row, dict):
                request, _ = discovery.developer().normalise(row.get("request"), "GenerateContentRequest")
                total += responder.request_tokens(request, self.resolve_file)
        return total

    def _check_quota(self, model: str, tokens: int | None) -> None:
        """429 RESOURCE_EXHAUSTED when a new job's tokens and those of the model's active jobs exceed the limit."""
        limit = self.faults.enqueued_token_limit
        if not limit:
            return
        held = sum(
            j.get("tokens") or 0
            for j in self.jobs.values()
            if j["state"] not in TERMINAL and j.get("answered_by") == model
        )
        if held + (tokens or 0) > limit:
            log.warning(
                "quota: %s holds %d enqueued tokens; a job of %d more refused (limit %d)",
                model_id(model),
                held,
                tokens or 0,
                limit,
            )
            raise ApiError(429, "Resource has been exhausted (e.g. check quota).")

    def create_vertex_job(self, project: str, location: str, body: dict) -> dict:
        self.inject("create")
        body, problems = discovery.vertex().normalise(body, "GoogleCloudAiplatformV1BatchPredictionJob")
        if problems:
            raise invalid("; ".join(problems[:5]))
        model = str(body.get("model", ""))
        kind = self._vertex_kind(model)
        answered_by = self._answering_model(model, "vertex", project, location, kind=kind)
        source = body.get("inputConfig") or {}
        if "bigquerySource" in source:
            raise ApiError(
                501, "The emulator does not serve BigQuery sources (the service does): use inputConfig.gcsSource."
            )
        uris = (source.get("gcsSource") or {}).get("uris") or []
        prefix = (((body.get("outputConfig") or {}).get("gcsDestination") or {}).get("outputUriPrefix")) or ""
        if not uris or not all(str(u).startswith("gs://") for u in uris):
            raise invalid("inputConfig.gcsSource.uris must list gs:// URIs of JSONL files.")
        if not prefix.startswith("gs://"):
            raise invalid("outputConfig.gcsDestination.outputUriPrefix must be a gs:// prefix.")
        self.gcs()  # without a GCS emulator: 400 FAILED_PRECONDITION before anything else
        uris = [match for uri in uris for match in self._expand_gcs(uri)]
        job_id = str(secrets.randbelow(9 * 10**18) + 10**18)
        input_path = self.jobs.blob_path(job_id, "input.jsonl")
        try:
            with input_path.open("wb") as out:
                for uri in uris:
                    path, _ = self._gcs_fetch(uri)
                    with path.open("rb") as fh:
                        shutil.copyfileobj(fh, out, 1 << 20)
                    if path.stat().st_size and not _ends_with_newline(path):
                        out.write(b"\n")  # each file is its own JSONL: never join two files' lines
            rows = self._scan_input(input_path, require_key=False)  # Vertex AI echoes the request instead
            tokens = self._input_tokens(input_path)
        except responder.RowFailure as exc:
            input_path.unlink(missing_ok=True)
            raise invalid(exc.status["message"]) from None
        except ApiError:
            input_path.unlink(missing_ok=True)
            raise
        return self._new_job(
            id=job_id,
            surface="vertex",
            kind=kind,
            model_parameters=body.get("modelParameters") if isinstance(body.get("modelParameters"), dict) else None,
            name=f"projects/{project}/locations/{location}/batchPredictionJobs/{job_id}",
            model=model,
            display_name=body.get("displayName") or "",
            request_count=rows,
            input_uris=list(uris),
            output_prefix=prefix,
            tokens=tokens,
            answered_by=answered_by,
        )

    def get_job(self, job_id: str, surface: str) -> dict:
        job = self.jobs.get(job_id)
        if job is None or job["surface"] != surface:
            raise not_found(
                "Requested entity was not found."
                if surface == "developer"
                else f"The BatchPredictionJob {job_id} does not exist."
            )
        return job

    def list_jobs(
        self, surface: str, page_size: int | None, page_token: str | None, filter_: str | None = None, parent: str = ""
    ) -> tuple[list[dict], str | None]:
        jobs = [j for j in self.jobs.values() if j["surface"] == surface and j["name"].startswith(parent)]
        for clause in _filter_clauses(filter_ or ""):
            jobs = [j for j in jobs if clause(j)]
        jobs.sort(key=lambda j: j["create_time"], reverse=True)
        return _page(jobs, page_size, page_token, default=50 if surface == "developer" else 100, maximum=1000)

    def cancel_job(self, job_id: str, surface: str) -> None:
        self.inject("cancel")
        job = self.get_job(job_id, surface)
        if job["state"] in TERMINAL:
            raise precondition(
                f"The batch job {job['name']} is already in a terminal state ({job['state']}) and cannot be cancelled."
            )
        self.jobs.update(job_id, cancel_requested=True, update_time=time.time())
        self._runner.wake()

    def delete_job(self, job_id: str, surface: str) -> None:
        self.inject("delete")
        job = self.get_job(job_id, surface)
        if surface == "vertex" and job["state"] not in TERMINAL:
            raise precondition(
                f"The BatchPredictionJob {job['name']} is in state JOB_STATE_{job['state']}; "
                f"cancel it before deleting it."
            )
        self._runner.forget(job_id)
        self.jobs.delete(job_id)

    def progress(self, job: dict) -> dict:
        return self._runner.progress(job)

    def inlined_responses(self, job: dict) -> list[dict]:
        path = self.jobs.blob_path(job["id"], "output.jsonl")
        if not path.exists():
            return []
        with path.open("rb") as fh:
            return [orjson.loads(line) for line in fh if line.strip()]

    # ---------------------------------------------------------------- online calls

    def generate_content(self, model: str, body: dict, surface: str, project: str = "", location: str = "") -> dict:
        """``models.generateContent``: one request answered at once by the batch rows' responder, with the same
        row faults (a row error becomes the HTTP error the service answers with), the online rate limit
        (``online_rpm``: 429 RESOURCE_EXHAUSTED) and the HTTP faults of endpoint ``generate``. Each call is recorded
        in ``online.jsonl`` (time, surface, model, status, tokens, a fingerprint of its contents)."""
        record: dict[str, Any] = {"at": time.time(), "surface": surface, "model": model_id(model), "status": 200}
        contents = body.get("contents") if isinstance(body, dict) else None
        record["contents_sha256"] = contents_fingerprint(contents)
        try:
            response = self._answer_online(model, body, surface, project, location, record)
        except ApiError as exc:
            record["status"] = exc.http_code
            self._record_online(record)
            raise
        usage = response.get("usageMetadata") or {}
        record["input_tokens"] = usage.get("promptTokenCount", 0)
        record["output_tokens"] = usage.get("candidatesTokenCount", 0) + usage.get("thoughtsTokenCount", 0)
        self._record_online(record)
        return response

    def _answer_online(
        self, model: str, body: dict, surface: str, project: str, location: str, record: dict
    ) -> dict[str, Any]:
        self.inject("generate")
        found = self.config.models.get(model_id(model), surface=surface)
        if found is None or "generateContent" not in found.methods:
            if surface == "vertex":
                raise not_found(
                    f"Publisher Model `projects/{project}/locations/{location}/publishers/google/models/"
                    f"{model_id(model)}` was not found or your project does not have access to it."
                )
            raise not_found(
                f"models/{model_id(model)} is not found for API version v1beta, or is not supported for "
                "generateContent. Call ListModels to see the list of available models and their supported methods."
            )
        self._check_online_rate(found.id)
        identity = self._attempt_identity(f"online-{record['contents_sha256'][:32]}")
        f = self.faults
        if f.chance("missing", identity) < f.missing_rate:
            raise ApiError(504, "Deadline expired before operation could complete.")
        if f.chance("row_error", identity) < f.row_error_rate:
            code = f.pick(f.row_error_codes, "row_error", identity)
            http = code if code >= 100 else HTTP_OF_GRPC.get(code, 500)
            raise ApiError(http, ROW_ERROR_MESSAGES.get(code, f"Error {code}."))
        try:
            response = responder.answer(body, identity, found.id, self.resolve_file, f, surface)
        except responder.RowFailure as exc:
            code = exc.status["code"]
            raise ApiError(code if code >= 100 else HTTP_OF_GRPC.get(code, 500), exc.status["message"]) from None
        if surface == "vertex":  # Vertex AI's GenerateContentResponse also says when it was made
            response["createTime"] = vertex_time(time.time())
        return response

    def _check_online_rate(self, model: str) -> None:
        """At most ``online_rpm`` online requests per model in any emulated minute (0: no limit); over it, 429."""
        limit = self.faults.online_rpm
        if not limit:
            return
        now, window = time.monotonic(), self.config.real_seconds(60)
        with self._online_lock:
            calls = self._online_calls[model]
            while calls and calls[0] <= now - window:
                calls.popleft()
            if len(calls) >= limit:
                log.warning("quota: %s online requests per minute of %s used; a request refused", limit, model)
                raise ApiError(429, "Resource has been exhausted (e.g. check quota).")
            calls.append(now)

    def _record_online(self, record: dict) -> None:
        with self._online_lock, (self.config.data_dir / "online.jsonl").open("ab") as out:
            out.write(orjson.dumps(record) + b"\n")

    # ---------------------------------------------------------------- row processing

    def _attempt_identity(self, key: str) -> str:
        """The key for a row's first answer, ``key#n`` for its n-th resubmission.

        Faults are a pure function of this identity, so a run repeats exactly,
        while a resubmitted row gets a fresh draw: like the service, where rows
        that failed transiently succeed when sent again.
        """
        with self._attempts_lock:
            attempt = self._attempts[key]
            self._attempts[key] += 1
        return key if attempt == 0 else f"{key}#{attempt}"

    def answer_row(self, line: bytes, line_no: int, job: dict) -> dict | None:
        """The output row for one input line, or None when the row goes missing."""
        try:
            row = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            match = _KEY_IN_BROKEN_LINE.search(line)
            key = match[1].decode("utf-8", "replace") if match else None
            out = self._row_error(job, key, None, None, row_status(3, f"Line {line_no} is not valid JSON: {exc}"))
            return out
        key = row.get("key") if isinstance(row, dict) else None
        metadata = row.get("metadata") if isinstance(row, dict) else None
        request = row.get("request") if isinstance(row, dict) else None
        if job["surface"] == "vertex" and job.get("kind") == "embed":
            request = row  # an instance, echoed in its output row
        identity = self._attempt_identity(key if key is not None else f"line-{line_no}")
        f = self.faults
        if f.chance("missing", identity) < f.missing_rate:
            return None
        if f.chance("row_error", identity) < f.row_error_rate:
            code = f.pick(f.row_error_codes, "row_error", identity)
            return self._row_error(
                job, key, metadata, request, row_status(code, ROW_ERROR_MESSAGES.get(code, f"Error {code}."))
            )
        embed = job.get("kind") == "embed"
        if embed and job["surface"] == "vertex":
            return self._vertex_embedding_row(row, job)
        if request is None:
            return self._row_error(job, key, metadata, None, row_status(3, f"Line {line_no} has no 'request' field."))
        answering = job.get("answered_by") or model_id(job["model"])
        try:
            if embed:
                values, _ = responder.embed(request, self._dimensions(answering), self.resolve_file, job["surface"])
                response = {"embedding": {"values": values}}
            else:
                response = responder.answer(request, identity, answering, self.resolve_file, f, job["surface"])
        except responder.RowFailure as exc:
            return self._row_error(job, key, metadata, request, exc.status)
        if job["surface"] == "vertex":
            row = {
                "key": key,
                "request": request,
                "status": "",
                "response": response,
                "processed_time": vertex_time(time.time()),
            }
        elif job.get("inline"):
            row = {"response": response, "metadata": metadata}
        else:
            row = {"key": key, "response": response}
        return {k: v for k, v in row.items() if v is not None}

    def _dimensions(self, model: str) -> int:
        found = self.config.models.models.get(model_id(model))
        return found.dimensions if found is not None and found.dimensions else responder.DEFAULT_EMBEDDING_DIMENSIONS

    def _vertex_embedding_row(self, instance: Any, job: dict) -> dict:
        """A Vertex AI embedding instance (``{"content": "...", "task_type": ..., "title": ...}``) answered as
        Google documents it: ``{"instance", "predictions": [{"embeddings": {"statistics", "values"}}], "status"}``."""
        try:
            if not isinstance(instance, dict) or not instance.get("content"):
                raise responder.RowFailure(3, "The instance has no 'content' to embed.")
            content = instance["content"]
            if isinstance(content, str):
                content = {"parts": [{"text": content}]}
            content, problems = discovery.developer().normalise(content, "Content", "instance.content")
            if problems:
                raise responder.RowFailure(3, "; ".join(problems[:5]))
            parameters = job.get("model_parameters") or {}
            dimensions = parameters.get("outputDimensionality") or parameters.get("output_dimensionality")
            request = {"content": content, "title": instance.get("title"), "outputDimensionality": dimensions}
            answering = job.get("answered_by") or model_id(job["model"])
            values, tokens = responder.embed(request, self._dimensions(answering), self.resolve_file)
        except (responder.RowFailure, TypeError, ValueError) as exc:
            status = exc.status if isinstance(exc, responder.RowFailure) else row_status(3, str(exc))
            return {"instance": instance, "status": vertex_row_status(status)}
        embeddings = {"statistics": {"token_count": tokens, "truncated": False}, "values": values}
        return {"instance": instance, "predictions": [{"embeddings": embeddings}], "status": ""}

    @staticmethod
    def _row_error(job: dict, key: str | None, metadata: Any, request: Any, status: dict) -> dict:
        if job["surface"] == "vertex" and job.get("kind") == "embed":
            return {"instance": request, "status": vertex_row_status(status)}
        if job["surface"] == "vertex":
            row = {
                "key": key,
                "request": request,
                "status": vertex_row_status(status),
                "processed_time": vertex_time(time.time()),
            }
        elif job.get("inline"):
            row = {"error": status, "metadata": metadata}
        else:
            row = {"key": key, "error": status}
        return {k: v for k, v in row.items() if v is not None}

    def publish_output(self, job: dict) -> dict:
        """Make a job's (possibly partial) output visible where the service puts it."""
        tmp = self.jobs.blob_path(job["id"], "output.tmp")
        if not tmp.exists():
            return {}
        if job["surface"] == "vertex":
            stamp = dt.datetime.fromtimestamp(job["create_time"], dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
            bucket, prefix = self._split_gs(job["output_prefix"].rstrip("/"))
            directory = f"{prefix}/prediction-model-{stamp}".lstrip("/")
            self.gcs().bucket(bucket).blob(f"{directory}/predictions.jsonl").upload_from_filename(
                str(tmp), content_type="application/jsonl"
            )
            tmp.unlink()
            return {"output_dir": f"gs://{bucket}/{directory}"}
        if job.get("inline"):
            os.replace(tmp, self.jobs.blob_path(job["id"], "output.jsonl"))
            return {}
        file_id = f"batch-{job['id']}"
        blob = self.files.blob_path(file_id, "bin")
        os.replace(tmp, blob)
        self._add_file(file_id, blob, "application/jsonl", f"Responses of {job['name']}", source="GENERATED")
        return {"output_file": f"files/{file_id}"}

    def iter_input(self, job: dict) -> Iterator[tuple[int, bytes]]:
        return _lines(self.jobs.blob_path(job["id"], "input.jsonl"))


class JobRunner:
    """Moves jobs through their states; one worker thread per job being processed."""

    TICK = 0.05

    def __init__(self, emulator: Emulator):
        self.em = emulator
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=4, thread_name_prefix="job")
        self._active: dict[str, concurrent.futures.Future] = {}
        self._stop_flags: dict[str, threading.Event] = {}
        self._progress: dict[str, dict] = {}
        self._lock = threading.Lock()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="job-runner", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        self._wake.set()
        for flag in list(self._stop_flags.values()):
            flag.set()
        if self._thread:
            self._thread.join(timeout=5)
        self._pool.shutdown(wait=True, cancel_futures=True)

    def wake(self) -> None:
        self._wake.set()

    def forget(self, job_id: str) -> None:
        flag = self._stop_flags.get(job_id)
        if flag:
            flag.set()
        future = self._active.get(job_id)
        if future:
            future.result(timeout=30)

    def progress(self, job: dict) -> dict:
        with self._lock:
            live = self._progress.get(job["id"])
            return dict(live) if live else dict(job["stats"])

    def _loop(self) -> None:
        while not self._stopping.is_set():
            for job in self.em.jobs.values():
                if job["state"] not in TERMINAL:
                    try:
                        self._advance(job)
                    except Exception as exc:
                        self._finish(job, "FAILED", error=row_status(13, f"Emulator error: {exc}"))
            self._wake.wait(self.TICK)
            self._wake.clear()

    def _advance(self, job: dict) -> None:
        cfg, f = self.em.config, self.em.faults
        now = time.time()
        future = self._active.get(job["id"])
        running = future is not None and not future.done()
        # The loop's snapshot may predate a worker that has since finished and
        # persisted processed=True: decide on the record as it is now.
        job = self.em.jobs.get(job["id"])
        if job is None or job["state"] in TERMINAL:
            return
        if job["cancel_requested"]:
            if running:
                self._stop_flags[job["id"]].set()
                if job["surface"] == "vertex" and job["state"] != "CANCELLING":
                    self.em.jobs.update(job["id"], state="CANCELLING", update_time=now)
                return
            # Vertex AI exports the rows it finished; a Developer API batch keeps none.
            self._finish(
                job,
                "CANCELLED",
                output=self._finished_rows(job, keep=job["surface"] == "vertex"),
                error=CANCELLED[job["surface"]],
            )
            return
        expires_at, exported = self.em.expires_at(job)
        if now >= expires_at:
            if running:
                self._stop_flags[job["id"]].set()
                return
            self._finish(job, "EXPIRED", output=self._finished_rows(job, keep=exported))
            return
        if job["state"] == "PENDING":
            if job["fate"] != "stuck" and now >= job["create_time"] + cfg.real_seconds(f.pending_seconds):
                job = self.em.jobs.update(job["id"], state="RUNNING", start_time=now, update_time=now)
                self._launch(job)
            return
        if not job["processed"]:
            if not running and not self._stopping.is_set():
                self._launch(job)  # e.g. after a restart of the emulator
            return
        if job["fate"] == "expire":
            return  # stalls until the expiry deadline
        min_run = cfg.real_seconds(f.running_seconds + f.row_seconds * job["request_count"])
        if now < job["start_time"] + min_run:
            return
        if job["fate"] == "fail":
            error = row_status(13, "Batch job failed: an internal error occurred while processing the batch.")
            self._finish(job, "FAILED", output=self.em.publish_output(job), error=error)
        else:
            self._finish(job, "SUCCEEDED", output=self.em.publish_output(job))

    def _finished_rows(self, job: dict, keep: bool) -> dict:
        """Publish the rows answered so far (``keep``), or drop them."""
        if keep:
            return self.em.publish_output(job)
        self.em.jobs.blob_path(job["id"], "output.tmp").unlink(missing_ok=True)
        return {}

    def _launch(self, job: dict) -> None:
        flag = threading.Event()
        self._stop_flags[job["id"]] = flag
        self._active[job["id"]] = self._pool.submit(self._process, job, flag)

    def _process(self, job: dict, stop: threading.Event) -> None:
        """Answer every row in order into ``output.tmp``; a restart starts over."""
        em, f = self.em, self.em.faults
        stats = {"succeeded": 0, "failed": 0, "processed": 0}
        with self._lock:
            self._progress[job["id"]] = stats
        limit = job["request_count"]
        if job["fate"] in ("fail", "expire"):
            limit = int(job["request_count"] * f.partial_fraction)
        row_delay = em.config.real_seconds(f.row_seconds)
        tmp = em.jobs.blob_path(job["id"], "output.tmp")
        try:
            with tmp.open("wb") as out:
                for line_no, line in em.iter_input(job):
                    if stats["processed"] >= limit or stop.is_set():
                        break
                    row = em.answer_row(line, line_no, job)
                    ok = row is None or ("response" in row)
                    if row is not None:
                        data = orjson.dumps(row)
                        if f.chance("corrupt", job["id"], line_no) < f.corrupt_rate:
                            data = data[: len(data) // 2]
                        out.write(data)
                        out.write(b"\n")
                    with self._lock:
                        stats["processed"] += 1
                        stats["succeeded" if ok else "failed"] += 1
                    if row_delay:
                        stop.wait(row_delay)
            if stop.is_set() and self._stopping.is_set():
                return  # shutting down: leave the job RUNNING for the next start
            if em.jobs.get(job["id"]) is not None:
                em.jobs.update(job["id"], processed=True, stats=dict(stats), update_time=time.time())
        finally:
            with self._lock:
                self._progress.pop(job["id"], None)
            self._wake.set()

    def _finish(self, job: dict, state: str, output: dict | None = None, error: dict | None = None) -> None:
        now = time.time()
        self.em.jobs.update(job["id"], state=state, end_time=now, update_time=now, error=error, **(output or {}))
        self._active.pop(job["id"], None)
        self._stop_flags.pop(job["id"], None)

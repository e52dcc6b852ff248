"""HTTP layer: the REST paths the ``google-genai`` client calls, nothing more."""

from __future__ import annotations

import asyncio
import contextlib
import email.parser
import email.policy
import threading
import time
from typing import Any, BinaryIO

import orjson
from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from .config import EmulatorConfig
from .errors import ApiError, invalid
from .service import TERMINAL, Emulator, rfc3339

DEV_STATES = {
    "PENDING": "BATCH_STATE_PENDING",
    "RUNNING": "BATCH_STATE_RUNNING",
    "SUCCEEDED": "BATCH_STATE_SUCCEEDED",
    "FAILED": "BATCH_STATE_FAILED",
    "CANCELLED": "BATCH_STATE_CANCELLED",
    "EXPIRED": "BATCH_STATE_EXPIRED",
}
VERTEX = "/{version}/projects/{project}/locations/{location}/batchPredictionJobs"
TYPE_PREFIX = "type.googleapis.com/google.ai.generativelanguage.v1main."
# What the service answers a key it does not know: 400, not 401, with the reason in an ErrorInfo detail.
INVALID_KEY = {
    "error": {
        "code": 400,
        "message": "API key not valid. Please pass a valid API key.",
        "status": "INVALID_ARGUMENT",
        "details": [
            {
                "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                "reason": "API_KEY_INVALID",
                "domain": "googleapis.com",
                "metadata": {"service": "generativelanguage.googleapis.com"},
            }
        ],
    }
}


def _counters(**counts: int) -> dict[str, str]:
    """int64 counters in proto3 JSON: as strings, and left out when zero."""
    return {name: str(count) for name, count in counts.items() if count}


def _json(value: Any, status: int = 200, headers: dict | None = None) -> Response:
    return Response(orjson.dumps(value), status_code=status, media_type="application/json", headers=headers)


def _base_url(request: Request) -> str:
    return str(request.base_url).rstrip("/")


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(word.title() for word in rest)


async def _body(request: Request) -> dict:
    raw = await request.body()
    if not raw:
        return {}
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise invalid(f"Invalid JSON payload received: {exc}") from None
    if not isinstance(value, dict):
        raise invalid("Invalid JSON payload received: expected an object.")
    return value


async def _one_shot_upload(request: Request, protocol: str) -> tuple[dict, bytes, str]:
    """The file's metadata, bytes and MIME type from a raw (media) or multipart (metadata, then media) upload."""
    body = await request.body()
    if protocol != "multipart":
        return {}, body, request.headers.get("content-type") or ""
    content_type = request.headers.get("content-type", "")
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        b"Content-Type: " + content_type.encode() + b"\r\n\r\n" + body
    )
    parts = list(message.iter_parts()) if message.is_multipart() else []
    if len(parts) != 2:
        raise invalid("A multipart upload has two parts: the file's metadata (JSON), then its content.")
    try:
        meta = orjson.loads(parts[0].get_payload(decode=True) or b"{}")
    except orjson.JSONDecodeError as exc:
        raise invalid(f"Invalid JSON payload received in the metadata part: {exc}") from None
    meta = {_camel(k): v for k, v in (meta.get("file") or {}).items()}
    return meta, parts[1].get_payload(decode=True) or b"", parts[1].get_content_type() or meta.get("mimeType", "")


class RequestLog:
    """ASGI middleware appending one JSON line per request to ``requests.jsonl``: the emulator's own record of
    what it was asked (tests count calls from it). The file stays open; each line is written and flushed as the
    answer starts, so a client that has its answer finds the request recorded."""

    def __init__(self, app, file: BinaryIO):
        self.app = app
        self._file = file
        self._lock = threading.Lock()

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        at, status, written = time.time(), None, False

        def note() -> None:
            nonlocal written
            written = True
            self._write(
                {
                    "at": at,
                    "method": scope["method"],
                    "path": scope["path"],
                    "query": scope["query_string"].decode("latin-1"),
                    "status": status,
                }
            )

        async def send_and_note(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                note()  # before the client can have the answer: whoever saw a response finds its request here
            await send(message)

        try:
            await self.app(scope, receive, send_and_note)
        except Exception:
            status = status or 500  # what the server answers for an error that got this far (None: client left)
            raise
        finally:
            if not written:
                note()

    def _write(self, record: dict) -> None:
        with self._lock:
            self._file.write(orjson.dumps(record) + b"\n")
            self._file.flush()


def developer_job_view(em: Emulator, job: dict, listed: bool = False) -> dict:
    """A Developer API batch as an ``Operation``; ``listed``: as ``batches.list`` shows it, without the
    inlined responses (``batches.get`` has them)."""
    stats = em.progress(job)
    total = job["request_count"]
    batch_type = "EmbedContentBatch" if job.get("kind") == "embed" else "GenerateContentBatch"
    metadata: dict[str, Any] = {
        "@type": TYPE_PREFIX + batch_type,
        "name": job["name"],
        "model": job["model"],
        "displayName": job["display_name"],
        "createTime": rfc3339(job["create_time"]),
        "updateTime": rfc3339(job["update_time"]),
        "state": DEV_STATES.get(job["state"], "BATCH_STATE_RUNNING"),
        "batchStats": _counters(
            requestCount=total,
            successfulRequestCount=stats["succeeded"],
            failedRequestCount=stats["failed"],
            pendingRequestCount=total - stats["processed"],
        ),
    }
    if job.get("input_file"):
        metadata["inputConfig"] = {"fileName": job["input_file"]}
    if job["end_time"]:
        metadata["endTime"] = rfc3339(job["end_time"])
    output: dict[str, Any] = {}
    if job.get("output_file"):
        output = {"responsesFile": job["output_file"]}
    elif job.get("inline") and job["state"] in ("SUCCEEDED", "FAILED", "EXPIRED") and not listed:
        output = {"inlinedResponses": {"inlinedResponses": em.inlined_responses(job)}}
    if output:
        metadata["output"] = output
    view: dict[str, Any] = {"name": job["name"], "metadata": metadata}
    if job["state"] in TERMINAL:  # proto3 JSON leaves out a false boolean
        view["done"] = True
    if job["error"]:
        view["error"] = job["error"]
    elif view.get("done") and output:
        view["response"] = {"@type": TYPE_PREFIX + batch_type + "Output", **output}
    return view


def vertex_job_view(em: Emulator, job: dict) -> dict:
    stats = em.progress(job)
    view: dict[str, Any] = {
        "name": job["name"],
        "displayName": job["display_name"],
        "model": job["model"],
        "inputConfig": {"instancesFormat": "jsonl", "gcsSource": {"uris": job["input_uris"]}},
        "outputConfig": {"predictionsFormat": "jsonl", "gcsDestination": {"outputUriPrefix": job["output_prefix"]}},
        "state": f"JOB_STATE_{job['state']}",
        "createTime": rfc3339(job["create_time"]),
        "updateTime": rfc3339(job["update_time"]),
    }
    completion = _counters(
        successfulCount=stats["succeeded"],
        failedCount=stats["failed"],
        incompleteCount=job["request_count"] - stats["processed"],
    )
    if job["state"] not in ("PENDING", "CANCELLING", "CANCELLED") and completion:
        view["completionStats"] = completion
    if job["start_time"]:
        view["startTime"] = rfc3339(job["start_time"])
    if job["end_time"]:
        view["endTime"] = rfc3339(job["end_time"])
    if job.get("output_dir"):
        view["outputInfo"] = {"gcsOutputDirectory": job["output_dir"]}
    if job["error"]:
        view["error"] = {"code": job["error"]["code"], "message": job["error"]["message"]}
    return view


def create_app(config: EmulatorConfig) -> FastAPI:
    em = Emulator(config)
    requests_log = (config.data_dir / "requests.jsonl").open("ab")

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI):
        em.start()
        try:
            yield
        finally:
            em.stop()
            requests_log.close()

    app = FastAPI(title="Gemini Batch API emulator", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.emulator = em

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> Response:
        headers = {"x-goog-upload-status": "final"} if request.url.path.startswith("/upload/") else None
        return _json(exc.body(), exc.http_code, headers)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_request: Request, exc: StarletteHTTPException) -> Response:
        return _json(ApiError(exc.status_code, str(exc.detail)).body(), exc.status_code)

    @app.exception_handler(RequestValidationError)
    async def validation_error(_request: Request, exc: RequestValidationError) -> Response:
        return _json(invalid(f"Invalid request: {exc.errors()}").body(), 400)

    @app.middleware("http")
    async def authenticate(request: Request, call_next):
        path = request.url.path
        if config.faults.request_latency_ms and path != "/healthz":
            await asyncio.sleep(config.faults.request_latency_ms / 1000)
        if path.startswith(("/v1beta/", "/upload/", "/download/")) and "upload_id" not in request.query_params:
            key = request.headers.get("x-goog-api-key") or request.query_params.get("key")
            if not key:
                return _json(
                    ApiError(
                        403,
                        "Method doesn't allow unregistered callers (callers without established identity). "
                        "Please use API Key or other form of API consumer identity to call this API.",
                    ).body(),
                    403,
                )
            if config.faults.api_keys and key not in config.faults.api_keys:
                return _json(INVALID_KEY, 400)
        elif ("/batchPredictionJobs" in path or "/publishers/" in path) and not request.headers.get(
            "authorization", ""
        ).lower().startswith("bearer "):
            return _json(
                ApiError(
                    401, "Request is missing required authentication credential. Expected OAuth 2 access token."
                ).body(),
                401,
            )
        return await call_next(request)

    app.add_middleware(RequestLog, file=requests_log)  # added last: the outermost

    @app.get("/healthz")
    async def healthz() -> Response:
        return _json({"status": "ok"})

    # ------------------------------------------------------------ Files API

    @app.post("/upload/v1beta/files")
    async def upload(request: Request) -> Response:
        upload_id = request.query_params.get("upload_id")
        protocol = (
            request.headers.get("x-goog-upload-protocol") or request.query_params.get("uploadType") or ""
        ).lower()
        if upload_id is None and protocol in ("raw", "media", "multipart"):
            meta, data, mime = await _one_shot_upload(request, protocol)
            record = await run_in_threadpool(em.store_upload, meta, data, mime)
            return _json({"file": em.file_view(record, _base_url(request))}, headers={"x-goog-upload-status": "final"})
        if upload_id is None:
            if protocol != "resumable" or request.headers.get("x-goog-upload-command") != "start":
                raise invalid(
                    "Unknown upload protocol: use resumable (X-Goog-Upload-Protocol: resumable with "
                    "X-Goog-Upload-Command: start), raw or multipart."
                )
            # Proto JSON accepts snake_case and camelCase field names; the SDK sends snake_case here.
            meta = {_camel(k): v for k, v in ((await _body(request)).get("file") or {}).items()}
            size = int(request.headers.get("x-goog-upload-header-content-length", meta.get("sizeBytes", -1)))
            mime = request.headers.get("x-goog-upload-header-content-type") or meta.get("mimeType") or ""
            upload_id = await run_in_threadpool(em.start_upload, meta, size, mime)
            url = f"{_base_url(request)}/upload/v1beta/files?upload_id={upload_id}&upload_protocol=resumable"
            return Response(
                b"",
                headers={
                    "x-goog-upload-url": url,
                    "x-goog-upload-status": "active",
                    "x-goog-upload-chunk-granularity": "8388608",
                },
            )
        command = request.headers.get("x-goog-upload-command", "")
        offset = int(request.headers.get("x-goog-upload-offset", "0"))
        target = em.upload_chunk_target(upload_id, offset)
        received = 0
        with target.open("ab") as out:
            async for chunk in request.stream():
                out.write(chunk)
                received += len(chunk)
        record = await run_in_threadpool(em.record_chunk, upload_id, received, "finalize" in command)
        if record is None:
            return Response(b"", headers={"x-goog-upload-status": "active"})
        return _json({"file": em.file_view(record, _base_url(request))}, headers={"x-goog-upload-status": "final"})

    @app.get("/v1beta/files/{file_id}:download")
    async def download_redirect(file_id: str, request: Request) -> Response:
        """The service answers a download on the API path with a redirect to the media path."""
        em.get_file(file_id)
        return Response(
            status_code=302,
            headers={"location": f"{_base_url(request)}/download/v1beta/files/{file_id}:download?alt=media"},
        )

    @app.get("/download/v1beta/files/{file_id}:download")
    async def download_file(file_id: str) -> Response:
        path = em.download_path(file_id)
        return FileResponse(path, media_type="application/octet-stream")

    @app.get("/v1beta/files/{file_id}")
    async def get_file(file_id: str, request: Request) -> Response:
        em.inject("file_get")
        return _json(em.file_view(em.get_file(file_id), _base_url(request)))

    @app.get("/v1beta/files")
    async def list_files(request: Request, pageSize: int | None = None, pageToken: str | None = None) -> Response:
        em.inject("file_list")
        files, token = em.list_files(pageSize, pageToken)
        body: dict[str, Any] = {"files": [em.file_view(f, _base_url(request)) for f in files]}
        if token:
            body["nextPageToken"] = token
        return _json(body)

    @app.delete("/v1beta/files/{file_id}")
    async def delete_file(file_id: str) -> Response:
        em.delete_file(file_id)
        return _json({})

    # ------------------------------------------------------------ models

    @app.get("/v1beta/models/{model}")
    async def get_model(model: str) -> Response:
        return _json(em.get_model(model, "developer"))

    @app.get("/v1beta/models")
    async def list_models(pageSize: int | None = None, pageToken: str | None = None) -> Response:
        models, token = em.list_models("developer", pageSize, pageToken)
        return _json({"models": models, **({"nextPageToken": token} if token else {})})

    @app.get("/{version}/projects/{project}/locations/{location}/publishers/google/models/{model}")
    @app.get("/{version}/publishers/google/models/{model}")
    async def get_vertex_model(version: str, model: str) -> Response:
        return _json(em.get_model(f"publishers/google/models/{model}", "vertex"))

    @app.get("/{version}/publishers/google/models")
    async def list_vertex_models(version: str, pageSize: int | None = None, pageToken: str | None = None) -> Response:
        models, token = em.list_models("vertex", pageSize, pageToken)
        return _json({"publisherModels": models, **({"nextPageToken": token} if token else {})})

    # ------------------------------------------------------------ online calls (models.generateContent)

    @app.post("/v1beta/models/{model}:generateContent")
    async def generate_content(model: str, request: Request) -> Response:
        body = await _body(request)
        return _json(await run_in_threadpool(em.generate_content, model, body, "developer"))

    @app.post("/{version}/projects/{project}/locations/{location}/publishers/google/models/{model}:generateContent")
    async def generate_content_vertex(version: str, project: str, location: str, model: str, request: Request):
        body = await _body(request)
        return _json(await run_in_threadpool(em.generate_content, model, body, "vertex", project, location))

    # ------------------------------------------------------------ Developer API batches

    @app.post("/v1beta/models/{model}:batchGenerateContent")
    async def create_batch(model: str, request: Request) -> Response:
        body = await _body(request)
        job = await run_in_threadpool(em.create_batch, model, body.get("batch"))
        return _json(developer_job_view(em, job))

    @app.post("/v1beta/models/{model}:asyncBatchEmbedContent")
    async def create_embeddings_batch(model: str, request: Request) -> Response:
        body = await _body(request)
        job = await run_in_threadpool(em.create_batch, model, body.get("batch"), "embed")
        return _json(developer_job_view(em, job))

    @app.get("/v1beta/batches/{job_id}")
    async def get_batch(job_id: str) -> Response:
        em.inject("get")
        return _json(await run_in_threadpool(developer_job_view, em, em.get_job(job_id, "developer")))

    @app.get("/v1beta/batches")
    async def list_batches(pageSize: int | None = None, pageToken: str | None = None) -> Response:
        em.inject("list")
        jobs, token = em.list_jobs("developer", pageSize, pageToken)
        body: dict[str, Any] = {"operations": [developer_job_view(em, j, listed=True) for j in jobs]}
        if token:
            body["nextPageToken"] = token
        return _json(body)

    @app.post("/v1beta/batches/{job_id}:cancel")
    async def cancel_batch(job_id: str) -> Response:
        await run_in_threadpool(em.cancel_job, job_id, "developer")
        return _json({})

    @app.delete("/v1beta/batches/{job_id}")
    async def delete_batch(job_id: str) -> Response:
        await run_in_threadpool(em.delete_job, job_id, "developer")
        return _json({})

    # ------------------------------------------------------------ Vertex AI batch prediction

    @app.post(VERTEX)
    async def create_vertex(version: str, project: str, location: str, request: Request) -> Response:
        body = await _body(request)
        job = await run_in_threadpool(em.create_vertex_job, project, location, body)
        return _json(vertex_job_view(em, job))

    @app.get(VERTEX + "/{job_id}")
    async def get_vertex(version: str, project: str, location: str, job_id: str) -> Response:
        em.inject("get")
        return _json(vertex_job_view(em, em.get_job(job_id, "vertex")))

    @app.get(VERTEX)
    async def list_vertex(
        version: str,
        project: str,
        location: str,
        pageSize: int | None = None,
        pageToken: str | None = None,
        filter: str | None = None,
    ) -> Response:
        em.inject("list")
        parent = f"projects/{project}/locations/{location}/"
        jobs, token = em.list_jobs("vertex", pageSize, pageToken, filter, parent)
        body: dict[str, Any] = {"batchPredictionJobs": [vertex_job_view(em, j) for j in jobs]}
        if token:
            body["nextPageToken"] = token
        return _json(body)

    @app.post(VERTEX + "/{job_id}:cancel")
    async def cancel_vertex(version: str, project: str, location: str, job_id: str) -> Response:
        await run_in_threadpool(em.cancel_job, job_id, "vertex")
        return _json({})

    @app.delete(VERTEX + "/{job_id}")
    async def delete_vertex(version: str, project: str, location: str, job_id: str) -> Response:
        await run_in_threadpool(em.delete_job, job_id, "vertex")
        name = f"projects/{project}/locations/{location}/operations/{job_id}"
        return _json({"name": name, "done": True, "response": {"@type": "type.googleapis.com/google.protobuf.Empty"}})

    return app

"""Batch request rows in the REST form, and the JSONL shards that carry them.

A row is ``{"key": ..., "request": <GenerateContentRequest>}`` in camelCase
with options under ``generationConfig``: the SDK's flat snake_case config is
not what the batch service reads from a file. Shards stay under the per-job
limits so each one can be submitted as its own job.
"""

from __future__ import annotations

import base64
import contextlib
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import IO, TYPE_CHECKING, Any, ClassVar, TypeVar

import orjson

from gemini_batch.core import records
from gemini_batch.core.keys import normalize_model
from gemini_batch.core.locations import as_path, make_folder, open_file, replace_whole, uri_of
from gemini_batch.core.records import MutableRecord, Record

if TYPE_CHECKING:  # Airflow is not imported at run time: a worker process parsing outputs does without it
    from airflow.sdk import ObjectStoragePath

THINKING_SETTINGS = ("low", "model-default")
GEMINI_2_5_PRO_MIN_THINKING_BUDGET = 128  # it cannot switch thinking off
_GEMINI_MAJOR = re.compile(r"gemini-(\d+)")

T = TypeVar("T")


@dataclass(frozen=True)
class RequestSpec:
    """What every row of a run shares."""

    model: str
    prompt: str
    response_schema: dict | None = None
    thinking: str = "low"  # "low" (extraction default) or "model-default" (send no thinkingConfig)
    max_output_tokens: int | None = None

    def __post_init__(self) -> None:
        if not self.prompt.strip():
            raise ValueError("prompt is empty")
        normalize_model(self.model)
        if self.response_schema is not None and not isinstance(self.response_schema, dict):
            raise ValueError(
                f"response_schema must be a JSON object or None, got {type(self.response_schema).__name__}"
            )
        if self.thinking not in THINKING_SETTINGS:
            raise ValueError(f"thinking must be one of {', '.join(THINKING_SETTINGS)}, got {self.thinking!r}")
        if self.max_output_tokens is not None and self.max_output_tokens < 1:
            raise ValueError(f"max_output_tokens must be positive, got {self.max_output_tokens}")

    def key_options(self) -> dict:
        """The settings besides prompt, model and schema that change the answer (part of the request key)."""
        return {"thinking": self.thinking, "max_output_tokens": self.max_output_tokens}


def thinking_config(spec: RequestSpec) -> dict | None:
    """The least thinking each model family allows, for "low"; None sends no thinkingConfig.

    Gemini 3 takes a level; 2.5 takes a token budget (Pro's floor is 128,
    Flash can go to 0); 2.0 does not think. The ``-latest`` aliases move
    between generations, so they get a budget, which both generations accept.
    """
    if spec.thinking == "model-default":
        return None
    model = normalize_model(spec.model)
    if model == "gemini-pro-latest" or model.startswith("gemini-2.5-pro"):
        return {"thinkingBudget": GEMINI_2_5_PRO_MIN_THINKING_BUDGET}
    if model.endswith("-latest") or model.startswith("gemini-2.5"):
        return {"thinkingBudget": 0}
    major = _GEMINI_MAJOR.match(model)
    if major and int(major[1]) >= 3:
        return {"thinkingLevel": "low"}
    return None


def generation_config(spec: RequestSpec) -> dict:
    """``generationConfig`` in REST form: always JSON out; no sampling settings (Gemini 3 must not get them)."""
    config: dict = {"responseMimeType": "application/json"}
    if spec.response_schema is not None:
        config["responseJsonSchema"] = spec.response_schema
    thinking = thinking_config(spec)
    if thinking is not None:
        config["thinkingConfig"] = thinking
    if spec.max_output_tokens is not None:
        config["maxOutputTokens"] = spec.max_output_tokens
    return config


def build_row(
    key: str,
    spec: RequestSpec,
    *,
    file_uri: str | None = None,
    data: bytes | None = None,
    mime_type: str | None = None,
    text: str | None = None,
) -> dict:
    """One JSONL row: the prompt first, then the document as a file reference, inline bytes or inline text."""
    if sum(value is not None for value in (file_uri, data, text)) != 1:
        raise ValueError(f"row {key}: give exactly one of file_uri, data or text")
    document: dict[str, Any]
    if text is not None:
        document = {"text": text}
    elif not mime_type:
        raise ValueError(f"row {key}: a file or inline document needs a mime_type")
    elif file_uri is not None:
        document = {"fileData": {"fileUri": file_uri, "mimeType": mime_type}}
    else:
        assert data is not None
        document = {"inlineData": {"mimeType": mime_type, "data": base64.b64encode(data).decode("ascii")}}
    return {
        "key": key,
        "request": {
            "contents": [{"role": "user", "parts": [{"text": spec.prompt}, document]}],
            "generationConfig": generation_config(spec),
        },
    }


def inline_budget(spec: RequestSpec, max_row_bytes: int) -> int:
    """The largest part (bytes) whose inline row, base64 and all, still fits in ``max_row_bytes``."""
    overhead = len(orjson.dumps(build_row("k" * 64, spec, data=b"", mime_type="application/pdf"))) + 1
    return max(0, (max_row_bytes - overhead) // 4 * 3)


class ShardManifest(Record, frozen=True):
    """One written shard; XCom carries only ``manifest_uri``, the rest is read back with ``load``."""

    kind: ClassVar[str] = "shard manifest"

    shard_id: str
    uri: str  # the JSONL (local path or gs://...)
    rows: int
    bytes: int
    keys_uri: str  # newline-separated keys of the rows, in order
    manifest_uri: str  # where this manifest itself is written
    claim: str | None = None  # the ledger claim whose leases let this shard request its keys
    ledger: str | None = None  # the ledger's URI, where the submit records the shard's job
    adopts: str | None = None  # not a shard to submit: its keys are another claim's (or "ledger"), to wait for
    tokens: int = 0  # the input tokens its rows are estimated to hold while its job is active (the quota counts them)
    piece_of: str | None = None  # a part of that shard, split off because the service refused the whole

    @classmethod
    def load(cls, path: str | ObjectStoragePath) -> ShardManifest:
        path = as_path(path)
        try:
            with open_file(path) as manifest:
                return records.decode(manifest.read(), cls)
        except ValueError as exc:
            raise ValueError(f"{uri_of(path)}: {exc}") from None

    def keys(self, conn_id: str | None = None) -> list[str]:
        """The shard's keys, in the order of its rows (its keys file read with the connection ``conn_id``)."""
        with open_file(as_path(self.keys_uri, conn_id=conn_id)) as keys:
            return [line.decode().strip() for line in keys if line.strip()]

    def save(self, path: ObjectStoragePath) -> None:
        """Write the manifest to ``path`` (its ``manifest_uri``, with the connection to reach it); ``load`` reads it."""
        with open_file(path, "wb") as manifest:
            manifest.write(orjson.dumps(records.to_builtins(self), option=orjson.OPT_INDENT_2))


def manifest_of_file(jsonl: ObjectStoragePath, folder: ObjectStoragePath, shard_id: str) -> ShardManifest:
    """A manifest, kept in ``folder``, for a batch JSONL file written elsewhere: what the submit operator takes when
    given a plain file. Its keys are read once (a row's ``key``, else its line number), streamed."""
    manifest_path, keys_path = folder / f"{shard_id}.manifest.json", folder / f"{shard_id}.keys"
    with contextlib.suppress(FileNotFoundError, ValueError):
        known = ShardManifest.load(manifest_path)
        if known.uri == uri_of(jsonl):
            return known
    rows = size = 0
    with open_file(jsonl) as lines, open_file(keys_path, "wb") as keys:
        for number, line in enumerate(lines, 1):
            size += len(line)
            if not line.strip():
                continue
            try:
                key = orjson.loads(line).get("key") or f"line-{number}"
            except (orjson.JSONDecodeError, AttributeError):
                raise ValueError(f"{uri_of(jsonl)} line {number}: not a JSON object (a batch row)") from None
            keys.write(str(key).encode() + b"\n")
            rows += 1
    manifest = ShardManifest(shard_id, uri_of(jsonl), rows, size, uri_of(keys_path), uri_of(manifest_path))
    manifest.save(manifest_path)
    return manifest


def write_adoption(
    folder: ObjectStoragePath, shard_id: str, keys: Iterable[str], *, adopts: str, ledger: str
) -> ShardManifest:
    """A manifest with no requests: its keys are another claim's (or the ledger's), for the submit task to wait for."""
    keys_path, manifest_path = folder / f"{shard_id}.keys", folder / f"{shard_id}.manifest.json"
    keys = list(keys)
    keys_path.write_bytes(b"".join(key.encode() + b"\n" for key in keys))
    manifest = ShardManifest(
        shard_id, "", len(keys), 0, uri_of(keys_path), uri_of(manifest_path), ledger=ledger, adopts=adopts
    )
    manifest.save(manifest_path)
    return manifest


class ShardWriter:
    """Streams rows into shards under a folder (local or gs://), each within max_rows, max_bytes and max_tokens.

    A shard rolls over before a row would take it past a limit (a row over ``max_tokens`` on its own still
    gets a shard: the tokens are an estimate, and the service decides); its keys
    file and manifest are written when it closes. Each row is serialized once,
    one line, so the byte count is exact. Use as a context manager; read
    ``manifests`` after it closes.
    """

    def __init__(
        self,
        folder: str | ObjectStoragePath,
        *,
        max_rows: int = 10_000,
        max_bytes: int = 100 * 2**20,
        max_tokens: int | None = None,
        prefix: str = "shard",
        claim: str | None = None,
        ledger: str | None = None,
    ):
        if max_rows < 1 or max_bytes < 1 or (max_tokens is not None and max_tokens < 1):
            raise ValueError(
                f"max_rows, max_bytes and max_tokens must be positive, got {max_rows}, {max_bytes} and {max_tokens}"
            )
        self.folder = as_path(folder)
        self.max_rows = max_rows
        self.max_bytes = max_bytes
        self.max_tokens = max_tokens
        self.prefix = prefix
        self.stamp = {"claim": claim, "ledger": ledger}
        self._manifests: list[ShardManifest] = []
        self._open: _OpenShard | None = None
        self._closed = False

    @property
    def manifests(self) -> list[ShardManifest]:
        return list(self._manifests)

    def __enter__(self) -> ShardWriter:
        make_folder(self.folder)
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
            return
        if self._open is not None:
            self._open.abandon()  # no manifest: a half-written shard is never submitted
            self._open = None
        self._closed = True

    def add(self, row: dict, tokens: int = 0) -> None:
        """Add a row holding ``tokens`` (estimated input tokens)."""
        if self._closed:
            raise ValueError("ShardWriter is closed")
        key = row.get("key")
        if not isinstance(key, str) or not key or "\n" in key:
            raise ValueError(
                f"row needs a non-empty one-line string 'key', got {key!r} (fields: {', '.join(sorted(row))})"
            )
        line = orjson.dumps(row) + b"\n"
        if len(line) > self.max_bytes:
            raise ValueError(
                f"row {key} is {len(line)} bytes, more than a whole shard may hold ({self.max_bytes} bytes)"
            )
        shard = self._open
        if shard is not None and (
            shard.rows == self.max_rows
            or shard.bytes + len(line) > self.max_bytes
            or (self.max_tokens is not None and shard.tokens + tokens > self.max_tokens)
        ):
            self._finish()
            shard = None
        if shard is None:
            shard = self._open = _OpenShard(self.folder, f"{self.prefix}-{len(self._manifests):05d}", self.stamp)
        shard.write(key, line, tokens)

    def close(self) -> None:
        if self._open is not None:
            self._finish()
        self._closed = True

    def _finish(self) -> None:
        assert self._open is not None
        self._manifests.append(self._open.finish())
        self._open = None


class _OpenShard:
    """The JSONL and keys files of the shard being written."""

    def __init__(self, folder: ObjectStoragePath, shard_id: str, stamp: dict):
        self.shard_id = shard_id
        self.stamp = stamp
        self.data_path = folder / f"{shard_id}.jsonl"
        self.keys_path = folder / f"{shard_id}.keys"
        self.manifest_path = folder / f"{shard_id}.manifest.json"
        self.data: IO[bytes] = open_file(self.data_path, "wb")
        self.keys: IO[bytes] = open_file(self.keys_path, "wb")
        self.rows = 0
        self.bytes = 0
        self.tokens = 0

    def write(self, key: str, line: bytes, tokens: int) -> None:
        self.data.write(line)
        self.keys.write(key.encode() + b"\n")
        self.rows += 1
        self.bytes += len(line)
        self.tokens += tokens

    def finish(self) -> ShardManifest:
        self.data.close()
        self.keys.close()
        manifest = ShardManifest(
            shard_id=self.shard_id,
            uri=uri_of(self.data_path),
            rows=self.rows,
            bytes=self.bytes,
            keys_uri=uri_of(self.keys_path),
            manifest_uri=uri_of(self.manifest_path),
            tokens=self.tokens,
            **self.stamp,
        )
        manifest.save(self.manifest_path)
        return manifest

    def abandon(self) -> None:
        self.data.close()
        self.keys.close()


def split_shard(
    manifest: ShardManifest, path_of: Callable[[str], ObjectStoragePath]
) -> tuple[ShardManifest, ShardManifest]:
    """The rows of a shard of two or more rows as two shards beside its manifest, ``<id>.p1`` and ``<id>.p2``, in
    order (``path_of`` makes a path of a URI, with the credentials to reach it).

    For a job the service refuses whole (over the model's enqueued-token
    quota). The JSONL and keys files are streamed, and each piece's tokens
    are its share of the shard's by rows (the estimate is per shard). The
    piece names sort after the shard's, so a reader mapping keys to shards
    in name order ends at the smallest piece holding each key.
    """
    if manifest.rows < 2:
        raise ValueError(f"shard {manifest.shard_id} has {manifest.rows} row(s): nothing to split")
    first_rows = (manifest.rows + 1) // 2
    stamp = {"claim": manifest.claim, "ledger": manifest.ledger, "piece_of": manifest.piece_of or manifest.shard_id}
    folder = path_of(manifest.manifest_uri).parent
    pieces = [_OpenShard(folder, f"{manifest.shard_id}.p{n}", stamp) for n in (1, 2)]
    with open_file(path_of(manifest.uri)) as lines, open_file(path_of(manifest.keys_uri)) as key_lines:
        for row, (line, key) in enumerate(zip(lines, key_lines, strict=False)):
            pieces[row >= first_rows].write(key.decode().strip(), line, 0)
    for piece in pieces:
        piece.tokens = -(-manifest.tokens * piece.rows // manifest.rows)
    return pieces[0].finish(), pieces[1].finish()


class ShardPiece(MutableRecord):
    """One part of a shard the service refused whole, and how far its submission got."""

    kind: ClassVar[str] = "shard piece"

    manifest_uri: str
    display_name: str
    rows: int
    src: str | None = None  # its uploaded input, once uploaded: each piece is uploaded once
    started_at: str | None = None  # when a create began: a job made then is found by its display name
    job_name: str | None = None
    refused: str | None = None  # why the service will never take it: a document fails with this reason
    refused_alone_since: str | None = None  # refused 429 since then with no other job of the model in flight

    @property
    def open(self) -> bool:
        return self.job_name is None and self.refused is None


class ShardPieces(MutableRecord):
    """A shard's submission as pieces, kept beside its manifest (``<id>.pieces.json``) from the first time the
    service refused the shard: the submit task's own record across deferrals, retries and restarts."""

    kind: ClassVar[str] = "shard pieces record"

    shard_id: str
    pieces: list[ShardPiece]
    quota_wait_since: str | None = None  # when the current wait for the model's quota began
    over_quota_alone: bool = False  # a piece was refused alone long enough: the quota is below it, not a burst

    @staticmethod
    def path_of(manifest: ShardManifest, folder: ObjectStoragePath) -> ObjectStoragePath:
        return folder / f"{manifest.shard_id}.pieces.json"

    @classmethod
    def load(cls, path: ObjectStoragePath) -> ShardPieces | None:
        try:
            with open_file(path) as record:
                return records.decode(record.read(), cls)
        except FileNotFoundError:
            return None
        except ValueError as exc:
            raise ValueError(f"{uri_of(path)}: {exc}") from None

    def save(self, path: ObjectStoragePath) -> None:
        replace_whole(path, orjson.dumps(records.to_builtins(self), option=orjson.OPT_INDENT_2), durable=True)

"""Check a batch JSONL before it is submitted.

The service rejects a whole job for some mistakes (a repeated key, too many
rows, too many bytes) and fails rows one by one, hours later, for others
(an unknown field, a document URI the backend cannot read). Catching both
here costs seconds and names the line. Streams the file: memory stays flat
apart from the set of keys seen.

CLI::

    python -m gemini_batch.core.validate FILE [--backend developer|vertex] [--max-rows N] [--max-bytes N]

exits 0 when the file is valid, 1 with one ``FILE:LINE: message`` per
problem, 2 for bad usage or an unreadable file.
"""

from __future__ import annotations

import argparse
import io
import re
import sys
from collections.abc import Collection, Iterator
from dataclasses import dataclass
from typing import Any

import orjson
from airflow.sdk import ObjectStoragePath

from gemini_batch.core.documents import SUPPORTED_TYPES
from gemini_batch.core.locations import as_path, open_file, uri_of
from gemini_batch.core.settings import DEFAULTS

BACKENDS = ("developer", "vertex")
REQUEST_FIELDS = frozenset(
    {
        "contents",
        "generationConfig",
        "safetySettings",
        "systemInstruction",
        "tools",
        "toolConfig",
        "cachedContent",
        "labels",
    }
)
GENERATION_CONFIG_FIELDS = frozenset(
    {
        "stopSequences",
        "responseMimeType",
        "responseSchema",
        "responseJsonSchema",
        "responseModalities",
        "candidateCount",
        "maxOutputTokens",
        "temperature",
        "topP",
        "topK",
        "seed",
        "presencePenalty",
        "frequencyPenalty",
        "responseLogprobs",
        "logprobs",
        "enableEnhancedCivicAnswers",
        "speechConfig",
        "thinkingConfig",
        "mediaResolution",
        "imageConfig",
        "audioTimestamp",
        "routingConfig",
        "modelSelectionConfig",
    }
)
THINKING_CONFIG_FIELDS = frozenset({"thinkingBudget", "thinkingLevel", "includeThoughts"})
CONTENT_FIELDS = frozenset({"role", "parts"})
PART_DATA_FIELDS = ("text", "fileData", "inlineData")  # in the order messages name them
FILE_DATA_FIELDS = frozenset({"fileUri", "mimeType", "displayName"})
INLINE_DATA_FIELDS = frozenset({"data", "mimeType", "displayName"})
ROLES = frozenset({"user", "model"})
STORED_PROBLEMS = 1000  # a report keeps the first ones and counts the rest

# The service hands out https:// URIs; the emulator (local or in docker-compose) plain http://.
_FILES_API_URI = re.compile(r"(?:https?://[^/\s]+(?:/[^/\s]+)*/)?files/[a-z0-9-]{1,40}")
_BASE64 = re.compile(r"[A-Za-z0-9+/]*={0,2}|[A-Za-z0-9_-]*={0,2}")  # standard or URL-safe, padded or not


@dataclass(frozen=True)
class Problem:
    line: int
    message: str
    key: str | None = None


@dataclass(frozen=True)
class Report:
    path: str
    rows: int
    bytes: int
    problems: tuple[Problem, ...]  # the first STORED_PROBLEMS, in file order
    problem_count: int  # all of them, including those not stored

    @property
    def ok(self) -> bool:
        return self.problem_count == 0


def validate_jsonl(
    path: str | ObjectStoragePath,
    *,
    backend: str | None = None,
    max_rows: int = DEFAULTS["max_rows_per_job"],
    max_bytes: int = DEFAULTS["max_mb_per_job"] * 2**20,
) -> Report:
    """Every problem in a batch JSONL, by line. ``backend`` None accepts either backend's document URIs.

    Raises OSError when the file cannot be read at all.
    """
    if backend not in (None, *BACKENDS):
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)} or None, got {backend!r}")
    path = as_path(path)
    problems: list[Problem] = []
    problem_count = 0
    first_line_of_key: dict[str, int] = {}
    rows = size = 0
    for line_no, line in _lines(path):
        size += len(line)
        found: list[Problem] = []
        if size > max_bytes >= size - len(line):
            found.append(
                Problem(line_no, f"the file passes {max_bytes} bytes at this line (the limit per file); split it")
            )
        if not line.strip():
            found.append(Problem(line_no, "blank line: every line must be one JSON row (remove empty lines)"))
        else:
            rows += 1
            if rows == max_rows + 1:
                found.append(Problem(line_no, f"more than {max_rows} rows: the limit per file is {max_rows}; split it"))
            found.extend(_row_problems(line_no, line, backend, first_line_of_key))
        problem_count += len(found)
        problems.extend(found[: STORED_PROBLEMS - len(problems)])
    return Report(uri_of(path), rows, size, tuple(problems), problem_count)


def _lines(path: ObjectStoragePath) -> Iterator[tuple[int, bytes]]:
    # Buffered: remote file objects otherwise fetch a whole block per readline.
    with open_file(path) as raw, io.BufferedReader(raw, buffer_size=2**20) as buffered:  # type: ignore[type-var]
        yield from enumerate(buffered, 1)


def _row_problems(line_no: int, line: bytes, backend: str | None, first_line_of_key: dict[str, int]) -> list[Problem]:
    try:
        row = orjson.loads(line)
    except orjson.JSONDecodeError as exc:
        return [Problem(line_no, f"not valid JSON: {exc}")]
    if not isinstance(row, dict):
        return [Problem(line_no, f"the row is a JSON {_json_type(row)}, expected an object with 'key' and 'request'")]
    key = row.get("key")
    messages: list[str] = []
    if "key" not in row:
        messages.append("missing 'key'")
    elif not isinstance(key, str) or not key:
        messages.append(f"'key' must be a non-empty string, got {orjson.dumps(key).decode()[:80]}")
    elif key in first_line_of_key:
        messages.append(
            f"duplicate key {key!r} (first on line {first_line_of_key[key]}): keys must be unique in a file"
        )
    else:
        first_line_of_key[key] = line_no
    if "request" not in row:
        messages.append("missing 'request'")
    else:
        messages.extend(_request_problems(row["request"], backend))
    key = key if isinstance(key, str) else None
    return [Problem(line_no, message, key) for message in messages]


def _request_problems(request: Any, backend: str | None) -> list[str]:
    if not isinstance(request, dict):
        return [f"'request' must be an object (a GenerateContentRequest), got a JSON {_json_type(request)}"]
    request, messages = _spelled(request, REQUEST_FIELDS, "request")
    messages.extend(_contents_problems(request.get("contents"), backend))
    if "generationConfig" in request:
        messages.extend(_generation_config_problems(request["generationConfig"]))
    return messages


def _contents_problems(contents: Any, backend: str | None) -> list[str]:
    if not isinstance(contents, list) or not contents:
        return ["request.contents must be a non-empty list of {role, parts} objects"]
    messages = []
    for i, content in enumerate(contents):
        where = f"request.contents[{i}]"
        if not isinstance(content, dict):
            messages.append(f"{where} must be an object with 'parts', got a JSON {_json_type(content)}")
            continue
        content, problems = _spelled(content, CONTENT_FIELDS, where)
        messages.extend(problems)
        role = content.get("role", "user")
        if not (isinstance(role, str) and role in ROLES):
            messages.append(f"{where}.role must be 'user' or 'model', got {orjson.dumps(role).decode()[:80]}")
        parts = content.get("parts")
        if not isinstance(parts, list) or not parts:
            messages.append(f"{where}.parts must be a non-empty list")
            continue
        for j, part in enumerate(parts):
            messages.extend(_part_problems(part, f"{where}.parts[{j}]", backend))
    return messages


def _part_problems(part: Any, where: str, backend: str | None) -> list[str]:
    if not isinstance(part, dict):
        return [f"{where} must be an object, got a JSON {_json_type(part)}"]
    part, messages = _spelled(part, PART_DATA_FIELDS, where)
    present = [name for name in PART_DATA_FIELDS if name in part]
    if len(present) != 1:
        held = ", ".join(present) if present else "none"
        messages.append(f"{where} must hold exactly one of {', '.join(PART_DATA_FIELDS)}; it holds {held}")
        return messages
    field = present[0]
    value = part[field]
    if field == "text":
        if not isinstance(value, str):
            messages.append(f"{where}.text must be a string")
    elif field == "fileData":
        messages.extend(_file_data_problems(value, f"{where}.fileData", backend))
    else:
        messages.extend(_inline_data_problems(value, f"{where}.inlineData"))
    return messages


def _file_data_problems(file_data: Any, where: str, backend: str | None) -> list[str]:
    if not isinstance(file_data, dict):
        return [f"{where} must be an object with fileUri and mimeType"]
    file_data, messages = _spelled(file_data, FILE_DATA_FIELDS, where)
    messages.extend(_mime_type_problems(file_data, where))
    uri = file_data.get("fileUri")
    if not isinstance(uri, str) or not uri:
        messages.append(f"{where}.fileUri is missing")
        return messages
    uri_problem = _uri_problem(uri, backend)
    if uri_problem:
        messages.append(f"{where}.fileUri {uri!r}: {uri_problem}")
    return messages


def _uri_problem(uri: str, backend: str | None) -> str | None:
    files_api = _FILES_API_URI.fullmatch(uri) is not None
    gcs = uri.startswith("gs://") and len(uri) > len("gs://")
    if backend == "vertex" and not gcs:
        if uri.startswith("https://") and not files_api:
            return "Vertex AI reads documents from Cloud Storage only: upload it and use its gs:// URI, not https://"
        return "Vertex AI needs a gs://bucket/object URI (Files API URIs belong to the Developer API)"
    if backend == "developer" and not files_api:
        if gcs:
            return "the Developer API cannot read gs:// URIs: upload the document with the Files API and use files/ID"
        return "the Developer API needs a Files API URI (files/ID or https://.../files/ID)"
    if backend is None and not (gcs or files_api):
        return "expected a Files API URI (files/ID, Developer API) or a gs:// URI (Vertex AI)"
    return None


def _inline_data_problems(inline: Any, where: str) -> list[str]:
    if not isinstance(inline, dict):
        return [f"{where} must be an object with data and mimeType"]
    inline, messages = _spelled(inline, INLINE_DATA_FIELDS, where)
    messages.extend(_mime_type_problems(inline, where))
    data = inline.get("data")
    if not isinstance(data, str) or not data or len(data.rstrip("=")) % 4 == 1 or not _BASE64.fullmatch(data):
        messages.append(f"{where}.data must be non-empty base64 (standard or URL-safe)")
    return messages


def _mime_type_problems(blob: dict, where: str) -> list[str]:
    mime_type = blob.get("mimeType")
    if mime_type is None:
        return [f"{where}.mimeType is missing"]
    if not (isinstance(mime_type, str) and mime_type in SUPPORTED_TYPES):
        return [f"{where}.mimeType {mime_type!r} is not supported; use one of {', '.join(sorted(SUPPORTED_TYPES))}"]
    return []


def _generation_config_problems(config: Any) -> list[str]:
    where = "request.generationConfig"
    if not isinstance(config, dict):
        return [f"{where} must be an object"]
    config, messages = _spelled(config, GENERATION_CONFIG_FIELDS, where)
    for name in ("responseJsonSchema", "responseSchema"):
        if name in config and not isinstance(config[name], dict):
            messages.append(f"{where}.{name} must be a JSON object: the schema itself, not text or a list")
    has_schema = "responseJsonSchema" in config or "responseSchema" in config
    if has_schema and config.get("responseMimeType") != "application/json":
        messages.append(f"{where}: a response schema needs responseMimeType 'application/json'")
    max_tokens = _integer(config.get("maxOutputTokens"))
    if "maxOutputTokens" in config and (max_tokens is None or max_tokens < 1):
        messages.append(f"{where}.maxOutputTokens must be a positive integer")
    if "thinkingConfig" in config:
        thinking = config["thinkingConfig"]
        if not isinstance(thinking, dict):
            messages.append(f"{where}.thinkingConfig must be an object")
        else:
            thinking, problems = _spelled(thinking, THINKING_CONFIG_FIELDS, f"{where}.thinkingConfig")
            messages.extend(problems)
            if "thinkingBudget" in thinking and "thinkingLevel" in thinking:
                messages.append(f"{where}.thinkingConfig: set thinkingLevel or thinkingBudget, not both")
    return messages


def _spelled(obj: dict, known: Collection[str], where: str) -> tuple[dict, list[str]]:
    """``obj`` with each field under its REST name, and what is wrong with its names: the service reads the proto's
    snake_case names as well (the proto3 JSON mapping), but not a field it does not know, nor one given twice."""
    spelled: dict[str, Any] = {}
    messages = []
    for name, value in obj.items():
        rest = name if name in known else _camel(name)
        if rest not in known:
            messages.append(_unknown_field(name, where))
        elif rest in spelled:
            messages.append(f"{where}.{name}: given twice (also as {rest!r})")
        else:
            spelled[rest] = value
    return spelled, messages


def _integer(value: Any) -> int | None:
    """An integer field's value as the service reads it (proto3 JSON): a number with no fraction, or its string."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and re.fullmatch(r"-?[0-9]+", value):
        return int(value)
    return None


def _unknown_field(name: str, where: str) -> str:
    camel = _camel(name)
    if where == "request" and camel in GENERATION_CONFIG_FIELDS:
        return f"{where}.{name}: generation options go under request.generationConfig as {camel!r}"
    return f"{where}.{name}: unknown field"


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(word[:1].upper() + word[1:] for word in rest)


def _json_type(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    return {dict: "object", list: "array", str: "string", int: "number", float: "number", type(None): "null"}[
        type(value)
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m gemini_batch.core.validate", description="Check a Gemini batch JSONL file."
    )
    parser.add_argument("file", help="local path or gs://bucket/object")
    parser.add_argument("--backend", choices=BACKENDS, help="check document URIs for this backend")
    parser.add_argument("--max-rows", type=int, default=DEFAULTS["max_rows_per_job"], metavar="N")
    parser.add_argument("--max-bytes", type=int, default=DEFAULTS["max_mb_per_job"] * 2**20, metavar="N")
    parser.add_argument("--show", type=int, default=50, metavar="N", help="print at most N problems (default 50)")
    args = parser.parse_args(argv)
    try:
        report = validate_jsonl(args.file, backend=args.backend, max_rows=args.max_rows, max_bytes=args.max_bytes)
    except OSError as exc:
        print(f"{args.file}: cannot read: {exc}", file=sys.stderr)
        return 2
    if report.ok:
        print(f"{args.file}: valid ({report.rows} rows, {report.bytes} bytes)")
        return 0
    for problem in report.problems[: args.show]:
        print(f"{args.file}:{problem.line}: {problem.message}")
    hidden = report.problem_count - min(args.show, len(report.problems))
    if hidden:
        print(f"{args.file}: ... and {hidden} more problems")
    return 1


if __name__ == "__main__":
    sys.exit(main())

"""A deterministic stand-in for the model.

It reads every part of a request, pulls text out of documents (PDF text with
pypdf), and answers: with a JSON schema, an object of exactly that schema
filled from the document (labelled values, dates, numbers, list items, enum
values that occur in the text); without one, a short JSON or text summary.
The same request always gets the same answer.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import io
import math
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

from . import discovery
from .config import Faults
from .discovery import decode_bytes
from .errors import row_status

PDF_PAGE_TOKENS = 258  # the service bills each PDF page or image as 258 tokens
IMAGE_TOKENS = 258

# The generationConfig fields the service takes: the Discovery document's, nothing kept here.
GENERATION_CONFIG_FIELDS = frozenset(discovery.developer().schemas["GenerationConfig"]["properties"])
# Media the model hears or watches: the service bills video at 263 tokens and audio at 32 tokens per second.
# The emulator does not decode them; it estimates their length from their size at a typical bitrate.
VIDEO_TOKENS_PER_SECOND, VIDEO_BYTES_PER_SECOND = 263, 125_000  # ~1 Mbit/s
AUDIO_TOKENS_PER_SECOND, AUDIO_BYTES_PER_SECOND = 32, 16_000  # ~128 kbit/s
THINKING_TOKENS = {"minimal": 0, "low": 96, "medium": 384, "high": 1024}
DEFAULT_THINKING_TOKENS = 512


class RowFailure(Exception):
    """The request cannot be answered; becomes the row's error status."""

    def __init__(self, code: int, message: str):
        super().__init__(message)
        self.status = row_status(code, message)


@dataclasses.dataclass
class Document:
    text: str
    pages: int = 0  # PDF pages; 0 for other kinds
    images: int = 0
    video_seconds: int = 0
    audio_seconds: int = 0


FileResolver = Callable[[str], tuple[Path, str]]
"""Maps a ``fileData.fileUri`` to a local path and mime type, or raises RowFailure."""


def _pdf_document(source: str | io.BytesIO) -> Document:
    from pypdf import PdfReader
    from pypdf.errors import PdfReadError

    try:
        reader = PdfReader(source)
        if reader.is_encrypted:
            raise RowFailure(3, "Unable to process input PDF: the document is encrypted (password protected).")
        texts = [(page.extract_text() or "") for page in reader.pages]
    except (PdfReadError, ValueError, KeyError, OSError) as exc:
        raise RowFailure(3, f"Unable to process input PDF: {exc}") from None
    if not texts:
        raise RowFailure(3, "Unable to process input PDF: the document has no pages.")
    return Document(text="\n".join(texts), pages=len(texts))


@functools.lru_cache(maxsize=512)
def _cached_pdf(path: str, size: int, mtime: float) -> Document:
    """PDFs referenced by many rows (or re-read after a restart) are parsed once."""
    return _pdf_document(path)


def read_document(data: bytes | Path, mime_type: str) -> Document:
    """Text of a document given as bytes or as a local file."""
    if mime_type == "application/pdf":
        if isinstance(data, Path):
            stat = data.stat()
            return _cached_pdf(str(data), stat.st_size, stat.st_mtime)
        return _pdf_document(io.BytesIO(data))
    if mime_type.startswith("image/"):
        return Document(text="", images=1)
    if mime_type.startswith(("video/", "audio/")):
        size = data.stat().st_size if isinstance(data, Path) else len(data)
        if mime_type.startswith("video/"):
            return Document(text="", video_seconds=max(1, math.ceil(size / VIDEO_BYTES_PER_SECOND)))
        return Document(text="", audio_seconds=max(1, math.ceil(size / AUDIO_BYTES_PER_SECOND)))
    if mime_type.startswith("text/") or mime_type in ("application/json", "application/jsonl"):
        raw = data.read_bytes() if isinstance(data, Path) else data
        return Document(text=raw.decode("utf-8", errors="replace"))
    raise RowFailure(3, f"Unsupported MIME type: {mime_type}")


def tokens_of(text: str) -> int:
    return math.ceil(len(text) / 4)


# ---------------------------------------------------------------- the answer


def parse(request: Any, schema: str, surface: str = "developer") -> dict:
    """A row's request as the service parses it (``Discovery.normalise``: the proto3 JSON mapping) against
    ``schema`` of the surface's Discovery document; RowFailure, in the service's words, for what it refuses."""
    if not isinstance(request, dict):
        raise RowFailure(3, "Invalid request: the 'request' field must be a JSON object.")
    if surface == "vertex":
        parsed, problems = discovery.vertex().normalise(request, f"GoogleCloudAiplatformV1{schema}", "request")
    else:
        parsed, problems = discovery.developer().normalise(request, schema, "request")
    if problems:
        raise RowFailure(3, "; ".join(problems[:5]))
    return parsed


def answer(
    request: Any, key: str, model: str, resolve_file: FileResolver, faults: Faults, surface: str = "developer"
) -> dict:
    """The ``GenerateContentResponse`` (REST form) for one request as sent (``parse`` reads it).

    Raises RowFailure when the service would fail the row.
    """
    request = parse(request, "GenerateContentRequest", surface)
    config = request.get("generationConfig") or {}
    prompts, documents = _read_parts(request, resolve_file)
    corpus = "\n".join(d.text for d in documents) if documents else "\n".join(prompts)

    mime = config.get("responseMimeType", "text/plain")
    schema = config.get("responseJsonSchema") or config.get("_responseJsonSchema") or config.get("responseSchema")
    if mime == "application/json":
        value = SchemaFiller(corpus, schema).fill() if schema else _summary_object(corpus, documents)
        text = orjson.dumps(value).decode()
    elif mime in ("text/plain", "text/x.enum"):
        text = _summary_text(corpus)
    else:
        raise RowFailure(
            3, f"Unsupported response mime type: {mime}. Allowed: text/plain, application/json, text/x.enum."
        )

    prompt_tokens = sum(tokens_of(p) for p in prompts)
    doc_tokens = _document_tokens(documents)
    thoughts = _thinking_tokens(config, model)
    finish = "STOP"
    max_tokens = config.get("maxOutputTokens")
    if max_tokens is not None and thoughts >= int(max_tokens):
        thoughts, text, finish = int(max_tokens), "", "MAX_TOKENS"  # budget spent on thinking
    elif max_tokens is not None and thoughts + tokens_of(text) > int(max_tokens):
        text, finish = text[: (int(max_tokens) - thoughts) * 4], "MAX_TOKENS"

    text, finish = _apply_row_faults(text, finish, key, faults)
    candidate: dict[str, Any] = {"finishReason": finish, "index": 0}
    if finish in ("SAFETY", "RECITATION"):
        candidate["safetyRatings"] = [
            {
                "category": "HARM_CATEGORY_DANGEROUS_CONTENT",
                "probability": "HIGH" if finish == "SAFETY" else "NEGLIGIBLE",
                "blocked": finish == "SAFETY",
            }
        ]
    elif text:
        candidate["content"] = {"parts": [{"text": text}], "role": "model"}
    else:
        candidate["content"] = {"role": "model"}
    output_tokens = tokens_of(text)
    usage = {
        "promptTokenCount": prompt_tokens + doc_tokens,
        "candidatesTokenCount": output_tokens,
        "totalTokenCount": prompt_tokens + doc_tokens + output_tokens + thoughts,
        "promptTokensDetails": [{"modality": "TEXT", "tokenCount": prompt_tokens}]
        + [{"modality": m, "tokenCount": n} for m, n in _media_tokens(documents).items() if n],
    }
    if thoughts:
        usage["thoughtsTokenCount"] = thoughts
    response_id = hashlib.sha256(f"{faults.seed}:{key}".encode()).hexdigest()[:22]
    return {"candidates": [candidate], "usageMetadata": usage, "modelVersion": model, "responseId": response_id}


def request_tokens(request: Any, resolve_file: FileResolver) -> int:
    """The input tokens a request holds while its job is active (what the enqueued-token quota counts);
    a request the service would fail counts nothing."""
    try:
        prompts, documents = _read_parts(request, resolve_file)
    except (RowFailure, AttributeError, TypeError):
        return 0
    return sum(tokens_of(p) for p in prompts) + _document_tokens(documents)


def _document_tokens(documents: list[Document]) -> int:
    return sum(_media_tokens(documents).values())


def _media_tokens(documents: list[Document]) -> dict[str, int]:
    """The tokens of the documents and media, by the modality the service reports them under."""
    return {
        "DOCUMENT": sum(
            d.pages * PDF_PAGE_TOKENS + d.images * IMAGE_TOKENS + (0 if d.pages else tokens_of(d.text))
            for d in documents
        ),
        "VIDEO": sum(d.video_seconds * VIDEO_TOKENS_PER_SECOND for d in documents),
        "AUDIO": sum(d.audio_seconds * AUDIO_TOKENS_PER_SECOND for d in documents),
    }


def _read_parts(request: dict, resolve_file: FileResolver) -> tuple[list[str], list[Document]]:
    contents = request.get("contents")
    if not isinstance(contents, list) or not contents:
        raise RowFailure(3, "* GenerateContentRequest.contents: contents is not specified")
    prompts: list[str] = []
    documents: list[Document] = []
    system = request.get("systemInstruction") or {}
    for part in system.get("parts", []) if isinstance(system, dict) else []:
        if isinstance(part, dict) and isinstance(part.get("text"), str):
            prompts.append(part["text"])
    texts: list[str] = []
    for content in contents:
        parts = content.get("parts") if isinstance(content, dict) else None
        if not isinstance(parts, list) or not parts:
            raise RowFailure(3, "* GenerateContentRequest.contents: contents.parts must not be empty.")
        for part in parts:
            if not isinstance(part, dict):
                raise RowFailure(3, "Invalid part: each part must be a JSON object.")
            if "text" in part:
                texts.append(str(part["text"]))
            elif "inlineData" in part:
                blob = part["inlineData"]
                data = decode_bytes(str(blob.get("data", "")))
                if data is None:
                    raise RowFailure(3, "Invalid value at 'inline_data.data' (TYPE_BYTES), Base64 decoding failed.")
                documents.append(read_document(data, blob.get("mimeType", "")))
            elif "fileData" in part:
                uri = (part["fileData"] or {}).get("fileUri", "")
                path, stored_mime = resolve_file(uri)
                documents.append(read_document(path, part["fileData"].get("mimeType") or stored_mime))
            else:
                raise RowFailure(3, f"Unsupported part: {sorted(part)}")
    # The first text is the instruction; later texts are inline documents.
    if texts:
        prompts.append(texts[0])
        documents.extend(Document(text=t) for t in texts[1:])
    return prompts, documents


def _thinking_tokens(config: dict, model: str) -> int:
    thinking = config.get("thinkingConfig")
    if not isinstance(thinking, dict):
        return DEFAULT_THINKING_TOKENS if ("2.5" in model or "gemini-3" in model) and "lite" not in model else 0
    if "thinkingLevel" in thinking:
        return THINKING_TOKENS.get(str(thinking["thinkingLevel"]).lower(), DEFAULT_THINKING_TOKENS)
    if "thinkingBudget" in thinking:
        budget = int(thinking["thinkingBudget"])
        return DEFAULT_THINKING_TOKENS if budget < 0 else min(budget, 2 * DEFAULT_THINKING_TOKENS)
    return DEFAULT_THINKING_TOKENS


def _apply_row_faults(text: str, finish: str, key: str, faults: Faults) -> tuple[str, str]:
    if faults.chance("safety", key) < faults.safety_rate:
        return "", "SAFETY"
    if faults.chance("recitation", key) < faults.recitation_rate:
        return "", "RECITATION"
    if faults.chance("truncated", key) < faults.truncated_rate:
        return text[: max(1, len(text) // 2)], "MAX_TOKENS"
    if faults.chance("fenced", key) < faults.fenced_rate:
        return f"```json\n{text}\n```", finish
    if faults.chance("prose", key) < faults.prose_rate:
        return (
            f"Sure! Here is the data extracted from the document:\n\n{text}\n\nLet me know if you need anything else.",
            finish,
        )
    return text, finish


def _first_line(text: str, limit: int = 120) -> str:
    for line in text.splitlines():
        if line.strip():
            return line.strip()[:limit]
    return ""


def _summary_text(corpus: str) -> str:
    words = corpus.split()
    return f"Summary: {' '.join(words[:40])}" if words else "The document contains no readable text."


def _summary_object(corpus: str, documents: list[Document]) -> dict:
    return {
        "title": _first_line(corpus),
        "summary": " ".join(corpus.split()[:40]),
        "word_count": len(corpus.split()),
        "pages": sum(d.pages for d in documents),
    }


# ---------------------------------------------------------------- schema filling

_MONTHS = {
    m: i + 1
    for i, m in enumerate(
        [
            "january",
            "february",
            "march",
            "april",
            "may",
            "june",
            "july",
            "august",
            "september",
            "october",
            "november",
            "december",
        ]
    )
}
_MONTHS.update({m[:3]: i for m, i in list(_MONTHS.items())})
_MONTH_RE = "|".join(sorted(_MONTHS, key=len, reverse=True))
_DATE_PATTERNS = [
    (re.compile(r"\b(\d{4})-(\d{1,2})-(\d{1,2})\b"), lambda m: (m[1], m[2], m[3])),
    (re.compile(r"\b(\d{1,2})/(\d{1,2})/(\d{4})\b"), lambda m: (m[3], m[1], m[2])),
    (
        re.compile(rf"\b(\d{{1,2}})\s+({_MONTH_RE})\.?,?\s+(\d{{4}})\b", re.I),
        lambda m: (m[3], _MONTHS[m[2].lower()], m[1]),
    ),
    (
        re.compile(rf"\b({_MONTH_RE})\.?\s+(\d{{1,2}}),?\s+(\d{{4}})\b", re.I),
        lambda m: (m[3], _MONTHS[m[1].lower()], m[2]),
    ),
]
_NUMBER_RE = re.compile(r"(?<![\w.])[-+]?\d[\d,]*(?:\.\d+)?")
_LABEL_RE = re.compile(r"^\s*([A-Za-z][\w /#().&-]{0,60}?)\s*[:=]\s*(.+?)\s*$")
_BULLET_RE = re.compile(r"^\s*(?:[-*\u2022]|\d+[.)])\s+(.+?)\s*$")
_EMAIL_RE = re.compile(r"[\w.+-]+@[\w-]+\.[\w.-]+")


def _words(name: str) -> str:
    name = re.sub(r"([a-z0-9])([A-Z])", r"\1 \2", name)
    return " ".join(re.split(r"[^a-z0-9]+", name.lower())).strip()


def find_dates(text: str) -> list[str]:
    """ISO dates found in ``text``, in order of appearance."""
    found: list[tuple[int, str]] = []
    for pattern, parts in _DATE_PATTERNS:
        for match in pattern.finditer(text):
            year, month, day = (int(x) for x in parts(match))
            if 1 <= month <= 12 and 1 <= day <= 31:
                found.append((match.start(), f"{year:04d}-{month:02d}-{day:02d}"))
    return [d for _, d in sorted(found)]


def _parse_number(text: str) -> float | None:
    match = _NUMBER_RE.search(text.replace("$", "").replace("\u20ac", ""))
    if not match:
        return None
    try:
        return float(match.group().replace(",", ""))
    except ValueError:
        return None


class SchemaFiller:
    """Builds a value of a response schema (OpenAPI subset or JSON Schema) from text."""

    def __init__(self, corpus: str, schema: dict):
        self.corpus = corpus
        self.root = schema
        self.labels: list[tuple[str, str]] = []
        for line in corpus.splitlines():
            match = _LABEL_RE.match(line)
            if match:
                self.labels.append((_words(match[1]), match[2]))
        self.bullets = [m[1] for line in corpus.splitlines() if (m := _BULLET_RE.match(line))]
        self.dates = find_dates(corpus)

    def fill(self) -> Any:
        return self._value(self.root, "", 0)

    def _resolve(self, schema: dict) -> dict:
        ref = schema.get("$ref")
        while isinstance(ref, str) and ref.startswith("#/"):
            target: Any = self.root
            for piece in ref[2:].split("/"):
                target = target.get(piece, {}) if isinstance(target, dict) else {}
            schema = {**target, **{k: v for k, v in schema.items() if k != "$ref"}}
            ref = target.get("$ref") if isinstance(target, dict) else None
        return schema

    def _type(self, schema: dict) -> str | None:
        kind = schema.get("type")
        if isinstance(kind, list):
            kind = next((k for k in kind if str(k).lower() != "null"), "null")
        if kind is None:
            if "properties" in schema:
                return "object"
            if "items" in schema:
                return "array"
            if "enum" in schema:
                return "string"
            return None
        return str(kind).lower()

    def labelled(self, name: str) -> str | None:
        words = _words(name)
        if not words:
            return None
        for label, value in self.labels:
            if label == words:
                return value
        for label, value in self.labels:
            if label.endswith(words) or words.endswith(label) or words in label:
                return value
        return None

    def _value(self, schema: Any, name: str, depth: int) -> Any:
        if not isinstance(schema, dict) or depth > 12:
            return None
        schema = self._resolve(schema)
        if "const" in schema:
            return schema["const"]
        for combinator in ("anyOf", "oneOf", "allOf"):
            options = schema.get(combinator)
            if isinstance(options, list) and options:
                non_null = [o for o in options if self._type(self._resolve(o)) != "null"]
                return self._value((non_null or options)[0], name, depth + 1)
        kind = self._type(schema)
        if kind == "object":
            props = schema.get("properties") or {}
            order = schema.get("propertyOrdering") or list(props)
            return {p: self._value(props[p], p, depth + 1) for p in order if p in props}
        if kind == "array":
            return self._array(schema, name, depth)
        if kind in ("number", "integer"):
            return self._number(schema, name, kind)
        if kind == "boolean":
            value = self.labelled(name)
            if value is not None:
                return value.strip().lower() in ("yes", "true", "y", "1", "x")
            return bool(_words(name)) and _words(name) in self.corpus.lower()
        if kind == "null":
            return None
        return self._string(schema, name)

    def _string(self, schema: dict, name: str) -> Any:
        enum = schema.get("enum")
        if isinstance(enum, list) and enum:
            lowered = self.corpus.lower()
            labelled = (self.labelled(name) or "").lower()
            for option in enum:
                if str(option).lower() == labelled:
                    return option
            for option in enum:
                if str(option).lower() in lowered:
                    return option
            return enum[0]
        fmt = str(schema.get("format", "")).lower()
        words = _words(name)
        labelled = self.labelled(name)
        if fmt in ("date", "date-time") or "date" in words.split() or words.endswith("date"):
            candidates = find_dates(labelled) if labelled else []
            date = (candidates or self.dates or ["1970-01-01"])[0]
            return f"{date}T00:00:00Z" if fmt == "date-time" else date
        if fmt == "email" or "email" in words:
            match = _EMAIL_RE.search(labelled or "") or _EMAIL_RE.search(self.corpus)
            return match.group() if match else "unknown@example.com"
        if labelled is not None:
            value = labelled
        elif any(w in words.split() for w in ("summary", "description", "text", "content", "abstract")):
            value = " ".join(self.corpus.split()[:40])
        else:
            value = _first_line(self.corpus)
        max_length = schema.get("maxLength")
        return value[: int(max_length)] if max_length is not None else value

    def _number(self, schema: dict, name: str, kind: str) -> float | int:
        labelled = self.labelled(name)
        number = _parse_number(labelled) if labelled is not None else None
        if number is None:
            number = _parse_number(self.corpus)
        if number is None:
            number = 0.0
        if "minimum" in schema:
            number = max(number, float(schema["minimum"]))
        if "maximum" in schema:
            number = min(number, float(schema["maximum"]))
        return int(number) if kind == "integer" else number

    def _array(self, schema: dict, name: str, depth: int) -> list:
        items = self._resolve(schema.get("items") or {})
        min_items = int(schema.get("minItems", 0) or 0)
        max_items = schema.get("maxItems")
        limit = int(max_items) if max_items is not None else 10
        kind = self._type(items)
        values: list[Any]
        if kind == "string" and "enum" not in items:
            labelled = self.labelled(name)
            if labelled is not None:
                values = [v.strip() for v in labelled.split(",") if v.strip()]
            elif self.bullets:
                values = list(self.bullets)
            else:
                values = [self._string(items, name)]
            max_length = items.get("maxLength")
            if max_length is not None:
                values = [v[: int(max_length)] for v in values]
        elif kind in ("number", "integer"):
            values = [self._number(items, name, kind)]
        else:
            values = [self._value(items, name, depth + 1)]
        while len(values) < min_items:
            values.append(values[-1] if values else self._value(items, name, depth + 1))
        return values[:limit]


# ---------------------------------------------------------------- embeddings

_WORD = re.compile(r"\w+")
DEFAULT_EMBEDDING_DIMENSIONS = 768


def embedding_text(content: Any, resolve_file: FileResolver) -> str:
    """The text an ``EmbedContentRequest.content`` holds: its text parts and what its documents say."""
    if not isinstance(content, dict) or not content.get("parts"):
        raise RowFailure(3, "* EmbedContentRequest.content: content is not specified")
    prompts, documents = _read_parts({"contents": [content]}, resolve_file)
    return "\n".join(prompts + [d.text for d in documents])


def embedding_values(text: str, dimensions: int) -> list[float]:
    """A deterministic unit vector for ``text``: its words hashed into ``dimensions`` buckets with signs
    (feature hashing), so texts that share words are near each other, as with a real embedding."""
    vector = [0.0] * dimensions
    features = [w.lower() for w in _WORD.findall(text)] or [text]
    for feature in features:
        digest = hashlib.blake2b(feature.encode(), digest_size=32).digest()
        for i in range(0, 32, 8):
            index = int.from_bytes(digest[i : i + 4], "big") % dimensions
            vector[index] += 1.0 if digest[i + 4] & 1 else -1.0
    norm = math.sqrt(sum(v * v for v in vector)) or 1.0
    return [round(v / norm, 6) for v in vector]


def embed(
    request: Any, max_dimensions: int, resolve_file: FileResolver, surface: str = "developer"
) -> tuple[list[float], int]:
    """The vector and the input tokens for one ``EmbedContentRequest`` as sent (``parse`` reads it);
    RowFailure when the service would fail the row. ``outputDimensionality`` truncates, as Google's models
    allow."""
    request = parse(request, "EmbedContentRequest", surface)
    text = embedding_text(request.get("content"), resolve_file)
    dimensions = request.get("outputDimensionality") or max_dimensions
    if not 1 <= int(dimensions) <= max_dimensions:
        raise RowFailure(
            3, f"* EmbedContentRequest.output_dimensionality: must be between 1 and {max_dimensions}, got {dimensions}"
        )
    title = request.get("title") or ""
    return embedding_values(f"{title}\n{text}" if title else text, int(dimensions)), tokens_of(title + text)

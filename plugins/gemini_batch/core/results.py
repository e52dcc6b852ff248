"""Turn batch output rows into per-key outcomes, and outcomes into one record per document.

A job that succeeded can still hold rows without a usable answer: row errors,
finish reasons other than STOP, JSON wrapped in fences or prose, truncated
JSON, answers that do not match the schema. Each becomes a failed outcome
with a reason a user can act on (and the raw text kept), never an empty
success. Output rows are joined to requests by key, never by line order.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, ClassVar

import jsonschema_rs
import msgspec
import orjson
import referencing
import referencing.exceptions
from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError, best_match
from referencing.jsonschema import DRAFT202012

from gemini_batch.core import jsonl, records
from gemini_batch.core.events import OutcomeEvents
from gemini_batch.core.records import Record, StrEnum

if TYPE_CHECKING:
    from gemini_batch.core.planned import PlannedDocument

log = logging.getLogger(__name__)

RAW_TEXT_LIMIT = 2_000
SCHEMA_MESSAGE_LIMIT = 300  # a type error repeats the offending value, which may be the whole answer
WARNINGS_PER_KIND = 10  # a corrupt output file must not flood the task log

# A fence's marks touch a raw newline, which a JSON string cannot hold: a fence quoted inside the
# answer's strings is never taken for one. The opening mark may follow prose on its line.
_FENCE = re.compile(r"```[ \t]*(?:json)?[ \t]*\n(.*?)\n[ \t]*```", re.DOTALL | re.IGNORECASE)
_BRACKETS = {"{": "}", "[": "]"}
_SCALAR_NAMES = {str: "string", int: "number", float: "number", bool: "boolean", type(None): "null"}
_FINISH_MEANINGS = {
    "MAX_TOKENS": "answer truncated",
    "SAFETY": "answer blocked by the safety filters",
    "RECITATION": "answer blocked as recitation",
}


class ExtractionError(ValueError):
    pass


def extract_json(text: str | None) -> Any:
    """The JSON object or array in a model's answer.

    Tries a direct parse, then each ```json (or bare ```) fenced block, then
    the span from the first '{' or '[' to the last matching '}' or ']'. A
    bare string or number is not an answer to an extraction prompt: it is
    passed over, and an error if nothing else is found. A truncated answer
    is an error, never the part of it that happens to parse.
    """
    if text is None or not text.strip():
        raise ExtractionError("empty answer")
    try:  # the answer as asked for: JSON and nothing else (most rows; skips the search below)
        value = orjson.loads(text)
        if isinstance(value, (dict, list)):
            return value
    except orjson.JSONDecodeError:
        pass
    scalar = error = None
    for candidate in _candidates(text):
        try:
            value = orjson.loads(candidate)
        except orjson.JSONDecodeError as exc:
            if error is None and candidate.lstrip()[:1] in _BRACKETS:
                error = f"invalid JSON: {exc.msg}"
            continue
        if isinstance(value, (dict, list)):
            return value
        scalar = scalar or _SCALAR_NAMES[type(value)]
    if scalar:
        raise ExtractionError(f"a bare {scalar}, not a JSON object or array")
    raise ExtractionError(error or "no JSON object or array found")


def _candidates(text: str) -> Iterator[str]:
    yield text
    for fence in _FENCE.finditer(text):
        yield fence[1]
    starts = [start for start in (text.find("{"), text.find("[")) if start >= 0]
    if starts:  # only the outermost span: an inner one of a truncated answer would be part of the data
        start = min(starts)
        end = text.rfind(_BRACKETS[text[start]])
        yield text[start : end + 1] if end > start else text[start:]  # no closer: truncated, say so


class OutcomeStatus(StrEnum):
    """How a request key (a part) ended."""

    SUCCEEDED = "succeeded"
    FAILED = "failed"


_SUCCEEDED, _FAILED = OutcomeStatus.SUCCEEDED, OutcomeStatus.FAILED  # an Enum class's attribute costs a lookup per row


class DocumentStatus(StrEnum):
    """How a document ended in results.jsonl."""

    SUCCEEDED = "succeeded"
    FAILED = "failed"
    REJECTED = "rejected"


class RowOutcome(Record, frozen=True):
    """One key's outcome: a line of a round's outcomes file, and the record the ledger keeps of an answer."""

    kind: ClassVar[str] = "outcome record"

    key: str
    status: OutcomeStatus
    data: Any  # the extracted JSON; None when failed
    error: str | None  # why it failed, for people
    finish_reason: str | None
    input_tokens: int
    output_tokens: int  # answer + thinking
    model_version: str | None
    raw_text: str | None  # the model's text, kept on failure (truncated); None on success
    reused: bool = False  # read from another run's job (adopted): that run paid for it


def missing_outcome(key: str, reason: str) -> RowOutcome:
    """A failed outcome without any answer: the key's row is missing (job expired or failed) or is an error."""
    return RowOutcome(key, _FAILED, None, reason, None, 0, 0, None, None)


def parse_output_row(row: Mapping, response_schema: Mapping | None) -> RowOutcome:
    """The outcome of one output row, Developer API or Vertex AI form.

    Success needs finish reason STOP (or none, with text), an extractable JSON
    object or array, and, given a schema, data that matches it.
    """
    return _parse_row(row, _validator(response_schema))


def check_schema(response_schema: Mapping) -> None:
    """Raises jsonschema.SchemaError when the schema is not valid JSON Schema (2020-12) or a ``$ref`` in it leads
    nowhere: the validator would find that only when an answer reaches the reference, after the batch is paid for."""
    Draft202012Validator.check_schema(response_schema)
    resolver = referencing.Registry().resolver_with_root(DRAFT202012.create_resource(response_schema))
    for ref in _refs(response_schema):
        try:
            resolver.lookup(ref)
        except referencing.exceptions.Unresolvable:
            raise SchemaError(f"$ref {ref!r} leads nowhere (nothing there in the schema, no other is loaded)") from None


def _refs(value: Any) -> Iterator[str]:
    if isinstance(value, Mapping):
        for name, item in value.items():
            if name == "$ref" and isinstance(item, str):
                yield item
            else:
                yield from _refs(item)
    elif isinstance(value, list):
        for item in value:
            yield from _refs(item)


@dataclass(frozen=True)
class _SchemaCheck:
    """jsonschema-rs decides whether an answer matches (a hundred times faster: a large output is read at disk
    speed); python-jsonschema, the authority where the two differ (regex dialects), words the error."""

    fast: jsonschema_rs.Draft202012Validator | None
    reference: Draft202012Validator

    def error(self, data: Any) -> str | None:
        if self.fast is not None and self.fast.is_valid(data):
            return None
        error = best_match(self.reference.iter_errors(data))
        if error is None:
            return None
        return f"{error.json_path}: {error.message[:SCHEMA_MESSAGE_LIMIT]}"


_last_validator: tuple[bytes, _SchemaCheck] | None = None


def _validator(response_schema: Mapping | None) -> _SchemaCheck | None:
    """Raises jsonschema.SchemaError before any row is read when the schema itself is invalid. The last schema's
    check is kept: a worker process reads every job of a round with the same one, and building it (the schema
    checked first) cost more than reading a small job."""
    global _last_validator
    if response_schema is None:
        return None
    schema_json = orjson.dumps(response_schema, default=dict)
    if _last_validator is not None and _last_validator[0] == schema_json:
        return _last_validator[1]
    check_schema(response_schema)
    try:
        fast = jsonschema_rs.Draft202012Validator(dict(response_schema))
    except Exception as exc:
        log.warning("Answers are checked by python-jsonschema alone (jsonschema-rs refused the schema: %s)", exc)
        fast = None
    check = _SchemaCheck(fast, Draft202012Validator(dict(response_schema)))
    _last_validator = schema_json, check
    return check


_Count = Annotated[int, msgspec.Meta(ge=-(2**63), le=2**63 - 1)]  # what orjson reads as an int, not a float


class _Part(msgspec.Struct):
    text: str | None = None
    thought: bool | None = None


class _Content(msgspec.Struct):
    parts: list[_Part] | None = None


class _Candidate(msgspec.Struct, rename="camel"):
    content: _Content | None = None
    finish_reason: str | None = None


class _Usage(msgspec.Struct, rename="camel"):
    prompt_token_count: _Count | None = None
    candidates_token_count: _Count | None = None
    thoughts_token_count: _Count | None = None


class _Feedback(msgspec.Struct, rename="camel"):
    block_reason: str | None = None


class _Response(msgspec.Struct, rename="camel"):
    candidates: list[_Candidate] | None = None
    usage_metadata: _Usage | None = None
    model_version: str | None = None
    prompt_feedback: _Feedback | None = None


class _Row(msgspec.Struct):
    """The fields of an output row an outcome is made of, each of the type the service writes; the rest (the
    request, the token details, ...) is skipped, never built. A row it does not take (a row error, a field of
    another type, not an object) is parsed whole and read by ``_parse_row``: either way a row gets the same
    outcome."""

    key: str | None = None
    error: None = None  # an error object: parsed whole
    status: str | None = None
    response: _Response | None = None


_ROW_DECODER = msgspec.json.Decoder(_Row)


def _decode_row(line: bytes) -> _Row:
    """The row of an output line as a ``_Row``; ValueError when it is not one (msgspec.DecodeError), or when
    it is not UTF-8 throughout: msgspec skips the strings of the fields it does not read unchecked, where orjson
    refuses the line. (It skips a number too large for a double there too, which orjson refuses.)"""
    if not line.isascii():
        line.decode()
    return _ROW_DECODER.decode(line)


def _parse_row(row: Mapping, validator: _SchemaCheck | None) -> RowOutcome:
    """A row in any form JSON allows (the form ``_Row`` does not take)."""
    key: str = row["key"]  # read_output passes only rows whose key it was sent
    problem = row.get("error") or row.get("status")  # Developer API: error object; Vertex AI: "STATUS: message"
    if problem:
        if isinstance(problem, dict):  # google.rpc.Status
            code = " ".join(str(problem[name]) for name in ("code", "status") if problem.get(name) is not None)
            problem = f"{code}: {problem.get('message')}"
        return missing_outcome(key, f"row error {problem}")
    response = row.get("response")
    if not isinstance(response, dict):
        return missing_outcome(key, "row has neither a response nor an error")
    usage = _mapping(response.get("usageMetadata"))
    candidates = response.get("candidates")
    candidate = _mapping(candidates[0]) if isinstance(candidates, list) and candidates else None
    return _answer_outcome(
        key,
        _count(usage.get("promptTokenCount")),
        _count(usage.get("candidatesTokenCount")) + _count(usage.get("thoughtsTokenCount")),
        response.get("modelVersion"),
        _mapping(response.get("promptFeedback")).get("blockReason"),
        None if candidate is None else candidate.get("finishReason"),
        None if candidate is None else _answer_text(candidate),
        validator,
    )


def _parse_typed_row(row: _Row, key: str, validator: _SchemaCheck | None) -> RowOutcome:
    """``_parse_row`` of a row decoded as a ``_Row``."""
    if row.status:
        return missing_outcome(key, f"row error {row.status}")
    response = row.response
    if response is None:
        return missing_outcome(key, "row has neither a response nor an error")
    usage = response.usage_metadata
    input_tokens = output_tokens = 0
    if usage is not None:
        input_tokens = usage.prompt_token_count or 0
        output_tokens = (usage.candidates_token_count or 0) + (usage.thoughts_token_count or 0)
    finish = text = None
    if response.candidates:
        candidate = response.candidates[0]
        finish = candidate.finish_reason
        parts = candidate.content.parts if candidate.content is not None else None
        if not parts:
            text = ""
        elif len(parts) == 1:  # most answers
            text = "" if parts[0].thought else parts[0].text or ""
        else:
            text = "".join(part.text for part in parts if part.text is not None and not part.thought)
    block = response.prompt_feedback.block_reason if response.prompt_feedback is not None else None
    return _answer_outcome(key, input_tokens, output_tokens, response.model_version, block, finish, text, validator)


def _answer_outcome(
    key: str,
    input_tokens: int,
    output_tokens: int,
    model_version: str | None,
    block: Any,
    finish: Any,
    text: str | None,
    validator: _SchemaCheck | None,
) -> RowOutcome:
    """The outcome of a row with a response: ``text`` its first candidate's answer, None when it has none."""
    if text is None:
        reason = f"prompt blocked: {block}" if block else "response has no candidates"
    elif finish not in (None, "STOP"):
        meaning = _FINISH_MEANINGS.get(finish, "no usable answer")
        if finish == "MAX_TOKENS" and not text:
            meaning = "output token limit reached before any answer (spent on thinking?)"
        reason = f"finish reason {finish}: {meaning}"
    else:
        try:
            data = extract_json(text)
        except ExtractionError as exc:
            reason = f"answer is not JSON: {exc}"
        else:
            if validator is None or (error := validator.error(data)) is None:
                return RowOutcome(key, _SUCCEEDED, data, None, finish, input_tokens, output_tokens, model_version, None)
            reason = f"answer does not match the response schema: {error}"
    raw = text[:RAW_TEXT_LIMIT] if text else None
    return RowOutcome(key, _FAILED, None, reason, finish, input_tokens, output_tokens, model_version, raw)


def _mapping(value: Any) -> Mapping:
    return value if isinstance(value, dict) else {}  # rows are parsed JSON: dict, not the slower Mapping check


def _count(value: Any) -> int:
    return value if isinstance(value, int) else 0


def _answer_text(candidate: Mapping) -> str:
    """The answer's text parts joined; thought parts are the model's thinking, not its answer."""
    parts = _mapping(candidate.get("content")).get("parts")
    if not isinstance(parts, list):
        return ""
    if len(parts) == 1 and isinstance(parts[0], dict) and not parts[0].get("thought"):  # most answers: one part
        text = parts[0].get("text")
        return text if isinstance(text, str) else ""
    return "".join(
        part["text"]
        for part in parts
        if isinstance(part, dict) and isinstance(part.get("text"), str) and not part.get("thought")
    )


@dataclass
class OutputReading:
    """What reading one job's output found."""

    outcomes: int = 0  # handed to the sink: succeeded + failed
    succeeded: int = 0
    failed: int = 0
    unparseable_lines: int = 0  # not JSON, or JSON but not an object
    unknown_keys: int = 0  # rows without a key, or with a key this job was not sent
    duplicate_keys: int = 0  # later rows for a key already read
    unanswered: list[str] = dataclasses.field(default_factory=list, repr=False)  # keys sent without an outcome
    unavailable: str | None = None  # why the output could not be read (to its end)


class OutputUnavailable(Exception):
    """A finished job's output cannot be read (expired or deleted): its rows are unanswered, not a task error."""


def read_output(
    lines: Iterable[bytes],
    expected_keys: Iterable[str],
    response_schema: Mapping | None,
    sink: Callable[[RowOutcome], None],
    *,
    adopted: bool = False,
) -> OutputReading:
    """Stream a job's output rows to ``sink`` as outcomes, at most one per expected key (the first row wins).

    Anything else is counted and skipped with a warning, never raised: one
    bad line must not cost the rest of the job. An output that cannot be read
    (``OutputUnavailable`` from ``lines``) ends the reading, and the keys not
    read yet are ``unanswered``. Memory holds the expected keys once, whatever
    the number of rows. ``adopted``: the job is another run's, whose other keys
    are no surprise, and the outcomes are marked reused.
    """
    validator = _validator(response_schema)
    answered = dict.fromkeys(expected_keys, False)  # in the order sent; True once a row for the key is read
    reading = OutputReading()
    try:
        _read_rows(
            lines, answered, validator, _reused_sink(sink) if adopted else sink, reading, warn_unknown=not adopted
        )
    except OutputUnavailable as exc:
        reading.unavailable = str(exc)
    reading.unanswered = [key for key, done in answered.items() if not done]
    return reading


def read_output_file(
    output_file: str,
    expected_keys: list[str],
    response_schema: Mapping | None,
    outcomes_file: str,
    events_file: str,
    *,
    run: str,
    at: str,
    unavailable: str | None = None,
) -> OutputReading:
    """``read_output`` of a job's output spooled to a local file, its outcomes written to the local JSON lines file
    ``outcomes_file`` and their ledger events (``OutcomeWriter``) to ``events_file``: what a collecting worker
    process runs (files both ways: pickling the outcomes back cost more than parsing them). ``unavailable``: why
    the spool ends before the output did."""
    with (
        open(output_file, "rb", buffering=2**20) as lines,
        jsonl.writer(outcomes_file) as outcomes,
        jsonl.writer(events_file) as events,
    ):
        reading = read_output(lines, expected_keys, response_schema, OutcomeWriter(outcomes, events, run, at))
    reading.unavailable = unavailable
    return reading


class OutcomeWriter:
    """Writes each outcome to a round's outcomes and the ledger's event of it (answered or failed, for run ``run``
    at ``at``) to its events, the outcome encoded once for both; ``count``: the events written or appended.

    An outcome read from another run's job (``reused``) is recorded as an answer of the ledger's own: the run that
    paid may have died before recording it.
    """

    def __init__(self, outcomes: jsonl.Writer, events: jsonl.Writer, run: str, at: str):
        self.outcomes, self.events, self.lines = outcomes, events, OutcomeEvents(run, at)
        self.count = 0

    def __call__(self, outcome: RowOutcome) -> None:
        line = records.encode(outcome)
        self.outcomes.encoded(line)
        if outcome.reused:
            line = records.encode(msgspec.structs.replace(outcome, reused=False))
        self.events.encoded(self.lines.line(outcome.key, outcome.status == _SUCCEEDED, line))
        self.count += 1

    def append_files(self, outcomes_file: str, events_file: str, count: int) -> None:
        """Copy in the ``count`` outcomes and events another one wrote to local files (``read_output_file``)."""
        self.outcomes.append_file(outcomes_file)
        self.events.append_file(events_file)
        self.count += count


def _read_rows(
    lines: Iterable[bytes],
    answered: dict[str, bool],
    validator: _SchemaCheck | None,
    sink: Callable[[RowOutcome], None],
    reading: OutputReading,
    *,
    warn_unknown: bool = True,
) -> None:
    for number, line in enumerate(lines, start=1):
        if line.isspace() or not line:  # isspace stops at the first other byte; strip would copy the line
            continue
        row: _Row | dict | None
        try:
            row = _decode_row(line)
            key = row.key
        except ValueError:
            try:
                row = orjson.loads(line)
            except orjson.JSONDecodeError:
                row = None
            if not isinstance(row, dict):
                reading.unparseable_lines += 1
                _warn(reading.unparseable_lines, "Output line %d is not a JSON object: %.100r", number, line)
                continue
            key = row.get("key")
        done = answered.get(key) if isinstance(key, str) else None
        if done is None or not isinstance(key, str):
            reading.unknown_keys += 1
            if warn_unknown:
                _warn(reading.unknown_keys, "Output line %d: key %r is not one this job was sent, ignored", number, key)
            continue
        if done:
            reading.duplicate_keys += 1
            _warn(reading.duplicate_keys, "Output line %d: key %s was already read, ignored", number, key)
            continue
        answered[key] = True
        outcome = _parse_row(row, validator) if isinstance(row, dict) else _parse_typed_row(row, key, validator)
        reading.outcomes += 1
        if outcome.status == _SUCCEEDED:
            reading.succeeded += 1
        else:
            reading.failed += 1
        sink(outcome)


def _reused_sink(sink: Callable[[RowOutcome], None]) -> Callable[[RowOutcome], None]:
    return lambda outcome: sink(msgspec.structs.replace(outcome, reused=True))


def _warn(count: int, message: str, *args: Any) -> None:
    if count <= WARNINGS_PER_KIND:
        log.warning(
            message + ("; further ones of this kind are not logged" if count == WARNINGS_PER_KIND else ""), *args
        )


class PartRecord(Record, frozen=True):
    """One request part of a published document: which key, which pages, and how it ended."""

    kind: ClassVar[str] = "part record"

    key: str
    pages: tuple[int, int] | None
    status: OutcomeStatus
    finish_reason: str | None
    error: str | None
    reused: bool


class Usage(Record, frozen=True):
    """The tokens of a document's answers."""

    kind: ClassVar[str] = "usage record"

    input_tokens: int = 0
    output_tokens: int = 0


class DocumentRecord(Record, frozen=True):
    """One line of results.jsonl: a document, its status, its data and how each part ended."""

    kind: ClassVar[str] = "results.jsonl record"

    document: str
    status: DocumentStatus
    data: Any = None
    error: str | None = None
    parts: tuple[PartRecord, ...] = ()
    usage: Usage = msgspec.field(default_factory=Usage)
    reused: bool = False


def document_record(
    doc: PlannedDocument,
    outcomes: Mapping[str, RowOutcome],
    reused: Mapping[str, Mapping],
) -> DocumentRecord:
    """The results.jsonl record of one document.

    The document succeeds only if every part does; its error then names each
    failed part ("pages 51-100: ..." for a split PDF). A part answered by an
    earlier run (``reused``: the ledger's records) counts as succeeded with
    its stored data and adds no tokens to this run's usage.
    The data of a split PDF is its parts' data combined by ``merge_part_data``.
    """
    document = doc.document
    if doc.rejected is not None:
        return DocumentRecord(document, DocumentStatus.REJECTED, None, doc.rejected)
    if not doc.parts:
        return DocumentRecord(document, DocumentStatus.FAILED, None, "document has no parts to request")
    parts, datas, errors = [], [], []
    input_tokens = output_tokens = 0
    for part in doc.parts:
        outcome, was_reused = _part_outcome(part.key, outcomes, reused)
        input_tokens += outcome.input_tokens
        output_tokens += outcome.output_tokens
        parts.append(PartRecord(part.key, part.pages, outcome.status, outcome.finish_reason, outcome.error, was_reused))
        if outcome.status == OutcomeStatus.SUCCEEDED:
            datas.append(outcome.data)
        else:
            errors.append(
                f"pages {part.pages[0]}-{part.pages[1]}: {outcome.error}" if part.pages else str(outcome.error)
            )
    all_reused = all(part.reused for part in parts)
    usage = Usage(input_tokens, output_tokens)
    if errors:
        return DocumentRecord(document, DocumentStatus.FAILED, None, "; ".join(errors), tuple(parts), usage, all_reused)
    data = datas[0] if len(datas) == 1 else merge_part_data(datas)
    return DocumentRecord(document, DocumentStatus.SUCCEEDED, data, None, tuple(parts), usage, all_reused)


def _part_outcome(
    key: str, outcomes: Mapping[str, RowOutcome], reused: Mapping[str, Mapping]
) -> tuple[RowOutcome, bool]:
    """This run's outcome for a key, else the earlier run's record (as a token-free success), else a failure."""
    if key in outcomes and not outcomes[key].reused:
        return outcomes[key], False
    if key in outcomes:
        return msgspec.structs.replace(outcomes[key], input_tokens=0, output_tokens=0), True
    if key in reused:
        stored = reused[key]
        return RowOutcome(
            key,
            OutcomeStatus.SUCCEEDED,
            stored.get("data"),
            None,
            stored.get("finish_reason"),
            0,
            0,
            stored.get("model_version"),
            None,
        ), True
    return missing_outcome(key, "no answer for this part"), False


def merge_part_data(datas: list) -> Any:
    """One document's data from the answers for its page ranges, given in page order.

    When every answer is an object they merge key by key: for a scalar the
    first non-null value wins (a field found on page 3 is not overwritten by
    page 60), lists are concatenated (line items of all pages, in page order),
    nested objects merge the same way; where the parts disagree on a field's
    type, the first non-null value wins. When any answer is not an object,
    the data is the list of the answers.
    """
    if all(isinstance(data, dict) for data in datas):
        merged: dict = {}
        for data in datas:
            for name, value in data.items():
                merged[name] = _merge_values(merged[name], value) if name in merged else value
        return merged
    return list(datas)


def _merge_values(first: Any, later: Any) -> Any:
    if first is None:
        return later
    if isinstance(first, list) and isinstance(later, list):
        return first + later
    if isinstance(first, dict) and isinstance(later, dict):
        return merge_part_data([first, later])
    return first


class RunSummary(Record, frozen=True):
    """summary.json, and what the publish task hands on: a run's documents by status, and what it sent and pays."""

    kind: ClassVar[str] = "run summary"

    documents: int
    succeeded: int
    failed: int
    rejected: int
    reused: int
    requests: int
    jobs: int
    retry_rounds: int
    input_tokens: int
    output_tokens: int
    estimated_cost_usd: float | None


@dataclass
class RunTotals:
    """Running tallies of published records for summary.json: ``add`` each record, then ``summary``.

    Tokens are not tallied from records: a record carries its final answer's
    usage, while a run is billed for every attempt, failed ones included; the
    caller passes what was billed.
    """

    documents: int = 0
    succeeded: int = 0
    failed: int = 0
    rejected: int = 0
    reused: int = 0

    def add(self, record: DocumentRecord) -> None:
        self.documents += 1
        setattr(self, record.status, getattr(self, record.status) + 1)
        self.reused += record.reused

    def summary(
        self,
        *,
        requests: int,
        jobs: int,
        retry_rounds: int,
        input_tokens: int,
        output_tokens: int,
        estimated_cost_usd: float | None,
    ) -> RunSummary:
        return RunSummary(
            self.documents,
            self.succeeded,
            self.failed,
            self.rejected,
            self.reused,
            requests,
            jobs,
            retry_rounds,
            input_tokens,
            output_tokens,
            estimated_cost_usd,
        )

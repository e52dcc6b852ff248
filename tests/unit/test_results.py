"""Output rows to outcomes to document records: both output forms (Developer API
and Vertex AI, as the emulator writes them), every way a row can lack a usable
answer, and the records and totals published for a run."""

from __future__ import annotations

import json
import logging
from unittest import mock

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st
from jsonschema.exceptions import SchemaError

from gemini_batch.core import records, results
from gemini_batch.core.batch_requests import RequestSpec, build_row
from gemini_batch.core.results import (
    WARNINGS_PER_KIND,
    DocumentRecord,
    ExtractionError,
    RowOutcome,
    RunTotals,
    document_record,
    extract_json,
    merge_part_data,
    missing_outcome,
    parse_output_row,
    read_output,
)
from gemini_batch.steps.plan import PlannedDocument, PlannedPart
from gemini_emulator import responder
from gemini_emulator.config import Faults

INVOICE_SCHEMA = {
    "type": "object",
    "properties": {"invoice_number": {"type": "string"}, "total": {"type": "number"}},
    "required": ["invoice_number", "total"],
}
SCHEMA = INVOICE_SCHEMA | {
    "properties": INVOICE_SCHEMA["properties"]
    | {
        "items": {"type": "array", "items": {"type": "object", "required": ["sku"]}},
    }
}
INVOICE = {"invoice_number": "INV-42", "total": 1234.5}
REQUEST = {"contents": [{"role": "user", "parts": [{"text": "Extract."}]}]}


def response(text=None, *, finish="STOP", parts=None, thoughts=0) -> dict:
    """A GenerateContentResponse in REST form, as the emulator (and the service) writes it."""
    candidate = {"index": 0}
    if finish is not None:
        candidate["finishReason"] = finish
    parts = parts if parts is not None else [{"text": text}] if text is not None else []
    if parts:
        candidate["content"] = {"role": "model", "parts": parts}
    usage = {"promptTokenCount": 300, "candidatesTokenCount": 20, "totalTokenCount": 320 + thoughts}
    if thoughts:
        usage["thoughtsTokenCount"] = thoughts
    return {"candidates": [candidate], "usageMetadata": usage, "modelVersion": "gemini-2.5-flash", "responseId": "r1"}


def developer_row(key, answer) -> dict:
    return {"key": key, "response": answer}


def vertex_row(key, answer) -> dict:
    return {
        "key": key,
        "request": REQUEST,
        "status": "",
        "response": answer,
        "processed_time": "2026-03-01T10:00:00.000Z",
    }


FORMATS = pytest.mark.parametrize("row", [developer_row, vertex_row], ids=["developer", "vertex"])


def lines(*rows) -> list[bytes]:
    return [row if isinstance(row, bytes) else orjson.dumps(row) + b"\n" for row in rows]


# ---------------------------------------------------------------- extract_json


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('{"invoice_number": "INV-42", "total": 1234.5}', INVOICE),
        ('  [{"sku": "a"}, {"sku": "b"}]\n', [{"sku": "a"}, {"sku": "b"}]),
        ('```json\n{"invoice_number": "INV-42", "total": 1234.5}\n```', INVOICE),
        ("```\n[1, 2]\n```", [1, 2]),
        ('Here is {your} data:\n```JSON\n{"a": 1}\n```\nAsk {me} anything.', {"a": 1}),
        ('Sure! Here is the data:\n\n{"a": {"b": [1, 2]}}\n\nLet me know.', {"a": {"b": [1, 2]}}),
        (
            'Result: {"note": "use {x} and [y]", "n": [1, {"b": "}"}]} -- done',
            {"note": "use {x} and [y]", "n": [1, {"b": "}"}]},
        ),
        ('Notes:\n```json\n{"a": "a fence: ```json"}\n```', {"a": "a fence: ```json"}),
        ('```\n42\n```\n```json\n{"a": 1}\n```', {"a": 1}),  # a scalar block is passed over
        ('"a string" then {"a": 1}', {"a": 1}),
    ],
)
def test_extract_json_finds_the_object_or_array(text, expected):
    assert extract_json(text) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (None, "empty answer"),
        ("", "empty answer"),
        ("  \n\t", "empty answer"),
        ('{"invoice_number": "INV-42", "total": 12', "invalid JSON: unexpected end of data"),
        ('```json\n{"invoice_number": "INV-4\n```', "invalid JSON: unexpected end of data"),
        ('Here you go: [{"sku": "a"}, {"sku"', "invalid JSON: unexpected end of data"),  # not {"sku": "a"}
        ('[{"sku": ["a"]}, {"sku": ["b"', "invalid JSON: unexpected end of data"),
        ("42", "a bare number, not a JSON object or array"),
        ('"INV-42"', "a bare string, not a JSON object or array"),
        ("null", "a bare null, not a JSON object or array"),
        ("The invoice number is INV-42.", "no JSON object or array found"),
    ],
)
def test_extract_json_fails_with_a_reason_and_never_returns_an_empty_success(text, message):
    with pytest.raises(ExtractionError) as excinfo:
        extract_json(text)
    assert str(excinfo.value) == message


_JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)
_PROSE = st.text(alphabet=st.characters(blacklist_characters="{}[]"), max_size=60)


@given(st.dictionaries(st.text(max_size=8), _JSON_VALUES, max_size=5), _PROSE, _PROSE)
def test_any_object_embedded_in_prose_round_trips(value, before, after):
    assert extract_json(before + orjson.dumps(value).decode() + after) == value


# ---------------------------------------------------------------- parse_output_row


@FORMATS
def test_a_good_answer_succeeds_with_its_usage(row):
    outcome = parse_output_row(row("k1", response(orjson.dumps(INVOICE).decode())), SCHEMA)
    assert outcome == RowOutcome(
        key="k1",
        status="succeeded",
        data=INVOICE,
        error=None,
        finish_reason="STOP",
        input_tokens=300,
        output_tokens=20,
        model_version="gemini-2.5-flash",
        raw_text=None,
    )


@pytest.mark.parametrize(
    ("row", "error"),
    [
        (
            {"key": "k1", "error": {"code": 4, "message": "Deadline exceeded.", "status": "DEADLINE_EXCEEDED"}},
            "row error 4 DEADLINE_EXCEEDED: Deadline exceeded.",
        ),
        (
            {
                "key": "k1",
                "request": REQUEST,
                "status": "DEADLINE_EXCEEDED: Deadline exceeded.",
                "processed_time": "2026-03-01T10:00Z",
            },
            "row error DEADLINE_EXCEEDED: Deadline exceeded.",
        ),
        ({"key": "k1", "status": ""}, "row has neither a response nor an error"),
    ],
    ids=["developer", "vertex", "neither"],
)
def test_a_row_error_fails_the_row(row, error):
    assert parse_output_row(row, SCHEMA) == missing_outcome("k1", error)


@FORMATS
@pytest.mark.parametrize(
    ("text", "finish", "error"),
    [
        ('{"invoice_number": "INV-42", "to', "MAX_TOKENS", "finish reason MAX_TOKENS: answer truncated"),
        ('{"invoice_number": "INV-42", "total": 1}', "MAX_TOKENS", "finish reason MAX_TOKENS: answer truncated"),
        (
            None,
            "MAX_TOKENS",
            "finish reason MAX_TOKENS: output token limit reached before any answer (spent on thinking?)",
        ),
        (None, "SAFETY", "finish reason SAFETY: answer blocked by the safety filters"),
        (None, "RECITATION", "finish reason RECITATION: answer blocked as recitation"),
        ('{"a": 1}', "OTHER", "finish reason OTHER: no usable answer"),
    ],
)
def test_a_finish_reason_other_than_stop_fails_the_row_and_keeps_the_text(row, text, finish, error):
    outcome = parse_output_row(row("k1", response(text, finish=finish, thoughts=500)), None)
    assert (outcome.status, outcome.data, outcome.error) == ("failed", None, error)
    assert (outcome.finish_reason, outcome.raw_text) == (finish, text)
    assert (outcome.input_tokens, outcome.output_tokens) == (300, 520), "failed rows still cost tokens"


@FORMATS
def test_a_blocked_prompt_has_no_candidates(row):
    answer = {"promptFeedback": {"blockReason": "PROHIBITED_CONTENT"}, "usageMetadata": {"promptTokenCount": 300}}
    outcome = parse_output_row(row("k1", answer), SCHEMA)
    assert (outcome.status, outcome.error, outcome.input_tokens, outcome.output_tokens) == (
        "failed",
        "prompt blocked: PROHIBITED_CONTENT",
        300,
        0,
    )


@FORMATS
def test_thought_parts_are_not_the_answer_and_thinking_tokens_are_output(row):
    parts = [
        {"text": "The total {maybe} is...", "thought": True},
        {"text": '{"invoice_number": "INV-42",'},
        {"text": ' "total": 1234.5}'},
    ]
    outcome = parse_output_row(row("k1", response(parts=parts, thoughts=150)), SCHEMA)
    assert (outcome.status, outcome.data) == ("succeeded", INVOICE)
    assert (outcome.input_tokens, outcome.output_tokens) == (300, 170)


@FORMATS
@pytest.mark.parametrize(
    ("data", "error"),
    [
        ({"invoice_number": "INV-42", "total": "x"}, "$.total: 'x' is not of type 'number'"),
        (
            {"invoice_number": "INV-42", "total": 1, "items": [{"sku": "a"}, {"qty": 2}]},
            "$.items[1]: 'sku' is a required property",
        ),
        ([INVOICE], "$: [{'invoice_number': 'INV-42', 'total': 1234.5}] is not of type 'object'"),
    ],
)
def test_an_answer_that_breaks_the_schema_fails_with_the_json_path(row, data, error):
    text = orjson.dumps(data).decode()
    outcome = parse_output_row(row("k1", response(text)), SCHEMA)
    assert (outcome.status, outcome.data, outcome.raw_text) == ("failed", None, text)
    assert outcome.error == f"answer does not match the response schema: {error}"


def test_without_a_schema_any_object_or_array_is_data():
    assert parse_output_row(developer_row("k", response("[1, 2]")), None).data == [1, 2]
    assert parse_output_row(developer_row("k", response('{"free": "form"}')), None).data == {"free": "form"}
    scalar = parse_output_row(developer_row("k", response("42")), None)
    assert scalar.error == "answer is not JSON: a bare number, not a JSON object or array"


def test_an_unparseable_answer_fails_with_the_raw_text_kept_but_bounded():
    text = "I could not find an invoice in this document. " * 100
    outcome = parse_output_row(developer_row("k", response(text)), SCHEMA)
    assert (outcome.status, outcome.error) == ("failed", "answer is not JSON: no JSON object or array found")
    assert outcome.raw_text == text[:2000]


def test_finish_reason_may_be_absent_but_an_answer_may_not():
    assert parse_output_row(developer_row("k", response('{"a": 1}', finish=None)), None).status == "succeeded"
    outcome = parse_output_row(developer_row("k", response(None, finish=None)), None)
    assert (outcome.status, outcome.error, outcome.raw_text) == ("failed", "answer is not JSON: empty answer", None)


@FORMATS
@pytest.mark.parametrize(
    ("fault", "status", "error"),
    [
        ({}, "succeeded", None),
        ({"fenced_rate": 1.0}, "succeeded", None),
        ({"prose_rate": 1.0}, "succeeded", None),
        ({"truncated_rate": 1.0}, "failed", "finish reason MAX_TOKENS: answer truncated"),
        ({"safety_rate": 1.0}, "failed", "finish reason SAFETY: answer blocked by the safety filters"),
    ],
)
def test_the_emulators_answers_parse(row, fault, status, error):
    """The responder's real output, with the answer faults it injects."""
    spec = RequestSpec(
        model="gemini-2.5-flash", prompt="Extract the invoice number and total.", response_schema=INVOICE_SCHEMA
    )
    request = build_row("k1", spec, text="Invoice number: INV-42\nTotal: 1,234.50\n")
    answer = responder.answer(request["request"], "k1", "gemini-2.5-flash", None, Faults(**fault))
    outcome = parse_output_row(row("k1", answer), INVOICE_SCHEMA)
    assert (outcome.status, outcome.error) == (status, error)
    assert outcome.data == (INVOICE if status == "succeeded" else None)
    assert outcome.input_tokens > 0 and outcome.model_version == "gemini-2.5-flash"


def test_outcomes_round_trip_through_json_and_tolerate_extra_fields():
    outcome = parse_output_row(developer_row("k1", response('{"a": [1, {"b": null}]}', thoughts=7)), None)
    record = orjson.loads(records.encode(outcome))
    assert records.convert(record, RowOutcome) == outcome
    assert records.convert(record | {"finished_at": "2026-03-01T10:00:00Z"}, RowOutcome) == outcome
    with pytest.raises(ValueError, match="outcome record: Object missing required field `data`"):
        records.convert({k: v for k, v in record.items() if k not in ("data", "error")}, RowOutcome)


# ---------------------------------------------------------------- read_output


def test_read_output_joins_by_key_and_counts_what_it_skips(caplog):
    rows = lines(
        vertex_row("k2", response('{"n": 2}')),
        b"this is not json {\n",
        b"\n",
        developer_row("k1", response('{"n": 1}')),
        developer_row("k1", response('{"n": "the later copy"}')),  # duplicate: the first row wins
        b"[1, 2]\n",  # JSON, but not a row
        {"response": response('{"n": 0}')},  # no key: cannot be joined
        developer_row("zz", response('{"n": 9}')),  # a key this job was not sent
        {"key": "k3", "error": {"code": 9, "message": "Failed precondition.", "status": "FAILED_PRECONDITION"}},
    )
    outcomes = []
    with caplog.at_level(logging.WARNING, logger="gemini_batch.core.results"):
        reading = read_output(rows, {"k1", "k2", "k3", "k4"}, None, outcomes.append)

    assert {o.key: o.data for o in outcomes} == {"k2": {"n": 2}, "k1": {"n": 1}, "k3": None}
    assert [o.status for o in outcomes] == ["succeeded", "succeeded", "failed"], "in output order"
    assert (reading.outcomes, reading.succeeded, reading.failed) == (3, 2, 1)
    assert (reading.unparseable_lines, reading.unknown_keys, reading.duplicate_keys) == (2, 2, 1)
    warnings = "\n".join(r.getMessage() for r in caplog.records)
    assert "line 2 is not a JSON object" in warnings and "key None is not one this job was sent" in warnings
    assert "key k1 was already read" in warnings


def test_read_output_streams_one_row_at_a_time():
    delivered = []

    def output():
        for n in range(3):
            yield orjson.dumps(developer_row(f"k{n}", response(f'{{"n": {n}}}')))
            assert len(delivered) == n + 1, "each outcome reaches the sink before the next line is read"

    reading = read_output(output(), {"k0", "k1", "k2"}, None, delivered.append)
    assert reading.outcomes == 3 and [o.data for o in delivered] == [{"n": 0}, {"n": 1}, {"n": 2}]


def test_a_corrupt_output_file_does_not_flood_the_log(caplog):
    with caplog.at_level(logging.WARNING, logger="gemini_batch.core.results"):
        reading = read_output([b"garbage\n"] * 500, {"k1"}, None, lambda outcome: None)
    assert reading.unparseable_lines == 500
    assert len(caplog.records) == WARNINGS_PER_KIND


def test_read_output_validates_answers_and_rejects_a_broken_schema_before_reading():
    outcomes = []
    output = lines(developer_row("k1", response('{"invoice_number": 1, "total": 2}')))
    reading = read_output(output, {"k1"}, SCHEMA, outcomes.append)
    assert reading.failed == 1
    assert outcomes[0].error == "answer does not match the response schema: $.invoice_number: 1 is not of type 'string'"
    with pytest.raises(SchemaError):
        read_output(iter(()), {"k1"}, {"type": "STRING"}, outcomes.append)


def _read_both_ways(output: list[bytes]) -> tuple:
    """``read_output`` of ``output`` as it reads it, then with every row parsed whole (as it read every row before
    rows were decoded into the fields they use): outcomes and counts of each."""

    def read() -> tuple:
        outcomes: list[RowOutcome] = []
        reading = read_output(output, ["k1", "k2"], INVOICE_SCHEMA, outcomes.append)
        return outcomes, reading

    typed = read()
    with mock.patch.object(results, "_decode_row", side_effect=ValueError):
        whole = read()
    return typed, whole


_ODD = (
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)  # past 64 bits orjson reads a float
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=4)
    | st.sampled_from([[], {}, [1], {"a": 1}])
)
_HASHABLE = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=4)
_TEXTS = st.sampled_from(['{"invoice_number": "A", "total": 1}', '{"total": "x"}', "```json\n[1]\n```", "{", "42", ""])
_PART = st.fixed_dictionaries({}, optional={"text": _TEXTS | _ODD, "thought": _ODD})
_CANDIDATE = st.fixed_dictionaries(
    {},
    optional={
        "content": st.fixed_dictionaries({}, optional={"parts": st.lists(_PART | _ODD, max_size=3) | _ODD}) | _ODD,
        "finishReason": st.sampled_from(["STOP", "MAX_TOKENS", "SAFETY", "OTHER"]) | _HASHABLE,
        "index": _ODD,
    },
)
_COUNT = st.integers(-(2**70), 2**70) | _ODD
_RESPONSE = st.fixed_dictionaries(
    {},
    optional={
        "candidates": st.lists(_CANDIDATE | _ODD, max_size=2) | _ODD,
        "usageMetadata": st.fixed_dictionaries(
            {}, optional={"promptTokenCount": _COUNT, "candidatesTokenCount": _COUNT, "thoughtsTokenCount": _COUNT}
        )
        | _ODD,
        "modelVersion": st.just("gemini-2.5-flash") | _ODD,
        "promptFeedback": st.fixed_dictionaries({}, optional={"blockReason": _HASHABLE | _ODD}) | _ODD,
        "responseId": _ODD,
    },
)
_ROW = st.fixed_dictionaries(
    {},
    optional={
        "key": st.sampled_from(["k1", "k2", "k3"]) | _ODD,
        "error": st.sampled_from([{"code": 13, "message": "Internal.", "status": "INTERNAL"}]) | _ODD,
        "status": st.sampled_from(["", "INTERNAL: failed"]) | _ODD,
        "response": _RESPONSE | _ODD,
        "request": _ODD,
    },
)


_TYPED_PART = st.fixed_dictionaries({}, optional={"text": _TEXTS | st.none(), "thought": st.booleans() | st.none()})
_TYPED_CANDIDATE = st.fixed_dictionaries(
    {},
    optional={
        "content": st.fixed_dictionaries({}, optional={"parts": st.lists(_TYPED_PART, max_size=3) | st.none()}),
        "finishReason": st.sampled_from(["STOP", "MAX_TOKENS", "SAFETY", "OTHER"]) | st.none(),
    },
)
_TYPED_COUNT = st.integers(-(2**63), 2**63 - 1) | st.none()
_TYPED_ROW = st.fixed_dictionaries(
    {"key": st.sampled_from(["k1", "k2", "k3"])},
    optional={
        "status": st.sampled_from(["", "INTERNAL: failed"]) | st.none(),
        "response": st.fixed_dictionaries(
            {},
            optional={
                "candidates": st.lists(_TYPED_CANDIDATE, max_size=2) | st.none(),
                "usageMetadata": st.fixed_dictionaries(
                    {},
                    optional={
                        "promptTokenCount": _TYPED_COUNT,
                        "candidatesTokenCount": _TYPED_COUNT,
                        "thoughtsTokenCount": _TYPED_COUNT,
                    },
                ),
                "modelVersion": st.just("gemini-2.5-flash") | st.none(),
                "promptFeedback": st.fixed_dictionaries({}, optional={"blockReason": st.just("SAFETY") | st.none()}),
            },
        )
        | st.none(),
    },
)


@given(st.lists(_TYPED_ROW | _ROW | _ODD, max_size=4))
def test_rows_of_any_shape_read_as_they_read_parsed_whole(rows):
    """Rows are decoded into the fields they use, of the types the service writes; any other row (a field of another
    type, a row error, not an object) is parsed whole. Either way, each row gets the outcome and counts it got when
    every row was parsed whole."""
    (typed, typed_reading), (whole, whole_reading) = _read_both_ways([json.dumps(row).encode() for row in rows])
    assert typed == whole
    assert typed_reading == whole_reading


@pytest.mark.parametrize(
    "line",
    [
        b'{"key": "k1", "responseId": "\xff\xfe", "response": {"candidates": []}}',  # not UTF-8 where unread
        b'{"key": "k1", "response": {"candidates": [], "usageMetadata": {"promptTokenCount": 1.0}}}',
        b'{"key": "k1", "response": {"usageMetadata": {"promptTokenCount": 18446744073709551615}}}',
        b'{"key": "k1", "response": {"modelVersion": 5}}',
        b'{"key": "k1", "error": {}, "status": "INTERNAL: failed"}',
        b'{"key": "k1", "response": {"candidates": [{"content": {"parts": [{"text": "{}", "thought": 1}]}}]}}',
        b'["k1"]',
        b'{"key": "k1", "response": {"candidates": [}}',
    ],
)
def test_rows_the_typed_decoding_refuses_read_as_before(line):
    with mock.patch.object(results, "_parse_typed_row", side_effect=AssertionError("read as a _Row")):
        read_output([line], ["k1"], None, lambda outcome: None)
    (typed, typed_reading), (whole, whole_reading) = _read_both_ways([line, line])
    assert (typed, typed_reading) == (whole, whole_reading)


@pytest.mark.parametrize(
    "row",
    [
        vertex_row("k1", response('{"invoice_number": "A", "total": 1}', thoughts=7)),
        developer_row("k1", response(parts=[{"text": '{"a": 1}', "thought": True}])),
        developer_row(
            "k1", response(parts=[{"text": "{", "thought": False}, {"text": "}"}, {"text": "x", "thought": True}])
        ),
        developer_row("k1", response(parts=[{"text": None}, {"text": "[1]"}])),
        developer_row("k1", response('{"total": 1}', finish=None)),
        developer_row("k1", response("", finish="MAX_TOKENS")),
        developer_row("k1", response("```json\n[1]\n```", finish="SAFETY")),
        developer_row("k1", response('{"invoice_number": 1, "total": 2}')),
        developer_row("k1", {"candidates": [], "promptFeedback": {"blockReason": "SAFETY"}}),
        developer_row("k1", {"candidates": None, "usageMetadata": {"promptTokenCount": 4}}),
        developer_row("k1", {"candidates": [{"content": None}]}),
        developer_row("k1", None),
        {"key": "k1", "status": "INTERNAL: failed", "response": None},
        {"key": "k3", "response": response("{}")},
        {"response": response("{}")},
        b'{"key": "k1", "key": "k2", "response": {"candidates": []}}',  # the last of a repeated name, as orjson
    ],
)
def test_rows_the_typed_decoding_takes_read_as_before(row):
    output = lines(row, row)
    with mock.patch.object(results, "_parse_row", side_effect=AssertionError("parsed whole")):
        read_output(output, ["k1", "k2"], INVOICE_SCHEMA, lambda outcome: None)
    (typed, typed_reading), (whole, whole_reading) = _read_both_ways(output)
    assert (typed, typed_reading) == (whole, whole_reading)


# ---------------------------------------------------------------- document_record


def planned(path, *parts, rejected=None) -> PlannedDocument:
    """parts: (key, pages) pairs, or (key, pages, reused)."""
    return PlannedDocument.planned(
        path,
        f"file:///src/{path}",
        1000,
        "application/pdf",
        "sha",
        120 if len(parts) > 1 else 1,
        tuple(PlannedPart(part[0], part[1], 100, part[2] if len(part) > 2 else False) for part in parts),
        rejected,
    )


def succeeded(key, data, tokens=(300, 20)) -> RowOutcome:
    return RowOutcome(key, "succeeded", data, None, "STOP", tokens[0], tokens[1], "gemini-2.5-flash", None)


def failed(key, error, tokens=(300, 50)) -> RowOutcome:
    return RowOutcome(key, "failed", None, error, "MAX_TOKENS", tokens[0], tokens[1], "gemini-2.5-flash", '{"a')


def record_json(doc, outcomes, reused) -> dict:
    """The results.jsonl line of a document, as written; the typed record reads it back unchanged."""
    record = document_record(doc, outcomes, reused)
    assert records.decode(records.encode(record), DocumentRecord) == record
    return orjson.loads(records.encode(record))


def test_a_single_part_document_record_has_exactly_the_contract_fields():
    record = record_json(planned("a.pdf", ("k1", None)), {"k1": succeeded("k1", INVOICE)}, {})
    assert record == {
        "document": "a.pdf",
        "status": "succeeded",
        "data": INVOICE,
        "error": None,
        "parts": [
            {"key": "k1", "pages": None, "status": "succeeded", "finish_reason": "STOP", "error": None, "reused": False}
        ],
        "usage": {"input_tokens": 300, "output_tokens": 20},
        "reused": False,
    }


def test_a_split_pdf_merges_its_parts_in_page_order():
    doc = planned("long.pdf", ("p1", (1, 50)), ("p2", (51, 100)), ("p3", (101, 120)))
    outcomes = {
        "p1": succeeded(
            "p1",
            {
                "invoice_number": "INV-1",
                "total": None,
                "items": [{"sku": "a"}],
                "vendor": {"name": "ACME", "vat": None},
            },
        ),
        "p2": succeeded(
            "p2", {"invoice_number": "INV-9", "total": 10, "items": [{"sku": "b"}], "vendor": {"vat": "DE1"}}
        ),
        "p3": succeeded("p3", {"items": [{"sku": "c"}], "notes": "last page"}),
    }
    record = record_json(doc, outcomes, {})
    assert record["status"] == "succeeded" and record["error"] is None
    assert record["data"] == {
        "invoice_number": "INV-1",
        "total": 10,
        "items": [{"sku": "a"}, {"sku": "b"}, {"sku": "c"}],
        "vendor": {"name": "ACME", "vat": "DE1"},
        "notes": "last page",
    }
    assert [p["pages"] for p in record["parts"]] == [[1, 50], [51, 100], [101, 120]]
    assert record["usage"] == {"input_tokens": 900, "output_tokens": 60}
    assert outcomes["p1"].data["items"] == [{"sku": "a"}], "merging leaves the outcomes alone"


def test_parts_that_are_not_all_objects_give_the_list_of_their_data():
    doc = planned("long.pdf", ("p1", (1, 50)), ("p2", (51, 100)), ("p3", (101, 120)))
    datas = {"p1": [{"row": 1}], "p2": [{"row": 2}], "p3": {"row": 3}}
    record = record_json(doc, {key: succeeded(key, data) for key, data in datas.items()}, {})
    assert record["data"] == [[{"row": 1}], [{"row": 2}], {"row": 3}]


def test_merge_part_data_keeps_the_first_non_null_value_even_across_types():
    assert merge_part_data([{"a": None, "b": "x"}, {"a": [1], "b": ["y"]}, {"a": [2], "b": None}]) == {
        "a": [1, 2],
        "b": "x",
    }


def test_one_failed_part_fails_the_document_and_names_its_pages():
    doc = planned("long.pdf", ("p1", (1, 50)), ("p2", (51, 100)), ("p3", (101, 120)))
    outcomes = {
        "p1": succeeded("p1", {"a": 1}),
        "p2": failed("p2", "finish reason MAX_TOKENS: answer truncated"),
        "p3": missing_outcome("p3", "no answer: job EXPIRED before this row ran"),
    }
    record = record_json(doc, outcomes, {})
    assert (record["status"], record["data"]) == ("failed", None)
    assert record["error"] == (
        "pages 51-100: finish reason MAX_TOKENS: answer truncated; "
        "pages 101-120: no answer: job EXPIRED before this row ran"
    )
    assert [p["status"] for p in record["parts"]] == ["succeeded", "failed", "failed"]
    assert record["parts"][1]["finish_reason"] == "MAX_TOKENS"
    assert record["usage"] == {"input_tokens": 600, "output_tokens": 70}, "a failed answer still cost tokens"


def test_an_unsplit_document_without_an_outcome_fails_without_a_page_prefix():
    record = record_json(planned("a.pdf", ("k1", None)), {}, {})
    assert (record["status"], record["error"], record["data"]) == ("failed", "no answer for this part", None)
    assert record["parts"][0]["status"] == "failed"


def test_reused_parts_count_as_succeeded_and_cost_nothing_this_run():
    stored = {
        key: records.to_builtins(succeeded(key, {"page": n})) | {"finished_at": "2026-02-01T00:00:00Z"}
        for n, key in enumerate(["p1", "p2"], 1)
    }
    doc = planned("long.pdf", ("p1", (1, 50), True), ("p2", (51, 100), True))
    record = record_json(doc, {}, stored)
    assert (record["status"], record["reused"], record["data"]) == ("succeeded", True, {"page": 1})
    assert [p["reused"] for p in record["parts"]] == [True, True]
    assert record["usage"] == {"input_tokens": 0, "output_tokens": 0}

    doc = planned("long.pdf", ("p1", (1, 50), True), ("p3", (51, 100)))
    partly = record_json(doc, {"p3": succeeded("p3", {"page": 3})}, stored)
    assert (partly["status"], partly["reused"], partly["data"]) == ("succeeded", False, {"page": 1})
    assert partly["usage"] == {"input_tokens": 300, "output_tokens": 20}


def test_a_rejected_document_keeps_its_reason():
    record = record_json(planned("broken.pdf", rejected="corrupt PDF: no pages"), {}, {})
    assert record == {
        "document": "broken.pdf",
        "status": "rejected",
        "data": None,
        "error": "corrupt PDF: no pages",
        "parts": [],
        "usage": {"input_tokens": 0, "output_tokens": 0},
        "reused": False,
    }


def test_a_document_with_no_parts_is_never_an_empty_success():
    record = record_json(planned("odd.pdf"), {}, {})
    assert (record["status"], record["reused"], record["data"]) == ("failed", False, None)


# ---------------------------------------------------------------- RunTotals


def test_run_totals_give_the_summary_contract():
    totals = RunTotals()
    a = document_record(planned("a.pdf", ("k1", None)), {"k1": succeeded("k1", {"n": 1})}, {})
    copy_of_a = document_record(planned("copy-of-a.pdf", ("k1", None)), {"k1": succeeded("k1", {"n": 1})}, {})
    failed_doc = document_record(planned("b.pdf", ("k2", None)), {"k2": failed("k2", "truncated")}, {})
    reused = document_record(
        planned("c.pdf", ("k3", None, True)), {}, {"k3": records.to_builtins(succeeded("k3", {"n": 3}))}
    )
    rejected = document_record(planned("broken.pdf", rejected="corrupt"), {}, {})
    for record in (a, copy_of_a, failed_doc, reused, rejected):
        totals.add(record)

    summary = records.to_builtins(
        totals.summary(
            requests=2, jobs=1, retry_rounds=1, input_tokens=600, output_tokens=70, estimated_cost_usd=0.0123
        )
    )
    assert summary == {
        "documents": 5,
        "succeeded": 3,
        "failed": 1,
        "rejected": 1,
        "reused": 1,
        "requests": 2,
        "jobs": 1,
        "retry_rounds": 1,
        "input_tokens": 600,
        "output_tokens": 70,
        "estimated_cost_usd": 0.0123,
    }
    assert summary["documents"] == summary["succeeded"] + summary["failed"] + summary["rejected"]
    with pytest.raises(ValueError, match=r"results.jsonl record: Invalid enum value 'pending' - at `\$.status`"):
        records.convert(records.to_builtins(a) | {"status": "pending"}, DocumentRecord)

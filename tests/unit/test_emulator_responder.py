"""The deterministic stand-in for the model, tested as a pure module."""

from __future__ import annotations

import base64
import json

import jsonschema
import pytest
from fpdf import FPDF

from gemini_emulator import discovery
from gemini_emulator.config import Faults
from gemini_emulator.responder import RowFailure, SchemaFiller, answer, find_dates

TEXT = """ACME Corp Invoice
Invoice Number: INV-2024-0042
Issued: March 5, 2024
Due Date: 04/05/2024
Customer Email: billing@example.org
Currency: EUR
Total: 1,234.56
Paid: yes
- Widget A
- Widget B
- Service fee
"""


def no_files(uri):
    raise RowFailure(7, f"no file {uri}")


def pdf_bytes(lines: list[str], pages: int = 1, password: str | None = None) -> bytes:
    pdf = FPDF()
    for page in range(pages):
        pdf.add_page()
        pdf.set_font("Helvetica", size=11)
        for line in lines if page == 0 else [f"page {page + 1}"]:
            pdf.cell(0, 8, line)
            pdf.ln()
    if password:
        pdf.set_encryption(owner_password=password, user_password=password)
    return bytes(pdf.output())


def ask(parts: list[dict], faults: Faults | None = None, key: str = "k", **config) -> dict:
    request = {
        "contents": [{"role": "user", "parts": [{"text": "Extract the fields."}, *parts]}],
        "generationConfig": config,
    }
    return answer(request, key, "gemini-2.5-flash", no_files, faults or Faults())


def text_of(response: dict) -> str:
    return response["candidates"][0]["content"]["parts"][0]["text"]


def test_finds_dates_in_common_formats():
    assert find_dates("on 2024-1-9, then 5 March 2024, March 6, 2024 and 12/31/2023") == [
        "2024-01-09",
        "2024-03-05",
        "2024-03-06",
        "2023-12-31",
    ]


def test_json_schema_is_filled_from_the_text_and_validates():
    schema = {
        "type": "object",
        "properties": {
            "invoice_number": {"type": "string"},
            "issued": {"type": "string", "format": "date"},
            "due_date": {"type": "string"},
            "customer_email": {"type": "string", "format": "email"},
            "currency": {"type": "string", "enum": ["USD", "EUR", "GBP"]},
            "total": {"type": "number", "minimum": 0},
            "paid": {"type": "boolean"},
            "items": {"type": "array", "items": {"type": "string"}, "maxItems": 2},
            "vendor": {"$ref": "#/$defs/party"},
            "notes": {"type": ["string", "null"]},
        },
        "required": ["invoice_number", "total"],
        "$defs": {"party": {"type": "object", "properties": {"name": {"type": "string"}}}},
    }
    value = SchemaFiller(TEXT, schema).fill()
    jsonschema.validate(value, schema)
    assert value["invoice_number"] == "INV-2024-0042"
    assert value["issued"] == "2024-03-05"
    assert value["due_date"] == "2024-04-05"
    assert value["customer_email"] == "billing@example.org"
    assert value["currency"] == "EUR"
    assert value["total"] == 1234.56
    assert value["paid"] is True
    assert value["items"] == ["Widget A", "Widget B"]
    assert value["vendor"] == {"name": "ACME Corp Invoice"}


def test_openapi_style_response_schema_with_nested_arrays():
    schema = {
        "type": "OBJECT",
        "properties": {
            "lines": {
                "type": "ARRAY",
                "minItems": 2,
                "items": {"type": "OBJECT", "properties": {"total": {"type": "NUMBER"}, "count": {"type": "INTEGER"}}},
            },
            "status": {"type": "STRING", "enum": ["open", "closed"], "nullable": True},
        },
        "propertyOrdering": ["status", "lines"],
    }
    value = SchemaFiller(TEXT, schema).fill()
    assert list(value) == ["status", "lines"]
    assert value["status"] == "open"  # no enum value occurs in the text: the first one
    assert len(value["lines"]) == 2 and value["lines"][0] == {"total": 1234.56, "count": 2024}


def test_pdf_inline_data_is_read_and_billed_per_page():
    data = base64.b64encode(pdf_bytes(["Invoice Number: PDF-7", "Total: 12.50"], pages=4)).decode()
    schema = {"type": "object", "properties": {"invoice_number": {"type": "string"}, "total": {"type": "number"}}}
    response = ask(
        [{"inlineData": {"mimeType": "application/pdf", "data": data}}],
        responseMimeType="application/json",
        responseJsonSchema=schema,
    )
    assert json.loads(text_of(response)) == {"invoice_number": "PDF-7", "total": 12.5}
    details = {d["modality"]: d["tokenCount"] for d in response["usageMetadata"]["promptTokensDetails"]}
    assert details["DOCUMENT"] == 4 * 258


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        (b"%PDF-1.7\nthis is not really a pdf", "Unable to process input PDF"),
        (pdf_bytes(["secret"], password="pw"), "encrypted"),
    ],
    ids=["not-a-pdf", "encrypted"],  # an encrypted PDF's bytes differ in each worker
)
def test_unreadable_pdfs_fail_the_row(data, fragment):
    with pytest.raises(RowFailure) as exc:
        ask([{"inlineData": {"mimeType": "application/pdf", "data": base64.b64encode(data).decode()}}])
    assert fragment in exc.value.status["message"]


def test_same_request_same_answer_and_free_json_without_schema():
    first = ask([{"text": TEXT}], responseMimeType="application/json")
    assert first == ask([{"text": TEXT}], responseMimeType="application/json")
    summary = json.loads(text_of(first))
    assert summary["title"] == "ACME Corp Invoice" and summary["word_count"] == len(TEXT.split())


def parse(request: dict) -> tuple[dict, list[str]]:
    return discovery.developer().normalise(request, "GenerateContentRequest", "request")


def test_requests_are_read_as_the_proto3_json_mapping_allows():
    """Both name forms at every level, URL-safe or unpadded base64, integral floats and strings for integers,
    enum names in any case: one canonical form, which the responder reads."""
    data = b"\xff\xfe Invoice Number: B-7 ?>"
    request, problems = parse(
        {
            "contents": [
                {
                    "parts": [
                        {"text": "x"},
                        {
                            "inline_data": {
                                "mime_type": "text/plain",
                                "data": base64.urlsafe_b64encode(data).decode().rstrip("="),
                            }
                        },
                    ]
                }
            ],
            "system_instruction": {"parts": [{"text": "be brief"}]},
            "safety_settings": [{"category": "harm_category_hate_speech", "threshold": "block_none"}],
            "generation_config": {"top_k": 10.0, "max_output_tokens": "2000", "response_modalities": ["text"]},
        }
    )
    assert problems == []
    assert request["generationConfig"] == {"topK": 10, "maxOutputTokens": 2000, "responseModalities": ["TEXT"]}
    assert request["safetySettings"] == [{"category": "HARM_CATEGORY_HATE_SPEECH", "threshold": "BLOCK_NONE"}]
    assert request["contents"][0]["parts"][1]["inlineData"] == {
        "mimeType": "text/plain",
        "data": base64.b64encode(data).decode(),
    }
    assert "B-7" in text_of(answer(request, "k", "gemini-2.5-flash", no_files, Faults()))


def test_what_the_mapping_refuses_is_named_as_the_service_names_it():
    _, problems = parse({"contents": [{"parts": [{"text": "x"}]}], "thinking_config": {"thinking_budget": 0}})
    assert problems == [
        "Invalid JSON payload received. Unknown name \"thinking_config\" at 'request': Cannot find field."
    ]
    _, problems = parse(
        {
            "contents": [{"parts": [{"inlineData": {"data": "not base64!"}}]}],
            "generationConfig": {"topK": 10.5, "responseModalities": ["txt"], "temperature": True},
        }
    )
    assert problems == [
        "Invalid value at 'request.contents[0].parts[0].inline_data.data' (TYPE_BYTES), "
        'Base64 decoding failed for "not base64!"',
        "Invalid value at 'request.generation_config.top_k' (TYPE_INT32), 10.5",
        "Invalid value at 'request.generation_config.response_modalities[0]' (TYPE_ENUM), \"txt\"",
        "Invalid value at 'request.generation_config.temperature' (TYPE_FLOAT), true",
    ]
    _, problems = parse({"contents": [{"parts": [{"text": "x"}]}], "generationConfig": {}, "generation_config": {}})
    assert problems and "Duplicate field" in problems[0]
    with pytest.raises(RowFailure):
        answer({"contents": []}, "k", "gemini-2.5-flash", no_files, Faults())


def test_row_faults_are_seeded_by_key():
    faults = Faults(seed=7, fenced_rate=0.5)
    fenced = {
        k
        for k in map(str, range(200))
        if text_of(ask([{"text": TEXT}], faults, key=k, responseMimeType="application/json")).startswith("```json")
    }
    assert 60 < len(fenced) < 140
    again = {
        k
        for k in map(str, range(200))
        if text_of(ask([{"text": TEXT}], faults, key=k, responseMimeType="application/json")).startswith("```json")
    }
    assert fenced == again

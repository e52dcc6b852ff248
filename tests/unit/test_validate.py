"""The JSONL validator: every problem named by line, backend URI rules, limits,
flat memory on big files, gs:// input, and the command line."""

from __future__ import annotations

import tracemalloc

import orjson
import pytest

from gemini_batch.core.batch_requests import RequestSpec, build_row
from gemini_batch.core.validate import STORED_PROBLEMS, Problem, main, validate_jsonl
from gemini_emulator import responder
from gemini_emulator.config import Faults

SPEC = RequestSpec(
    model="gemini-2.5-flash-lite",
    prompt="Extract the title.",
    response_schema={"type": "object", "properties": {"title": {"type": "string"}}},
)
FILE_ROW = build_row("k-file", SPEC, file_uri="files/abc123", mime_type="application/pdf")
TEXT_ROW = build_row("k-text", SPEC, text="Title: A")


def write_jsonl(path, rows) -> str:
    path.write_bytes(b"".join(row if isinstance(row, bytes) else orjson.dumps(row) + b"\n" for row in rows))
    return str(path)


def with_request(key: str = "k", **changes) -> dict:
    """TEXT_ROW's request with top-level fields replaced (None removes one)."""
    request = {**TEXT_ROW["request"], **changes}
    return {"key": key, "request": {name: value for name, value in request.items() if value is not None}}


def with_part(part: dict, key: str = "k") -> dict:
    return with_request(key, contents=[{"role": "user", "parts": [{"text": "Extract."}, part]}])


def messages(report) -> list[tuple[int, str]]:
    return [(p.line, p.message) for p in report.problems]


@pytest.mark.parametrize(
    ("backend", "uri"),
    [
        ("developer", "files/abc123"),
        ("developer", "https://generativelanguage.googleapis.com/v1beta/files/abc123"),
        ("vertex", "gs://bucket/staging/doc.pdf"),
        (None, "files/abc123"),
        (None, "gs://bucket/doc.pdf"),
    ],
)
def test_rows_as_built_are_valid(tmp_path, backend, uri):
    rows = [build_row("a", SPEC, file_uri=uri, mime_type="application/pdf"), TEXT_ROW]
    report = validate_jsonl(write_jsonl(tmp_path / "ok.jsonl", rows), backend=backend)
    assert report.ok and report.problems == () and report.problem_count == 0
    assert (report.rows, report.bytes) == (2, (tmp_path / "ok.jsonl").stat().st_size)
    assert report.path == str(tmp_path / "ok.jsonl")


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        (b"{not json}\n", "not valid JSON"),
        (b"[1, 2]\n", "the row is a JSON array, expected an object with 'key' and 'request'"),
        (orjson.dumps({"request": TEXT_ROW["request"]}) + b"\n", "missing 'key'"),
        (
            orjson.dumps({"key": "", "request": TEXT_ROW["request"]}) + b"\n",
            "'key' must be a non-empty string, got \"\"",
        ),
        (orjson.dumps({"key": 7, "request": TEXT_ROW["request"]}) + b"\n", "'key' must be a non-empty string, got 7"),
        (orjson.dumps({"key": "k"}) + b"\n", "missing 'request'"),
        (
            orjson.dumps({"key": "k", "request": "hello"}) + b"\n",
            "'request' must be an object (a GenerateContentRequest), got a JSON string",
        ),
        (orjson.dumps(with_request(contents=[])) + b"\n", "request.contents must be a non-empty list"),
        (orjson.dumps(with_request(contents=None)) + b"\n", "request.contents must be a non-empty list"),
        (
            orjson.dumps(with_request(contents=[{"role": "user", "parts": []}])) + b"\n",
            "request.contents[0].parts must be a non-empty list",
        ),
        (
            orjson.dumps(with_request(contents=[{"role": "system", "parts": [{"text": "x"}]}])) + b"\n",
            "request.contents[0].role must be 'user' or 'model', got \"system\"",
        ),
        (
            orjson.dumps(with_request(contents=[{"role": ["user"], "parts": [{"text": "x"}]}])) + b"\n",
            "request.contents[0].role must be 'user' or 'model'",
        ),
        (
            orjson.dumps(with_part({})) + b"\n",
            "request.contents[0].parts[1] must hold exactly one of text, fileData, inlineData; it holds none",
        ),
        (
            orjson.dumps(with_part({"text": "a", "fileData": {"fileUri": "files/x", "mimeType": "application/pdf"}}))
            + b"\n",
            "request.contents[0].parts[1] must hold exactly one of text, fileData, inlineData; it holds text, fileData",
        ),
        (orjson.dumps(with_part({"text": 5})) + b"\n", "request.contents[0].parts[1].text must be a string"),
        (
            orjson.dumps(with_part({"file_data": {"fileUri": "files/x"}})) + b"\n",
            "request.contents[0].parts[1].fileData.mimeType is missing",
        ),
        (
            orjson.dumps(with_part({"fileData": {"fileUri": "files/x", "mimeType": "text/plain", "mime_type": "x"}}))
            + b"\n",
            "fileData.mime_type: given twice (also as 'mimeType')",
        ),
        (
            orjson.dumps(with_part({"fileData": {"fileUri": "files/x"}})) + b"\n",
            "request.contents[0].parts[1].fileData.mimeType is missing",
        ),
        (
            orjson.dumps(with_part({"fileData": {"fileUri": "files/x", "mimeType": "application/zip"}})) + b"\n",
            "fileData.mimeType 'application/zip' is not supported; use one of application/pdf, image/jpeg",
        ),
        (orjson.dumps(with_part({"fileData": {"mimeType": "application/pdf"}})) + b"\n", "fileData.fileUri is missing"),
        (
            orjson.dumps(with_part({"inlineData": {"mimeType": "image/png", "data": "not base64!"}})) + b"\n",
            "inlineData.data must be non-empty base64 (standard or URL-safe)",
        ),
        (
            orjson.dumps(with_request(generation_config={"response_mime_type": "application/json"})) + b"\n",
            "request.generation_config: given twice (also as 'generationConfig')",
        ),
        (
            orjson.dumps(with_request(response_mime_type="application/json")) + b"\n",
            "request.response_mime_type: generation options go under request.generationConfig as 'responseMimeType'",
        ),
        (
            orjson.dumps(with_request(thinking_config={"thinking_budget": 0})) + b"\n",
            "request.thinking_config: generation options go under request.generationConfig as 'thinkingConfig'",
        ),
        (
            orjson.dumps(with_request(temperature=0.2)) + b"\n",
            "request.temperature: generation options go under request.generationConfig as 'temperature'",
        ),
        (orjson.dumps(with_request(prompt="x")) + b"\n", "request.prompt: unknown field"),
        (
            orjson.dumps(with_request(generationConfig={"responseMimeType": "application/json", "response_schema": 1}))
            + b"\n",
            "request.generationConfig.responseSchema must be a JSON object",
        ),
        (
            orjson.dumps(
                with_request(
                    generationConfig={
                        "responseMimeType": "application/json",
                        "responseJsonSchema": '{"type": "object"}',
                    }
                )
            )
            + b"\n",
            "request.generationConfig.responseJsonSchema must be a JSON object: the schema itself, not text or a list",
        ),
        (
            orjson.dumps(
                with_request(generationConfig={"responseMimeType": "application/json", "responseSchema": ["object"]})
            )
            + b"\n",
            "request.generationConfig.responseSchema must be a JSON object",
        ),
        (
            orjson.dumps(with_request(generationConfig={"responseJsonSchema": {"type": "object"}})) + b"\n",
            "a response schema needs responseMimeType 'application/json'",
        ),
        (
            orjson.dumps(with_request(generationConfig={"maxOutputTokens": "many"})) + b"\n",
            "request.generationConfig.maxOutputTokens must be a positive integer",
        ),
        (
            orjson.dumps(
                with_request(generationConfig={"thinkingConfig": {"thinkingLevel": "low", "thinkingBudget": 0}})
            )
            + b"\n",
            "set thinkingLevel or thinkingBudget, not both",
        ),
        (
            orjson.dumps(
                with_request(generationConfig={"thinkingConfig": {"thinking_level": "low", "thinkingBudget": 0}})
            )
            + b"\n",
            "set thinkingLevel or thinkingBudget, not both",
        ),
    ],
)
def test_each_mistake_is_named_on_its_line(tmp_path, line, expected):
    report = validate_jsonl(write_jsonl(tmp_path / "bad.jsonl", [FILE_ROW, line, TEXT_ROW]))
    assert not report.ok
    assert report.rows == 3
    assert [p.line for p in report.problems] == [2] * len(report.problems)
    assert any(expected in p.message for p in report.problems), messages(report)


@pytest.mark.parametrize(
    "request_",
    [
        with_request(generation_config={"response_mime_type": "application/json"})["request"],  # given twice
        with_request(thinking_config={"thinking_budget": 0})["request"],
        with_request(contents=[])["request"],
    ],
)
def test_what_the_validator_flags_the_emulated_service_fails(tmp_path, request_):
    report = validate_jsonl(write_jsonl(tmp_path / "bad.jsonl", [{"key": "k", "request": request_}]))
    assert not report.ok
    with pytest.raises(responder.RowFailure):
        responder.answer(request_, "k", "gemini-2.5-flash", lambda uri: (tmp_path, "text/plain"), Faults())


@pytest.mark.parametrize(
    "request_",
    [
        with_request(generationConfig=None, generation_config={"response_mime_type": "application/json"})["request"],
        with_part({"file_data": {"file_uri": "files/x", "mime_type": "text/plain"}})["request"],
        with_part({"inline_data": {"mime_type": "text/plain", "data": "SW52b2ljZSBOdW1iZXI6IDE"}})["request"],
        with_request(generationConfig={"max_output_tokens": 100.0, "thinking_config": {"thinking_budget": "0"}})[
            "request"
        ],
    ],
)
def test_the_validator_reads_what_the_service_reads(tmp_path, request_):
    """The service reads the proto's snake_case names, unpadded or URL-safe base64 and integers as integral numbers
    or strings (the proto3 JSON mapping, as Google's own samples write rows): the validator passes such rows."""
    report = validate_jsonl(write_jsonl(tmp_path / "ok.jsonl", [{"key": "k", "request": request_}]))
    assert report.ok, report.problems
    document = tmp_path / "x.txt"
    document.write_text("Invoice Number: 1")
    assert responder.answer(request_, "k", "gemini-2.5-flash", lambda uri: (document, "text/plain"), Faults())
    document = tmp_path / "x.txt"
    document.write_text("Invoice Number: 1")
    assert responder.answer(request_, "k", "gemini-2.5-flash", lambda uri: (document, "text/plain"), Faults())


def test_problems_carry_the_row_key(tmp_path):
    report = validate_jsonl(write_jsonl(tmp_path / "bad.jsonl", [with_request("the-key", prompt="x")]))
    assert report.problems == (Problem(1, "request.prompt: unknown field", "the-key"),)


def test_blank_lines_are_errors_and_are_not_rows(tmp_path):
    report = validate_jsonl(write_jsonl(tmp_path / "blank.jsonl", [FILE_ROW, b"\n", b"   \n", TEXT_ROW]))
    assert report.rows == 2
    assert messages(report) == [
        (2, "blank line: every line must be one JSON row (remove empty lines)"),
        (3, "blank line: every line must be one JSON row (remove empty lines)"),
    ]


def test_a_last_line_without_newline_is_fine(tmp_path):
    path = tmp_path / "last.jsonl"
    path.write_bytes(orjson.dumps(FILE_ROW) + b"\n" + orjson.dumps(TEXT_ROW))
    assert validate_jsonl(str(path)).ok


def test_duplicate_keys_name_the_first_line(tmp_path):
    rows = [FILE_ROW, TEXT_ROW, {**TEXT_ROW, "key": "k-file"}, {**TEXT_ROW, "key": "k-file"}]
    report = validate_jsonl(write_jsonl(tmp_path / "dup.jsonl", rows))
    assert messages(report) == [
        (3, "duplicate key 'k-file' (first on line 1): keys must be unique in a file"),
        (4, "duplicate key 'k-file' (first on line 1): keys must be unique in a file"),
    ]


@pytest.mark.parametrize(
    ("backend", "uri", "expected"),
    [
        (
            "vertex",
            "https://storage.googleapis.com/bucket/doc.pdf",
            "Vertex AI reads documents from Cloud Storage only: upload it and use its gs:// URI, not https://",
        ),
        (
            "vertex",
            "files/abc123",
            "Vertex AI needs a gs://bucket/object URI (Files API URIs belong to the Developer API)",
        ),
        (
            "vertex",
            "https://generativelanguage.googleapis.com/v1beta/files/abc123",
            "Vertex AI needs a gs://bucket/object URI (Files API URIs belong to the Developer API)",
        ),
        (
            "developer",
            "gs://bucket/doc.pdf",
            "the Developer API cannot read gs:// URIs: upload the document with the Files API and use files/ID",
        ),
        (
            "developer",
            "https://example.com/doc.pdf",
            "the Developer API needs a Files API URI (files/ID or https://.../files/ID)",
        ),
        ("developer", "files/Not_An_Id", "the Developer API needs a Files API URI (files/ID or https://.../files/ID)"),
        (None, "/tmp/doc.pdf", "expected a Files API URI (files/ID, Developer API) or a gs:// URI (Vertex AI)"),
        (None, "gs://", "expected a Files API URI (files/ID, Developer API) or a gs:// URI (Vertex AI)"),
    ],
)
def test_document_uris_must_suit_the_backend(tmp_path, backend, uri, expected):
    row = build_row("k", SPEC, file_uri=uri, mime_type="application/pdf")
    report = validate_jsonl(write_jsonl(tmp_path / "uri.jsonl", [row]), backend=backend)
    assert messages(report) == [(1, f"request.contents[0].parts[1].fileData.fileUri {uri!r}: {expected}")]


def test_unknown_backend_is_refused(tmp_path):
    with pytest.raises(ValueError, match="backend must be one of developer, vertex or None, got 'gemini'"):
        validate_jsonl(write_jsonl(tmp_path / "x.jsonl", [TEXT_ROW]), backend="gemini")


def test_row_limit_is_reported_once_at_the_first_row_over(tmp_path):
    rows = [{**TEXT_ROW, "key": f"k{i}"} for i in range(5)]
    report = validate_jsonl(write_jsonl(tmp_path / "rows.jsonl", rows), max_rows=3)
    assert report.rows == 5
    assert messages(report) == [(4, "more than 3 rows: the limit per file is 3; split it")]
    assert validate_jsonl(str(tmp_path / "rows.jsonl"), max_rows=5).ok


def test_byte_limit_names_the_line_that_passes_it(tmp_path):
    rows = [{**TEXT_ROW, "key": f"k{i}"} for i in range(4)]
    path = write_jsonl(tmp_path / "bytes.jsonl", rows)
    line_bytes = len(orjson.dumps(rows[0]) + b"\n")
    report = validate_jsonl(path, max_bytes=2 * line_bytes)
    assert messages(report) == [
        (3, f"the file passes {2 * line_bytes} bytes at this line (the limit per file); split it")
    ]
    assert validate_jsonl(path, max_bytes=4 * line_bytes).ok


def test_a_report_keeps_the_first_problems_and_counts_them_all(tmp_path):
    report = validate_jsonl(write_jsonl(tmp_path / "many.jsonl", [b"x\n"] * (STORED_PROBLEMS + 250)))
    assert len(report.problems) == STORED_PROBLEMS
    assert report.problem_count == STORED_PROBLEMS + 250
    assert report.problems[-1].line == STORED_PROBLEMS


def test_memory_stays_flat_on_a_big_file(tmp_path):
    """A 24 MB file is checked with a few MB of memory: lines are streamed, only keys are kept."""
    path = tmp_path / "big.jsonl"
    text = "lorem ipsum " * 1000
    with path.open("wb") as fh:
        for i in range(2000):
            fh.write(orjson.dumps(build_row(f"key-{i:05d}", SPEC, text=text)) + b"\n")
    tracemalloc.start()
    try:
        report = validate_jsonl(str(path), backend="developer")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert report.ok and report.rows == 2000 and report.bytes > 24_000_000
    assert peak < 4 * 2**20


# ---------------------------------------------------------------- command line


def test_cli_exit_codes_and_output(tmp_path, capsys):
    good = write_jsonl(tmp_path / "good.jsonl", [FILE_ROW, TEXT_ROW])
    assert main([good, "--backend", "developer"]) == 0
    assert capsys.readouterr().out == f"{good}: valid (2 rows, {(tmp_path / 'good.jsonl').stat().st_size} bytes)\n"

    bad = write_jsonl(tmp_path / "bad.jsonl", [FILE_ROW, b"\n", FILE_ROW])
    assert main([bad, "--backend", "vertex"]) == 1
    assert capsys.readouterr().out.splitlines() == [
        f"{bad}:1: request.contents[0].parts[1].fileData.fileUri 'files/abc123': Vertex AI needs a "
        f"gs://bucket/object URI (Files API URIs belong to the Developer API)",
        f"{bad}:2: blank line: every line must be one JSON row (remove empty lines)",
        f"{bad}:3: duplicate key 'k-file' (first on line 1): keys must be unique in a file",
        f"{bad}:3: request.contents[0].parts[1].fileData.fileUri 'files/abc123': Vertex AI needs a "
        f"gs://bucket/object URI (Files API URIs belong to the Developer API)",
    ]


def test_cli_caps_the_problems_it_prints(tmp_path, capsys):
    bad = write_jsonl(tmp_path / "bad.jsonl", [b"x\n"] * 30)
    assert main([bad, "--show", "5"]) == 1
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 6 and out[4].startswith(f"{bad}:5: not valid JSON")
    assert out[5] == f"{bad}: ... and 25 more problems"


def test_cli_usage_errors_exit_2(tmp_path, capsys):
    good = write_jsonl(tmp_path / "good.jsonl", [TEXT_ROW])
    for args in ([good, "--backend", "gemini"], [good, "--max-rows", "many"], []):
        with pytest.raises(SystemExit) as exited:
            main(args)
        assert exited.value.code == 2
    assert main([str(tmp_path)]) == 2  # a folder, not a file
    assert f"{tmp_path}: cannot read:" in capsys.readouterr().err

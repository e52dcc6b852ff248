"""Request rows in REST form (checked by the emulator's responder and by a real
batch through the google-genai client), and shards that respect their limits
on local disk and on gs://."""

from __future__ import annotations

import base64
import itertools
import tempfile

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gemini_batch.core import records
from gemini_batch.core.batch_requests import (
    RequestSpec,
    ShardManifest,
    ShardWriter,
    build_row,
    generation_config,
    inline_budget,
)
from gemini_batch.core.locations import as_path
from gemini_emulator import responder
from gemini_emulator.config import Faults
from support.batch_requests import SCHEMA, write_invoice_pdf
from support.emulators import BATCH_MODELS


@pytest.fixture(scope="module")
def invoice_pdf(tmp_path_factory):
    return write_invoice_pdf(tmp_path_factory.mktemp("docs") / "invoice.pdf")


# ---------------------------------------------------------------- generation config


@pytest.mark.parametrize(
    ("model", "thinking"),
    [
        ("gemini-3-pro-preview", {"thinkingLevel": "low"}),
        ("gemini-3-flash-preview", {"thinkingLevel": "low"}),
        ("gemini-3.1-pro-preview", {"thinkingLevel": "low"}),
        ("gemini-3.1-flash-lite-preview", {"thinkingLevel": "low"}),
        ("models/gemini-2.5-pro", {"thinkingBudget": 128}),
        ("gemini-2.5-flash", {"thinkingBudget": 0}),
        ("publishers/google/models/gemini-2.5-flash-lite", {"thinkingBudget": 0}),
        ("gemini-pro-latest", {"thinkingBudget": 128}),
        ("gemini-flash-latest", {"thinkingBudget": 0}),
        ("gemini-flash-lite-latest", {"thinkingBudget": 0}),
        ("gemini-2.0-flash", None),
        ("gemini-2.0-flash-lite-001", None),
    ],
)
def test_low_thinking_takes_the_form_each_model_family_accepts(model, thinking):
    config = generation_config(RequestSpec(model=model, prompt="Extract."))
    assert config.get("thinkingConfig") == thinking


def test_model_default_thinking_sends_no_thinking_config():
    assert "thinkingConfig" not in generation_config(
        RequestSpec(model="gemini-3-pro-preview", prompt="p", thinking="model-default")
    )


@given(
    model=st.sampled_from(BATCH_MODELS),
    schema=st.none() | st.just(SCHEMA),
    thinking=st.sampled_from(["low", "model-default"]),
    max_output_tokens=st.none() | st.integers(1, 65536),
)
def test_generation_config_is_json_out_with_no_sampling_settings(model, schema, thinking, max_output_tokens):
    spec = RequestSpec(
        model=model, prompt="p", response_schema=schema, thinking=thinking, max_output_tokens=max_output_tokens
    )
    config = generation_config(spec)
    assert config["responseMimeType"] == "application/json"
    assert config.get("responseJsonSchema") == schema
    assert config.get("maxOutputTokens") == max_output_tokens
    assert not {"temperature", "topP", "topK"} & set(config)
    assert set(config) <= responder.GENERATION_CONFIG_FIELDS


def test_spec_key_options_cover_the_settings_that_change_the_answer():
    low = RequestSpec(model="m", prompt="p")
    assert low.key_options() != RequestSpec(model="m", prompt="p", thinking="model-default").key_options()
    assert low.key_options() != RequestSpec(model="m", prompt="p", max_output_tokens=100).key_options()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"prompt": "  "}, "prompt is empty"),
        ({"thinking": "high"}, "thinking must be one of low, model-default"),
        ({"max_output_tokens": 0}, "max_output_tokens must be positive"),
        ({"response_schema": '{"type": "object"}'}, "response_schema must be a JSON object"),
        ({"model": "models/"}, "names no model"),
    ],
)
def test_bad_spec_is_refused_with_the_cause(kwargs, message):
    with pytest.raises(ValueError, match=message):
        RequestSpec(**{"model": "gemini-2.5-flash", "prompt": "Extract.", **kwargs})


# ---------------------------------------------------------------- rows


def test_row_with_a_file_reference():
    spec = RequestSpec(model="gemini-2.5-flash", prompt="Extract.", response_schema=SCHEMA)
    assert build_row("k1", spec, file_uri="files/abc", mime_type="application/pdf") == {
        "key": "k1",
        "request": {
            "contents": [
                {
                    "role": "user",
                    "parts": [
                        {"text": "Extract."},
                        {"fileData": {"fileUri": "files/abc", "mimeType": "application/pdf"}},
                    ],
                }
            ],
            "generationConfig": {
                "responseMimeType": "application/json",
                "responseJsonSchema": SCHEMA,
                "thinkingConfig": {"thinkingBudget": 0},
            },
        },
    }


def test_row_with_inline_text():
    row = build_row("k2", RequestSpec(model="gemini-2.0-flash", prompt="Extract."), text="Invoice number: 7")
    assert row["request"]["contents"][0]["parts"] == [{"text": "Extract."}, {"text": "Invoice number: 7"}]


def test_row_with_inline_bytes_carries_them_in_base64():
    row = build_row(
        "k3",
        RequestSpec(model="gemini-2.5-flash", prompt="Extract."),
        data=b"%PDF-1.7 \x00\xff",
        mime_type="application/pdf",
    )
    assert row["request"]["contents"][0]["parts"][1] == {
        "inlineData": {"mimeType": "application/pdf", "data": base64.b64encode(b"%PDF-1.7 \x00\xff").decode()}
    }


@pytest.mark.parametrize("max_row_bytes", [10_000, 2**20 + 7])
def test_the_inline_budget_is_the_largest_part_whose_row_fits(max_row_bytes):
    spec = RequestSpec(model="gemini-2.5-flash", prompt="Extract " * 100, response_schema=SCHEMA)
    budget = inline_budget(spec, max_row_bytes)

    def row_bytes(size):
        return len(orjson.dumps(build_row("k" * 64, spec, data=b"x" * size, mime_type="application/pdf"))) + 1

    assert row_bytes(budget) <= max_row_bytes < row_bytes(budget + 3)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({}, "exactly one of file_uri, data or text"),
        ({"file_uri": "files/a", "mime_type": "application/pdf", "text": "t"}, "exactly one of file_uri, data or text"),
        ({"file_uri": "files/a"}, "needs a mime_type"),
        ({"data": b"x"}, "needs a mime_type"),
    ],
)
def test_row_needs_exactly_one_document(kwargs, message):
    with pytest.raises(ValueError, match=f"row k: .*{message}"):
        build_row("k", RequestSpec(model="gemini-2.5-flash", prompt="p"), **kwargs)


@pytest.mark.parametrize("model", BATCH_MODELS)
@pytest.mark.parametrize("document", ["pdf", "text"])
def test_every_known_model_gets_rows_the_responder_answers(model, document, invoice_pdf):
    """The emulator checks REST field names the way the service does, and fills the schema from the document."""
    spec = RequestSpec(model=model, prompt="Extract the invoice number and total.", response_schema=SCHEMA)
    if document == "pdf":
        row = build_row("k", spec, file_uri="files/invoice", mime_type="application/pdf")
    else:
        row = build_row("k", spec, text="Invoice number: INV-42\nTotal: 1,234.50\n")
    answer = responder.answer(row["request"], row["key"], model, lambda uri: (invoice_pdf, "application/pdf"), Faults())
    candidate = answer["candidates"][0]
    assert candidate["finishReason"] == "STOP"
    assert orjson.loads(candidate["content"]["parts"][0]["text"]) == {"invoice_number": "INV-42", "total": 1234.5}
    thinking = generation_config(spec).get("thinkingConfig")
    if thinking == {"thinkingBudget": 0}:
        assert "thoughtsTokenCount" not in answer["usageMetadata"]


# ---------------------------------------------------------------- shards


def make_row(index: int, padding: int) -> dict:
    return {"key": f"key-{index:04d}", "request": {"contents": [{"parts": [{"text": "x" * padding}]}]}}


def line_of(row: dict) -> bytes:
    return orjson.dumps(row) + b"\n"


def check_shards(folder, rows: list[dict], manifests: list[ShardManifest], max_rows: int, max_bytes: int) -> None:
    """Every row once, in order; each shard within its limits and filled before the next began; manifests true."""
    written = []
    for i, manifest in enumerate(manifests):
        assert manifest.shard_id == f"shard-{i:05d}"
        data = as_path(manifest.uri).read_bytes()
        lines = data.splitlines(keepends=True)
        assert 0 < manifest.rows == len(lines) <= max_rows
        assert manifest.bytes == len(data) == as_path(manifest.uri).stat().st_size <= max_bytes
        assert as_path(manifest.keys_uri).read_text().splitlines() == [orjson.loads(line)["key"] for line in lines]
        assert ShardManifest.load(manifest.manifest_uri) == manifest
        written.append(lines)
    assert [line for lines in written for line in lines] == [line_of(row) for row in rows]
    for shard, following in itertools.pairwise(written):
        assert len(shard) == max_rows or sum(map(len, shard)) + len(following[0]) > max_bytes
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        f"{m.shard_id}{suffix}" for m in manifests for suffix in (".jsonl", ".keys", ".manifest.json")
    )


@settings(max_examples=60, deadline=None)
@given(
    paddings=st.lists(st.integers(0, 300), max_size=40),
    max_rows=st.integers(1, 12),
    extra_bytes=st.integers(0, 1200),
)
def test_shards_never_pass_their_limits_and_keep_every_row_in_order(paddings, max_rows, extra_bytes):
    rows = [make_row(i, padding) for i, padding in enumerate(paddings)]
    max_bytes = max((len(line_of(row)) for row in rows), default=1) + extra_bytes
    with tempfile.TemporaryDirectory() as tmp:
        folder = as_path(tmp) / "shards"
        with ShardWriter(folder, max_rows=max_rows, max_bytes=max_bytes) as writer:
            for row in rows:
                writer.add(row)
        check_shards(folder, rows, writer.manifests, max_rows, max_bytes)


@pytest.mark.parametrize(("max_rows", "fits", "sizes"), [(10, "bytes", [3, 3, 1]), (3, "rows", [3, 3, 1])])
def test_shards_fill_exactly_to_a_limit(tmp_path, max_rows, fits, sizes):
    rows = [make_row(i, 20) for i in range(7)]
    line_bytes = len(line_of(rows[0]))
    max_bytes = 3 * line_bytes if fits == "bytes" else 10 * line_bytes
    with ShardWriter(as_path(tmp_path), max_rows=max_rows, max_bytes=max_bytes) as writer:
        for row in rows:
            writer.add(row)
    assert [m.rows for m in writer.manifests] == sizes
    check_shards(as_path(tmp_path), rows, writer.manifests, max_rows, max_bytes)


def test_a_row_larger_than_a_shard_names_its_key(tmp_path):
    with ShardWriter(as_path(tmp_path), max_bytes=100) as writer:
        writer.add(make_row(1, 0))
        with pytest.raises(
            ValueError, match=r"row key-0002 is \d+ bytes, more than a whole shard may hold \(100 bytes\)"
        ):
            writer.add(make_row(2, 200))


def test_a_row_without_a_key_is_refused(tmp_path):
    with (
        ShardWriter(as_path(tmp_path)) as writer,
        pytest.raises(ValueError, match="non-empty one-line string 'key'.*fields: request"),
    ):
        writer.add({"request": {}})


def test_no_rows_write_no_shards(tmp_path):
    with ShardWriter(as_path(tmp_path / "shards")) as writer:
        pass
    assert writer.manifests == []
    assert list((tmp_path / "shards").iterdir()) == []


def test_a_failed_build_leaves_no_manifest_for_its_half_written_shard(tmp_path):
    with pytest.raises(RuntimeError), ShardWriter(as_path(tmp_path), max_rows=2) as writer:
        for i in range(3):
            writer.add(make_row(i, 10))
        raise RuntimeError("staging failed")
    assert [m.shard_id for m in writer.manifests] == ["shard-00000"]
    assert not (tmp_path / "shard-00001.manifest.json").exists()


def test_manifest_round_trip_and_a_bad_manifest_is_named(tmp_path):
    manifest = ShardManifest("shard-00000", "/x.jsonl", 3, 120, "/x.keys", str(tmp_path / "m.json"))
    assert records.decode(records.encode(manifest), ShardManifest) == manifest
    (tmp_path / "m.json").write_text('{"shard_id": "shard-00000"}')
    with pytest.raises(
        ValueError,
        match=r"m\.json: not a valid shard manifest: Object missing required field `uri`",
    ):
        ShardManifest.load(str(tmp_path / "m.json"))


def test_shards_hold_at_most_max_tokens(tmp_path):
    """A shard rolls over before its rows' estimated tokens pass max_tokens (the model's enqueued-token quota);
    a row over it alone still gets its own shard."""
    spec = RequestSpec(model="gemini-2.5-flash-lite", prompt="p")
    with ShardWriter(tmp_path, max_tokens=1000) as writer:
        for i, tokens in enumerate([400, 400, 300, 1200, 100]):
            writer.add(build_row(f"k{i}", spec, text="x"), tokens)
    assert [(m.rows, m.tokens) for m in writer.manifests] == [(2, 800), (1, 300), (1, 1200), (1, 100)]
    assert ShardManifest.load(writer.manifests[0].manifest_uri).tokens == 800

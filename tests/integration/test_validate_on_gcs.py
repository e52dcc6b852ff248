"""The JSONL validator on a gs:// file and as a command."""

from __future__ import annotations

import subprocess
import sys

import orjson

from gemini_batch.core.batch_requests import RequestSpec, build_row
from gemini_batch.core.validate import validate_jsonl

SPEC = RequestSpec(
    model="gemini-2.5-flash-lite",
    prompt="Extract the title.",
    response_schema={"type": "object", "properties": {"title": {"type": "string"}}},
)
TEXT_ROW = build_row("k-text", SPEC, text="Title: A")


def write_jsonl(path, rows) -> str:
    path.write_bytes(b"".join(row if isinstance(row, bytes) else orjson.dumps(row) + b"\n" for row in rows))
    return str(path)


def messages(report) -> list[tuple[int, str]]:
    return [(p.line, p.message) for p in report.problems]


def test_validates_a_file_on_gcs(gcs_root):
    path = gcs_root / "validate" / "shard.jsonl"
    row = build_row("a", SPEC, file_uri="gs://test-bucket/staging/a.pdf", mime_type="application/pdf")
    path.write_bytes(orjson.dumps(row) + b"\n" + orjson.dumps(row) + b"\n")
    report = validate_jsonl(path, backend="vertex")
    assert report.path == "gs://test-bucket/validate/shard.jsonl"
    assert messages(report) == [(2, "duplicate key 'a' (first on line 1): keys must be unique in a file")]
    assert validate_jsonl("gs://test-bucket/validate/shard.jsonl", backend="vertex").problem_count == 1


# ---------------------------------------------------------------- command line


def test_cli_runs_as_a_module(tmp_path):
    def run(*args):
        return subprocess.run(
            [sys.executable, "-m", "gemini_batch.core.validate", *args], capture_output=True, text=True
        )

    good = write_jsonl(tmp_path / "good.jsonl", [TEXT_ROW])
    assert run(good, "--max-rows", "1", "--max-bytes", "100000").returncode == 0
    missing = run(str(tmp_path / "missing.jsonl"))
    assert missing.returncode == 2
    assert f"{tmp_path / 'missing.jsonl'}: cannot read:" in missing.stderr

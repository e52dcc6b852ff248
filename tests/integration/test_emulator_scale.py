"""A 10,000-row, ~100 MB batch through the stock SDK with bounded emulator memory."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from google.genai import types

from support.emulators import developer_client

ROWS = 10_000
DOC_CHARS = 10_000  # ~10 KB of inline document text per row: ~100 MB of JSONL


def peak_rss_mb(pid: int) -> float:
    """The process's high-water mark of resident memory (VmHWM), in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("VmHWM not found")


def write_input(path: Path) -> None:
    filler = ("lorem ipsum dolor sit amet " * (DOC_CHARS // 27 + 1))[:DOC_CHARS]
    with path.open("w") as fh:
        for i in range(ROWS):
            document = f"Invoice Number: N-{i}\nDate: 2025-01-{i % 28 + 1:02d}\nTotal: {i}.25\n{filler}"
            fh.write(
                json.dumps(
                    {
                        "key": f"row-{i:05d}",
                        "request": {
                            "contents": [
                                {"role": "user", "parts": [{"text": "Extract the invoice."}, {"text": document}]}
                            ],
                            "generationConfig": {
                                "responseMimeType": "application/json",
                                "responseJsonSchema": {
                                    "type": "object",
                                    "properties": {"invoice_number": {"type": "string"}, "total": {"type": "number"}},
                                },
                            },
                        },
                    }
                )
                + "\n"
            )


@pytest.mark.slow
def test_ten_thousand_rows_hundred_megabytes(start_emulator, tmp_path, record_property):
    source = tmp_path / "input.jsonl"
    write_input(source)
    size_mb = source.stat().st_size / 1e6
    assert size_mb > 100

    # 600x: queueing takes no time, while the 24 h expiry (144 s here) stays far off on a loaded machine
    emulator = start_emulator(time_scale=600)
    client = developer_client(emulator.url)
    baseline = peak_rss_mb(emulator.proc.pid)
    started = time.monotonic()
    uploaded = client.files.upload(file=source, config={"mime_type": "application/jsonl"})
    job = client.batches.create(model="gemini-2.5-flash-lite", src=uploaded.name)
    while not (job := client.batches.get(name=job.name)).done:
        time.sleep(0.2)
    assert job.state == types.JobState.JOB_STATE_SUCCEEDED, job.error
    output = tmp_path / "output.jsonl"
    client.files.download(file=job.dest.file_name, destination=str(output))
    wall = time.monotonic() - started

    keys = set()
    with output.open() as fh:
        for line in fh:
            row = json.loads(line)
            keys.add(row["key"])
            data = json.loads(row["response"]["candidates"][0]["content"]["parts"][0]["text"])
            assert data["invoice_number"] == f"N-{int(row['key'][4:])}"
    assert len(keys) == ROWS

    peak = peak_rss_mb(emulator.proc.pid)
    record_property("input_mb", round(size_mb, 1))
    record_property("wall_seconds", round(wall, 1))
    record_property("emulator_peak_rss_mb", round(peak, 1))
    print(
        f"\n10k rows / {size_mb:.0f} MB: {wall:.1f} s end to end, emulator peak RSS {peak:.0f} MB "
        f"(at start {baseline:.0f} MB)"
    )
    # Streaming: the emulator never holds the input (100 MB) in memory, let alone twice.
    assert peak - baseline < 100, f"peak RSS grew by {peak - baseline:.0f} MB"

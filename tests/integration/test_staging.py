"""Staging against the running emulator's Files API and gcp-storage-emulator,
with the real google-genai client and gcsfs (through ObjectStoragePath), on
PDFs generated here. Faults (503 bursts, lost 409 races, slow processing) are
injected by the emulator, not mocked."""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import threading
import time
from contextlib import contextmanager

import pytest
from fpdf import FPDF
from pypdf import PdfReader

from gemini_batch.core import documents, records
from gemini_batch.core.locations import as_path
from gemini_batch.core.staged import StagedPart, StageFailure, StageItem
from gemini_batch.hooks.uploads import FilesApiStager, GcsStager, files_api_name
from gemini_emulator.testing import requests_made
from support.emulators import developer_client

FAST = {"backoff_seconds": 0.01}


def write_pdf(path, pages: int) -> None:
    pdf = FPDF()
    for page in range(1, pages + 1):
        pdf.add_page()
        pdf.set_font("helvetica", size=12)
        pdf.cell(text=f"{path.name} page {page}")
    pdf.output(str(path))


def stage_item(key: str, folder, name: str, pages: tuple[int, int] | None = None) -> StageItem:
    """A part of ``folder/name`` as a plan lists it (the key made up), the file hashed now."""
    data = (folder / name).read_bytes()
    return StageItem(key, as_path(folder), name, pages, "application/pdf", len(data), hashlib.sha256(data).hexdigest())


@pytest.fixture
def items(tmp_path):
    """A whole one-page PDF and pages 2..3 of a five-page one."""
    write_pdf(tmp_path / "one.pdf", 1)
    write_pdf(tmp_path / "five.pdf", 5)
    return [stage_item("a" * 64, tmp_path, "one.pdf"), stage_item("b" * 64, tmp_path, "five.pdf", (2, 3))]


def counting(open_part):
    """documents.open_planned, counting how many parts were actually read."""
    calls = []

    @contextmanager
    def wrapper(source, path, pages, sha256):
        calls.append((path, pages))
        with open_part(source, path, pages, sha256) as stream:
            yield stream

    wrapper.calls = calls
    return wrapper


def by_key(results) -> dict[str, StagedPart | StageFailure]:
    results = list(results)
    assert len({r.key for r in results}) == len(results), "one result per item"
    return {r.key: r for r in results}


def test_files_api_stages_under_key_names_and_records_expiry(items, emulator):
    client = developer_client(emulator.url)
    staged = by_key(FilesApiStager(client, documents.open_planned).stage(items))

    assert all(isinstance(s, StagedPart) for s in staged.values()), staged
    for item in items:
        part = staged[item.key]
        remote = client.files.get(name=files_api_name(item.key))
        assert part.uri == remote.uri and remote.state.name == "ACTIVE"
        assert part.mime_type == "application/pdf"
        assert dt.datetime.fromisoformat(part.expires_at) == remote.expiration_time
    # the range was cut to its own two-page PDF, not the whole document
    assert int(client.files.get(name=files_api_name("b" * 64)).size_bytes) < items[1].size
    assert remote.display_name == "five.pdf p2-3"


def file_requests(server, since: int = 0) -> list[tuple[str, str, int]]:
    """(method, what, status) of the Files API requests the emulator served, from its own log: ``start`` and
    ``bytes`` for the two steps of a resumable upload."""
    made = [r for r in requests_made(server) if "files" in r["path"]][since:]
    return [
        (
            r["method"],
            ("bytes" if "upload_id=" in r["query"] else "start")
            if r["path"].startswith("/upload/")
            else r["path"].rsplit("/", 2)[-2],
            r["status"],
        )
        for r in made
    ]


def test_files_api_uploads_in_two_requests_and_reuses_live_uploads(items, emulator):
    client = developer_client(emulator.url)
    first = by_key(FilesApiStager(client, documents.open_planned).stage(items))
    # Upload first: start, then the bytes with finalize; the answer says ACTIVE, so no get.
    assert sorted(file_requests(emulator)) == [("POST", "bytes", 200)] * 2 + [("POST", "start", 200)] * 2
    sent = len(file_requests(emulator))

    # margin in real seconds: the emulator's 48-hour file lifetime is 48 s at this time scale
    second = by_key(FilesApiStager(client, documents.open_planned, margin=dt.timedelta(seconds=5)).stage(items))
    assert second == first
    # The name exists: 409 at the start, before any bytes; the existing file is read and reused.
    assert sorted(file_requests(emulator, sent)) == [("GET", "files", 200)] * 2 + [("POST", "start", 409)] * 2


def test_files_api_restages_uploads_about_to_expire(items, emulator):
    """An upload expiring within the margin is deleted and uploaded again under the same name."""
    client = developer_client(emulator.url)
    first = by_key(FilesApiStager(client, documents.open_planned).stage(items[:1]))
    created = client.files.get(name=files_api_name(items[0].key)).create_time

    sent = len(file_requests(emulator))
    # The emulator's files live 48 emulated hours; a 47-hour margin makes every one "about to expire".
    again = by_key(
        FilesApiStager(client, documents.open_planned, margin=dt.timedelta(hours=47, minutes=59)).stage(items[:1])
    )
    assert file_requests(emulator, sent) == [
        ("POST", "start", 409),
        ("GET", "files", 200),
        ("DELETE", "files", 200),
        ("POST", "start", 200),
        ("POST", "bytes", 200),
    ]
    assert client.files.get(name=files_api_name(items[0].key)).create_time > created
    assert again[items[0].key].expires_at > first[items[0].key].expires_at


def test_staged_part_round_trips():
    part = StagedPart("k", "files/x", "application/pdf", "2026-11-25T12:00:00+00:00")
    assert records.decode(records.encode(part), StagedPart) == part


def test_transient_upload_errors_are_retried(items, start_emulator):
    server = start_emulator(time_scale=3600, faults={"http": {"upload": {"burst": 3, "codes": [503, 429]}}})
    staged = by_key(FilesApiStager(developer_client(server.url), documents.open_planned, **FAST).stage(items))
    assert all(isinstance(s, StagedPart) for s in staged.values()), staged


def test_giving_up_on_one_part_keeps_the_others(items, start_emulator, tmp_path):
    server = start_emulator(time_scale=3600, faults={"http": {"upload": {"burst": 1, "codes": [503]}}})
    missing = StageItem("c" * 64, as_path(tmp_path), "gone.pdf", None, "application/pdf", 10, "0" * 64)
    stager = FilesApiStager(developer_client(server.url), documents.open_planned, attempts=1, workers=1, **FAST)
    results = by_key(stager.stage([missing, *items]))

    assert isinstance(results[missing.key], StageFailure)
    assert "gone.pdf" in results[missing.key].error
    # workers=1: the first upload call gets the 503, and with one attempt that part fails with it
    failed = [r for r in results.values() if isinstance(r, StageFailure)]
    assert len(failed) == 2 and any("503" in r.error for r in failed)
    assert sum(isinstance(r, StagedPart) for r in results.values()) == 1


def test_lost_race_409_reattaches_to_the_existing_upload(items, start_emulator):
    """The upload hits 409, then get says "not there" (403, as the service says for a missing name: the other
    run's file is between states): it tries once more, gets 409 again, and reuses the file get then finds."""
    server = start_emulator(time_scale=3600, faults={"http": {"file_get": {"burst": 1, "codes": [403]}}})
    client = developer_client(server.url)
    with documents.open_part(items[0].source / items[0].path, None) as stream:
        client.files.upload(file=stream, config={"name": files_api_name(items[0].key), "mime_type": "application/pdf"})

    reader = counting(documents.open_planned)
    staged = by_key(FilesApiStager(client, reader, workers=1).stage(items[:1]))
    assert isinstance(staged[items[0].key], StagedPart)
    assert reader.calls == [("one.pdf", None)] * 2  # opened for each try; no bytes sent after a 409
    assert len(list(client.files.list())) == 1


def test_an_upload_deleted_while_processing_is_staged_again(items, start_emulator):
    """Another run replaced or cleaned up the file while this one waited for it to be ACTIVE: a transient
    condition, so the part is uploaded again (not failed with the service's 403)."""
    server = start_emulator(time_scale=3600, faults={"file_processing_seconds": 3600})  # 1 real second
    client = developer_client(server.url)
    name = files_api_name(items[0].key)

    def delete_when_uploaded():
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                client.files.delete(name=name)
                return
            except Exception:
                time.sleep(0.05)

    deleter = threading.Thread(target=delete_when_uploaded)
    deleter.start()
    staged = by_key(FilesApiStager(client, documents.open_planned, **FAST).stage(items[:1]))
    deleter.join()
    assert isinstance(staged[items[0].key], StagedPart), staged
    assert client.files.get(name=name).state.name == "ACTIVE"
    assert [r[2] for r in file_requests(server) if r[1] == "start"] == [200, 200], "uploaded twice"


def test_waits_for_processing_and_gives_up_at_its_timeout(items, start_emulator):
    # 1 emulated hour of processing = 1 real second
    server = start_emulator(time_scale=3600, faults={"file_processing_seconds": 3600})
    client = developer_client(server.url)
    staged = by_key(FilesApiStager(client, documents.open_planned).stage(items[:1]))
    assert isinstance(staged[items[0].key], StagedPart)
    assert client.files.get(name=files_api_name(items[0].key)).state.name == "ACTIVE"

    impatient = FilesApiStager(client, documents.open_planned, processing_timeout=0.05)
    failed = by_key(impatient.stage(items[1:]))[items[1].key]
    assert isinstance(failed, StageFailure) and "PROCESSING" in failed.error


def test_pool_pulls_items_lazily(items, emulator):
    pulled = []

    def endless():
        for n in range(10_000):
            pulled.append(n)
            yield items[0]

    stager = FilesApiStager(developer_client(emulator.url), documents.open_planned, workers=2)
    results = stager.stage(endless())
    first = next(results)
    assert isinstance(first, StagedPart)
    assert len(pulled) <= 2 * 2 + 1, "at most two in flight per worker before the first result"
    results.close()


def test_gcs_stages_objects_named_by_key_once(items, gcs_root):
    prefix = gcs_root / "staging" / "test_gcs_stages"
    reader = counting(documents.open_planned)
    staged = by_key(GcsStager(prefix, reader).stage(items))
    assert sorted(reader.calls) == [("five.pdf", (2, 3)), ("one.pdf", None)]

    whole, part = staged["a" * 64], staged["b" * 64]
    assert whole.uri == f"gs://test-bucket/staging/test_gcs_stages/{'a' * 64}.pdf" and whole.expires_at is None
    assert (prefix / f"{'a' * 64}.pdf").read_bytes() == (items[0].source / items[0].path).read_bytes()
    assert len(PdfReader(io.BytesIO((prefix / f"{'b' * 64}.pdf").read_bytes())).pages) == 2
    assert part.uri == f"gs://test-bucket/staging/test_gcs_stages/{'b' * 64}.pdf"

    again = counting(documents.open_planned)
    assert by_key(GcsStager(prefix, again).stage(items)) == staged
    assert again.calls == []

"""gemini_emulator.gcs: gcp-storage-emulator answering generation preconditions as real GCS does, through
the real clients (google-cloud-storage, gcsfs under ObjectStoragePath) against the real process. Exclusive
creates are what the pipeline's claims rely on, so a race must have exactly one winner."""

from __future__ import annotations

import threading
import uuid

import pytest
import requests
from google.api_core.exceptions import PreconditionFailed

from support.emulators import storage_client

RESUMABLE_SIZE = 600_000  # above the 256 KiB chunk both clients are given below, so several chunks and a finalization
CHUNK = 256 * 1024


@pytest.fixture(scope="module")
def bucket(gcs):
    return storage_client(gcs.url).bucket("test-bucket")


def unique(prefix: str) -> str:
    return f"preconditions/{prefix}-{uuid.uuid4().hex}"


def blob(bucket, name: str, chunked: bool = False):
    return bucket.blob(name, chunk_size=CHUNK if chunked else None)


@pytest.mark.parametrize("chunked", [False, True], ids=["multipart", "resumable"])
def test_exclusive_create_twice_fails_the_second_and_keeps_the_first(bucket, chunked):
    name = unique("twice")
    first, second = (bytes([fill]) * (RESUMABLE_SIZE if chunked else 10) for fill in b"AB")
    blob(bucket, name, chunked).upload_from_string(first, if_generation_match=0)
    with pytest.raises(PreconditionFailed) as raised:
        blob(bucket, name, chunked).upload_from_string(second, if_generation_match=0)
    assert raised.value.code == 412 and "pre-conditions you specified did not hold" in raised.value.message
    assert bucket.blob(name).download_as_bytes() == first


@pytest.mark.parametrize("size", [10, RESUMABLE_SIZE], ids=["small", "resumable"])
def test_object_storage_path_exclusive_open_raises_file_exists(gcs_root, size):
    """gcsfs maps every 412 to FileExistsError (gcsfs.retry.validate_response)."""
    path = gcs_root / unique("xb")
    with path.open("xb", block_size=CHUNK) as f:
        f.write(b"A" * size)
    with pytest.raises(FileExistsError), path.open("xb", block_size=CHUNK) as f:
        f.write(b"B" * size)
    assert path.read_bytes() == b"A" * size


def test_gcsfs_pipe_create_raises_file_exists(gcs_root):
    path = gcs_root / unique("pipe")
    path.fs.pipe_file(path.path, b"first", mode="create")
    with pytest.raises(FileExistsError):
        path.fs.pipe_file(path.path, b"second", mode="create")
    assert path.read_bytes() == b"first"


@pytest.mark.parametrize("chunked", [False, True], ids=["multipart", "resumable"])
def test_racing_exclusive_creates_have_exactly_one_winner(gcs, chunked):
    name, racers = unique("race"), 16
    size = RESUMABLE_SIZE if chunked else 64
    start, results = threading.Barrier(racers), {}

    def race(i: int) -> None:
        target = blob(storage_client(gcs.url).bucket("test-bucket"), name, chunked)  # a client (and session) each
        start.wait()
        try:
            target.upload_from_string(bytes([i]) * size, if_generation_match=0)
            results[i] = "won"
        except PreconditionFailed:
            results[i] = "lost"

    threads = [threading.Thread(target=race, args=(i,)) for i in range(racers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    winners = [i for i, result in results.items() if result == "won"]
    assert len(results) == racers and len(winners) == 1
    assert storage_client(gcs.url).bucket("test-bucket").blob(name).download_as_bytes() == bytes(winners) * size


def test_resumable_preconditions_are_evaluated_at_finalization(bucket):
    """As real GCS: the session starts while the object is absent, another writer creates it, the upload fails."""
    name = unique("session")
    session = blob(bucket, name).create_resumable_upload_session(size=5, if_generation_match=0)
    bucket.blob(name).upload_from_string(b"other")
    response = requests.put(session, data=b"mine!", headers={"Content-Range": "bytes 0-4/5"}, timeout=10)
    assert response.status_code == 412 and response.json()["error"]["errors"][0]["reason"] == "conditionNotMet"
    assert bucket.blob(name).download_as_bytes() == b"other"


def test_generation_match_overwrites_and_a_stale_generation_fails(bucket):
    name = unique("generation")
    first = bucket.blob(name)
    first.upload_from_string(b"v1", if_generation_match=0)
    assert bucket.get_blob(name).generation == first.generation  # what the upload returned is what is stored
    second = bucket.blob(name)
    second.upload_from_string(b"v2", if_generation_match=first.generation)
    assert second.generation > first.generation and bucket.get_blob(name).generation == second.generation
    with pytest.raises(PreconditionFailed):
        bucket.blob(name).upload_from_string(b"v3", if_generation_match=first.generation)
    with pytest.raises(PreconditionFailed):
        bucket.blob(name).upload_from_string(b"v3", if_generation_not_match=second.generation)
    assert bucket.blob(name).download_as_bytes() == b"v2"


def test_a_write_without_preconditions_still_overwrites(bucket, gcs_root):
    name = unique("plain")
    bucket.blob(name).upload_from_string(b"one")
    bucket.blob(name).upload_from_string(b"two")
    assert bucket.blob(name).download_as_bytes() == b"two"
    (gcs_root / name).write_bytes(b"three")
    assert bucket.blob(name).download_as_bytes() == b"three"


def test_delete_patch_copy_compose_honour_preconditions(bucket):
    name, other = unique("ops"), unique("ops-other")
    bucket.blob(name).upload_from_string(b"data")
    bucket.blob(other).upload_from_string(b"more")
    live = bucket.get_blob(name)
    with pytest.raises(PreconditionFailed):
        bucket.blob(name).delete(if_generation_match=live.generation + 1)
    live.metadata = {"k": "v"}
    with pytest.raises(PreconditionFailed):
        live.patch(if_metageneration_match=live.metageneration + 1)
    live.patch(if_metageneration_match=live.metageneration)
    assert live.metageneration == 2 and bucket.get_blob(name).metadata == {"k": "v"}
    with pytest.raises(PreconditionFailed):
        bucket.copy_blob(live, bucket, other, if_generation_match=0)
    with pytest.raises(PreconditionFailed):
        bucket.blob(other).rewrite(live, if_generation_match=0)
    with pytest.raises(PreconditionFailed):
        bucket.blob(other).compose([live], if_generation_match=0)
    assert bucket.blob(other).download_as_bytes() == b"more"
    bucket.blob(name).delete(if_generation_match=live.generation)
    assert bucket.get_blob(name) is None


def test_batched_delete_honours_its_own_preconditions(gcs, bucket):
    name = unique("batch")
    bucket.blob(name).upload_from_string(b"data")
    generation = bucket.get_blob(name).generation
    client = storage_client(gcs.url)
    with pytest.raises(PreconditionFailed), client.batch():
        client.bucket("test-bucket").blob(name).delete(if_generation_match=generation + 1)
    assert bucket.get_blob(name) is not None
    with client.batch():
        client.bucket("test-bucket").blob(name).delete(if_generation_match=generation)
    assert bucket.get_blob(name) is None


def test_xml_api_put_honours_the_generation_header(gcs, bucket):
    name = unique("xml")
    url = f"{gcs.url}/test-bucket/{name}"
    assert requests.put(url, data=b"first", headers={"x-goog-if-generation-match": "0"}, timeout=10).status_code == 200
    refused = requests.put(url, data=b"second", headers={"x-goog-if-generation-match": "0"}, timeout=10)
    assert refused.status_code == 412 and b"PreconditionFailed" in refused.content
    assert bucket.blob(name).download_as_bytes() == b"first"


def test_a_malformed_precondition_is_a_bad_request(gcs):
    response = requests.post(
        f"{gcs.url}/upload/storage/v1/b/test-bucket/o",
        params={"uploadType": "media", "name": unique("bad"), "ifGenerationMatch": "x"},
        data=b"d",
        timeout=10,
    )
    assert response.status_code == 400 and response.json()["error"]["errors"][0]["reason"] == "invalid"

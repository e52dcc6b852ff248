"""The "Batch Prediction" section of the google-genai README, run against the emulators.

Source: https://github.com/googleapis/python-genai, README.md, section "Batch Prediction" (Create, List, Async,
Delete), at commit 66807187f2123c6676175ac991f4e34eb09200d1 (Apache-2.0).

Each test is one or more of the section's code blocks, in order, as verbatim as the formatter allows. Changes from
the original:

* Client: the README's ``client`` (its "Create a client" section) is the ``client`` / ``vertex_client`` fixture of
  tests/snippets/conftest.py: the stock client with only ``base_url`` pointed at the emulator (and, for Vertex AI,
  static credentials instead of Google sign-in).
* Sleeps: the polling loop's ``time.sleep(30)`` is ``time.sleep(POLL_SECONDS)`` (0.2 s; the emulator runs at 3600x).
* Vertex AI create: the README's source is ``'bq://my-project.my-dataset.my-table'`` with ``# or
  "gs://path/to/input/data"``. The emulator serves no BigQuery (docs/emulator.md: 501), so the test runs the
  ``gs://`` form the comment offers, as ``gs://path/to/input/data.jsonl`` (the SDK auto-populates the destination
  only for a ``.jsonl`` source), with a stand-in input object written there on the GCS emulator. A second test runs
  the ``bq://`` form verbatim and checks the emulator's documented 501.
* File-based create: the README's ``myrequests.json`` is written to the test's temporary folder.
* Glue between blocks (marked ``# glue:``): the README's later blocks (get, poll, delete) use ``job``, the name its
  Vertex AI create binds; after a Developer API create, ``job = batch_job``. The README's list-pager block calls
  ``pager.next_page()``, which needs a second page: the test creates 11 jobs first (page size 10).
* Checks (marked ``# check:``) follow each block: the README only prints.

The README's own bugs, fixed (each marked ``# fix:``):

1. Inline create binds ``batch_job`` and then shows ``job`` (a NameError on the Developer API path): the display
   line is ``batch_job``.
2. The example ``myrequests.json`` wraps its first JSON line in two (a JSON Lines file must hold one object per
   line): the line is joined.
3. File-based create passes ``src="files/test-json"``, but ``display_name='test-json'`` does not name the file (the
   service assigns ``files/<id>``): ``src=file.name``.
"""

from __future__ import annotations

import asyncio
import json
import time

import pytest
from google.genai import errors, types

pytestmark = pytest.mark.timeout(120)

POLL_SECONDS = 0.2  # the polling loops' time.sleep(30)

TERMINAL = {"JOB_STATE_SUCCEEDED", "JOB_STATE_FAILED", "JOB_STATE_CANCELLED", "JOB_STATE_EXPIRED"}

# A stand-in for the README's "gs://path/to/input/data": two requests in Vertex AI's batch JSONL.
VERTEX_INPUT = (
    '{"request": {"contents": [{"role": "user", "parts": [{"text": "Explain how AI works in a few words"}]}]}}\n'
    '{"request": {"contents": [{"role": "user", "parts": [{"text": "Explain how Crypto works in a few words"}]}]}}\n'
)


def wait(client, name):
    """check: poll until the job is terminal (the tests that do not run the README's own loop)."""
    job = client.batches.get(name=name)
    while job.state not in TERMINAL:
        time.sleep(POLL_SECONDS)
        job = client.batches.get(name=name)
    return job


def test_readme_vertex_create(vertex_client, seed_gcs):
    """### Create, "Gemini Enterprise Agent Platform" (Vertex AI), with the gs:// source the comment offers."""
    client = vertex_client
    seed_gcs("gs://path/to/input/data.jsonl", VERTEX_INPUT)

    # Specify model and source file only, destination and job display name will be auto-populated
    job = client.batches.create(
        model="gemini-3.5-flash",
        src="gs://path/to/input/data.jsonl",  # changed: the bq:// source's gs:// alternative, as .jsonl
    )

    print(job)

    # check: the auto-populated destination and display name, and a job that runs to success.
    assert job.name.startswith(f"projects/{client._api_client.project}/locations/")
    assert job.display_name.startswith("genai_batch_job_")
    assert job.dest.gcs_uri == "gs://path/to/input/data/dest"
    job = wait(client, job.name)
    assert job.state == "JOB_STATE_SUCCEEDED", job.error


def test_readme_vertex_create_bigquery(vertex_client):
    """### Create (Vertex AI), the README's ``bq://`` source verbatim: the emulator answers 501, as documented."""
    client = vertex_client
    with pytest.raises(errors.APIError) as raised:
        # Specify model and source file only, destination and job display name will be auto-populated
        job = client.batches.create(
            model="gemini-3.5-flash",
            src="bq://my-project.my-dataset.my-table",  # or "gs://path/to/input/data"
        )

        print(job)
    assert raised.value.code == 501


def test_readme_developer_inline_get_poll_delete(client):
    """### Create (Gemini Developer API, inlined requests), then the get, poll and delete blocks."""
    # Create a batch job with inlined requests
    batch_job = client.batches.create(
        model="gemini-3.5-flash",
        src=[
            {
                "contents": [
                    {
                        "parts": [
                            {
                                "text": "Hello!",
                            }
                        ],
                        "role": "user",
                    }
                ],
                "config": {"response_modalities": ["text"]},
            }
        ],
    )

    batch_job  # fix: the README shows `job`, which this block never binds  # noqa: B018

    # check:
    assert batch_job.name.startswith("batches/")
    job = batch_job  # glue: the README's get/poll/delete blocks name the job `job`

    # Get a job by name
    job = client.batches.get(name=job.name)

    job.state  # noqa: B018

    completed_states = set(  # noqa: C405
        [
            "JOB_STATE_SUCCEEDED",
            "JOB_STATE_FAILED",
            "JOB_STATE_CANCELLED",
            "JOB_STATE_PAUSED",
        ]
    )

    while job.state not in completed_states:
        print(job.state)
        job = client.batches.get(name=job.name)
        time.sleep(POLL_SECONDS)  # changed: 30 s

    job  # noqa: B018

    # check: the inline job succeeded with one answer.
    assert job.state == "JOB_STATE_SUCCEEDED", job.error
    assert len(job.dest.inlined_responses) == 1
    assert job.dest.inlined_responses[0].response.text

    # Delete the job resource
    delete_job = client.batches.delete(name=job.name)

    delete_job  # noqa: B018

    # check: the job is gone.
    with pytest.raises(errors.ClientError) as raised:
        client.batches.get(name=job.name)
    assert raised.value.code == 404


def test_readme_developer_file(client, in_tmp):
    """### Create (Gemini Developer API) with a file: ``myrequests.json``, upload, create, then get and poll."""
    # The README's example file, written as shown.
    (in_tmp / "myrequests.json").write_text(
        '{"key":"request_1", "request": {"contents": [{"parts": [{"text": '  # fix: one object per line
        '"Explain how AI works in a few words"}]}], "generation_config": {"response_modalities": ["TEXT"]}}}\n'
        '{"key":"request_2", "request": {"contents": [{"parts": [{"text": "Explain how Crypto works in a few words"}]}]}}\n'  # noqa: E501
    )

    # Upload the file
    file = client.files.upload(file="myrequests.json", config=types.UploadFileConfig(display_name="test-json"))

    # Create a batch job with file name
    batch_job = client.batches.create(
        model="gemini-3.5-flash",
        src=file.name,  # fix: the README's "files/test-json" is the display name, not the file's name
    )

    job = batch_job  # glue

    # Get a job by name
    job = client.batches.get(name=job.name)

    job.state  # noqa: B018

    completed_states = set(  # noqa: C405
        [
            "JOB_STATE_SUCCEEDED",
            "JOB_STATE_FAILED",
            "JOB_STATE_CANCELLED",
            "JOB_STATE_PAUSED",
        ]
    )

    while job.state not in completed_states:
        print(job.state)
        job = client.batches.get(name=job.name)
        time.sleep(POLL_SECONDS)  # changed: 30 s

    job  # noqa: B018

    # check: both rows answered in the responses file.
    assert job.state == "JOB_STATE_SUCCEEDED", job.error
    rows = [json.loads(line) for line in client.files.download(file=job.dest.file_name).decode().splitlines()]
    assert sorted(row["key"] for row in rows) == ["request_1", "request_2"]
    assert all("response" in row for row in rows), rows


@pytest.fixture
def eleven_jobs(client):
    """glue: 11 jobs, so that the README's pager (page size 10) has a second page."""
    names = [
        client.batches.create(
            model="gemini-3.5-flash",
            src=[{"contents": [{"parts": [{"text": f"Hello {i}!"}], "role": "user"}]}],
            config={"display_name": f"readme-list-{i:02d}"},
        ).name
        for i in range(11)
    ]
    return names


def test_readme_list(client, eleven_jobs):
    """### List: iterate, then the pager."""
    for job in client.batches.list(config=types.ListBatchJobsConfig(page_size=10)):
        print(job)

    # check: the iteration went over both pages (the loop's last `job`), every job listed once.
    listed = [job.name for job in client.batches.list(config=types.ListBatchJobsConfig(page_size=10))]
    assert sorted(listed) == sorted(eleven_jobs)

    pager = client.batches.list(config=types.ListBatchJobsConfig(page_size=10))
    print(pager.page_size)
    print(pager[0])
    first = pager[0]
    pager.next_page()
    print(pager[0])

    # check:
    assert pager.page_size == 10
    assert pager[0].name != first.name
    assert len(pager) == 1


def test_readme_list_async(client, eleven_jobs):
    """#### Async: the same with ``client.aio`` (the README's top-level awaits run in ``asyncio.run``)."""
    seen = []

    async def iterate():
        async for job in await client.aio.batches.list(config=types.ListBatchJobsConfig(page_size=10)):
            print(job)
            seen.append(job.name)  # check

    async def pager():
        async_pager = await client.aio.batches.list(config=types.ListBatchJobsConfig(page_size=10))
        print(async_pager.page_size)
        print(async_pager[0])
        first = async_pager[0]  # check
        await async_pager.next_page()
        print(async_pager[0])
        return async_pager, first

    asyncio.run(iterate())
    async_pager, first = asyncio.run(pager())

    # check:
    assert sorted(seen) == sorted(eleven_jobs)
    assert async_pager.page_size == 10
    assert async_pager[0].name != first.name

"""The Gemini cookbook's Batch API notebook, run against the emulator.

Source: https://github.com/google-gemini/cookbook, quickstarts/Batch_mode.ipynb, at commit
f1e7e3de6004e6ca604b174684ecf89d628ac6c4 (the notebook last changed in 1cbaa8d2e7a275a38d499365bada282b35372f79;
Apache-2.0). Each test is a run of the notebook's cells, in order; the cell ids are named above each.

Changes from the original:

* Setup cells (``%pip``, the Colab secret, ``client = genai.Client(api_key=GEMINI_API_KEY)``): the ``client``
  fixture of tests/snippets/conftest.py, the stock client with only ``base_url`` pointed at the emulator.
* Sleeps: the polling loops' ``time.sleep(30)`` is ``time.sleep(POLL_SECONDS)`` (0.2 s; the emulator runs at 3600x).
* Files: the notebook writes its JSONL files to the working directory; the tests run in a temporary folder.
  ``%%writefile embeddings_batch_requests.jsonl`` (cell 21c4b4f42d8e) is the same text written with ``open``.
* Multimodal input (cell NKWc0M6bYkyb): ``!wget .../jetpack.jpg`` (no network) is a JPEG drawn with Pillow under
  the same name; the IPython ``Image(...)`` display is left out (no IPython here).
* Image output (cell iU_8OdgNwQfC): IPython's ``display(Markdown(...))`` / ``display(Image(...))`` collect the text
  and the decoded image bytes into lists instead.
* The notebook's "get the job once" result cells (_9ArGYNY6fbD, iU_8OdgNwQfC) follow a wait the reader does by
  hand; the tests poll first with the notebook's own loop (cell LRfeqghtTdHb, marked ``# glue:``).
* Cancel (cell KpMVDjwpUqZ0) is commented out in the notebook with a placeholder name: it runs uncommented, on a
  job the test creates with the notebook's inline requests (cell HUQb83QUUPXi) on an emulator whose jobs stay
  PENDING (``held_client``), since at 3600x a job has finished before the cancel.
* List (cell o40vd32JUbTo) runs after a file-based and an inline job (``# glue:``), so both of its branches run.
* Models: the notebook's own (``MODEL_ID = "gemini-3.6-flash"``, ``gemini-embedding-001``,
  ``gemini-2.5-flash-image``), unchanged.
* Checks (marked ``# check:``) follow the cells: the notebook only prints.
* Not collected: cell c86974adee36 (``client.webhooks.create(...)``, a webhook to ``https://my-api.com``), the
  Webhooks API, not the Batch API, which the emulator does not serve.

The notebook's own bug, fixed (marked ``# fix:``): cell o40vd32JUbTo reads ``full_job.inlined_responses``, an
attribute a ``BatchJob`` does not have (AttributeError); the inline responses are ``full_job.dest.inlined_responses``.
"""

from __future__ import annotations

import base64
import json
import time

import pytest
from google.genai import types

pytestmark = pytest.mark.timeout(120)

POLL_SECONDS = 0.2  # the polling loops' time.sleep(30)

# cell AChpZWIXu62m
MODEL_ID = "gemini-3.6-flash"  # @param ["gemini-3.5-flash-lite", "gemini-2.5-flash", "gemini-3.6-flash", "gemini-2.5-pro", "gemini-3-flash-preview", "gemini-3.1-pro-preview", "gemini-3.1-flash-lite-image", "gemini-2.5-flash-image", "gemini-3-pro-image"] {"allow-input":true, isTemplate: true}  # noqa: E501


def poll(client, job_name):
    """glue: cell LRfeqghtTdHb's polling loop, for the cells that get a job once."""
    while True:
        batch_job = client.batches.get(name=job_name)
        if batch_job.state.name in ("JOB_STATE_SUCCEEDED", "JOB_STATE_FAILED", "JOB_STATE_CANCELLED"):
            break
        print(f"Job not finished. Current state: {batch_job.state.name}. Waiting 30 seconds...")
        time.sleep(POLL_SECONDS)  # changed: 30 s
    return batch_job


def run_file_job(client):
    """Cells V7xoP6tsLZ0B (prepare and upload), js7fQU2dFRcJ (create), LRfeqghtTdHb (poll); returns the job."""
    # cell V7xoP6tsLZ0B
    # Create a sample JSONL file.
    # The 'key' field is required for correlating inputs to outputs.

    requests_data = [
        {"key": "request_1", "request": {"contents": [{"parts": [{"text": "Explain how AI works in a few words"}]}]}},
        {
            "key": "request_2",
            "request": {"contents": [{"parts": [{"text": "Explain how quantum computing works in a few words"}]}]},
        },
    ]

    json_file_path = "batch_requests.json"

    with open(json_file_path, "w") as f:
        for req in requests_data:
            f.write(json.dumps(req) + "\n")

    # 2. Upload JSONL file to File API.
    print(f"Uploading file: {json_file_path}")
    uploaded_batch_requests = client.files.upload(
        file=json_file_path, config=types.UploadFileConfig(display_name="batch-input-file")
    )
    print(f"Uploaded file: {uploaded_batch_requests.name}")

    # cell js7fQU2dFRcJ
    batch_job_from_file = client.batches.create(
        model=MODEL_ID,
        src=uploaded_batch_requests.name,
        config={
            "display_name": "my-batch-job-from-file",
        },
    )
    print(f"Created batch job from file: {batch_job_from_file.name}")

    # cell LRfeqghtTdHb
    # Note: You can check the status of any job by replacing its name here.
    # For example: job_name = 'batches/your-job-name-here'

    job_name = batch_job_from_file.name

    print(f"Polling status for job: {job_name}")

    # Poll the job status until it's completed.
    while True:
        batch_job = client.batches.get(name=job_name)
        if batch_job.state.name in ("JOB_STATE_SUCCEEDED", "JOB_STATE_FAILED", "JOB_STATE_CANCELLED"):
            break
        print(f"Job not finished. Current state: {batch_job.state.name}. Waiting 30 seconds...")
        time.sleep(POLL_SECONDS)  # changed: 30 s

    print(f"Job finished with state: {batch_job.state.name}")
    if batch_job.state.name == "JOB_STATE_FAILED":
        print(f"Error: {batch_job.error}")
    return batch_job


def run_inline_job(client):
    """Cell HUQb83QUUPXi (create and monitor the inline job); returns the job."""
    # 1. Define your list of requests.
    # Note: Unlike the file-based method, a 'key' is not required for inline requests,
    # as the order of responses will match the order of requests.
    inline_requests_list = [
        {"contents": [{"parts": [{"text": "Write a short poem about a cloud."}]}]},
        {"contents": [{"parts": [{"text": "Write a short poem about a cat."}]}]},
    ]

    # 2. Create the batch job with the inline requests.
    print("Creating inline batch job...")
    batch_job_inline = client.batches.create(
        model=MODEL_ID, src=inline_requests_list, config={"display_name": "my-batch-job-inline-example"}
    )
    print(f"Created inline batch job: {batch_job_inline.name}")
    print("-" * 20)

    # 3. Monitor the job until completion.
    job_name = batch_job_inline.name
    print(f"Polling status for job: {job_name}")

    while True:
        batch_job_inline = client.batches.get(name=job_name)
        if batch_job_inline.state.name in ("JOB_STATE_SUCCEEDED", "JOB_STATE_FAILED", "JOB_STATE_CANCELLED"):
            break
        print(f"Job not finished. Current state: {batch_job_inline.state.name}. Waiting 30 seconds...")
        time.sleep(POLL_SECONDS)  # changed: 30 s

    print(f"Job finished with state: {batch_job_inline.state.name}")
    if batch_job_inline.state.name == "JOB_STATE_FAILED":
        print(f"Error: {batch_job_inline.error}")
    return batch_job_inline


def test_cookbook_file_job(client, in_tmp):
    """## Create a job from a file: steps 1-4 (cells V7xoP6tsLZ0B, js7fQU2dFRcJ, LRfeqghtTdHb, cvpNS7r4Tt7Y)."""
    batch_job = run_file_job(client)

    # cell cvpNS7r4Tt7Y
    parsed = []  # check
    if batch_job.state.name == "JOB_STATE_SUCCEEDED":
        # The output is in another file.
        result_file_name = batch_job.dest.file_name
        print(f"Results are in file: {result_file_name}")

        print("\nDownloading and parsing result file content...")
        file_content_bytes = client.files.download(file=result_file_name)
        file_content = file_content_bytes.decode("utf-8")

        # The result file is also a JSONL file. Parse and print each line.
        for line in file_content.splitlines():
            if line:
                parsed_response = json.loads(line)
                # Pretty-print the JSON for readability
                print(json.dumps(parsed_response, indent=2))
                print("-" * 20)
                parsed.append(parsed_response)  # check
    else:
        print(f"Job did not succeed. Final state: {batch_job.state.name}")

    # check: both requests answered, by key.
    assert batch_job.state.name == "JOB_STATE_SUCCEEDED", batch_job.error
    assert sorted(row["key"] for row in parsed) == ["request_1", "request_2"]
    assert all(row["response"]["candidates"][0]["content"]["parts"][0]["text"] for row in parsed), parsed


def test_cookbook_inline_job(client):
    """## Alternative: Create a job with inline requests (cells HUQb83QUUPXi, y4N_CD6pW0vC)."""
    batch_job_inline = run_inline_job(client)

    # cell y4N_CD6pW0vC
    texts = []  # check
    if batch_job_inline.state.name == "JOB_STATE_SUCCEEDED":
        print("\nResults are inline:")
        # The results are in the `inlined_responses` field.
        for i, inline_response in enumerate(batch_job_inline.dest.inlined_responses):
            print(f"\n--- Response {i + 1} ---")

            # Check for a successful response
            if inline_response.response:
                # The .text property is a shortcut to the generated text.
                try:
                    print(inline_response.response.text)
                    texts.append(inline_response.response.text)  # check
                except AttributeError:
                    # Fallback to printing the full response if .text isn't available
                    print(inline_response.response)

            # Check for an error in this specific request
            elif inline_response.error:
                print(f"Error: {inline_response.error}")

    else:
        print(f"Job did not succeed. Final state: {batch_job_inline.state.name}")
        if batch_job_inline.error:
            print(f"Error: {batch_job_inline.error}")

    # check: two answers, in the order of the requests.
    assert batch_job_inline.state.name == "JOB_STATE_SUCCEEDED", batch_job_inline.error
    assert len(texts) == 2 and all(texts), texts


def test_cookbook_list_jobs(client, in_tmp):
    """### List your batch jobs, "List Recent Jobs" (cell o40vd32JUbTo), after a file-based and an inline job."""
    file_job = run_file_job(client)  # glue
    inline_job = run_inline_job(client)  # glue

    # cell o40vd32JUbTo
    print("Listing recent batch jobs:\n")

    # Note: The list API currently doesn't return inlined_responses.
    # As a workaround,you can make a `get` call for inline jobs to see their results.
    batches = client.batches.list(config={"page_size": 10})

    listed, kinds = [], {}  # check
    for b in batches.page:
        print(f"Job Name: {b.name}")
        print(f"  - Display Name: {b.display_name}")
        print(f"  - State: {b.state.name}")
        print(f"  - Create Time: {b.create_time.strftime('%Y-%m-%d %H:%M:%S')}")
        listed.append(b.name)  # check

        # Check if it was an inline job (no destination file)
        if b.dest is not None:
            if not b.dest.file_name:
                full_job = client.batches.get(name=b.name)
                if full_job.dest.inlined_responses:  # fix: was full_job.inlined_responses
                    print(
                        "  - Type: Inline ({} responses)".format(len(full_job.dest.inlined_responses))  # noqa: UP032  # fix: ditto
                    )
                    kinds[b.name] = ("inline", len(full_job.dest.inlined_responses))  # check
            else:
                print(f"  - Type: File-based (Output: {b.dest.file_name})")
                kinds[b.name] = ("file", b.dest.file_name)  # check

        print("-" * 20)

    # check: both jobs listed; the file job's output named in the list.
    assert sorted(listed) == sorted([file_job.name, inline_job.name])
    assert kinds[file_job.name] == ("file", file_job.dest.file_name)
    assert kinds.get(inline_job.name, ("inline", 2)) == ("inline", 2)


def test_cookbook_cancel(held_client):
    """#### Cancel a Job (cell KpMVDjwpUqZ0, uncommented), on a pending job made by cell HUQb83QUUPXi's requests."""
    client = held_client
    inline_requests_list = [
        {"contents": [{"parts": [{"text": "Write a short poem about a cloud."}]}]},
        {"contents": [{"parts": [{"text": "Write a short poem about a cat."}]}]},
    ]
    batch_job_inline = client.batches.create(  # glue: cell HUQb83QUUPXi's create
        model=MODEL_ID, src=inline_requests_list, config={"display_name": "my-batch-job-inline-example"}
    )

    # cell KpMVDjwpUqZ0 (uncommented)
    cancelled = False  # check
    try:
        job_to_cancel_name = batch_job_inline.name  # changed: "batches/your-job-name-here" # <-- REPLACE THIS
        print(f"Attempting to cancel job: {job_to_cancel_name}")
        client.batches.cancel(name=job_to_cancel_name)
        print("Job cancellation request sent.")
        cancelled = True  # check
    except Exception as e:
        print(f"Error cancelling job: {e}")

    # check: the request was accepted and the job ends CANCELLED.
    assert cancelled
    batch_job = poll(client, batch_job_inline.name)
    assert batch_job.state.name == "JOB_STATE_CANCELLED"


def test_cookbook_embeddings(client, in_tmp):
    """## Batch embeddings (cells 21c4b4f42d8e, dad71ead145d, c4970750f9e9, 165cf44fa5ce, 4f8ed04493bc)."""
    # cell 21c4b4f42d8e: %%writefile embeddings_batch_requests.jsonl
    with open("embeddings_batch_requests.jsonl", "w") as f:
        f.write(
            '{"key": "request_1", "request": {"output_dimensionality": 3, "content": {"parts": [{"text": "1"}]}}}\n'
            '{"key": "request_2", "request": {"output_dimensionality": 4, "content": {"parts": [{"text": "2"}]}}}\n'
        )

    # cell dad71ead145d
    uploaded_batch_requests = client.files.upload(
        file="embeddings_batch_requests.jsonl", config=types.UploadFileConfig(mime_type="jsonl")
    )

    uploaded_batch_requests  # noqa: B018

    # cell c4970750f9e9
    batch_job = client.batches.create_embeddings(
        model="gemini-embedding-001", src=types.EmbeddingsBatchJobSource(file_name=uploaded_batch_requests.name)
    )
    batch_job  # noqa: B018

    # cell 165cf44fa5ce
    while True:
        batch_job = client.batches.get(name=batch_job.name)
        if batch_job.state.name in ("JOB_STATE_SUCCEEDED", "JOB_STATE_FAILED", "JOB_STATE_CANCELLED"):
            break
        print(f"Job not finished. Current state: {batch_job.state.name}. Waiting 30 seconds...")
        time.sleep(POLL_SECONDS)  # changed: 30 s

    # cell 4f8ed04493bc
    lines = []  # check
    if batch_job.state.name == "JOB_STATE_SUCCEEDED":
        file_content_bytes = client.files.download(file=batch_job.dest.file_name)
        file_content = file_content_bytes.decode("utf-8")

        for line in file_content.splitlines():
            print(line)
            lines.append(line)  # check

    # check: one embedding per request, of the requested dimensionality.
    assert batch_job.state.name == "JOB_STATE_SUCCEEDED", batch_job.error
    rows = {row["key"]: row for row in map(json.loads, lines)}
    assert sorted(rows) == ["request_1", "request_2"]
    assert len(rows["request_1"]["response"]["embedding"]["values"]) == 3, rows
    assert len(rows["request_2"]["response"]["embedding"]["values"]) == 4, rows


def test_cookbook_multimodal_input(client, in_tmp):
    """### Using multimodal input (cells NKWc0M6bYkyb, 67gGuZXoYvU-, _9ArGYNY6fbD)."""
    from PIL import Image as PILImage

    # cell NKWc0M6bYkyb
    # Download sample image

    image_path = "jetpack.jpg"
    # changed: !wget https://storage.googleapis.com/generativeai-downloads/images/jetpack.jpg -O {image_path}  -q
    PILImage.new("RGB", (64, 48), (40, 90, 160)).save(image_path, format="JPEG")

    print(f"Uploading image file: {image_path}")
    image_file = client.files.upload(
        file=image_path,
    )
    print(f"Uploaded image file: {image_file.name} with MIME type: {image_file.mime_type}")
    # changed: Image(filename=image_path) left out (IPython display)

    # cell 67gGuZXoYvU-
    requests_data = [
        # First request: simple text prompt
        {"key": "request_1", "request": {"contents": [{"parts": [{"text": "Explain how AI works in a few words"}]}]}},
        # Second request: multi-modal prompt with text and an image reference
        {
            "key": "request_2_image",
            "request": {
                "contents": [
                    {
                        "parts": [
                            {"text": "What is in this image? Describe it in detail."},
                            {"file_data": {"file_uri": image_file.uri, "mime_type": image_file.mime_type}},
                        ]
                    }
                ]
            },
        },
    ]

    json_file_path = "batch_requests_with_image.json"

    print(f"\nCreating JSONL file: {json_file_path}")
    with open(json_file_path, "w") as f:
        for req in requests_data:
            f.write(json.dumps(req) + "\n")

    print(f"Uploading JSONL file: {json_file_path}")
    batch_input_file = client.files.upload(file=json_file_path)
    print(f"Uploaded JSONL file: {batch_input_file.name}")

    print("\nCreating batch job...")
    batch_job_from_file = client.batches.create(
        model=MODEL_ID,
        src=batch_input_file.name,
        config={
            "display_name": "my-batch-job-with-image",
        },
    )
    print(f"Created batch job from file: {batch_job_from_file.name}")
    print("You can now monitor the job status using its name.")

    poll(client, batch_job_from_file.name)  # glue: the reader waits for the job

    # cell _9ArGYNY6fbD
    contents = []  # check
    batch_job_from_file = client.batches.get(name=batch_job_from_file.name)
    if batch_job_from_file.state.name == "JOB_STATE_SUCCEEDED":
        # The output is in another file.
        result_file_name = batch_job_from_file.dest.file_name
        print(f"Results are in file: {result_file_name}")

        print("\nDownloading and parsing result file content...")
        file_content_bytes = client.files.download(file=result_file_name)
        file_content = file_content_bytes.decode("utf-8")

        # The result file is also a JSONL file. Parse and print each line.
        for line in file_content.splitlines():
            if line:
                parsed_response = json.loads(line)
                # Pretty-print the JSON for readability
                print(json.dumps(parsed_response["response"]["candidates"][0]["content"], indent=2))
                print("-" * 20)
                contents.append(parsed_response["response"]["candidates"][0]["content"])  # check
    else:
        print(f"Job did not succeed. Final state: {batch_job_from_file.state.name}")

    # check: both requests (text, and text with the image) answered.
    assert batch_job_from_file.state.name == "JOB_STATE_SUCCEEDED", batch_job_from_file.error
    assert len(contents) == 2 and all(content["parts"] for content in contents), contents


def test_cookbook_image_generation(client, in_tmp):
    """### Multimodal output: batch image generation (cells wy22E3YTp6I2, iU_8OdgNwQfC)."""
    # cell wy22E3YTp6I2
    requests_data = [
        {
            "key": "image_request_1",
            "request": {
                "contents": [{"parts": [{"text": "A big letter A surrounded by animals starting with the A letter"}]}],
                "generation_config": {"response_modalities": ["TEXT", "IMAGE"]},
            },
        },  # Be careful, for inline request it would be 'config' instead of 'generation_config'
        {
            "key": "image_request_2",
            "request": {
                "contents": [{"parts": [{"text": "A big letter B surrounded by animals starting with the B letter"}]}],
                "generation_config": {"response_modalities": ["TEXT", "IMAGE"]},
            },
        },
    ]

    json_file_path = "batch_image_gen_requests.json"

    print(f"\nCreating JSONL file: {json_file_path}")
    with open(json_file_path, "w") as f:
        for req in requests_data:
            f.write(json.dumps(req) + "\n")

    print(f"Uploading JSONL file: {json_file_path}")
    batch_input_file = client.files.upload(file=json_file_path)
    print(f"Uploaded JSONL file: {batch_input_file.name}")

    print("\nCreating batch job...")
    batch_multimodal_job = client.batches.create(
        model="gemini-2.5-flash-image",
        src=batch_input_file.name,
        config={
            "display_name": "my-batch-image-gen-job",
        },
    )
    print(f"Created batch job from file: {batch_multimodal_job.name}")
    print("You can now monitor the job status using its name.")

    poll(client, batch_multimodal_job.name)  # glue: the reader waits for the job

    # cell iU_8OdgNwQfC
    # changed: from IPython.display import display, Markdown, Image -> collected into lists
    shown_text, shown_images = [], []

    batch_multimodal_job = client.batches.get(name=batch_multimodal_job.name)

    if batch_multimodal_job.state.name == "JOB_STATE_SUCCEEDED":
        # The output is in another file.
        result_file_name = batch_multimodal_job.dest.file_name
        print(f"Results are in file: {result_file_name}")

        print("\nDownloading and parsing result file content...")
        file_content_bytes = client.files.download(file=result_file_name)
        file_content = file_content_bytes.decode("utf-8")

        # The result file is also a JSONL file. Parse and print each line.
        for line in file_content.splitlines():
            if line:
                parsed_response = json.loads(line)
                for part in parsed_response["response"]["candidates"][0]["content"]["parts"]:
                    if part.get("text"):
                        shown_text.append(part["text"])  # changed: display(Markdown(part['text']))
                    elif part.get("inlineData"):
                        mime = part["inlineData"]["mimeType"]
                        data = base64.b64decode(part["inlineData"]["data"])
                        shown_images.append((mime, data))  # changed: display(Image(data=data, format=...))
    else:
        print(f"Job did not succeed. Final state: {batch_multimodal_job.state.name}")

    # check: the job succeeded and every row's answer had parts shown.
    assert batch_multimodal_job.state.name == "JOB_STATE_SUCCEEDED", batch_multimodal_job.error
    assert shown_text or shown_images
    print(f"shown: {len(shown_text)} text parts, {len(shown_images)} images")

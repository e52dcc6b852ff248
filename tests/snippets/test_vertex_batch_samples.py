"""Google Cloud's Vertex AI batch prediction samples for google-genai, run against the emulators.

Source: https://github.com/GoogleCloudPlatform/python-docs-samples, genai/batch_prediction/ at commit
683bf45f8f608cf0248d485d2c60de22e356b2db (the folder last changed in 52bf097f8b153b4a7b944c34941826804337c369;
Apache-2.0): batchpredict_with_gcs.py, batchpredict_embeddings_with_gcs.py, batchpredict_with_bq.py,
get_batch_job.py. Each sample's function is copied below (the text between its ``[START ...]`` and ``[END ...]``
tags, verbatim but for the lines marked ``# changed:``).

Changes from the original:

* Client: the samples build ``genai.Client(http_options=HttpOptions(api_version="v1"))`` and take Vertex AI mode,
  project and location from the environment (``GOOGLE_GENAI_USE_VERTEXAI``, ``GOOGLE_CLOUD_PROJECT``,
  ``GOOGLE_CLOUD_LOCATION``) and credentials from Google sign-in. That line names them instead:
  ``vertexai=True, project, location``, static ``credentials`` (no sign-in offline), and ``base_url`` the emulator
  (``api_version="v1"`` kept). The environment cannot carry the base URL: google-genai 2.34 reads
  ``GOOGLE_VERTEX_BASE_URL`` only when ``vertexai=True`` is passed, and with a base URL and no project/location passed
  it drops the environment's project and location (requests go to ``/``).
* Sleeps: ``time.sleep(30)`` is ``time.sleep(POLL_SECONDS)`` (0.2 s; the emulator runs at 3600x).
* Inputs: Google's public ``gs://cloud-samples-data/...`` objects are unreachable offline; a stand-in of the same
  format is written under the same URI on the GCS emulator (and a JPEG where its first prompt's image is).
  ``output_uri`` is a fresh ``gs://test-bucket/...`` prefix (the samples' placeholder is ``gs://your-bucket/your-prefix``).
* BigQuery (batchpredict_with_bq.py): the emulator serves no BigQuery (docs/emulator.md); the test checks its 501.
* Models: the samples' own (``gemini-3.5-flash``, ``text-embedding-005``), unchanged.
* Checks (marked ``# check:``) follow each sample: its return value, and the predictions written to GCS.
* The samples' own tests (test_batch_prediction_examples.py) mock ``genai.Client`` and ``time.sleep``; they are
  replaced by these live runs.
"""

from __future__ import annotations

import json
import uuid

import pytest
from google.genai import errors
from google.oauth2.credentials import Credentials

pytestmark = pytest.mark.timeout(120)

POLL_SECONDS = 0.2
PROJECT, LOCATION = "snippets-project", "us-central1"
EMULATOR_URL = "http://127.0.0.1:0"  # set to the emulator's by the vertex_env fixture

# Stand-ins for Google's public inputs (Vertex AI batch prediction JSONL).
PROMPT_FOR_BATCH_GEMINI_PREDICT = (
    '{"request": {"contents": [{"role": "user", "parts": [{"text": "List objects in this image."}, '
    '{"file_data": {"file_uri": "gs://cloud-samples-data/generative-ai/image/office-desk.jpeg", '
    '"mime_type": "image/jpeg"}}]}], "generationConfig": {"temperature": 0.4}}}\n'
    '{"request": {"contents": [{"role": "user", "parts": [{"text": "Explain how AI works in a few words"}]}]}}\n'
)
EMBEDDINGS_INPUT = '{"content": "Hello world"}\n{"content": "How does the brain work?"}\n'


# ---------------------------------------------------------------- the samples


def batchpredict_with_gcs(output_uri: str) -> str:
    """batchpredict_with_gcs.py, ``generate_content``."""
    # [START googlegenaisdk_batchpredict_with_gcs]
    import time

    from google import genai
    from google.genai.types import CreateBatchJobConfig, HttpOptions, JobState

    client = genai.Client(  # changed: was genai.Client(http_options=HttpOptions(api_version="v1"))
        vertexai=True,
        project=PROJECT,
        location=LOCATION,
        credentials=Credentials(token="local"),
        http_options=HttpOptions(api_version="v1", base_url=EMULATOR_URL),
    )
    # TODO(developer): Update and un-comment below line
    # output_uri = "gs://your-bucket/your-prefix"

    # See the documentation: https://googleapis.github.io/python-genai/genai.html#genai.batches.Batches.create
    job = client.batches.create(
        # To use a tuned model, set the model param to your tuned model using the following format:
        # model="projects/{PROJECT_ID}/locations/{LOCATION}/models/{MODEL_ID}
        model="gemini-3.5-flash",
        # Source link: https://storage.cloud.google.com/cloud-samples-data/batch/prompt_for_batch_gemini_predict.jsonl
        src="gs://cloud-samples-data/batch/prompt_for_batch_gemini_predict.jsonl",
        config=CreateBatchJobConfig(dest=output_uri),
    )
    print(f"Job name: {job.name}")
    print(f"Job state: {job.state}")
    # Example response:
    # Job name: projects/.../locations/.../batchPredictionJobs/9876453210000000000
    # Job state: JOB_STATE_PENDING

    # See the documentation: https://googleapis.github.io/python-genai/genai.html#genai.types.BatchJob
    completed_states = {
        JobState.JOB_STATE_SUCCEEDED,
        JobState.JOB_STATE_FAILED,
        JobState.JOB_STATE_CANCELLED,
        JobState.JOB_STATE_PAUSED,
    }

    while job.state not in completed_states:
        time.sleep(POLL_SECONDS)  # changed: 30
        job = client.batches.get(name=job.name)
        print(f"Job state: {job.state}")
    # Example response:
    # Job state: JOB_STATE_PENDING
    # Job state: JOB_STATE_RUNNING
    # Job state: JOB_STATE_RUNNING
    # ...
    # Job state: JOB_STATE_SUCCEEDED
    # [END googlegenaisdk_batchpredict_with_gcs]
    batchpredict_with_gcs.job = job  # check: the job, for the test
    return job.state


def batchpredict_embeddings_with_gcs(output_uri: str) -> str:
    """batchpredict_embeddings_with_gcs.py, ``generate_content``."""
    # [START googlegenaisdk_batchpredict_embeddings_with_gcs]
    import time

    from google import genai
    from google.genai.types import CreateBatchJobConfig, HttpOptions, JobState

    client = genai.Client(  # changed: was genai.Client(http_options=HttpOptions(api_version="v1"))
        vertexai=True,
        project=PROJECT,
        location=LOCATION,
        credentials=Credentials(token="local"),
        http_options=HttpOptions(api_version="v1", base_url=EMULATOR_URL),
    )
    # TODO(developer): Update and un-comment below line
    # output_uri = "gs://your-bucket/your-prefix"

    # See the documentation: https://googleapis.github.io/python-genai/genai.html#genai.batches.Batches.create
    job = client.batches.create(
        model="text-embedding-005",
        # Source link: https://storage.cloud.google.com/cloud-samples-data/generative-ai/embeddings/embeddings_input.jsonl
        src="gs://cloud-samples-data/generative-ai/embeddings/embeddings_input.jsonl",
        config=CreateBatchJobConfig(dest=output_uri),
    )
    print(f"Job name: {job.name}")
    print(f"Job state: {job.state}")
    # Example response:
    # Job name: projects/.../locations/.../batchPredictionJobs/9876453210000000000
    # Job state: JOB_STATE_PENDING

    # See the documentation: https://googleapis.github.io/python-genai/genai.html#genai.types.BatchJob
    completed_states = {
        JobState.JOB_STATE_SUCCEEDED,
        JobState.JOB_STATE_FAILED,
        JobState.JOB_STATE_CANCELLED,
        JobState.JOB_STATE_PAUSED,
    }

    while job.state not in completed_states:
        time.sleep(POLL_SECONDS)  # changed: 30
        job = client.batches.get(name=job.name)
        print(f"Job state: {job.state}")
        if job.state == JobState.JOB_STATE_FAILED:
            print(f"Error: {job.error}")
            break

    # Example response:
    # Job state: JOB_STATE_PENDING
    # Job state: JOB_STATE_RUNNING
    # Job state: JOB_STATE_RUNNING
    # ...
    # Job state: JOB_STATE_SUCCEEDED
    # [END googlegenaisdk_batchpredict_embeddings_with_gcs]
    batchpredict_embeddings_with_gcs.job = job  # check: the job, for the test
    return job.state


def batchpredict_with_bq(output_uri: str) -> str:
    """batchpredict_with_bq.py, ``generate_content``."""
    # [START googlegenaisdk_batchpredict_with_bq]
    import time

    from google import genai
    from google.genai.types import CreateBatchJobConfig, HttpOptions, JobState

    client = genai.Client(  # changed: was genai.Client(http_options=HttpOptions(api_version="v1"))
        vertexai=True,
        project=PROJECT,
        location=LOCATION,
        credentials=Credentials(token="local"),
        http_options=HttpOptions(api_version="v1", base_url=EMULATOR_URL),
    )

    # TODO(developer): Update and un-comment below line
    # output_uri = f"bq://your-project.your_dataset.your_table"

    job = client.batches.create(
        # To use a tuned model, set the model param to your tuned model using the following format:
        # model="projects/{PROJECT_ID}/locations/{LOCATION}/models/{MODEL_ID}
        model="gemini-3.5-flash",
        src="bq://storage-samples.generative_ai.batch_requests_for_multimodal_input",
        config=CreateBatchJobConfig(dest=output_uri),
    )
    print(f"Job name: {job.name}")
    print(f"Job state: {job.state}")
    # Example response:
    # Job name: projects/.../locations/.../batchPredictionJobs/9876453210000000000
    # Job state: JOB_STATE_PENDING

    # See the documentation: https://googleapis.github.io/python-genai/genai.html#genai.types.BatchJob
    completed_states = {
        JobState.JOB_STATE_SUCCEEDED,
        JobState.JOB_STATE_FAILED,
        JobState.JOB_STATE_CANCELLED,
        JobState.JOB_STATE_PAUSED,
    }

    while job.state not in completed_states:
        time.sleep(POLL_SECONDS)  # changed: 30
        job = client.batches.get(name=job.name)
        print(f"Job state: {job.state}")
    # Example response:
    # Job state: JOB_STATE_PENDING
    # Job state: JOB_STATE_RUNNING
    # Job state: JOB_STATE_RUNNING
    # ...
    # Job state: JOB_STATE_SUCCEEDED
    # [END googlegenaisdk_batchpredict_with_bq]
    return job.state


def get_batch_job(batch_job_name: str):
    """get_batch_job.py, ``get_batch_job``."""
    # [START googlegenaisdk_batch_job_get]
    from google import genai
    from google.genai.types import HttpOptions

    client = genai.Client(  # changed: was genai.Client(http_options=HttpOptions(api_version="v1"))
        vertexai=True,
        project=PROJECT,
        location=LOCATION,
        credentials=Credentials(token="local"),
        http_options=HttpOptions(api_version="v1", base_url=EMULATOR_URL),
    )

    # Get the batch job
    # Eg. batch_job_name = "projects/123456789012/locations/.../batchPredictionJobs/1234567890123456789"
    batch_job = client.batches.get(name=batch_job_name)

    print(f"Job state: {batch_job.state}")
    # Example response:
    # Job state: JOB_STATE_PENDING
    # Job state: JOB_STATE_RUNNING
    # Job state: JOB_STATE_SUCCEEDED

    # [END googlegenaisdk_batch_job_get]
    return batch_job


# ---------------------------------------------------------------- harness


@pytest.fixture
def vertex_env(snippet_emulator, monkeypatch):
    """The emulator, as the samples' endpoint."""
    monkeypatch.setitem(globals(), "EMULATOR_URL", snippet_emulator.url)
    return snippet_emulator


@pytest.fixture
def output_uri():
    return f"gs://test-bucket/vertex-samples/{uuid.uuid4().hex}"


def predictions(storage, output_uri):
    """check: the rows the job wrote under ``output_uri``."""
    bucket, _, prefix = output_uri.removeprefix("gs://").partition("/")
    blobs = [b for b in storage.list_blobs(bucket, prefix=prefix + "/") if b.name.endswith("predictions.jsonl")]
    assert len(blobs) == 1, [b.name for b in storage.list_blobs(bucket, prefix=prefix + "/")]
    return [json.loads(line) for line in blobs[0].download_as_text().splitlines() if line]


# ---------------------------------------------------------------- the tests


@pytest.fixture
def sample_inputs(seed_gcs, storage):
    """Stand-ins for the gemini sample's input and the image its first prompt names."""
    import io

    from PIL import Image

    seed_gcs("gs://cloud-samples-data/batch/prompt_for_batch_gemini_predict.jsonl", PROMPT_FOR_BATCH_GEMINI_PREDICT)
    image = io.BytesIO()
    Image.new("RGB", (64, 48), (120, 110, 90)).save(image, format="JPEG")
    blob = storage.bucket("cloud-samples-data").blob("generative-ai/image/office-desk.jpeg")
    blob.upload_from_string(image.getvalue(), content_type="image/jpeg")


def test_batchpredict_with_gcs(vertex_env, sample_inputs, storage, output_uri):

    state = batchpredict_with_gcs(output_uri=output_uri)

    # check: as the samples' own test, then the output.
    assert state == "JOB_STATE_SUCCEEDED", batchpredict_with_gcs.job.error
    rows = predictions(storage, output_uri)
    assert len(rows) == 2
    assert all("response" in row for row in rows), rows


def test_batchpredict_embeddings_with_gcs(vertex_env, seed_gcs, storage, output_uri):
    seed_gcs("gs://cloud-samples-data/generative-ai/embeddings/embeddings_input.jsonl", EMBEDDINGS_INPUT)

    state = batchpredict_embeddings_with_gcs(output_uri=output_uri)

    # check:
    assert state == "JOB_STATE_SUCCEEDED", batchpredict_embeddings_with_gcs.job.error
    assert len(predictions(storage, output_uri)) == 2


def test_batchpredict_with_bq(vertex_env):
    """The emulator serves no BigQuery: the create is answered 501 (docs/emulator.md)."""
    with pytest.raises(errors.APIError) as raised:
        batchpredict_with_bq(output_uri="bq://your-project.your_dataset.your_table")
    assert raised.value.code == 501


def test_get_batch_job(vertex_env, sample_inputs, output_uri):
    batchpredict_with_gcs(output_uri=output_uri)  # glue: a job to get
    name = batchpredict_with_gcs.job.name

    batch_job = get_batch_job(name)

    # check:
    assert batch_job.name == name
    assert batch_job.state == "JOB_STATE_SUCCEEDED"

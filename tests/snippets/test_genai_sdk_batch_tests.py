"""google-genai's own batch tests, run live against the emulators.

Source: https://github.com/googleapis/python-genai at commit 66807187f2123c6676175ac991f4e34eb09200d1 (the batch
tests last changed in c41ba1163f4bc7cb90d913674d1ba481d18d1248; Apache-2.0):

* google/genai/tests/batches/: test_cancel.py, test_create.py, test_create_with_bigquery.py,
  test_create_with_file.py, test_create_with_gcs.py, test_create_with_inlined_requests.py,
  test_create_with_vertex_dataset.py, test_delete.py, test_embedding.py, test_get.py, test_list.py
* google/genai/tests/shared/batches/: test_create_delete.py, test_create_get_cancel.py, test_list.py

Each test here is named after its source (``<file>::<test or test_table item>``). The constants (models, display
names, requests) are the source's, verbatim. Changes from the original:

* Harness: the SDK's replay framework (``pytest_helper.setup`` with a ``test_table``, replaying recorded HTTP
  exchanges with Google's projects) is replaced by a live client on the emulator. A ``test_table`` item's
  ``parameters`` become the same call (``client.batches.create(model=..., src=..., config=...)``);
  ``exception_if_mldev`` / ``exception_if_vertex`` become ``pytest.raises(ValueError, match=...)`` in that mode
  (the SDK raises these before any request). "All tests will be run for both Vertex and MLDev": the ``api_client``
  fixture is parametrized ``mldev`` (``client``) / ``vertex`` (``vertex_client``), each the stock client with only
  ``base_url`` pointed at the emulator (Vertex: static credentials). Async tests run with ``asyncio.run``.
* Names of Google's resources: the jobs and files the recordings name (``batches/0yew7...``,
  ``'6339625664542408704'``, ``files/s0pa54alni6w``, ...) do not exist on the emulator; the test first makes such a
  job or file (``# glue:``) and uses its name in the same form (a Vertex job by its bare numeric id where the source
  uses one). The ``gs://unified-genai-tests/...`` inputs are stand-ins written to the GCS emulator; the Files API
  image and video of ``test_create_with_inlined_requests.py`` are a small JPEG and MP4 uploaded to the emulator;
  ``tests/data/google.png`` is copied to tests/snippets/data/google.png.
* Cancel and the shared create/get/cancel run on ``held_client`` / ``held_vertex_client``: an emulator whose jobs
  stay PENDING (at 3600x a job has finished before the cancel); delete waits for the job to finish first (Vertex AI
  refuses to delete a running job; the source's recorded jobs were finished).
* test_embedding.py's ``http_options`` (``api_version='v1alpha'`` at Google's internal
  ``autopush-generativelanguage.sandbox.googleapis.com``) are not used: the public service (and the emulator)
  serve batches at v1beta.
* BigQuery (test_create_with_bigquery.py): the emulator serves no BigQuery source (docs/emulator.md: 501), so the
  Vertex AI side checks that 501 where the recording shows a created job; the Developer API side is unchanged.
  test_create_with_vertex_dataset.py's Vertex AI datasets are BigQuery-backed; the
  emulator serves none: the Vertex AI side checks the create is refused (400 or 501).
* Models: the sources' own, unchanged: ``gemini-2.5-flash`` (shut down; the service routes its batches to a
  successor, as the emulator does), ``gemini-3.5-flash``, ``gemini-embedding-001``, ``text-embedding-004``.
* Checks added (marked ``# check:``): the replays mostly only record; a live create is also waited for and its
  answers checked where that is what the test is about.
* Not collected: test_get.py::test_async_get_with_multimodal_dataset_output (a job with a Vertex AI multimodal
  dataset output, which needs BigQuery); test_create_with_inlined_requests.py's ``_INLINED_TEXT_REQUEST`` (Google
  Search grounding), which no test of the source uses.
"""

from __future__ import annotations

import asyncio
import base64
import copy
import time
from pathlib import Path

import pytest
from google.genai import _transformers as t
from google.genai import errors, types

pytestmark = pytest.mark.timeout(120)

POLL_SECONDS = 0.2
TERMINAL = {"JOB_STATE_SUCCEEDED", "JOB_STATE_FAILED", "JOB_STATE_CANCELLED", "JOB_STATE_EXPIRED"}
DATA = Path(__file__).parent / "data"

# ---------------------------------------------------------------- the sources' constants

# test_create*.py, test_embedding.py, shared/__init__.py
_GEMINI_MODEL = "gemini-2.5-flash"
_GEMINI_MODEL_FULL_NAME = "publishers/google/models/gemini-2.5-flash"
_MLDEV_GEMINI_MODEL = "gemini-2.5-flash"
_EMBEDDING_MODEL = "gemini-embedding-001"
_MLDEV_EMBEDDING_MODEL = "gemini-embedding-001"
_DISPLAY_NAME = "test_batch"
SHARED_GEMINI_MODEL = "gemini-3.5-flash"  # shared.GEMINI_MODEL
_INVALID_BATCH_JOB_NAME = "invalid_name"

_GENERATE_CONTENT_BQ_INPUT_FILE = "bq://vertex-sdk-dev.unified_genai_tests_batches.generate_content_requests"
_GENERATE_CONTENT_BQ_OUTPUT_PREFIX = "bq://vertex-sdk-dev.unified_genai_tests_batches.generate_content_output"
_EMBEDDING_BQ_INPUT_FILE = "bq://vertex-sdk-dev.unified_genai_tests_batches.embedding_requests"
_EMBEDDING_BQ_OUTPUT_PREFIX = "bq://vertex-sdk-dev.unified_genai_tests_batches.embedding_output"

_GENERATE_CONTENT_GCS_INPUT_FILE = "gs://unified-genai-tests/batches/input/generate_content_requests.jsonl"
_GENERATE_CONTENT_GCS_OUTPUT_PREFIX = "gs://unified-genai-tests/batches/output"
_EMBEDDING_GCS_INPUT_FILE = "gs://unified-genai-tests/batches/input/embedding_requests.jsonl"
_EMBEDDING_GCS_OUTPUT_PREFIX = "gs://unified-genai-tests/batches/output"

_OUTPUT_VERTEX_DATASET_DISPLAY_NAME = "test_batch_output"
_VERTEX_DATASET_INPUT_NAME = "projects/vertex-sdk-dev/locations/us-central1/datasets/7857316250517504000"
_BQ_OUTPUT_PREFIX = "bq://vertex-sdk-dev.unified_genai_tests_batches.generate_content_output"
_VERTEX_DATASET_DESTINATION = types.VertexMultimodalDatasetDestination(
    bigquery_destination=_BQ_OUTPUT_PREFIX,
    display_name=_OUTPUT_VERTEX_DATASET_DISPLAY_NAME,
)

# test_create_with_inlined_requests.py
_SAFETY_SETTINGS = [
    {
        "category": "HARM_CATEGORY_HATE_SPEECH",
        "threshold": "BLOCK_ONLY_HIGH",
    },
    {
        "category": "HARM_CATEGORY_DANGEROUS_CONTENT",
        "threshold": "BLOCK_LOW_AND_ABOVE",
    },
]

_INLINED_REQUESTS = [
    {
        "contents": [
            {
                "parts": [
                    {
                        "text": "what is the number after 1? return just the number.",
                    }
                ],
                "role": "user",
            }
        ],
        "metadata": {
            "key": "request-1",
        },
        "config": {
            "safety_settings": _SAFETY_SETTINGS,
        },
    },
    {
        "contents": [
            {
                "parts": [
                    {
                        "text": "what is the number after 2? return just the number.",
                    }
                ],
                "role": "user",
            }
        ],
        "metadata": {
            "key": "request-2",
        },
        "config": {
            "safety_settings": _SAFETY_SETTINGS,
        },
    },
]
_INLINED_TEXT_REQUEST_UNION = {
    "contents": [
        {
            "parts": [
                {
                    "text": "high",
                }
            ],
            "role": "user",
        }
    ],
    "config": {
        "response_modalities": ["TEXT"],
        "system_instruction": "I say high, you say low",
        "thinking_config": {
            "include_thoughts": True,
            "thinking_budget": 4000,
        },
    },
}
_INLINED_TEXT_REQUEST = copy.deepcopy(_INLINED_TEXT_REQUEST_UNION)
_INLINED_TEXT_REQUEST["config"]["system_instruction"] = t.t_content("I say high, you say low")


def _inlined_image_request(file_uri):
    """_INLINED_IMAGE_REQUEST, with the uri of an image uploaded to the emulator (the source's is Google's
    ``https://generativelanguage.googleapis.com/v1beta/files/kje1wewvo85z``)."""
    return {
        "contents": [
            {
                "parts": [
                    {"text": "What is in this image?"},
                    {
                        "file_data": {
                            "file_uri": (file_uri),
                            "mime_type": "image/jpeg",
                        },
                    },
                ],
                "role": "user",
            }
        ],
        "config": {
            "temperature": 0.7,
            "top_p": 0.9,
            "top_k": 10,
        },
    }


def _inlined_video_request(file_uri):
    """_INLINED_VIDEO_REQUEST, with the uri of a video uploaded to the emulator (the source's is Google's
    ``https://generativelanguage.googleapis.com/v1beta/files/tyvaih24jwje``)."""
    return {
        "contents": [
            {
                "parts": [
                    {
                        "text": "Summerize this video.",
                    },
                    {
                        "file_data": {
                            "file_uri": (file_uri),
                            "mime_type": "video/mp4",
                        },
                        "video_metadata": {
                            "start_offset": "0s",
                            "end_offset": "5s",
                            "fps": 3,
                        },
                    },
                ],
                "role": "user",
            }
        ],
    }


_IMAGE_PNG_FILE_PATH = str(DATA / "google.png")  # changed: the source's ../data/google.png
with open(_IMAGE_PNG_FILE_PATH, "rb") as image_file:
    image_bytes = image_file.read()
    image_string = base64.b64encode(image_bytes).decode("utf-8")
_INLINED_IMAGE_BLOB_REQUEST = types.InlinedRequest(
    contents=[
        types.Content(
            parts=[
                types.Part(text="What is this image about?"),
                types.Part(
                    inline_data=types.Blob(
                        data=image_string,
                        mime_type="image/png",
                    ),
                ),
            ],
            role="user",
        )
    ]
)

# test_embedding.py
_INLINED_EMBED_CONTENT_REQUESTS = {
    "config": {"output_dimensionality": 64},
    "contents": [
        {
            "parts": [
                {
                    "text": "1",
                }
            ],
        },
        {
            "parts": [
                {
                    "text": "2",
                }
            ],
        },
        {
            "parts": [
                {
                    "text": "3",
                }
            ],
        },
    ],
}

# Stand-ins for the sources' inputs on Google's accounts.
GCS_GENERATE_CONTENT_REQUESTS = (
    '{"request": {"contents": [{"role": "user", "parts": [{"text": "what is the number after 1?"}]}]}}\n'
    '{"request": {"contents": [{"role": "user", "parts": [{"text": "what is the number after 2?"}]}]}}\n'
)
GCS_EMBEDDING_REQUESTS = '{"content": "1"}\n{"content": "2"}\n'
FILE_GENERATE_CONTENT_REQUESTS = (
    '{"key": "request-1", "request": {"contents": [{"parts": [{"text": "what is the number after 1?"}]}]}}\n'
    '{"key": "request-2", "request": {"contents": [{"parts": [{"text": "what is the number after 2?"}]}]}}\n'
)
FILE_EMBED_CONTENT_REQUESTS = (
    '{"key": "request-1", "request": {"content": {"parts": [{"text": "1"}]}}}\n'
    '{"key": "request-2", "request": {"content": {"parts": [{"text": "2"}]}}}\n'
)
SKY = [{"contents": [{"parts": [{"text": "Why is the sky blue?"}], "role": "user"}]}]


# ---------------------------------------------------------------- harness: live clients and resources


@pytest.fixture(params=["mldev", "vertex"])
def api_client(request):
    """The source's ``client`` fixture: both modes."""
    return request.getfixturevalue("client" if request.param == "mldev" else "vertex_client")


@pytest.fixture(params=["mldev", "vertex"])
def held_api_client(request):
    """``api_client`` on an emulator whose jobs stay PENDING (for cancel)."""
    return request.getfixturevalue("held_client" if request.param == "mldev" else "held_vertex_client")


@pytest.fixture
def gcs_inputs(seed_gcs):
    """glue: the gs://unified-genai-tests inputs, on the GCS emulator."""
    seed_gcs(_GENERATE_CONTENT_GCS_INPUT_FILE, GCS_GENERATE_CONTENT_REQUESTS)
    seed_gcs(_EMBEDDING_GCS_INPUT_FILE, GCS_EMBEDDING_REQUESTS)


def upload(client, tmp_path, name, data, mime_type):
    """glue: a file on the emulator's Files API, ACTIVE."""
    path = tmp_path / name
    path.write_bytes(data if isinstance(data, bytes) else data.encode())
    file = client.files.upload(file=str(path), config={"mime_type": mime_type})
    while file.state == "PROCESSING":
        time.sleep(POLL_SECONDS)
        file = client.files.get(name=file.name)
    assert file.state == "ACTIVE", file
    return file


def live_job(client, seed_gcs=None):
    """glue: a job of this mode, made as the sources' recordings were (an inline one on the Developer API, a GCS
    one on Vertex AI)."""
    if client.vertexai:
        seed_gcs(_GENERATE_CONTENT_GCS_INPUT_FILE, GCS_GENERATE_CONTENT_REQUESTS)
        return client.batches.create(
            model=_GEMINI_MODEL,
            src=_GENERATE_CONTENT_GCS_INPUT_FILE,
            config={"display_name": _DISPLAY_NAME, "dest": _GENERATE_CONTENT_GCS_OUTPUT_PREFIX},
        )
    return client.batches.create(model=_MLDEV_GEMINI_MODEL, src=SKY, config={"display_name": _DISPLAY_NAME})


def bare_id(name):
    """A Vertex AI job's numeric id, the form the sources' ``_BATCH_JOB_NAME`` has."""
    return name.split("/")[-1]


def finished(client, name):
    job = client.batches.get(name=name)
    while job.state not in TERMINAL:
        time.sleep(POLL_SECONDS)
        job = client.batches.get(name=name)
    return job


def succeeded(client, name):
    """check: the job ran to success, every inline answer a response."""
    job = finished(client, name)
    assert job.state == "JOB_STATE_SUCCEEDED", job.error
    for answer in (job.dest and job.dest.inlined_responses) or []:
        assert answer.response is not None and answer.error is None, answer
    return job


# ---------------------------------------------------------------- test_cancel.py


def test_cancel__test_cancel_batch_job(held_api_client, seed_gcs):
    """test_cancel.py::test_cancel_batch_job (a Vertex AI job by its bare id; 'Invalid batch job name' on MLDev)."""
    client = held_api_client
    if not client.vertexai:
        with pytest.raises(ValueError, match="Invalid batch job name"):
            client.batches.cancel(name="6339625664542408704")
        return
    _BATCH_JOB_NAME = bare_id(live_job(client, seed_gcs).name)  # glue
    client.batches.cancel(name=_BATCH_JOB_NAME)
    assert finished(client, _BATCH_JOB_NAME).state == "JOB_STATE_CANCELLED"  # check


def test_cancel__test_cancel_batch_operation(held_api_client):
    """test_cancel.py::test_cancel_batch_operation (MLDev ``batches/...``; 'Invalid batch job name' on Vertex)."""
    client = held_api_client
    if client.vertexai:
        with pytest.raises(ValueError, match="Invalid batch job name"):
            client.batches.cancel(name="batches/0yew7plxupyybd7appsrq5vw7w0lp3l79lab")
        return
    _MLDEV_BATCH_OPERATION_NAME = live_job(client).name  # glue
    client.batches.cancel(name=_MLDEV_BATCH_OPERATION_NAME)
    assert finished(client, _MLDEV_BATCH_OPERATION_NAME).state == "JOB_STATE_CANCELLED"  # check


def test_cancel__test_cancel_batch_job_with_invalid_name(api_client):
    """test_cancel.py::test_cancel_batch_job_with_invalid_name."""
    with pytest.raises(ValueError, match="Invalid batch job name"):
        api_client.batches.cancel(name=_INVALID_BATCH_JOB_NAME)


def test_cancel__test_async_cancel(held_api_client, seed_gcs):
    """test_cancel.py::test_async_cancel."""
    client = held_api_client
    job = live_job(client, seed_gcs)  # glue
    if client.vertexai:
        name = bare_id(job.name)
    else:
        name = job.name

    asyncio.run(client.aio.batches.cancel(name=name))
    assert finished(client, job.name).state == "JOB_STATE_CANCELLED"  # check


# ---------------------------------------------------------------- test_create.py


def test_create__test_union_with_invalid_src(api_client):
    """test_create.py::test_union_with_invalid_src: 'Unsupported source' in both modes."""
    with pytest.raises(ValueError, match="Unsupported source"):
        api_client.batches.create(
            model=_GEMINI_MODEL,
            src="invalid_src",
            config={
                "display_name": _DISPLAY_NAME,
                "dest": _GENERATE_CONTENT_BQ_OUTPUT_PREFIX,
            },
        )


def test_create__test_union_with_invalid_dest(api_client):
    """test_create.py::test_union_with_invalid_dest: 'supported' (MLDev), 'Unsupported destination' (Vertex)."""
    with pytest.raises(ValueError, match="Unsupported destination" if api_client.vertexai else "supported"):
        api_client.batches.create(
            model=_EMBEDDING_MODEL,
            src=_EMBEDDING_BQ_INPUT_FILE,
            config={
                "display_name": _DISPLAY_NAME,
                "dest": "invalid_dest",
            },
        )


@pytest.mark.parametrize("form", ["test_create_with_webhook_config", "test_create_with_webhook_config_dict"])
def test_create__test_create_with_webhook_config(api_client, form):
    """test_create.py::test_create_with_webhook_config[_dict] (MLDev; 'supported' on Vertex)."""
    src = {
        "inlined_requests": [
            {"contents": [{"parts": [{"text": "say hello"}], "role": "user"}]},
        ]
    }
    if form == "test_create_with_webhook_config":
        config = types.CreateBatchJobConfig(
            display_name=_DISPLAY_NAME,
            webhook_config=types.WebhookConfig(
                uris=["https://example.com/webhook"],
                user_metadata={"batch_id": "123"},
            ),
        )
    else:
        config = {
            "display_name": _DISPLAY_NAME,
            "webhook_config": {
                "uris": ["https://example.com/webhook"],
            },
        }
    if api_client.vertexai:
        with pytest.raises(ValueError, match="supported"):
            api_client.batches.create(model=_GEMINI_MODEL, src=src, config=config)
        return
    batch_job = api_client.batches.create(model=_GEMINI_MODEL, src=src, config=config)
    succeeded(api_client, batch_job.name)  # check


# ---------------------------------------------------------------- test_create_with_bigquery.py


def _bigquery_refused(call):
    """The emulator's documented answer to a BigQuery source: 501."""
    with pytest.raises(errors.APIError) as raised:
        call()
    assert raised.value.code == 501, raised.value


@pytest.mark.parametrize("item", ["test_union_generate_content_with_bigquery", "test_union_embedding_with_bigquery"])
def test_create_with_bigquery__union(api_client, item):
    """test_create_with_bigquery.py::test_union_{generate_content,embedding}_with_bigquery."""
    if item == "test_union_generate_content_with_bigquery":
        kwargs = {"model": _GEMINI_MODEL_FULL_NAME, "src": _GENERATE_CONTENT_BQ_INPUT_FILE}
    else:
        kwargs = {
            "model": "publishers/google/models/text-embedding-004",
            "src": _EMBEDDING_BQ_INPUT_FILE,
            "config": {
                "display_name": _DISPLAY_NAME,
                "dest": _EMBEDDING_BQ_OUTPUT_PREFIX,
            },
        }
    if not api_client.vertexai:
        with pytest.raises(ValueError, match="not supported in Gemini API"):
            api_client.batches.create(**kwargs)
        return
    _bigquery_refused(lambda: api_client.batches.create(**kwargs))


def test_create_with_bigquery__test_generate_content_with_bigquery(api_client):
    """test_create_with_bigquery.py::test_generate_content_with_bigquery ('one of' on MLDev)."""

    def create():
        return api_client.batches.create(
            model=_GEMINI_MODEL_FULL_NAME,
            src={
                "bigquery_uri": _GENERATE_CONTENT_BQ_INPUT_FILE,
                "format": "bigquery",
            },
            config={
                "display_name": _DISPLAY_NAME,
                "dest": {
                    "bigquery_uri": _GENERATE_CONTENT_BQ_OUTPUT_PREFIX,
                    "format": "bigquery",
                },
            },
        )

    if not api_client.vertexai:
        with pytest.raises(ValueError, match="one of"):
            create()
        return
    _bigquery_refused(create)


def test_create_with_bigquery__test_async_create(api_client):
    """test_create_with_bigquery.py::test_async_create (ValueError on MLDev)."""

    def create():
        return asyncio.run(
            api_client.aio.batches.create(
                model=_GEMINI_MODEL,
                src=_GENERATE_CONTENT_BQ_INPUT_FILE,
            )
        )

    if not api_client.vertexai:
        with pytest.raises(ValueError):
            create()
        return
    _bigquery_refused(create)


# ---------------------------------------------------------------- test_create_with_file.py


@pytest.mark.parametrize("item", ["test_union_generate_content_with_file", "test_generate_content_with_file"])
def test_create_with_file(api_client, tmp_path, item):
    """test_create_with_file.py::test_{union_,}generate_content_with_file ('supported' on Vertex)."""
    if api_client.vertexai:
        with pytest.raises(ValueError, match="supported"):
            api_client.batches.create(
                model=_MLDEV_GEMINI_MODEL,
                src={"file_name": "files/s0pa54alni6w"},
                config={"display_name": _DISPLAY_NAME},
            )
        return
    _FILE_NAME = upload(api_client, tmp_path, "requests.jsonl", FILE_GENERATE_CONTENT_REQUESTS, "jsonl").name  # glue
    batch_job = api_client.batches.create(
        model=_MLDEV_GEMINI_MODEL,
        src={"file_name": _FILE_NAME},
        config={
            "display_name": _DISPLAY_NAME,
        },
    )
    job = succeeded(api_client, batch_job.name)  # check
    assert job.dest.file_name


def test_create_with_file__test_async_create(api_client, tmp_path):
    """test_create_with_file.py::test_async_create (ValueError on Vertex)."""
    if api_client.vertexai:
        with pytest.raises(ValueError):
            asyncio.run(
                api_client.aio.batches.create(
                    model=_MLDEV_GEMINI_MODEL,
                    src={"file_name": "files/s0pa54alni6w"},
                    config={"display_name": _DISPLAY_NAME},
                )
            )
        return
    _FILE_NAME = upload(api_client, tmp_path, "requests.jsonl", FILE_GENERATE_CONTENT_REQUESTS, "jsonl").name  # glue
    batch_job = asyncio.run(
        api_client.aio.batches.create(
            model=_MLDEV_GEMINI_MODEL,
            src={"file_name": _FILE_NAME},
            config={
                "display_name": _DISPLAY_NAME,
            },
        )
    )
    assert batch_job.name.startswith("batches/")
    assert batch_job.model == "models/" + _MLDEV_GEMINI_MODEL  # Converted to Gemini full name.


# ---------------------------------------------------------------- test_create_with_gcs.py


@pytest.mark.parametrize(
    "item",
    [
        "test_union_generate_content_with_gcs",
        "test_union_embedding_with_gcs",
        "test_union_with_http_options",
        "test_generate_content_with_gcs",
    ],
)
def test_create_with_gcs(api_client, gcs_inputs, item):
    """test_create_with_gcs.py's test_table ('not supported in Gemini API' / 'one of' on MLDev)."""
    kwargs = {
        "test_union_generate_content_with_gcs": {"model": _GEMINI_MODEL, "src": _GENERATE_CONTENT_GCS_INPUT_FILE},
        "test_union_embedding_with_gcs": {
            "model": "text-embedding-004",
            "src": _EMBEDDING_GCS_INPUT_FILE,
            "config": {
                "display_name": _DISPLAY_NAME,
                "dest": _EMBEDDING_GCS_OUTPUT_PREFIX,
            },
        },
        "test_union_with_http_options": {
            "model": _GEMINI_MODEL,
            "src": _GENERATE_CONTENT_GCS_INPUT_FILE,
            "config": {
                "http_options": {
                    "api_version": "v1",
                    "headers": {"test": "headers"},
                },
            },
        },
        "test_generate_content_with_gcs": {
            "model": _GEMINI_MODEL,
            "src": {
                "gcs_uri": [_GENERATE_CONTENT_GCS_INPUT_FILE],
                "format": "jsonl",
            },
            "config": {
                "display_name": _DISPLAY_NAME,
                "dest": {
                    "gcs_uri": _GENERATE_CONTENT_GCS_OUTPUT_PREFIX,
                    "format": "jsonl",
                },
            },
        },
    }[item]
    if not api_client.vertexai:
        match = "one of" if item == "test_generate_content_with_gcs" else "not supported in Gemini API"
        with pytest.raises(ValueError, match=match):
            api_client.batches.create(**kwargs)
        return
    batch_job = api_client.batches.create(**kwargs)
    job = succeeded(api_client, batch_job.name)  # check
    assert job.output_info.gcs_output_directory.startswith("gs://unified-genai-tests/batches/")


def test_create_with_gcs__test_async_create(api_client, gcs_inputs):
    """test_create_with_gcs.py::test_async_create (ValueError on MLDev)."""

    def create():
        return asyncio.run(
            api_client.aio.batches.create(
                model=_GEMINI_MODEL,
                src=_GENERATE_CONTENT_GCS_INPUT_FILE,
            )
        )

    if not api_client.vertexai:
        with pytest.raises(ValueError):
            create()
        return
    batch_job = create()

    assert batch_job.name.startswith("projects/")
    assert batch_job.model == _GEMINI_MODEL_FULL_NAME  # Converted to Vertex full name.
    assert batch_job.src.gcs_uri == [_GENERATE_CONTENT_GCS_INPUT_FILE]
    assert batch_job.src.format == "jsonl"


# ---------------------------------------------------------------- test_create_with_inlined_requests.py


@pytest.mark.parametrize(
    "item",
    [
        "test_union_with_inlined_request",
        "test_with_inlined_request",
        "test_with_inlined_request_config",
        "test_union_with_inlined_request_system_instruction",
        "test_with_image_file",
        "test_with_image_blob",
        "test_with_video_file",
    ],
)
def test_create_with_inlined_requests(api_client, tmp_path, item):
    """test_create_with_inlined_requests.py's test_table ('supported in' on Vertex)."""
    if item == "test_with_image_file" and not api_client.vertexai:
        from PIL import Image

        Image.new("RGB", (32, 32), (200, 30, 30)).save(tmp_path / "image.jpg", format="JPEG")
        image = upload(api_client, tmp_path, "image.jpg", (tmp_path / "image.jpg").read_bytes(), "image/jpeg")
        file_uri = image.uri  # glue
    elif item == "test_with_video_file" and not api_client.vertexai:
        # A minimal MP4 header (ftyp box): the emulator's model does not decode video.
        mp4 = b"\x00\x00\x00\x18ftypmp42\x00\x00\x00\x00mp42isom" + b"\x00" * 64
        file_uri = upload(api_client, tmp_path, "video.mp4", mp4, "video/mp4").uri  # glue
    else:
        file_uri = "https://generativelanguage.googleapis.com/v1beta/files/kje1wewvo85z"
    src = {
        "test_union_with_inlined_request": _INLINED_REQUESTS,
        "test_with_inlined_request": {"inlined_requests": _INLINED_REQUESTS},
        "test_with_inlined_request_config": {"inlined_requests": _INLINED_REQUESTS},
        "test_union_with_inlined_request_system_instruction": {"inlined_requests": [_INLINED_TEXT_REQUEST_UNION]},
        "test_with_image_file": {"inlined_requests": [_inlined_image_request(file_uri)]},
        "test_with_image_blob": {"inlined_requests": [_INLINED_IMAGE_BLOB_REQUEST]},
        "test_with_video_file": {"inlined_requests": [_inlined_video_request(file_uri)]},
    }[item]
    if api_client.vertexai:
        with pytest.raises(ValueError, match="supported in"):
            api_client.batches.create(model=_MLDEV_GEMINI_MODEL, src=src, config={"display_name": _DISPLAY_NAME})
        return
    batch_job = api_client.batches.create(
        model=_MLDEV_GEMINI_MODEL,
        src=src,
        config={
            "display_name": _DISPLAY_NAME,
        },
    )
    job = succeeded(api_client, batch_job.name)  # check
    expected = 2 if "inlined_request" in item and "system_instruction" not in item else 1
    assert len(job.dest.inlined_responses) == expected
    if expected == 2:  # check: the requests' metadata come back with their answers, in order
        assert [r.metadata for r in job.dest.inlined_responses] == [{"key": "request-1"}, {"key": "request-2"}]


def test_create_with_inlined_requests__test_async_create(api_client):
    """test_create_with_inlined_requests.py::test_async_create (ValueError on Vertex)."""

    def create():
        return asyncio.run(
            api_client.aio.batches.create(
                model=_GEMINI_MODEL,
                src=_INLINED_REQUESTS,
            )
        )

    if api_client.vertexai:
        with pytest.raises(ValueError):
            create()
        return
    batch_job = create()
    assert batch_job.name.startswith("batches/")
    assert batch_job.model == "models/" + _GEMINI_MODEL  # Converted to Gemini full name.


# ---------------------------------------------------------------- test_create_with_vertex_dataset.py


@pytest.mark.parametrize(
    "item",
    [
        "test_union_generate_content_with_vertex_dataset_name",
        "test_generate_content_with_vertex_dataset_source",
        "test_generate_content_with_vertex_dataset_source_dict",
        "test_async_create",
    ],
)
def test_create_with_vertex_dataset(api_client, item):
    """test_create_with_vertex_dataset.py: MLDev raises ('not supported in Gemini API' / 'one of'); on Vertex AI
    the emulator serves no datasets (BigQuery-backed): the create is refused (400 or 501), no job made."""
    dest = {"vertex_dataset": _VERTEX_DATASET_DESTINATION, "format": "vertex-dataset"}
    if item == "test_union_generate_content_with_vertex_dataset_name":
        src, model = _VERTEX_DATASET_INPUT_NAME, _GEMINI_MODEL_FULL_NAME
    elif item == "test_generate_content_with_vertex_dataset_source":
        src = types.BatchJobSource(vertex_dataset_name=_VERTEX_DATASET_INPUT_NAME, format="vertex-dataset")
        model = _GEMINI_MODEL_FULL_NAME
    elif item == "test_generate_content_with_vertex_dataset_source_dict":
        src = {"vertex_dataset_name": _VERTEX_DATASET_INPUT_NAME, "format": "vertex-dataset"}
        model = _GEMINI_MODEL_FULL_NAME
    else:
        src, model = _VERTEX_DATASET_INPUT_NAME, _GEMINI_MODEL

    def create():
        if item == "test_async_create":
            return asyncio.run(api_client.aio.batches.create(model=model, src=src, config={"dest": dest}))
        return api_client.batches.create(model=model, src=src, config={"display_name": _DISPLAY_NAME, "dest": dest})

    if not api_client.vertexai:
        match = (
            "not supported in Gemini API" if item.startswith("test_union") else ("one of" if "source" in item else None)
        )
        with pytest.raises(ValueError, match=match):
            create()
        return
    with pytest.raises(errors.APIError) as raised:
        create()
    assert raised.value.code in (400, 501), raised.value


# ---------------------------------------------------------------- test_delete.py


@pytest.mark.parametrize(
    "item",
    ["test_delete_batch_job", "test_delete_batch_job_full_resource_name", "test_delete_batch_operation"],
)
def test_delete(api_client, seed_gcs, item):
    """test_delete.py's test_table: a Vertex AI job by bare id or full name, an MLDev ``batches/...``; the other
    mode raises 'Invalid batch job name'."""
    vertex_item = item != "test_delete_batch_operation"
    if api_client.vertexai != vertex_item:
        name = "7085929781874655232" if vertex_item else "batches/70h2jo0ic2t1zejyl0p4jgi8mk1gj0wvjusv"
        with pytest.raises(ValueError, match="Invalid batch job name"):
            api_client.batches.delete(name=name)
        return
    job = finished(api_client, live_job(api_client, seed_gcs).name)  # glue
    name = bare_id(job.name) if item == "test_delete_batch_job" else job.name
    api_client.batches.delete(name=name)
    with pytest.raises(errors.ClientError) as raised:  # check: it is gone
        api_client.batches.get(name=job.name)
    assert raised.value.code == 404


def test_delete__test_delete_batch_job_with_invalid_name(api_client):
    """test_delete.py::test_delete_batch_job_with_invalid_name."""
    with pytest.raises(ValueError, match="Invalid batch job name"):
        api_client.batches.delete(name=_INVALID_BATCH_JOB_NAME)


def test_delete__test_async_delete(api_client, seed_gcs):
    """test_delete.py::test_async_delete."""
    client = api_client
    job = finished(client, live_job(client, seed_gcs).name)  # glue
    if client.vertexai:
        name = bare_id(job.name)
    else:
        name = job.name

    delete_job = asyncio.run(client.aio.batches.delete(name=name))
    assert delete_job


# ---------------------------------------------------------------- test_embedding.py


def test_embedding__test_from_inlined(api_client):
    """test_embedding.py::test_from_inlined ('Gemini Enterprise Agent Platform' on Vertex)."""

    def create():
        return api_client.batches.create_embeddings(
            model=_MLDEV_EMBEDDING_MODEL,
            src={"inlined_requests": _INLINED_EMBED_CONTENT_REQUESTS},
            config={
                "display_name": _DISPLAY_NAME,
            },
        )

    if api_client.vertexai:
        with pytest.raises(ValueError, match="Gemini Enterprise Agent Platform"):
            create()
        return
    batch_job = create()
    job = succeeded(api_client, batch_job.name)  # check: three embeddings of 64 values
    embeddings = job.dest.inlined_embed_content_responses
    assert len(embeddings) == 3
    assert all(len(e.response.embedding.values) == 64 for e in embeddings), embeddings


def test_embedding__test_async_from_inline(api_client):
    """test_embedding.py::test_async_from_inline."""
    with pytest.raises(ValueError) if api_client.vertexai else _no_raise():
        batch_job = asyncio.run(
            api_client.aio.batches.create_embeddings(
                model=_MLDEV_EMBEDDING_MODEL,
                src={"inlined_requests": _INLINED_EMBED_CONTENT_REQUESTS},
            )
        )
        assert batch_job.name.startswith("batches/")


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_embedding__test_from_file(api_client, tmp_path, mode):
    """test_embedding.py::test_from_file / test_async_from_file."""
    if api_client.vertexai:
        _EMBED_CONTENT_FILE_NAME = "files/mq9e3mg3u2y5"
    else:
        _EMBED_CONTENT_FILE_NAME = upload(  # glue
            api_client, tmp_path, "embed.jsonl", FILE_EMBED_CONTENT_REQUESTS, "jsonl"
        ).name
    with pytest.raises(ValueError) if api_client.vertexai else _no_raise():
        kwargs = {
            "model": _MLDEV_EMBEDDING_MODEL,
            "src": {"file_name": _EMBED_CONTENT_FILE_NAME},
            "config": {
                "display_name": _DISPLAY_NAME,
            },
        }
        if mode == "sync":
            batch_job = api_client.batches.create_embeddings(**kwargs)
        else:
            batch_job = asyncio.run(api_client.aio.batches.create_embeddings(**kwargs))
        assert batch_job.name.startswith("batches/")
        assert batch_job.model == "models/" + _MLDEV_EMBEDDING_MODEL  # Converted to Gemini full name.


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_embedding__test_get_inline(api_client, mode):
    """test_embedding.py::test_get_inline / test_async_get_inline."""
    if api_client.vertexai:
        name = "batches/wdx71o8cgbzoa6gg3be1mg7g8ulrhapcjgo3"
    else:
        name = api_client.batches.create_embeddings(  # glue: an inline embeddings job, finished
            model=_MLDEV_EMBEDDING_MODEL, src={"inlined_requests": _INLINED_EMBED_CONTENT_REQUESTS}
        ).name
        finished(api_client, name)
    with pytest.raises(ValueError) if api_client.vertexai else _no_raise():
        if mode == "sync":
            batch_job = api_client.batches.get(name=name)
        else:
            batch_job = asyncio.run(api_client.aio.batches.get(name=name))
        assert batch_job.dest.inlined_embed_content_responses is not None


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_embedding__test_get_file(api_client, tmp_path, mode):
    """test_embedding.py::test_get_file / test_async_get_file."""
    if api_client.vertexai:
        name = "batches/507oatd242het8ox60pwsmn7tcmtkrj8itff"
    else:
        file_name = upload(api_client, tmp_path, "embed.jsonl", FILE_EMBED_CONTENT_REQUESTS, "jsonl").name  # glue
        name = api_client.batches.create_embeddings(model=_MLDEV_EMBEDDING_MODEL, src={"file_name": file_name}).name
        finished(api_client, name)
    with pytest.raises(ValueError) if api_client.vertexai else _no_raise():
        if mode == "sync":
            batch_job = api_client.batches.get(name=name)
        else:
            batch_job = asyncio.run(api_client.aio.batches.get(name=name))
        assert batch_job.dest.file_name is not None


class _no_raise:
    """The sources' ``pytest_helper.exception_if_vertex/mldev`` in the mode that expects no exception."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


# ---------------------------------------------------------------- test_get.py


def test_get__test_get_batch_job(api_client, seed_gcs):
    """test_get.py::test_get_batch_job (a Vertex AI job by bare id; 'Invalid batch job name' on MLDev)."""
    if not api_client.vertexai:
        with pytest.raises(ValueError, match="Invalid batch job name"):
            api_client.batches.get(name="5798522612028014592")
        return
    _BATCH_JOB_NAME = bare_id(live_job(api_client, seed_gcs).name)  # glue
    batch_job = api_client.batches.get(name=_BATCH_JOB_NAME)
    assert batch_job.name.endswith(f"/batchPredictionJobs/{_BATCH_JOB_NAME}")  # check


def test_get__test_get_batch_operation(api_client):
    """test_get.py::test_get_batch_operation (MLDev; 'Invalid batch job name' on Vertex)."""
    if api_client.vertexai:
        with pytest.raises(ValueError, match="Invalid batch job name"):
            api_client.batches.get(name="batches/z2p8ksus4lyxt25rntl3fpd67p2niw4hfij5")
        return
    _MLDEV_BATCH_OPERATION_NAME = live_job(api_client).name  # glue
    batch_job = api_client.batches.get(name=_MLDEV_BATCH_OPERATION_NAME)
    assert batch_job.name == _MLDEV_BATCH_OPERATION_NAME  # check


def test_get__test_get_batch_job_with_invalid_name(api_client):
    """test_get.py::test_get_batch_job_with_invalid_name."""
    with pytest.raises(ValueError, match="Invalid batch job name"):
        api_client.batches.get(name=_INVALID_BATCH_JOB_NAME)


def test_get__test_async_get(api_client, seed_gcs):
    """test_get.py::test_async_get."""
    client = api_client
    job = live_job(client, seed_gcs)  # glue
    if client.vertexai:
        name = bare_id(job.name)
    else:
        name = job.name
    batch_job = asyncio.run(client.aio.batches.get(name=name))

    assert batch_job


# ---------------------------------------------------------------- test_list.py, shared/batches/test_list.py


@pytest.mark.parametrize("page_size", [5, 2], ids=["batches-test_list", "shared-test_list"])
def test_list__test_list_batch_jobs(api_client, seed_gcs, page_size):
    """test_list.py::test_list_batch_jobs (page_size=5) and shared/batches/test_list.py::test_list_batch_jobs (2)."""
    made = [live_job(api_client, seed_gcs).name for _ in range(page_size + 1)]  # glue: more than a page
    pager = api_client.batches.list(config=types.ListBatchJobsConfig(page_size=page_size))
    assert len(pager.page) == page_size  # check: a full first page, then the rest
    assert sorted(job.name for job in pager) == sorted(made)


def test_list__test_list_batch_jobs_with_config(api_client, seed_gcs):
    """test_list.py::test_list_batch_jobs_with_config: an AIP-160 filter (Vertex AI; the MLDev message)."""
    config = types.ListBatchJobsConfig(
        filter='display_name:"genai_*"',
        page_size=5,
    )
    if not api_client.vertexai:
        with pytest.raises(
            ValueError,
            match="filter parameter is only supported in Gemini Enterprise Agent Platform mode, not in Gemini "
            "Developer API mode.",
        ):
            api_client.batches.list(config=config)
        return
    other = live_job(api_client, seed_gcs).name  # glue: a job named test_batch, and one named genai_batch_job_...
    seed_gcs(_GENERATE_CONTENT_GCS_INPUT_FILE, GCS_GENERATE_CONTENT_REQUESTS)
    genai = api_client.batches.create(model=_GEMINI_MODEL, src=_GENERATE_CONTENT_GCS_INPUT_FILE).name
    listed = [job.name for job in api_client.batches.list(config=config)]
    assert listed == [genai], (listed, other)  # check


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_list__test_pager(api_client, seed_gcs, mode):
    """test_list.py::test_pager / test_async_pager."""
    live_job(api_client, seed_gcs)  # glue: one job to list
    if mode == "sync":
        batch_jobs = api_client.batches.list(config={"page_size": 10})
        assert "content-type" in batch_jobs.sdk_http_response.headers
    else:
        batch_jobs = asyncio.run(api_client.aio.batches.list(config={"page_size": 10}))
        assert "Content-Type" in batch_jobs.sdk_http_response.headers
    assert batch_jobs.name == "batch_jobs"
    assert batch_jobs.page_size == 10
    assert len(batch_jobs) <= 10

    # Iterate through the first page. Otherwise, too many batches are returned.
    for _ in batch_jobs.page:
        pass


# ---------------------------------------------------------------- shared/batches/


def test_shared__test_create_delete_mldev(api_client):
    """shared/batches/test_create_delete.py::test_create_delete_mldev (not supported on Vertex)."""
    client = api_client

    def create_delete(client, parameters):
        batch_job = client.batches.create(
            model=parameters.model,
            src=parameters.src,
            config=parameters.config,
        )
        # if pending then don't delete to avoid error
        batch_job = client.batches.get(name=batch_job.name)
        if batch_job.state != types.JobState.JOB_STATE_PENDING:
            client.batches.delete(name=batch_job.name)
        return batch_job  # check

    parameters = types._CreateBatchJobParameters(model=SHARED_GEMINI_MODEL, src=SKY)
    if client.vertexai:
        with pytest.raises(ValueError, match="not supported in Gemini Enterprise Agent Platform."):
            create_delete(client, parameters)
        return
    batch_job = create_delete(client, parameters)
    if batch_job.state != types.JobState.JOB_STATE_PENDING:  # check: deleted
        with pytest.raises(errors.ClientError):
            client.batches.get(name=batch_job.name)


def test_shared__test_create_get_cancel_mldev(held_api_client):
    """shared/batches/test_create_get_cancel.py::test_create_get_cancel_mldev ("Exactly one of " on Vertex)."""
    client = held_api_client

    def create_get_cancel(client, parameters):
        batch_job = client.batches.create(
            model=parameters.model,
            src=parameters.src,
            config=parameters.config,
        )
        batch_job = client.batches.get(name=batch_job.name)
        client.batches.cancel(name=batch_job.name)
        return batch_job  # check

    parameters = types._CreateBatchJobParameters(model=SHARED_GEMINI_MODEL, src=SKY)
    if client.vertexai:
        with pytest.raises(ValueError, match="Exactly one of "):
            create_get_cancel(client, parameters)
        return
    batch_job = create_get_cancel(client, parameters)
    assert finished(client, batch_job.name).state == "JOB_STATE_CANCELLED"  # check

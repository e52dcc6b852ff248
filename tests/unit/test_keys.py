"""Request keys: stable on any machine, different whenever the answer could differ."""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gemini_batch.core import keys
from gemini_batch.core.keys import canonical_json, normalize_model, request_key

SHA = st.binary(max_size=64).map(lambda data: hashlib.sha256(data).hexdigest())
PAGES = st.none() | st.tuples(st.integers(1, 500), st.integers(0, 500)).map(lambda p: (p[0], p[0] + p[1]))
MODELS = st.sampled_from(["gemini-2.5-flash", "gemini-2.5-pro", "gemini-3-flash-preview", "gemini-2.0-flash"])
JSON_SCALARS = st.none() | st.booleans() | st.integers(-(10**6), 10**6) | st.text(max_size=10)
SCHEMAS = st.none() | st.dictionaries(
    st.text(min_size=1, max_size=8),
    st.recursive(
        JSON_SCALARS,
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
        max_leaves=8,
    ),
    max_size=5,
)
OPTIONS = st.fixed_dictionaries(
    {"thinking": st.sampled_from(["low", "model-default"]), "max_output_tokens": st.none() | st.integers(1, 65536)}
)


def reordered(value):
    """The same JSON value with every object's keys in reverse insertion order."""
    if isinstance(value, dict):
        return {k: reordered(value[k]) for k in reversed(list(value))}
    if isinstance(value, list):
        return [reordered(v) for v in value]
    return value


@given(sha=SHA, pages=PAGES, prompt=st.text(max_size=200), model=MODELS, schema=SCHEMAS, options=OPTIONS)
def test_same_inputs_give_the_same_key_whatever_the_key_order(sha, pages, prompt, model, schema, options):
    first = request_key(sha, pages, prompt=prompt, model=model, response_schema=schema, options=options)
    again = request_key(
        sha,
        pages,
        prompt=prompt,
        model=f"models/{model}",
        response_schema=reordered(schema),
        options=reordered(options),
    )
    assert first == again
    assert re.fullmatch(r"[0-9a-f]{64}", first)


@given(
    sha=SHA,
    pages=PAGES,
    prompt=st.text(max_size=100),
    model=MODELS,
    schema=SCHEMAS,
    options=OPTIONS,
    change=st.sampled_from(["sha", "pages", "prompt", "model", "schema", "options"]),
)
def test_changing_any_input_changes_the_key(sha, pages, prompt, model, schema, options, change):
    args = {"sha": sha, "pages": pages, "prompt": prompt, "model": model, "schema": schema, "options": options}
    changed = dict(args)
    changed[change] = {
        "sha": hashlib.sha256(sha.encode()).hexdigest(),
        "pages": (1, 1) if pages != (1, 1) else (1, 2),
        "prompt": prompt + " ",
        "model": "gemini-2.5-flash-lite" if model != "gemini-2.5-flash-lite" else "gemini-2.5-flash",
        "schema": {**(schema or {}), "added-by-test": {"type": "string"}},  # longer than any generated key
        "options": {**options, "max_output_tokens": (options["max_output_tokens"] or 0) + 1},
    }[change]

    def key(a):
        return request_key(
            a["sha"],
            a["pages"],
            prompt=a["prompt"],
            model=a["model"],
            response_schema=a["schema"],
            options=a["options"],
        )

    assert key(args) != key(changed)


@given(sha=SHA, prompt=st.text(max_size=50))
def test_a_new_pipeline_version_changes_every_key(sha, prompt):
    before = request_key(sha, None, prompt=prompt, model="gemini-2.5-flash", response_schema=None)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(keys, "PIPELINE_VERSION", keys.PIPELINE_VERSION + "-next")
        after = request_key(sha, None, prompt=prompt, model="gemini-2.5-flash", response_schema=None)
    assert before != after


def test_no_options_and_empty_options_are_the_same_request():
    sha = hashlib.sha256(b"doc").hexdigest()
    assert request_key(sha, None, prompt="p", model="m", response_schema=None) == request_key(
        sha,
        None,
        prompt="p",
        model="m",
        response_schema=None,
        options={},
    )


def test_keys_match_in_a_fresh_interpreter_with_another_hash_seed():
    """str hashing is salted per process; keys must not depend on it."""
    code = (
        "from gemini_batch.core.keys import request_key;"
        "print(request_key('a'*64, (1, 50), prompt='Extract', model='gemini-2.5-flash',"
        " response_schema={'type': 'object', 'properties': {'b': {}, 'a': {}}}, options={'y': 1, 'x': 2}))"
    )
    here = request_key(
        "a" * 64,
        (1, 50),
        prompt="Extract",
        model="gemini-2.5-flash",
        response_schema={"type": "object", "properties": {"b": {}, "a": {}}},
        options={"y": 1, "x": 2},
    )
    for seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
        assert out.stdout.strip() == here


@pytest.mark.parametrize(
    "model",
    [
        "gemini-2.5-flash",
        "models/gemini-2.5-flash",
        "publishers/google/models/gemini-2.5-flash",
        "projects/p/locations/us-central1/publishers/google/models/gemini-2.5-flash",
        " gemini-2.5-flash ",
    ],
)
def test_model_names_normalize_to_the_bare_id(model):
    assert normalize_model(model) == "gemini-2.5-flash"


def test_canonical_json_sorts_keys_and_drops_whitespace():
    assert canonical_json({"b": [1, {"d": 1, "c": 2}], "a": None}) == b'{"a":null,"b":[1,{"c":2,"d":1}]}'


@pytest.mark.parametrize(
    ("sha", "pages", "model", "message"),
    [
        ("A" * 64, None, "m", "document_sha256"),
        ("a" * 63, None, "m", "document_sha256"),
        ("a" * 64, (0, 3), "m", "pages"),
        ("a" * 64, (5, 4), "m", "pages"),
        ("a" * 64, None, "models/", "names no model"),
    ],
)
def test_bad_inputs_are_named(sha, pages, model, message):
    with pytest.raises(ValueError, match=message):
        request_key(sha, pages, prompt="p", model=model, response_schema=None)

"""``python -m gemini_emulator.gcs start ...``: gcp-storage-emulator, honouring generation preconditions (and
keeping the location a bucket is created in).

gcp-storage-emulator ignores ``ifGenerationMatch`` and its kin, so an exclusive create (``ifGenerationMatch=0``,
what gcsfs ``open(..., "xb")`` and google-cloud-storage ``if_generation_match=0`` send) silently overwrites, and a
race test on it passes for the wrong reason. This wraps the emulator's own object handlers, in its routing tables,
so every write answers 412 ``conditionNotMet`` as real GCS does when a precondition does not hold. Arguments and
environment (STORAGE_BASE, STORAGE_DIR) are gcp-storage-emulator's.

Each write runs under one lock, from the precondition check to the stored object, so of two racing exclusive
creates exactly one wins whatever the server's threading. Creates are checked inside the write itself (the
emulator's ``Storage.create_file``), which is also where a resumable upload finalizes: real GCS takes a resumable
upload's preconditions when it is initiated and evaluates them when it is finalized.
"""

from __future__ import annotations

import functools
import re
import sys
import threading
import time
from http import HTTPStatus
from urllib.parse import parse_qs, urlsplit

from gcp_storage_emulator import __main__ as emulator_cli
from gcp_storage_emulator import server
from gcp_storage_emulator.handlers import buckets, objects
from gcp_storage_emulator.storage import RESUMABLE_DIR

_LOCK = threading.Lock()
_emulator_parse_batch_item = server._parse_batch_item
_XML_HEADERS = {
    "GenerationMatch": "x-goog-if-generation-match",
    "MetagenerationMatch": "x-goog-if-metageneration-match",
}
_SESSION_KEY = "x-gemini-emulator-preconditions"  # an upload session's preconditions, until it finalizes
_MESSAGE = "At least one of the pre-conditions you specified did not hold."
PRECONDITION_FAILED = {
    "error": {
        "code": 412,
        "message": _MESSAGE,
        "errors": [
            {
                "domain": "global",
                "reason": "conditionNotMet",
                "message": _MESSAGE,
                "locationType": "header",
                "location": "If-Match",
            }
        ],
    }
}
_XML_ERROR = "<?xml version='1.0' encoding='UTF-8'?><Error><Code>{code}</Code><Message>{message}</Message></Error>"


class _Unmet(Exception):
    """A precondition did not hold: the request is answered 412 and nothing is written."""


class _Invalid(Exception):
    """A precondition's value is not a number: the request is answered 400, as real GCS does."""


# precondition -> (the object field it compares, whether it must equal)
_TESTS = {
    "GenerationMatch": ("generation", True),
    "GenerationNotMatch": ("generation", False),
    "MetagenerationMatch": ("metageneration", True),
    "MetagenerationNotMatch": ("metageneration", False),
}


def _number(name: str, value) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        raise _Invalid(f"Invalid value for {name}: {value!r}") from None


def _conditions(query: dict, prefix: str = "if") -> dict[str, int]:
    """The preconditions in a parsed query string; ``prefix="ifSource"`` reads a copy's source ones."""
    return {name: _number(prefix + name, query[prefix + name][0]) for name in _TESTS if prefix + name in query}


def _check(conditions: dict[str, int], obj: dict | None) -> None:
    """Raise ``_Unmet`` unless ``obj`` (None: no live object, generation 0) satisfies every condition."""
    actual = {
        "generation": int(obj["generation"]) if obj else 0,
        "metageneration": int(obj["metageneration"]) if obj else None,
    }
    for name, wanted in conditions.items():
        field, must_equal = _TESTS[name]
        if (actual[field] == wanted) != must_equal:
            raise _Unmet(name)


def _live(storage, bucket_name: str, object_id: str) -> dict | None:
    return storage.objects.get(bucket_name, {}).get(object_id)


class _Guarded:
    """The emulator's Storage as one write request sees it: each object it creates must satisfy ``conditions``
    first, and gets a generation above its predecessor's (the resource returned is the one stored, so that is the
    generation later requests compare against)."""

    def __init__(self, storage, conditions: dict[str, int]):
        self._storage, self._conditions = storage, conditions

    def __getattr__(self, name):
        return getattr(self._storage, name)

    def create_resumable_upload(self, bucket_name, file_name, file_obj):
        """The preconditions travel with the session (persisted with it) to its finalization."""
        file_obj[_SESSION_KEY] = self._conditions
        return self._storage.create_resumable_upload(bucket_name, file_name, file_obj)

    def create_file(self, bucket_name, file_name, content, file_obj, file_id=None):
        conditions = file_obj.pop(_SESSION_KEY, {}) if file_id else self._conditions
        previous = _live(self._storage, bucket_name, file_name)
        try:
            _check(conditions, previous)
        except _Unmet:
            if file_id:  # a finalization that failed ends its session, which would otherwise block deleting the bucket
                self._storage.delete_resumable_file_obj(file_id)
                self._storage._delete_file(RESUMABLE_DIR, self._storage.safe_id(file_id))
                self._storage._write_config_to_file()
            raise
        # A resumable upload's resource was made (and its generation drawn) when the session started.
        generation = max(time.time_ns(), int(previous["generation"]) + 1 if previous else 0)
        file_obj.update(generation=str(generation), metageneration="1", id=f"{bucket_name}/{file_name}/{generation}")
        if file_obj.get("mediaLink"):
            file_obj["mediaLink"] = re.sub(r"generation=\d+", f"generation={generation}", file_obj["mediaLink"])
        self._storage.create_file(bucket_name, file_name, content, file_obj, file_id)


def _invalid(err: _Invalid) -> dict:
    return {
        "error": {
            "code": 400,
            "message": str(err),
            "errors": [{"domain": "global", "reason": "invalid", "message": str(err)}],
        }
    }


def _reject(response, status: HTTPStatus, body: dict, xml: bool) -> None:
    response.status = status
    if xml:
        code = "PreconditionFailed" if status == HTTPStatus.PRECONDITION_FAILED else "InvalidArgument"
        response.write_file(
            _XML_ERROR.format(code=code, message=body["error"]["message"]).encode(), "application/xml; charset=UTF-8"
        )
    else:
        response.json(body)


def _guard(handler, before=None, xml: bool = False):
    """``handler`` under the lock, after ``before(request, storage, conditions)`` (checks on objects other than the
    ones it creates), with its creates guarded; a failed precondition answers 412, a malformed one 400."""

    @functools.wraps(handler)
    def guarded(request, response, storage, *args, **kwargs):
        with _LOCK:
            try:
                if xml:
                    conditions = {
                        name: _number(header, request.get_header(header))
                        for name, header in _XML_HEADERS.items()
                        if request.get_header(header) is not None
                    }
                else:
                    conditions = _conditions(request.query)
                if before:
                    before(request, storage, conditions)
                handler(request, response, _Guarded(storage, conditions), *args, **kwargs)
            except _Unmet:
                _reject(response, HTTPStatus.PRECONDITION_FAILED, PRECONDITION_FAILED, xml)
            except _Invalid as err:
                _reject(response, HTTPStatus.BAD_REQUEST, _invalid(err), xml)

    return guarded


def _locked(handler):
    """A batch: its parts, each guarded on its own (``_guard_batch_item``), run as one with the lock held."""

    @functools.wraps(handler)
    def locked(*args, **kwargs):
        with _LOCK:
            handler(*args, **kwargs)

    return locked


def _target_if_live(request, storage, conditions):
    """Delete and patch: a missing object is the handler's 404, not a failed precondition."""
    obj = _live(storage, request.params["bucket_name"], request.params["object_id"])
    if obj is not None:
        _check(conditions, obj)


def _target(request, storage, conditions):
    """Restore replaces the live object before it creates the new one, so its preconditions are checked first."""
    _check(conditions, _live(storage, request.params["bucket_name"], request.params["object_id"]))


def _source(request, storage, conditions):
    """Copy and rewrite: ``ifSource*`` on the source object (a missing one is the handler's 404)."""
    obj = _live(storage, request.params["bucket_name"], request.params["object_id"])
    if obj is not None:
        _check(_conditions(request.query, "ifSource"), obj)


def _compose_sources(request, storage, conditions):
    """Compose: each source's ``objectPreconditions.ifGenerationMatch``."""
    for source in (request.data or {}).get("sourceObjects", []):
        wanted = (source.get("objectPreconditions") or {}).get("ifGenerationMatch")
        obj = _live(storage, request.params["bucket_name"], source["name"])
        if wanted is not None and obj is not None:
            _check({"GenerationMatch": _number("ifGenerationMatch", wanted)}, obj)


def _guard_batch_item(handler):
    """One part of a batch (PATCH, DELETE, or POST copyTo), with the preconditions of its own request line;
    the whole batch already holds the lock."""

    @functools.wraps(handler)
    def guarded(request, item, storage, bucket_name, object_id, meta, response):
        query = item.get("query", {})
        try:
            obj = _live(storage, bucket_name, object_id) if object_id else None
            if obj is not None:
                _check(_conditions(query, "ifSource") if item.get("method") == "POST" else _conditions(query), obj)
            return handler(request, item, _Guarded(storage, _conditions(query)), bucket_name, object_id, meta, response)
        except _Unmet:
            objects._batch_write_json(response, "HTTP/1.1 412 Precondition Failed", PRECONDITION_FAILED)
        except _Invalid as err:
            objects._batch_write_json(response, "HTTP/1.1 400 Bad Request", _invalid(err))
        return True

    return guarded


def _parse_batch_item_with_query(item):
    """The emulator's batch part parser drops the request line's query string, which carries the preconditions."""
    parsed = _emulator_parse_batch_item(item)
    request_line = next((line for line in item.get_payload().splitlines() if line.strip()), "")
    parts = request_line.split()
    parsed["query"] = parse_qs(urlsplit(parts[1]).query) if len(parts) > 1 else {}
    return parsed


_MULTI_REGIONS = frozenset({"US", "EU", "ASIA"})


def _insert_bucket(request, response, storage, *args, **kwargs):
    """gcp-storage-emulator puts every new bucket in the US multi-region whatever the create asks; real GCS keeps
    the location asked for, upper-cased, with its type (what a Vertex AI job's region is checked against)."""
    data = request.data or {}
    name, location = data.get("name"), data.get("location")
    if not name or not location or storage.get_bucket(name):
        return buckets.insert(request, response, storage, *args, **kwargs)  # the emulator's own answer, 400 and 409
    bucket = buckets.create_bucket(name, storage)
    bucket["location"] = location.upper()
    placement = data.get("customPlacementConfig")
    if placement:
        bucket["customPlacementConfig"] = {"dataLocations": [r.upper() for r in placement.get("dataLocations", [])]}
    if bucket["location"] in _MULTI_REGIONS and not placement:
        bucket["locationType"] = "multi-region"
    else:  # a region has a dash (US-CENTRAL1); a predefined dual-region has none (NAM4)
        bucket["locationType"] = "region" if "-" in bucket["location"] else "dual-region"
    storage.create_bucket(name, bucket)
    response.json(bucket)


def install() -> None:
    """Swap the guarded handlers into gcp-storage-emulator's routing tables; call once, before serving."""
    guards = {
        objects.insert: _guard(objects.insert),  # media, multipart, resumable initiation (and chunks POSTed to it)
        objects.upload_partial: _guard(objects.upload_partial),  # resumable chunks; the last one finalizes
        objects.xml_upload: _guard(objects.xml_upload, xml=True),
        objects.copy: _guard(objects.copy, _source),
        objects.rewrite: _guard(objects.rewrite, _source),
        objects.compose: _guard(objects.compose, _compose_sources),
        objects.delete: _guard(objects.delete, _target_if_live),
        objects.patch: _guard(objects.patch, _target_if_live),
        objects.restore: _guard(objects.restore, _target),
        objects.batch: _locked(objects.batch),
        buckets.insert: _insert_bucket,
    }
    for _regex, methods in server.HANDLERS:
        for method, handler in methods.items():
            methods[method] = guards.get(handler, handler)
    objects.insert = guards[objects.insert]  # the Router's fallback for uploads POSTed without the /upload prefix
    for method, handler in objects._BATCH_METHOD_HANDLERS.items():
        objects._BATCH_METHOD_HANDLERS[method] = _guard_batch_item(handler)
    server._parse_batch_item = _parse_batch_item_with_query


def main(argv: list[str] | None = None) -> None:
    install()
    emulator_cli.main(sys.argv[1:] if argv is None else argv)


if __name__ == "__main__":
    main()

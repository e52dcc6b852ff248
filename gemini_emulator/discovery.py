"""Google's published Discovery documents, and a check of JSON values against their schemas.

The emulator follows these documents. Every request body it reads goes through ``Discovery.normalise``
first: the proto3 JSON mapping as Google's front end applies it (both name forms, either base64 alphabet,
integers as numbers or strings, enum names in any case), giving the one canonical form that the rest of
the emulator reads, or the service's messages for what the mapping refuses (unknown fields, bad values).
Its tests check every response body against the documents with ``Discovery.problems`` (field names,
types, int64 as strings, enums). The Developer API document is shipped beside this module
(``discovery/``, trimmed to the batches, files, media and models resources and the schemas they reach);
the Vertex AI one is read from the google-api-python-client wheel, which the Google provider installs.
"""

from __future__ import annotations

import base64
import binascii
import functools
import json
import math
import re
from dataclasses import dataclass
from importlib import resources
from typing import Any

_INT64 = re.compile(r"^-?[0-9]+$")
_INTEGRAL = re.compile(r"^-?[0-9]+(\.0*)?([eE]\+?[0-9]+)?$")
_INT_RANGES = {
    "int32": (-(2**31), 2**31 - 1),
    "uint32": (0, 2**32 - 1),
    "int64": (-(2**63), 2**63 - 1),
    "uint64": (0, 2**64 - 1),
}
_FLOAT_WORDS = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}
_NO_FIELD = "Cannot find field."
_DATETIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,9})?(Z|[+-]\d\d:\d\d)$")


@dataclass(frozen=True)
class Discovery:
    """One Discovery document's schemas; a schema named in ``omitted`` is referenced but not checked."""

    name: str
    schemas: dict[str, dict]
    omitted: frozenset[str]

    def problems(self, value: Any, schema: str | dict, path: str = "") -> list[str]:
        """What in ``value`` (a body the emulator sends) the schema does not allow: unknown fields, wrong
        types, enums and formats, in the canonical form (camelCase names, int64 as strings)."""
        found: list[str] = []
        self._check(value, {"$ref": schema} if isinstance(schema, str) else schema, path or "$", found)
        return found

    def normalise(self, value: Any, schema: str | dict, path: str = "") -> tuple[Any, list[str]]:
        """A request body as the service's front end parses it (the proto3 JSON mapping), and what it refuses.

        Accepted, and given in canonical form: field names as lowerCamelCase or as the proto's snake_case,
        at every level (map keys and ``any`` values are kept as sent); bytes in standard or URL-safe base64,
        padded or not (canonical: standard, padded); integers as numbers, integral floats or strings (int64:
        canonical a string); floats as numbers or strings (``NaN``, ``Infinity``); enum names in any case
        or their numbers (canonical: the name); ``null`` for a field (left out). Refused, in the service's
        words, naming the field by its proto path: unknown fields, a field given twice, wrong types.
        """
        found: list[str] = []
        out = self._normalise(value, {"$ref": schema} if isinstance(schema, str) else schema, path, found)
        return out, found

    def _normalise(self, value: Any, schema: dict, path: str, found: list[str]) -> Any:
        if "$ref" in schema:
            if schema["$ref"] in self.omitted:
                return value
            schema = self.schemas[schema["$ref"]]
        kind = schema.get("type")
        if kind in (None, "any"):
            return value
        if kind == "object":
            if not isinstance(value, dict):
                found.append(
                    f"Invalid value at '{path}' (type.googleapis.com/{schema.get('id', 'Struct')}), {_show(value)}"
                )
                return value
            properties, extra = schema.get("properties") or {}, schema.get("additionalProperties")
            if not properties and extra is not None:  # a map: keys as sent
                return {k: self._normalise(v, extra, f"{path}[{k!r}]", found) for k, v in value.items()}
            names = _names(schema)
            out: dict[str, Any] = {}
            for name, item in value.items():
                canonical = names.get(name)
                if canonical is None:
                    if extra is not None or name.startswith("@"):
                        out[name] = item
                        continue
                    found.append(
                        f"Invalid JSON payload received. Unknown name {json.dumps(name)} at '{path}': {_NO_FIELD}"
                    )
                    continue
                here = f"{path}.{_snake(canonical)}" if path else _snake(canonical)
                if canonical in out:
                    found.append(f"Invalid JSON payload received. Duplicate field {json.dumps(name)} at '{path}'.")
                    continue
                if item is None:  # proto3 JSON: null is the field's default
                    continue
                out[canonical] = self._normalise(item, properties[canonical], here, found)
            return out
        if kind == "array":
            if not isinstance(value, list):
                found.append(f"Invalid value at '{path}' (TYPE_ARRAY), {_show(value)}: expected a list")
                return value
            return [self._normalise(v, schema.get("items") or {}, f"{path}[{i}]", found) for i, v in enumerate(value)]
        fmt = schema.get("format")
        if kind == "integer" or (kind == "string" and fmt in ("int64", "uint64")):
            number = _integer(value, fmt or "int32")
            if number is None:
                found.append(f"Invalid value at '{path}' (TYPE_{(fmt or 'int32').upper()}), {_show(value)}")
                return value
            return number if kind == "integer" else str(number)
        if kind == "number":
            if isinstance(value, bool) or not isinstance(value, (int, float, str)):
                found.append(f"Invalid value at '{path}' (TYPE_{(fmt or 'double').upper()}), {_show(value)}")
                return value
            if isinstance(value, str):
                try:
                    return _FLOAT_WORDS[value] if value in _FLOAT_WORDS else float(value)
                except ValueError:
                    found.append(f"Invalid value at '{path}' (TYPE_{(fmt or 'double').upper()}), {_show(value)}")
            return value
        if kind == "boolean":
            if not isinstance(value, bool):
                found.append(f"Invalid value at '{path}' (TYPE_BOOL), {_show(value)}")
            return value
        if kind == "string":
            if "enum" in schema:
                return self._enum(value, schema["enum"], path, found)
            if not isinstance(value, str):
                found.append(f"Invalid value at '{path}' (TYPE_STRING), {_show(value)}")
                return value
            if fmt == "byte":
                data = decode_bytes(value)
                if data is None:
                    found.append(f"Invalid value at '{path}' (TYPE_BYTES), Base64 decoding failed for {_show(value)}")
                    return value
                return base64.b64encode(data).decode("ascii")
        return value

    @staticmethod
    def _enum(value: Any, names: list[str], path: str, found: list[str]) -> Any:
        if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < len(names):
            return names[value]
        if isinstance(value, str):
            for name in names:
                if name.lower() == value.lower():
                    return name
        found.append(f"Invalid value at '{path}' (TYPE_ENUM), {_show(value)}")
        return value

    def _check(self, value: Any, schema: dict, path: str, found: list[str]) -> None:
        if "$ref" in schema:
            ref = schema["$ref"]
            if ref in self.omitted:
                return
            schema = self.schemas[ref]
        kind = schema.get("type")
        if kind in (None, "any"):
            return
        if kind == "object":
            if not isinstance(value, dict):
                found.append(f"{path}: expected an object, got {type(value).__name__}")
                return
            properties, extra = schema.get("properties") or {}, schema.get("additionalProperties")
            for name, item in value.items():
                field = properties.get(name)
                if field is not None:
                    self._check(item, field, f"{path}.{name}", found)
                elif extra is not None:
                    self._check(item, extra, f"{path}.{name}", found)
                elif not name.startswith("@"):
                    found.append(f"{path}: unknown field {name!r}")
        elif kind == "array":
            if not isinstance(value, list):
                found.append(f"{path}: expected an array, got {type(value).__name__}")
                return
            for i, item in enumerate(value):
                self._check(item, schema.get("items") or {}, f"{path}[{i}]", found)
        elif kind == "string":
            if not isinstance(value, str):
                found.append(f"{path}: expected a string, got {value!r}")
            elif "enum" in schema and value not in schema["enum"]:
                found.append(f"{path}: {value!r} is not one of {schema['enum']}")
            elif schema.get("format") in ("int64", "uint64") and not _INT64.match(value):
                found.append(f"{path}: {value!r} is not an int64 string")
            elif schema.get("format") == "google-datetime" and not _DATETIME.match(value):
                found.append(f"{path}: {value!r} is not an RFC 3339 time")
        elif kind == "integer":
            if not isinstance(value, int) or isinstance(value, bool):
                found.append(f"{path}: expected an integer, got {value!r}")
        elif kind == "number":
            if not isinstance(value, (int, float)) or isinstance(value, bool):
                found.append(f"{path}: expected a number, got {value!r}")
        elif kind == "boolean" and not isinstance(value, bool):
            found.append(f"{path}: expected a boolean, got {value!r}")


def _snake(name: str) -> str:
    """A field's proto name from its JSON name: ``generationConfig`` -> ``generation_config``."""
    return re.sub(r"([A-Z])", lambda m: "_" + m[1].lower(), name)


def _names(schema: dict) -> dict[str, str]:
    """Every name a field of ``schema`` may be given by (JSON and proto forms), to its JSON name."""
    properties = schema.get("properties") or {}
    return {**{_snake(name): name for name in properties}, **{name: name for name in properties}}


def _show(value: Any) -> str:
    text = json.dumps(value) if not isinstance(value, (dict, list)) else type(value).__name__
    return text if len(text) <= 80 else text[:77] + "..."


def _integer(value: Any, fmt: str) -> int | None:
    """An integer field's value: a number (integral floats too) or a string of one, within its range."""
    if isinstance(value, bool):
        return None
    if isinstance(value, float):
        number = int(value) if value.is_integer() else None
    elif isinstance(value, int):
        number = value
    elif isinstance(value, str) and _INTEGRAL.match(value.strip()):
        try:
            as_float = float(value)
            number = int(value) if re.fullmatch(r"-?[0-9]+", value.strip()) else int(as_float)
        except (ValueError, OverflowError):
            return None
    else:
        return None
    low, high = _INT_RANGES.get(fmt, _INT_RANGES["int64"])
    return number if number is not None and low <= number <= high else None


def decode_bytes(value: str) -> bytes | None:
    """A proto3 JSON ``bytes`` value: standard or URL-safe base64, padded or not; None when it is neither."""
    text = "".join(value.split())
    text = text.rstrip("=")
    if not re.fullmatch(r"[A-Za-z0-9+/_-]*", text) or len(text) % 4 == 1:
        return None
    if "-" in text or "_" in text:
        if "+" in text or "/" in text:
            return None
        text = text.replace("-", "+").replace("_", "/")
    try:
        return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError):
        return None


@functools.cache
def developer() -> Discovery:
    """The Gemini Developer API (``generativelanguage`` v1beta)."""
    data = json.loads(resources.files(__package__).joinpath("discovery", "generativelanguage.v1beta.json").read_text())
    return Discovery("generativelanguage.v1beta", data["schemas"], frozenset(data.get("_omitted", ())))


@functools.cache
def vertex() -> Discovery:
    """Vertex AI (``aiplatform`` v1), from the google-api-python-client wheel."""
    documents = resources.files("googleapiclient").joinpath("discovery_cache", "documents")
    data = json.loads(documents.joinpath("aiplatform.v1.json").read_text())
    return Discovery("aiplatform.v1", data["schemas"], frozenset())

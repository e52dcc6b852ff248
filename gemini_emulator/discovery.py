"""Google's published Discovery documents, and a check of JSON values against their schemas.

The emulator follows these documents: it refuses request fields they do not name (as the service does for
an inline batch), and its tests check every response body against them (field names, types, int64 as
strings, enums). The Developer API document is shipped beside this module (``discovery/``, trimmed to the
batches, files, media and models resources); the Vertex AI one is read from the google-api-python-client
wheel, which the Google provider installs.
"""

from __future__ import annotations

import functools
import json
import re
from dataclasses import dataclass
from importlib import resources
from typing import Any

_INT64 = re.compile(r"^-?[0-9]+$")
_DATETIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,9})?(Z|[+-]\d\d:\d\d)$")


@dataclass(frozen=True)
class Discovery:
    """One Discovery document's schemas; a schema named in ``omitted`` is referenced but not checked."""

    name: str
    schemas: dict[str, dict]
    omitted: frozenset[str]

    def problems(self, value: Any, schema: str | dict, path: str = "", *, input_names: bool = False) -> list[str]:
        """What in ``value`` the schema does not allow: unknown fields, wrong types, enums and formats.

        ``input_names``: a request, where proto JSON accepts snake_case names as well as camelCase ones.
        """
        found: list[str] = []
        self._check(value, {"$ref": schema} if isinstance(schema, str) else schema, path or "$", input_names, found)
        return found

    def _check(self, value: Any, schema: dict, path: str, input_names: bool, found: list[str]) -> None:
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
                field = properties.get(name) or (properties.get(_camel(name)) if input_names else None)
                if field is not None:
                    self._check(item, field, f"{path}.{name}", input_names, found)
                elif extra is not None:
                    self._check(item, extra, f"{path}.{name}", input_names, found)
                elif not name.startswith("@"):
                    found.append(f"{path}: unknown field {name!r}")
        elif kind == "array":
            if not isinstance(value, list):
                found.append(f"{path}: expected an array, got {type(value).__name__}")
                return
            for i, item in enumerate(value):
                self._check(item, schema.get("items") or {}, f"{path}[{i}]", input_names, found)
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


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(word.title() for word in rest)


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

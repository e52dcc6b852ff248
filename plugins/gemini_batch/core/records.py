"""The one codec of every record that is stored in a file or carried by XCom: a ``Record`` (a msgspec Struct),
encoded and decoded, and checked against its fields' types, in one pass.

Each record's fields are its JSON object's keys, in the order written. Every field is written, defaults
included; a key the record does not know (written by another version) is ignored, and a field added later has
a default, so a file written before it still reads. Statuses, routes and the like are ``StrEnum`` members:
written as their values, so their files are plain strings.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from enum import Enum
from typing import Any, ClassVar, TypeVar

import msgspec

if sys.version_info >= (3, 11):
    from enum import StrEnum
else:  # pragma: no cover - Python 3.10: a str Enum that prints and formats as its value, as StrEnum does

    class StrEnum(str, Enum):
        __str__ = str.__str__
        __format__ = str.__format__


__all__ = [
    "MutableRecord",
    "Record",
    "RecordError",
    "StrEnum",
    "convert",
    "decode",
    "encode",
    "encode_into",
    "to_builtins",
]

T = TypeVar("T")


class RecordError(ValueError):
    """A record that does not decode: its message names the kind of record and the field."""


class Record(msgspec.Struct, frozen=True, forbid_unknown_fields=False):
    """A stored record. ``kind`` names it in errors ("plan line", "outcome record", ...)."""

    kind: ClassVar[str] = "record"


class MutableRecord(msgspec.Struct, forbid_unknown_fields=False):
    """A stored record its owner updates in place before writing it again (a submission's progress)."""

    kind: ClassVar[str] = "record"


_encoder = msgspec.json.Encoder()


def encode(record: Any) -> bytes:
    """The record (or any builtin value holding records) as compact JSON."""
    return _encoder.encode(record)


def encode_into(record: Any, buffer: bytearray) -> None:
    """Append the record's JSON and a newline to ``buffer``: one line of a JSON lines file."""
    _encoder.encode_into(record, buffer, -1)
    buffer.append(10)


def to_builtins(record: Any) -> Any:
    """The record as the JSON it is written as, parsed (dicts, lists, strings, numbers): what XCom carries, and
    what a reader of the file gets."""
    return msgspec.json.decode(_encoder.encode(record))


_decoders: dict[Any, msgspec.json.Decoder] = {}


def _decoder(type_: Any) -> msgspec.json.Decoder:
    decoder = _decoders.get(type_)
    if decoder is None:
        decoder = _decoders[type_] = msgspec.json.Decoder(type_)
    return decoder


def decode(data: bytes | bytearray | memoryview | str, type_: type[T]) -> T:
    """The record of type ``type_`` in the JSON ``data``; RecordError names the kind and the field that is wrong."""
    try:
        return _decoder(type_).decode(data)
    except msgspec.DecodeError as exc:  # a ValidationError too
        raise RecordError(f"not a valid {_kind(type_)}: {exc}") from None


def convert(data: Mapping[str, Any], type_: type[T]) -> T:
    """The record of type ``type_`` from JSON already parsed (a dict read back, an XCom value); RecordError as
    ``decode``."""
    try:
        return msgspec.convert(data, type_)
    except msgspec.ValidationError as exc:
        raise RecordError(f"not a valid {_kind(type_)}: {exc}") from None


def _kind(type_: Any) -> str:
    kind = getattr(type_, "kind", None)
    return kind if isinstance(kind, str) else getattr(type_, "__name__", str(type_))

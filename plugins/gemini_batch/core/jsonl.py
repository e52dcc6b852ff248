"""The one way work files are written and read: JSON lines, one record each.

Records are ``records.Record`` structs (or plain dicts), encoded by the one
codec (``gemini_batch.core.records``); this module moves their lines to and
from a file, local or gs:// (``locations.open_file``: a local one through the OS).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
from collections.abc import Iterator
from typing import IO, TYPE_CHECKING, Any, TypeVar

import orjson

from gemini_batch.core import records
from gemini_batch.core.locations import is_local, open_file

if TYPE_CHECKING:  # Airflow is not imported at run time: a worker process parsing outputs does without it
    from airflow.sdk import ObjectStoragePath

log = logging.getLogger(__name__)
T = TypeVar("T")
WRITE_BATCH_BYTES = 2**20
COPY_CHUNK_BYTES = 4 * 2**20


class Writer:
    """Writes records (a ``Record`` or a dict) as JSON lines, in batches of about 1 MB (see ``writer``)."""

    def __init__(self, out: Any):
        self._out = out
        self._batch = bytearray()

    def __call__(self, record: Any) -> None:
        records.encode_into(record, self._batch)
        if len(self._batch) >= WRITE_BATCH_BYTES:
            self.flush()

    def encoded(self, line: bytes) -> None:
        """Write a record already encoded (its JSON, no newline)."""
        self._batch += line
        self._batch.append(10)
        if len(self._batch) >= WRITE_BATCH_BYTES:
            self.flush()

    def append_file(self, local_path: str) -> None:
        """Copy in the records of another JSON lines file (a local one written by ``writer``), as they are."""
        self.flush()
        copy_file(local_path, self._out)

    def flush(self) -> None:
        self._out.write(self._batch)
        self._batch.clear()


def copy_file(local_path: str, out: IO[bytes]) -> None:
    """Append the local file ``local_path`` to ``out``; in the kernel when ``out`` is a local file too (sendfile), not
    read into this process and written back: a round's outcomes and events pass through it whole."""
    with open(local_path, "rb") as source:
        try:
            target = out.fileno()
        except (AttributeError, OSError):  # not a local file (io.UnsupportedOperation is an OSError)
            shutil.copyfileobj(source, out, COPY_CHUNK_BYTES)
            return
        out.flush()
        offset, size = 0, os.fstat(source.fileno()).st_size
        while offset < size and (sent := os.sendfile(target, source.fileno(), offset, size - offset)):
            offset += sent
        out.seek(0, os.SEEK_END)  # the file object's own idea of its position catches up


@contextlib.contextmanager
def writer(path: ObjectStoragePath | str) -> Iterator[Writer]:
    """A ``Writer`` of records as JSON lines to ``path`` (a local one may be an OS path), in batches of about 1 MB.

    One write through ObjectStoragePath's file wrapper costs more than
    encoding a record: collecting a large output wrote at half the speed.
    The batch is a bytearray, not a list of lines: a bytes object per line
    would keep about 4 KB allocated, whatever its length.
    """
    with open(path, "wb") if isinstance(path, str) else open_file(path, "wb") as out:
        write = Writer(out)
        yield write
        write.flush()


def read(path: ObjectStoragePath) -> Iterator[dict]:
    """Each record of a JSONL work file as a dict (none if it is not there); see ``lines``."""
    for line in lines(path):
        yield orjson.loads(line)


def read_records(path: ObjectStoragePath, type_: type[T]) -> Iterator[T]:
    """Each record of a JSONL work file as a ``type_``, decoded and checked in one pass (``records.decode``)."""
    for line in lines(path):
        yield records.decode(line, type_)


def lines(path: ObjectStoragePath) -> Iterator[bytes]:
    """Each non-blank line of a JSONL work file (none if it is not there); a last line cut off by a killed writer is
    skipped (the step that wrote it is redone)."""
    local = is_local(path)
    if not (os.path.exists(path.path) if local else path.exists()):
        return
    with open_file(path) as fh:
        for line in fh:
            if not line.endswith(b"\n"):
                log.warning("%s ends in a cut-off line (its writer was stopped); ignoring %d bytes", path, len(line))
                return
            if line.strip():
                yield line

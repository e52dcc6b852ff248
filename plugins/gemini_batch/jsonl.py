"""The one way work files are written and read: JSON lines, one record each, through ObjectStoragePath.

Records are dataclasses with ``to_json``/``from_json`` (or plain dicts);
this module moves their JSON form to and from a file, local or gs://.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from typing import Any

import orjson
from airflow.sdk import ObjectStoragePath

log = logging.getLogger(__name__)
WRITE_BATCH_BYTES = 2**20


@contextlib.contextmanager
def writer(path: ObjectStoragePath) -> Iterator[Callable[[Any], None]]:
    """A function writing records (``to_json()`` or a dict) as JSON lines to ``path``, in batches of about 1 MB.

    One write through ObjectStoragePath's file wrapper costs more than
    encoding a record: collecting a large output wrote at half the speed.
    The batch is a bytearray, not a list of lines: each bytes object
    orjson.dumps returns keeps about 4 KB allocated, whatever its length.
    """
    batch = bytearray()

    def write(record: Any) -> None:
        batch.extend(orjson.dumps(record if isinstance(record, dict) else record.to_json(),
                                  option=orjson.OPT_APPEND_NEWLINE))
        if len(batch) >= WRITE_BATCH_BYTES:
            out.write(batch)
            batch.clear()

    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as out:
        yield write
        out.write(batch)


def read(path: ObjectStoragePath) -> Iterator[dict]:
    """Each record of a JSONL work file (none if it is not there); a last line cut off by a killed writer is skipped
    (the step that wrote it is redone)."""
    if not path.exists():
        return
    with path.open("rb") as fh:
        for line in fh:
            if not line.endswith(b"\n"):
                log.warning("%s ends in a cut-off line (its writer was stopped); ignoring %d bytes", path, len(line))
                return
            if line.strip():
                yield orjson.loads(line)

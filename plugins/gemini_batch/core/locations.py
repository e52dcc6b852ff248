"""One path type for local folders and ``gs://`` prefixes.

Everything that reads sources or writes run artefacts takes an Airflow
``ObjectStoragePath`` so the same code serves a laptop folder and a bucket.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from typing import IO, TYPE_CHECKING, BinaryIO

if os.environ.get("STORAGE_EMULATOR_HOST"):
    # gcsfs probes the bucket layout through the Storage Control gRPC API, which
    # no emulator serves; each probe fails with a warning. Off for emulators only.
    os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")

if TYPE_CHECKING:  # Airflow is imported where a path is made, so the planner's worker processes import none of it
    from airflow.sdk import ObjectStoragePath


def as_path(location: str | os.PathLike | ObjectStoragePath, conn_id: str | None = None) -> ObjectStoragePath:
    """``gs://bucket/prefix`` or a local path (absolute or relative) as an ObjectStoragePath."""
    from airflow.sdk import ObjectStoragePath

    if isinstance(location, ObjectStoragePath):
        return location
    text = os.fspath(location)
    if "://" in text:
        return ObjectStoragePath(text, conn_id=conn_id)
    return ObjectStoragePath(f"file://{os.path.abspath(text)}")


def is_gcs(path: ObjectStoragePath) -> bool:
    return path.protocol in ("gs", "gcs")


def is_local(path: ObjectStoragePath) -> bool:
    return path.protocol in ("", "file", "local")


def open_file(path: ObjectStoragePath, mode: str = "rb") -> IO[bytes]:
    """``path`` opened in a binary ``mode``; writing makes its folder. A local file through the OS, a gs:// one
    through ObjectStoragePath: a path object's first file operation costs a task process about 0.7 s (Airflow
    imports every provider's filesystem and its lineage plugins), and each of its writes goes through a wrapper."""
    if any(flag in mode for flag in "wax"):
        make_folder(path.parent)
    return open(path.path, mode) if is_local(path) else path.open(mode)


def replace_whole(path: ObjectStoragePath, content: bytes, *, durable: bool = False) -> None:
    """Write ``path`` so that a reader sees the old content or the new, never a truncated file.

    GCS: an upload replaces the object whole. Local: as ``writing_whole``.
    """
    if is_gcs(path):
        path.write_bytes(content)
        return
    with writing_whole(path, durable=durable) as out:
        out.write(content)


@contextlib.contextmanager
def writing_whole(path: ObjectStoragePath, *, durable: bool = False) -> Iterator[BinaryIO]:
    """A file to stream ``path``'s content into: it appears whole when the block ends, or not at all.

    Local: a private file in the same folder, renamed over the name at the end; ``durable`` flushes it to the
    disk before the rename and the folder after, so what appeared is still whole after a power loss. GCS: an
    object upload, which appears whole when it completes (a block that fails removes it: new names only).
    """
    if is_gcs(path):
        try:
            with path.open("wb") as out:
                yield out
        except BaseException:
            path.unlink(missing_ok=True)
            raise
        return
    folder = os.path.dirname(path.path)
    fd, private = tempfile.mkstemp(prefix=".write-", dir=folder)
    try:
        with os.fdopen(fd, "wb") as out:
            yield out
            if durable:
                out.flush()
                os.fsync(out.fileno())
        os.replace(private, path.path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(private)
        raise
    if durable:
        fsync_folder(folder)


def fsync_folder(folder: str) -> None:
    """Flush a folder's entries (a rename in it) to the disk, where the OS lets a folder be opened."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        with contextlib.suppress(OSError):  # some file systems refuse fsync on a folder
            os.fsync(fd)
    finally:
        os.close(fd)


def make_folder(path: ObjectStoragePath) -> None:
    """Make the folder ``path`` and those above it, as ``open_file`` writes: a local one through the OS."""
    if is_local(path):
        os.makedirs(path.path, exist_ok=True)
    else:
        path.mkdir(parents=True, exist_ok=True)


def uri_of(path: ObjectStoragePath) -> str:
    """The address users recognise: ``gs://bucket/name`` or a plain local path."""
    # str() of a path with a connection reads gs://conn@bucket/key: no service understands that.
    return f"gs://{path.bucket}/{path.key}" if is_gcs(path) else path.path


def printable(name: str) -> str:
    """A local path as valid UTF-8, for JSON and people: each byte of it that is not UTF-8 reads ``\\xNN``.

    Python holds such bytes as surrogate escapes, which no JSON encoder takes;
    ``\\xNN`` is how ``ls -b`` and Python show them. Names that are UTF-8 (all
    object names in a bucket) come back unchanged.
    """
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")

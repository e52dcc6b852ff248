"""The ledger: one durable record, shared by every run of a DAG, of what each request key cost and got.

A folder (local or ``gs://``) that every run reads and appends to, wherever
its output goes, so a nightly run over an accumulating folder requests only
documents no run has answered, and two runs over the same documents never
pay twice for one::

    <ledger>/events/<stamp>-<writer>.jsonl   immutable segments of LedgerEvent lines (answered, failed)
    <ledger>/snapshots/<stamp>-<writer>.json the newest names the fold of every segment it lists
    <ledger>/snapshots/<stamp>-<writer>.sqlite   ... held as an SQLite table, queried in place
    <ledger>/leases/<key>.<generation>       which claim may request a key now (atomic create)
    <ledger>/claims/<claim>.json             one run's claim on the keys of one round, and its shards
    <ledger>/claims/<claim>.jobs/<shard>.json    the job each shard of that claim was submitted as
    <ledger>/inflight/slot-<n>.<generation>  which shard's job holds each of the slots for jobs in flight

Events are only ever added, in whole segments, so runs publishing at once
cannot lose each other's records and a half-written segment never becomes
visible. Reading folds the newest snapshot with the segments it does not
list; compaction writes a new snapshot when enough segments pile up, so
planning costs the same against a million finished keys as against none.
A key's fold is the latest answer that succeeded: an answered key stays
answered until the ledger is reset (deleted).

Leases make a key's request happen once among runs in flight: a run that
wants to request a key creates its lease object exclusively (a GCS object
written with ``ifGenerationMatch=0``, a local file opened with ``O_EXCL``),
and a run that loses finds the winner's claim and waits for its job instead.
Taking over a dead lease creates the next generation, exclusively too, so
two runs taking over race just as two runs claiming do.

A folder written by the finished-key store of earlier versions (segments of
outcome records at its top level) is read as answered events and folded into
the first snapshot.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import datetime as dt
import errno
import logging
import os
import re
import shutil
import sqlite3
import tempfile
import threading
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import orjson
from airflow.sdk import ObjectStoragePath

from gemini_batch.batch_requests import from_record
from gemini_batch.locations import is_gcs, uri_of

log = logging.getLogger(__name__)

SEGMENT_SUFFIX = ".jsonl"
COMPACT_AFTER_SEGMENTS = 16  # segments outside the snapshot before a run folds them into a new one
COMPACT_AFTER_EVENTS = 50_000  # ... or answered events outside it: what every view reads one by one
VIEW_CACHE_KIB = 64 * 1024
SEGMENT_GRACE = dt.timedelta(hours=1)  # a folded segment stays this long for readers that listed it before
SNAPSHOTS_KEPT = 2
CLAIMS_KEPT = dt.timedelta(days=7)
LEASE_WORKERS = 16
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
_LEASE_NAME = re.compile(r"^(?P<key>[^.]+)\.(?P<generation>\d{6})$")


def now_iso() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat()


def _stamp() -> str:
    """Sortable by time first, unique by the random tail."""
    return dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%S%fZ") + "-" + uuid.uuid4().hex[:8]


def safe_name(text: str) -> str:
    return _UNSAFE.sub("_", text).strip("._") or "x"


@dataclass(frozen=True)
class LedgerEvent:
    """One line of a segment: what happened to a key in a run."""

    key: str
    event: str  # "answered" (the outcome succeeded) or "failed"
    run: str  # the run's slug
    at: str  # ISO 8601 UTC
    outcome: dict | None = None  # the RowOutcome record

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: Mapping) -> LedgerEvent:
        if "event" not in data and isinstance(data.get("key"), str):  # a finished-store record of earlier versions
            return cls(data["key"], "answered", data.get("run") or "legacy", data.get("finished_at") or "", dict(data))
        try:  # by hand, not from_record: a view reads every event of the newer segments
            event = cls(data["key"], data["event"], data["run"], data["at"], data.get("outcome"))
        except KeyError as exc:
            raise ValueError(f"ledger event lacks {exc.args[0]}") from None
        if not isinstance(event.key, str):
            raise ValueError(f"ledger event key must be a string, got {event.key!r}")
        return event


@dataclass(frozen=True)
class Claim:
    """One run's claim on the keys it requests in one round; its leases name it."""

    claim: str  # "<run slug>-r<round>": a retried build claims again under the same name
    dag_id: str
    run_id: str
    run: str  # the run's slug
    round: int
    shards: str  # the folder of the claim's shard manifests
    built: bool  # the shards are written: their keys files say which job asks for which key
    created_at: str

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: Mapping) -> Claim:
        return from_record(cls, data, "claim")


@dataclass(frozen=True)
class ShardJob:
    """The job a claim's shard is being, or was, submitted as: what a run adopting its keys waits for.

    Written with the display name alone just before the create and again with
    the job's name once the service answers, so a submitter that dies between
    the two leaves a job others can still find (by display name, created
    after ``at``).
    """

    job_name: str | None
    at: str
    display_name: str | None = None  # records written before submitters named the job first have none

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: Mapping) -> ShardJob:
        return from_record(cls, data, "shard job")


def claim_id(run_slug: str, round_: int) -> str:
    return f"{run_slug}-r{round_}"


class Ledger:
    def __init__(self, folder: ObjectStoragePath):
        self.folder = folder
        self.events = folder / "events"
        self.snapshots = folder / "snapshots"
        self.leases = folder / "leases"
        self.claims = folder / "claims"
        self.slots = folder / "inflight"  # leases on the slots for jobs in flight: "slot-<n>.<generation>"
        self._leasing = threading.local()  # .sources within leasing(): (folder, content) -> the shared file

    def __repr__(self) -> str:
        return f"Ledger({uri_of(self.folder)})"

    # ------------------------------------------------------------------ events and the fold

    def append(self, events: Iterable[LedgerEvent], *, writer: str) -> int:
        """Write ``events`` as one new segment; return how many (an empty segment is not written)."""
        self.events.mkdir(parents=True, exist_ok=True)
        name = f"{_stamp()}-{safe_name(writer)}{SEGMENT_SUFFIX}"
        target = self.events / name
        partial = target if is_gcs(target) else self.events / f".{name}.partial"
        count = 0
        try:
            with partial.open("wb") as out:
                batch = bytearray()
                for event in events:
                    batch += orjson.dumps(event.to_json(), option=orjson.OPT_APPEND_NEWLINE)
                    count += 1
                    if len(batch) >= 2**20:
                        out.write(batch)
                        batch.clear()
                out.write(batch)
        except BaseException:
            partial.unlink(missing_ok=True)
            raise
        if not count:
            partial.unlink(missing_ok=True)
        elif partial != target:
            partial.rename(target)
        return count

    @contextlib.contextmanager
    def view(self) -> Iterator[LedgerView]:
        """The fold of the ledger as it is now: the newest snapshot plus the segments it does not list."""
        with LedgerView(self) as view:
            yield view

    def _segments(self) -> list[ObjectStoragePath]:
        """Every event segment, oldest first; legacy finished-store segments (top level) come first."""
        found = []
        for folder in (self.folder, self.events):
            if folder.exists():
                found += sorted(p for p in folder.iterdir() if p.name.endswith(SEGMENT_SUFFIX) and p.is_file())
        return found

    def _newest_snapshot(self) -> dict | None:
        if not self.snapshots.exists():
            return None
        manifests = sorted((p for p in self.snapshots.iterdir() if p.name.endswith(".json")), key=lambda p: p.name)
        for manifest in reversed(manifests):
            try:
                return {**orjson.loads(manifest.read_bytes()), "name": manifest.name}
            except (FileNotFoundError, orjson.JSONDecodeError) as exc:
                log.warning("Ledger: ignoring snapshot manifest %s (%s)", uri_of(manifest), exc)
        return None

    def compact(self, *, writer: str, force: bool = False) -> str | None:
        """Fold the segments outside the newest snapshot into a new one, when enough piled up; its name or None.

        Two runs compacting at once each write a whole snapshot; the newer name
        wins and nothing is lost, because a segment is removed only once the
        newest snapshot lists it and its grace has passed.
        """
        with self.view() as view:
            if not force and len(view.unfolded) < COMPACT_AFTER_SEGMENTS and view.unfolded_events < COMPACT_AFTER_EVENTS:
                return None
            stem = f"{_stamp()}-{safe_name(writer)}"
            with tempfile.TemporaryDirectory(prefix="gemini-ledger-") as tmp:
                local = os.path.join(tmp, "snapshot.sqlite")
                view.write_snapshot(local)
                self.snapshots.mkdir(parents=True, exist_ok=True)
                with open(local, "rb") as source, (self.snapshots / f"{stem}.sqlite").open("wb") as out:
                    shutil.copyfileobj(source, out, 8 * 2**20)
            listed = sorted({*view.folded, *(p.name for p in view.unfolded)})
            manifest = {"sqlite": f"{stem}.sqlite", "segments": listed, "keys": view.finished_count(),
                        "created_at": now_iso()}
            _replace_whole(self.snapshots / f"{stem}.json", orjson.dumps(manifest, option=orjson.OPT_INDENT_2))
        log.info("Ledger %s: snapshot %s holds %d answered keys from %d segments",
                 uri_of(self.folder), stem, manifest["keys"], len(listed))
        self._prune(set(listed))
        return stem

    def _prune(self, folded: set[str]) -> None:
        """Remove old snapshots, segments the newest snapshot holds (after their grace) and old claims."""
        manifests = sorted(p for p in self.snapshots.iterdir() if p.name.endswith(".json"))
        for old in manifests[:-SNAPSHOTS_KEPT]:
            (self.snapshots / (old.name[:-len(".json")] + ".sqlite")).unlink(missing_ok=True)
            old.unlink(missing_ok=True)
        cutoff = (dt.datetime.now(dt.timezone.utc) - SEGMENT_GRACE).strftime("%Y%m%dT%H%M%S")
        if self.events.exists():
            for segment in self.events.iterdir():
                if segment.name in folded and segment.name[:15] < cutoff:
                    segment.unlink(missing_ok=True)
        if self.claims.exists():
            oldest = dt.datetime.now(dt.timezone.utc) - CLAIMS_KEPT
            for record in self.claims.iterdir():
                if record.name.endswith(".json") and (claim := self._read_claim(record)) is not None:
                    if dt.datetime.fromisoformat(claim.created_at) < oldest:
                        jobs = self.claims / f"{claim.claim}.jobs"
                        if jobs.exists():
                            jobs.fs.rm(jobs.path, recursive=True)
                        record.unlink(missing_ok=True)

    # ------------------------------------------------------------------ claims and jobs

    def write_claim(self, claim: Claim) -> None:
        self.claims.mkdir(parents=True, exist_ok=True)
        _replace_whole(self.claims / f"{claim.claim}.json", orjson.dumps(claim.to_json()))

    def claim(self, claim: str) -> Claim | None:
        return self._read_claim(self.claims / f"{claim}.json")

    def _read_claim(self, path: ObjectStoragePath) -> Claim | None:
        try:
            return Claim.from_json(orjson.loads(path.read_bytes()))
        except FileNotFoundError:
            return None
        except (orjson.JSONDecodeError, ValueError) as exc:
            log.warning("Ledger: claim %s is unreadable (%s); its leases count as dead", uri_of(path), exc)
            return None

    def record_job(self, claim: str, shard_id: str, job: ShardJob) -> None:
        """The job a claim's shard is being or was submitted as: what another run waiting for those keys reads."""
        folder = self.claims / f"{claim}.jobs"
        folder.mkdir(parents=True, exist_ok=True)
        _replace_whole(folder / f"{safe_name(shard_id)}.json", orjson.dumps(job.to_json()))

    def shard_job(self, claim: str, shard_id: str) -> ShardJob | None:
        path = self.claims / f"{claim}.jobs" / f"{safe_name(shard_id)}.json"
        try:
            return ShardJob.from_json(orjson.loads(path.read_bytes()))
        except FileNotFoundError:
            return None

    # ------------------------------------------------------------------ leases

    def current_leases(self, folder: ObjectStoragePath | None = None) -> dict[str, int]:
        """Each leased key's current (highest) generation: one listing of the lease folder (or ``folder``)."""
        folder = folder or self.leases
        current: dict[str, int] = {}
        if not folder.exists():
            return current
        for path in folder.iterdir():
            if match := _LEASE_NAME.match(path.name):
                key, generation = match["key"], int(match["generation"])
                if generation >= current.get(key, -1):
                    current[key] = generation
        return current

    def lease_holder(self, key: str, generation: int, folder: ObjectStoragePath | None = None) -> str | None:
        path = self._lease(key, generation, folder)
        try:
            if isinstance(path, str):
                with open(path, "rb") as lease:
                    return lease.read().decode().strip() or None
            return path.read_text().strip() or None
        except FileNotFoundError:
            return None

    def try_lease(self, key: str, generation: int, claim: str, folder: ObjectStoragePath | None = None) -> str:
        """Create the lease ``key.generation`` for ``claim`` unless it exists; return the claim that holds it."""
        path = self._lease(key, generation, folder)
        try:
            if isinstance(path, str):
                self._create_local_lease(path, claim.encode())
            else:
                _create_exclusive(path, claim.encode())
        except FileExistsError:
            return self.lease_holder(key, generation, folder) or claim_lost(key)
        else:
            if generation:  # the generation before is dead: nobody will read it again
                _unlink(self._lease(key, generation - 1, folder))
            return claim

    def holders(self, leases: Mapping[str, int]) -> dict[str, str]:
        """The claim holding each of the given current leases (read in parallel); vanished ones are left out."""
        with self.lease_mapper() as map_leases:
            found = zip(leases, map_leases(lambda item: self.lease_holder(*item), leases.items()))
            return {key: holder for key, holder in found if holder is not None}

    def release(self, leases: Mapping[str, int]) -> int:
        """Remove the given leases (the caller's own): their keys are answered or given up; return how many."""
        with self.lease_mapper() as map_leases:
            list(map_leases(lambda item: _unlink(self._lease(*item)), leases.items()))
        return len(leases)

    @contextlib.contextmanager
    def lease_mapper(self) -> Iterator[Callable]:
        """``map`` for one operation per lease: over threads on GCS, where each is a round trip; in turn on a local
        disk, where each is a few system calls that threads would only queue for (and pay a future each)."""
        if not is_gcs(self.folder):
            yield map
            return
        with concurrent.futures.ThreadPoolExecutor(LEASE_WORKERS, thread_name_prefix="lease") as pool:
            yield pool.map

    @contextlib.contextmanager
    def leasing(self) -> Iterator[None]:
        """Within it, the local leases this thread makes with the same content (a claim's) share one file: each
        lease is a hard link to a private file written once (one system call a key, and no new file: on a freshly
        made file system a new file cost a millisecond). The private names are removed at the end."""
        self._leasing.sources = {}
        try:
            yield
        finally:
            sources, self._leasing.sources = self._leasing.sources, None
            for source in sources.values():
                _unlink(source)

    def _create_local_lease(self, path: str, content: bytes) -> None:
        """``_create_exclusive`` for a local lease; a link to the shared private file within ``leasing``."""
        sources = getattr(self._leasing, "sources", None)
        if sources is None:
            _create_exclusive(path, content)
            return
        source = sources.get((os.path.dirname(path), content))
        if source is not None:
            try:
                os.link(source, path)
                return
            except OSError as error:
                if error.errno != errno.EMLINK:  # FileExistsError: the lease is held; else as a file would fail
                    raise
                _unlink(source)  # it has as many names as the file system allows: the next lease makes another
        fd, source = tempfile.mkstemp(prefix=".lease-", dir=os.path.dirname(path))
        with os.fdopen(fd, "wb") as out:
            out.write(content)
        sources[(os.path.dirname(path), content)] = source
        os.link(source, path)

    def _lease(self, key: str, generation: int, folder: ObjectStoragePath | None = None) -> ObjectStoragePath | str:
        """The lease's object on GCS; on a local disk its OS path (one is made per key: a path object costs more
        than the lease's system calls)."""
        folder = folder or self.leases
        name = f"{key}.{generation:06d}"
        return folder / name if is_gcs(folder) else os.path.join(folder.path, name)

    def prepare_leases(self) -> None:
        self.leases.mkdir(parents=True, exist_ok=True)

    def take_slot(self, holder: str, slots: int, is_free: Callable[[str], bool], *, tokens: int = 0,
                  token_budget: int | None = None, tokens_of: Callable[[str], int] | None = None) -> bool:
        """Hold one of ``slots`` slots for a job in flight (``holder``: "<claim>/<shard id>"); False if all are busy.

        A slot is a lease like a key's: taken by an atomic create, and taken
        over (the next generation) once ``is_free`` says its holder's job has
        ended, so no release is needed and a run that dies frees its slots
        when its jobs end. A holder that asks again finds the slot it holds.

        With a ``token_budget`` (the model's enqueued-token quota), a job of ``tokens`` is admitted only while
        the live holders' tokens (``tokens_of``) and its own fit in it, or when nothing else is in flight.
        Two runs admitted at the same instant may still pass it together: the service's 429 is the backstop.
        """
        self.slots.mkdir(parents=True, exist_ok=True)
        current = self.current_leases(self.slots)
        names = [f"slot-{n:04d}" for n in range(slots)]
        holders = {name: self.lease_holder(name, current[name], self.slots) for name in names if name in current}
        if holder in holders.values():
            return True
        free = {name: owner is None or is_free(owner) for name, owner in holders.items()}
        if token_budget is not None and tokens_of is not None:
            live = [owner for name, owner in holders.items() if not free[name]]
            if live and sum(tokens_of(owner) for owner in live) + tokens > token_budget:
                return False
        for name in names:
            if name not in current:
                won = self.try_lease(name, 0, holder, self.slots)
            elif free.get(name, True):
                won = self.try_lease(name, current[name] + 1, holder, self.slots)
            else:
                continue
            if won == holder:
                return True
        return False


def _create_exclusive(path: ObjectStoragePath | str, content: bytes) -> None:
    """Create ``path`` (a local one as its OS path) holding ``content``, or raise FileExistsError; nobody ever sees
    it empty.

    GCS: an upload with ifGenerationMatch=0 (the object appears whole, or the
    create fails with 412). Local: the content goes to a private file first,
    which is then hard-linked to the name (link fails if the name exists).
    """
    if not isinstance(path, str):
        if is_gcs(path):
            with path.open("xb") as out:
                out.write(content)
            return
        path = path.path
    fd, private = tempfile.mkstemp(prefix=".lease-", dir=os.path.dirname(path))
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(content)
        os.link(private, path)
    finally:
        os.unlink(private)


def _unlink(path: ObjectStoragePath | str) -> None:
    """Remove a lease; one already gone is fine."""
    if isinstance(path, str):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
    else:
        path.unlink(missing_ok=True)


def _replace_whole(path: ObjectStoragePath, content: bytes) -> None:
    """Write ``path`` so that a reader sees the old content or the new, never a truncated file.

    GCS: an upload replaces the object whole. Local: a private file renamed over the name.
    """
    if is_gcs(path):
        path.write_bytes(content)
        return
    fd, private = tempfile.mkstemp(prefix=".write-", dir=os.path.dirname(path.path))
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(content)
        os.replace(private, path.path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(private)
        raise


def claim_lost(key: str) -> str:
    """A lease that exists but cannot be read back (removed meanwhile): another run holds or held it."""
    return f"unknown-holder-of-{key[:12]}"


class LedgerView:
    """The ledger's fold at one moment: ``finished(key)`` answers from the snapshot and the newer segments.

    The snapshot is queried where it lies (a local ledger) or from a local
    copy (``gs://``); the newer segments go into a private temporary table.
    Use as a context manager.
    """

    def __init__(self, ledger: Ledger):
        self.ledger = ledger
        self._tmp = tempfile.TemporaryDirectory(prefix="gemini-ledger-view-")
        self._db = sqlite3.connect("", check_same_thread=False)
        self._db.executescript(f"""
            PRAGMA cache_size = -{VIEW_CACHE_KIB};
            PRAGMA journal_mode = OFF;
            PRAGMA synchronous = OFF;
            CREATE TABLE finished (key TEXT PRIMARY KEY, record BLOB) WITHOUT ROWID;
        """)
        snapshot = ledger._newest_snapshot()
        self.snapshot_name = snapshot["name"] if snapshot else None
        self.folded: set[str] = set(snapshot["segments"]) if snapshot else set()
        self._has_snapshot = False
        if snapshot:
            self._attach(ledger.snapshots / snapshot["sqlite"])
        self.unfolded = [p for p in ledger._segments() if p.name not in self.folded]
        for segment in self.unfolded:
            self._db.executemany(
                "INSERT OR REPLACE INTO finished VALUES (?, ?)",
                ((e.key, orjson.dumps(e.outcome)) for e in _segment_events(segment) if e.event == "answered"))
        self.unfolded_events = self._db.total_changes

    def _attach(self, sqlite_path: ObjectStoragePath) -> None:
        if is_gcs(sqlite_path):
            local = os.path.join(self._tmp.name, "snapshot.sqlite")
            with sqlite_path.open("rb") as source, open(local, "wb") as out:
                shutil.copyfileobj(source, out, 8 * 2**20)
        else:
            local = sqlite_path.path
        # A snapshot never changes once written: immutable=1 skips every lock and change check.
        self._db.execute("ATTACH DATABASE ? AS snap", (f"file:{local}?mode=ro&immutable=1",))
        self._has_snapshot = True

    def __enter__(self) -> LedgerView:
        return self

    def __exit__(self, *exc: object) -> None:
        self._db.close()
        self._tmp.cleanup()

    def finished(self, key: str) -> dict[str, Any] | None:
        """The succeeded outcome record the ledger holds for ``key``, or None."""
        row = self._db.execute("SELECT record FROM finished WHERE key = ?", (key,)).fetchone()
        if row is None and self._has_snapshot:
            row = self._db.execute("SELECT record FROM snap.finished WHERE key = ?", (key,)).fetchone()
        return orjson.loads(row[0]) if row else None

    def __contains__(self, key: object) -> bool:
        if self._db.execute("SELECT 1 FROM finished WHERE key = ?", (key,)).fetchone():
            return True
        return bool(self._has_snapshot and self._db.execute("SELECT 1 FROM snap.finished WHERE key = ?", (key,)).fetchone())

    def finished_count(self) -> int:
        if not self._has_snapshot:
            return self._db.execute("SELECT count(*) FROM finished").fetchone()[0]
        return self._db.execute(
            "SELECT (SELECT count(*) FROM snap.finished) + "
            "(SELECT count(*) FROM finished WHERE key NOT IN (SELECT key FROM snap.finished))").fetchone()[0]

    def write_snapshot(self, path: str) -> None:
        """This fold as a new SQLite snapshot file at ``path`` (local)."""
        out = sqlite3.connect(path)
        try:
            out.executescript("""
                PRAGMA journal_mode = OFF;
                PRAGMA synchronous = OFF;
                CREATE TABLE finished (key TEXT PRIMARY KEY, record BLOB) WITHOUT ROWID;
            """)
            out.commit()
        finally:
            out.close()
        self._db.execute("ATTACH DATABASE ? AS next", (path,))
        try:
            if self._has_snapshot:
                self._db.execute("INSERT INTO next.finished SELECT key, record FROM snap.finished")
            self._db.execute("INSERT OR REPLACE INTO next.finished SELECT key, record FROM finished")
            self._db.commit()
        finally:
            self._db.execute("DETACH DATABASE next")


def _segment_events(segment: ObjectStoragePath) -> Iterator[LedgerEvent]:
    """The events of one segment; a corrupt line is skipped with a warning (it costs a re-request at most)."""
    try:
        stream = segment.open("rb")
    except FileNotFoundError:  # folded into a newer snapshot and pruned since it was listed
        return
    with stream:
        for number, line in enumerate(stream, start=1):
            if not line.strip():
                continue
            try:
                event = LedgerEvent.from_json(orjson.loads(line))
            except (orjson.JSONDecodeError, ValueError, TypeError, AttributeError) as exc:
                log.warning("Ledger: skipping %s line %d (%s)", uri_of(segment), number, exc)
                continue
            yield event

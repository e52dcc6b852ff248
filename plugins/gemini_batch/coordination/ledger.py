"""The ledger: one durable record, shared by every run of a DAG, of what each request key cost and got.

A folder (local or ``gs://``) that every run reads and appends to, wherever
its output goes, so a nightly run over an accumulating folder requests only
documents no run has answered, and two runs over the same documents never
pay twice for one::

    <ledger>/events/<stamp>-<writer>.jsonl   immutable segments of LedgerEvent lines (answered, failed)
    <ledger>/snapshots/<stamp>-<writer>.json the newest names the fold of every segment it lists
    <ledger>/snapshots/<stamp>-<writer>.sqlite   ... held as an SQLite table, queried in place
    <ledger>/damaged/                        files ``ledger repair`` set aside (nothing reads them)
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

Damage costs only what it destroyed. A segment is framed by a begin and an
end line (which counts its events) and every line is a whole JSON object, so
a torn line or a segment cut short is found and only its events are lost,
each named. A manifest carries a checksum of its own content and the size
and sha256 of its SQLite file; a snapshot that fails them, or a query, is
reported and the one before it answers, with the segments it does not hold:
pruning keeps those. Snapshots, manifests and segments are flushed to disk
before they appear, so a power loss cannot make this damage by itself.
``python -m gemini_batch ledger check|repair`` is the person's side of it.

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
import datetime as dt
import errno
import hashlib
import itertools
import logging
import os
import re
import sqlite3
import tempfile
import threading
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, BinaryIO, ClassVar, TypeVar

import orjson
from airflow.sdk import ObjectStoragePath

from gemini_batch.core import jsonl, records
from gemini_batch.core.events import EventKind, LedgerEvent
from gemini_batch.core.locations import is_gcs, replace_whole, uri_of, writing_whole
from gemini_batch.core.records import Record

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
_KEY_OF_LINE = re.compile(rb'^\s*\{\s*"key"\s*:\s*"([^"\\]{1,256})"')  # a torn event line still names its key
_SQLITE_MAGIC = b"SQLite format 3\x00"
DAMAGED = "damaged"
_T = TypeVar("_T")


def now_iso() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat()


def _stamp() -> str:
    """Sortable by time first, unique by the random tail."""
    return dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%S%fZ") + "-" + uuid.uuid4().hex[:8]


def safe_name(text: str) -> str:
    return _UNSAFE.sub("_", text).strip("._") or "x"


@dataclass(frozen=True)
class Damage:
    """A ledger file that failed its checks: what a view reports and reads around, and ``ledger check`` lists."""

    path: ObjectStoragePath
    cause: str
    keys: tuple[str, ...] = ()  # the keys of a segment's damaged lines, where the line still names one


@dataclass(frozen=True)
class LedgerCheck:
    """Every damaged file of a ledger, and what a view of it answers now."""

    damaged: list[Damage]
    snapshot: str | None  # the manifest a view reads
    answered: int
    lost: list[str]  # keys of damaged segment lines that nothing else answers: the next run requests them again
    missing: int  # answered keys a damaged snapshot counted beyond what the ledger still holds


class _Damaged(Exception):
    def __init__(self, path: ObjectStoragePath, cause: str):
        super().__init__(f"{uri_of(path)}: {cause}")
        self.path, self.cause = path, cause


class Claim(Record, frozen=True):
    """One run's claim on the keys it requests in one round; its leases name it."""

    kind: ClassVar[str] = "claim"

    claim: str  # "<run slug>-r<round>": a retried build claims again under the same name
    dag_id: str
    run_id: str
    run: str  # the run's slug
    round: int
    shards: str  # the folder of the claim's shard manifests
    built: bool  # the shards are written: their keys files say which job asks for which key
    created_at: str


class ShardJob(Record, frozen=True):
    """The job a claim's shard is being, or was, submitted as: what a run adopting its keys waits for.

    Written with the display name alone just before the create and again with
    the job's name once the service answers, so a submitter that dies between
    the two leaves a job others can still find (by display name, created
    after ``at``).
    """

    kind: ClassVar[str] = "shard job"

    job_name: str | None
    at: str
    display_name: str | None = None  # records written before submitters named the job first have none


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
        events = iter(events)
        first = next(events, None)
        if first is None:
            return 0
        return self._write_segment(self._new_segment(writer), itertools.chain([first], events), writer)

    def append_encoded(self, lines: str, count: int, *, writer: str) -> int:
        """``append`` of events already encoded: the ``count`` event lines of the local file ``lines``, copied as they
        are (the processes that read a round's outputs encode the events of its outcomes; decoding them again here
        cost as much as reading the outputs)."""
        if count == 0:
            return 0
        with writing_whole(self._new_segment(writer), durable=True) as out:
            out.write(_frame(EventKind.BEGIN, writer))
            jsonl.copy_file(lines, out)
            out.write(_frame(EventKind.END, writer, count))
        return count

    def _new_segment(self, writer: str) -> ObjectStoragePath:
        self.events.mkdir(parents=True, exist_ok=True)
        return self.events / f"{_stamp()}-{safe_name(writer)}{SEGMENT_SUFFIX}"

    def _write_segment(self, target: ObjectStoragePath, events: Iterable[LedgerEvent], writer: str) -> int:
        """``events`` between a begin line and an end line that counts them, on disk before the name appears: a
        segment cut short anywhere, even between two lines, reads as cut."""
        count = 0
        with writing_whole(target, durable=True) as out:
            batch = bytearray(_frame(EventKind.BEGIN, writer))
            for event in events:
                records.encode_into(event, batch)
                count += 1
                if len(batch) >= 2**20:
                    out.write(batch)
                    batch.clear()
            batch += _frame(EventKind.END, writer, count)
            out.write(batch)
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

    def _manifests(self) -> list[ObjectStoragePath]:
        """Every snapshot manifest, oldest first."""
        if not self.snapshots.exists():
            return []
        return sorted((p for p in self.snapshots.iterdir() if p.name.endswith(".json")), key=lambda p: p.name)

    def compact(self, *, writer: str, force: bool = False) -> str | None:
        """Fold the segments outside the newest snapshot into a new one, when enough piled up; its name or None.

        Also due when a view found damage (a good newest snapshot ends the fall-backs) or the snapshot has no
        checksums yet (one written before them). Two runs compacting at once each write a whole snapshot; the
        newer name wins and nothing is lost, because a segment is removed only once the kept snapshots all
        list it and its grace has passed.
        """
        with self.view() as view:
            due = (
                force
                or view.damaged
                or (view.manifest is not None and "sha256" not in view.manifest)
                or len(view.unfolded) >= COMPACT_AFTER_SEGMENTS
                or view.unfolded_events >= COMPACT_AFTER_EVENTS
            )
            if not due:
                return None
            view.verify()  # read whole now: damage must not be copied into the next snapshot under a new checksum
            stem = f"{_stamp()}-{safe_name(writer)}"
            with tempfile.TemporaryDirectory(prefix="gemini-ledger-") as tmp:
                local = os.path.join(tmp, "snapshot.sqlite")
                view.write_snapshot(local)
                self.snapshots.mkdir(parents=True, exist_ok=True)
                with open(local, "rb") as source, writing_whole(self.snapshots / f"{stem}.sqlite", durable=True) as out:
                    digest, size = _copy(source, out)
            listed = sorted({*view.folded, *(p.name for p in view.unfolded)})
            manifest = {
                "sqlite": f"{stem}.sqlite",
                "bytes": size,
                "sha256": digest,
                "segments": listed,
                "keys": view.finished_count(),
                "created_at": now_iso(),
            }
            replace_whole(self.snapshots / f"{stem}.json", _sealed(manifest), durable=True)
            damaged = {d.path.name.rsplit(".", 1)[0] for d in view.damaged}
        log.info(
            "Ledger %s: snapshot %s holds %d answered keys from %d segments",
            uri_of(self.folder),
            stem,
            manifest["keys"],
            len(listed),
        )
        self._prune(damaged)
        return stem

    def _prune(self, damaged: set[str]) -> None:
        """Remove what no reader needs: snapshots older than the newest SNAPSHOTS_KEPT sound ones, segments all of
        those list (after their grace), snapshot files a dead compaction left, and old claims.

        A reader that finds the newest snapshot damaged falls back to the one before it and the segments that
        one does not list: those stay until a newer snapshot replaces it. A damaged snapshot (the stems in
        ``damaged``, or failing the cheap checks) newer than the oldest kept one stays, for a person to see.
        """
        manifests = self._manifests()
        kept: list[tuple[str, set[str]]] = []
        for manifest in reversed(manifests):
            if len(kept) == SNAPSHOTS_KEPT:
                break
            if manifest.name[: -len(".json")] in damaged:
                continue
            with contextlib.suppress(FileNotFoundError, _Damaged):
                listed = _read_manifest(manifest)
                if listed.get("bytes") in (None, (self.snapshots / listed["sqlite"]).stat().st_size):
                    kept.append((manifest.name, set(listed["segments"])))
        cutoff = (dt.datetime.now(dt.timezone.utc) - SEGMENT_GRACE).strftime("%Y%m%dT%H%M%S")
        if kept:
            oldest = kept[-1][0]
            for old in manifests:
                if old.name < oldest:  # the manifest first: a reader that still finds it finds its SQLite file
                    old.unlink(missing_ok=True)
                    (self.snapshots / (old.name[: -len(".json")] + ".sqlite")).unlink(missing_ok=True)
            named = {m.name[: -len(".json")] for m in manifests}
            for file in self.snapshots.iterdir():  # a compaction that died between its SQLite file and its manifest
                stem = file.name[: -len(".sqlite")]
                if file.name.endswith(".sqlite") and stem not in named and file.name < oldest and stem[:15] < cutoff:
                    file.unlink(missing_ok=True)
        if len(kept) == SNAPSHOTS_KEPT and self.events.exists():
            listed_by_all = set.intersection(*(segments for _, segments in kept))
            for segment in self.events.iterdir():
                if segment.name in listed_by_all and segment.name[:15] < cutoff:
                    segment.unlink(missing_ok=True)
        if self.claims.exists():
            claims_before = dt.datetime.now(dt.timezone.utc) - CLAIMS_KEPT
            for record in self.claims.iterdir():
                if (
                    record.name.endswith(".json")
                    and (claim := self._read_claim(record)) is not None
                    and dt.datetime.fromisoformat(claim.created_at) < claims_before
                ):
                    jobs = self.claims / f"{claim.claim}.jobs"
                    if jobs.exists():
                        jobs.fs.rm(jobs.path, recursive=True)
                    record.unlink(missing_ok=True)

    # ------------------------------------------------------------------ damage: found, reported, set aside

    def check(self) -> LedgerCheck:
        """Every snapshot read whole against its checksums and every segment line read: what ``ledger check``
        reports (views check only the snapshot they use, and as cheaply as a query allows)."""
        damaged: list[Damage] = []
        held = 0
        with tempfile.TemporaryDirectory(prefix="gemini-ledger-check-") as tmp:
            for manifest_path in self._manifests():
                manifest = None
                try:
                    manifest = _read_manifest(manifest_path)
                    sqlite = self.snapshots / manifest["sqlite"]
                    local, digest = _local_copy(sqlite, tmp)
                    if problem := _sqlite_problem(local, manifest, deep=True, digest=digest):
                        raise _Damaged(sqlite, problem)
                except FileNotFoundError:
                    if manifest is None or not manifest_path.exists():
                        continue  # removed by a compaction since it was listed
                    damaged.append(Damage(self.snapshots / manifest["sqlite"], "missing"))
                except _Damaged as damage:
                    damaged.append(Damage(damage.path, damage.cause))
                else:
                    continue
                if manifest is not None and isinstance(manifest.get("keys"), int):
                    held = max(held, manifest["keys"])
        for segment in self._segments():
            problems: list[tuple[str, str | None]] = []
            for _ in _segment_events(segment, problems):
                pass
            if problems:
                damaged.append(_segment_damage(segment, problems))
        with self.view() as view:
            answered = view.finished_count()
            lost = sorted({key for damage in damaged for key in damage.keys if key not in view})
            return LedgerCheck(damaged, view.snapshot_name, answered, lost, max(0, held - answered))

    def repair(self, *, writer: str = "repair") -> list[str]:
        """Set every damaged file aside under ``damaged/`` (nothing is deleted), keep a damaged segment's intact
        events in a new segment beside it, and compact what is intact into a new snapshot; what was done, for a
        person. Run it while no run publishes: a reader that listed a segment before it is set aside misses it."""
        found = self.check()
        done: list[str] = []
        for damage in found.damaged:
            if damage.path.name.endswith(SEGMENT_SUFFIX):
                intact = list(_segment_events(damage.path))
                if intact:
                    name = damage.path.name[: -len(SEGMENT_SUFFIX)] + ".repaired" + SEGMENT_SUFFIX
                    self._write_segment(damage.path.parent / name, intact, writer)
                    done.append(f"kept the {len(intact)} intact events of {uri_of(damage.path)} in {name}")
                done.append(self._set_aside(damage.path, damage.cause))
                continue
            stem = damage.path.name.rsplit(".", 1)[0]
            for path in (self.snapshots / f"{stem}.json", self.snapshots / f"{stem}.sqlite"):
                if path.exists():
                    done.append(
                        self._set_aside(
                            path, damage.cause if path.name == damage.path.name else "its snapshot is damaged"
                        )
                    )
        if not found.damaged:
            return done
        snapshot = self.compact(writer=writer, force=True)
        with self.view() as view:
            answered = view.finished_count()
        done.append(f"wrote snapshot {snapshot}: {answered} answered keys")
        done += [
            f"lost {key}: its answer was only on a damaged line; the next run requests it again" for key in found.lost
        ]
        if found.missing:
            done.append(f"lost {found.missing} answered keys a damaged snapshot held: the next run requests them again")
        return done

    def _set_aside(self, path: ObjectStoragePath, cause: str) -> str:
        """Move a damaged file under ``damaged/`` (its folder's name kept), where no reader looks."""
        aside = self.folder / DAMAGED
        if uri_of(path.parent) != uri_of(self.folder):
            aside = aside / path.parent.name
        aside.mkdir(parents=True, exist_ok=True)
        target, n = aside / path.name, 0
        while target.exists():
            n += 1
            target = aside / f"{path.name}.{n}"
        if is_gcs(path):  # copied through here: not every GCS-compatible store has the server-side copy (our emulator)
            with path.open("rb") as source, writing_whole(target) as out:
                _copy(source, out)
            path.unlink()
        else:
            path.rename(target)
        return f"moved {uri_of(path)} to {uri_of(target)} ({cause})"

    # ------------------------------------------------------------------ claims and jobs

    def write_claim(self, claim: Claim) -> None:
        self.claims.mkdir(parents=True, exist_ok=True)
        replace_whole(self.claims / f"{claim.claim}.json", records.encode(claim))

    def claim(self, claim: str) -> Claim | None:
        return self._read_claim(self.claims / f"{claim}.json")

    def _read_claim(self, path: ObjectStoragePath) -> Claim | None:
        try:
            return records.decode(path.read_bytes(), Claim)
        except FileNotFoundError:
            return None
        except ValueError as exc:
            log.warning("Ledger: claim %s is unreadable (%s); its leases count as dead", uri_of(path), exc)
            return None

    def record_job(self, claim: str, shard_id: str, job: ShardJob) -> None:
        """The job a claim's shard is being or was submitted as: what another run waiting for those keys reads."""
        folder = self.claims / f"{claim}.jobs"
        folder.mkdir(parents=True, exist_ok=True)
        replace_whole(folder / f"{safe_name(shard_id)}.json", records.encode(job))

    def claim_jobs(self, claim: str) -> list[ShardJob]:
        """Every job a claim's shards were (or were being) submitted as."""
        folder = self.claims / f"{claim}.jobs"
        if not folder.exists():
            return []
        return [
            records.decode(path.read_bytes(), ShardJob)
            for path in sorted(folder.iterdir())
            if path.name.endswith(".json")
        ]

    def shard_job(self, claim: str, shard_id: str) -> ShardJob | None:
        path = self.claims / f"{claim}.jobs" / f"{safe_name(shard_id)}.json"
        try:
            return records.decode(path.read_bytes(), ShardJob)
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
            found = zip(leases, map_leases(lambda item: self.lease_holder(*item), leases.items()), strict=False)
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

    def take_slot(
        self,
        holder: str,
        slots: int,
        is_free: Callable[[str], bool],
        *,
        tokens: int = 0,
        token_budget: int | None = None,
        tokens_of: Callable[[str], int] | None = None,
    ) -> bool:
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
            live = [owner for name, owner in holders.items() if owner is not None and not free[name]]
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


def claim_lost(key: str) -> str:
    """A lease that exists but cannot be read back (removed meanwhile): another run holds or held it."""
    return f"unknown-holder-of-{key[:12]}"


class LedgerView:
    """The ledger's fold at one moment: ``finished(key)`` answers from the snapshot and the newer segments.

    The snapshot is queried where it lies (a local ledger) or from a local
    copy (``gs://``); the newer segments go into a private temporary table.
    A damaged snapshot (found on opening, or by a query that fails) is
    reported in ``damaged`` and the one before it answers instead, with the
    segments that one does not list. Use as a context manager.
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
        self.damaged: list[Damage] = []
        self.manifest: dict | None = None  # the snapshot's, as read (without its own checksum)
        self.snapshot_name: str | None = None
        self.folded: set[str] = set()
        self._has_snapshot = False
        self._local: str | None = None  # the snapshot's SQLite file as queried
        self._read_whole = False  # its sha256 was checked (a gs:// copy is, as it is made)
        self._held = 0  # the most answered keys a damaged snapshot's manifest counts
        self._falling_back = threading.Lock()
        self._use_snapshot(reversed(ledger._manifests()))
        self.unfolded = [p for p in ledger._segments() if p.name not in self.folded]
        for segment in self.unfolded:
            self._fold(segment)
        self.unfolded_events = self._db.total_changes
        self._report_missing()

    def _use_snapshot(self, manifests: Iterable[ObjectStoragePath]) -> None:
        """Attach the first of ``manifests`` (newest first) whose snapshot passes its checks; report the others."""
        for manifest_path in manifests:
            manifest = None
            try:
                manifest = _read_manifest(manifest_path)
                sqlite = self.ledger.snapshots / manifest["sqlite"]
                local, digest = _local_copy(sqlite, self._tmp.name)
                if problem := _sqlite_problem(local, manifest, deep=digest is not None, digest=digest):
                    raise _Damaged(sqlite, problem)
            except FileNotFoundError:
                if manifest is not None and manifest_path.exists():
                    self._report(_Damaged(self.ledger.snapshots / manifest["sqlite"], "missing"), manifest)
                continue  # else removed by a compaction since it was listed
            except _Damaged as damage:
                self._report(damage, manifest)
                continue
            # A snapshot never changes once written: immutable=1 skips every lock and change check.
            self._db.execute("ATTACH DATABASE ? AS snap", (f"file:{local}?mode=ro&immutable=1",))
            self._has_snapshot, self._local, self._read_whole = True, local, digest is not None
            self.manifest, self.snapshot_name, self.folded = manifest, manifest_path.name, set(manifest["segments"])
            return

    def _report(self, damage: _Damaged, manifest: Mapping | None) -> None:
        log.warning(
            "Ledger: %s is damaged (%s); the snapshot before it answers, with the segments it does not hold",
            uri_of(damage.path),
            damage.cause,
        )
        self.damaged.append(Damage(damage.path, damage.cause))
        if manifest is not None and isinstance(manifest.get("keys"), int):
            self._held = max(self._held, manifest["keys"])

    def _report_missing(self) -> None:
        """Say how many answered keys a damaged snapshot held that nothing left holds: they are requested again."""
        if not self._held:
            return
        with contextlib.suppress(sqlite3.DatabaseError):  # a failing snapshot is replaced at its next query
            if (missing := self._held - self._count()) > 0:
                log.warning(
                    "Ledger %s: %d answered keys of a damaged snapshot are in no intact snapshot or segment; "
                    "they will be requested again",
                    uri_of(self.ledger.folder),
                    missing,
                )

    def _fold(self, segment: ObjectStoragePath, *, replace: bool = True) -> None:
        problems: list[tuple[str, str | None]] = []
        self._db.executemany(
            f"INSERT OR {'REPLACE' if replace else 'IGNORE'} INTO finished VALUES (?, ?)",
            (
                (e.key, records.encode(e.outcome))
                for e in _segment_events(segment, problems)
                if e.event == EventKind.ANSWERED
            ),
        )
        self._db.commit()  # no transaction left open: a failed compaction's rollback must not undo what was read
        if problems:
            self.damaged.append(_segment_damage(segment, problems))

    def _fall_back(self, cause: str) -> None:
        """The snapshot in use failed: report it; the one before it and the segments that one does not list answer
        from now on (what the newer segments already read say stays: they are newer)."""
        failed = self.snapshot_name
        assert failed is not None and self.manifest is not None  # a snapshot is in use
        self._report(_Damaged(self.ledger.snapshots / self.manifest["sqlite"], cause), self.manifest)
        self._db.execute("DETACH DATABASE snap")
        self._has_snapshot, self._local, self.manifest, self.snapshot_name, self.folded = False, None, None, None, set()
        self._use_snapshot(m for m in reversed(self.ledger._manifests()) if m.name < failed)
        read = {p.name for p in self.unfolded}
        more = [p for p in self.ledger._segments() if p.name not in self.folded and p.name not in read]
        for segment in reversed(more):  # newest first, keeping the first answer: the newest one
            self._fold(segment, replace=False)
        self.unfolded += more
        self._report_missing()

    def _answer(self, query: Callable[[], _T]) -> _T:
        """``query``'s result; a snapshot that fails it is replaced by the one before it, and it is asked again."""
        while True:
            using = self.snapshot_name
            try:
                return query()
            except (sqlite3.DatabaseError, orjson.JSONDecodeError) as exc:
                with self._falling_back:
                    if self.snapshot_name != using:
                        continue  # another thread fell back from it meanwhile
                    if not self._has_snapshot:
                        raise
                    self._fall_back(f"unreadable: {exc}")

    def verify(self) -> None:
        """Read the snapshot in use whole against its checksum (on opening, a local one is checked by its size and
        header only), falling back from one that fails: compaction copies it into the next."""
        while self._has_snapshot and not self._read_whole:
            assert self._local is not None and self.manifest is not None  # a snapshot is in use
            problem = _sqlite_problem(self._local, self.manifest, deep=True)
            if problem is None:
                self._read_whole = True
            else:
                self._fall_back(problem)

    def __enter__(self) -> LedgerView:
        return self

    def __exit__(self, *exc: object) -> None:
        self._db.close()
        self._tmp.cleanup()

    def finished(self, key: str) -> dict[str, Any] | None:
        """The succeeded outcome record the ledger holds for ``key``, or None."""

        def lookup() -> dict[str, Any] | None:
            row = self._db.execute("SELECT record FROM finished WHERE key = ?", (key,)).fetchone()
            if row is None and self._has_snapshot:
                row = self._db.execute("SELECT record FROM snap.finished WHERE key = ?", (key,)).fetchone()
            return orjson.loads(row[0]) if row else None

        return self._answer(lookup)

    def __contains__(self, key: object) -> bool:
        def lookup() -> bool:
            if self._db.execute("SELECT 1 FROM finished WHERE key = ?", (key,)).fetchone():
                return True
            return bool(
                self._has_snapshot and self._db.execute("SELECT 1 FROM snap.finished WHERE key = ?", (key,)).fetchone()
            )

        return self._answer(lookup)

    def finished_count(self) -> int:
        return self._answer(self._count)

    def _count(self) -> int:
        if not self._has_snapshot:
            return self._db.execute("SELECT count(*) FROM finished").fetchone()[0]
        return self._db.execute(
            "SELECT (SELECT count(*) FROM snap.finished) + "
            "(SELECT count(*) FROM finished WHERE key NOT IN (SELECT key FROM snap.finished))"
        ).fetchone()[0]

    def write_snapshot(self, path: str) -> None:
        """This fold as a new SQLite snapshot file at ``path`` (local)."""
        self._answer(lambda: self._write_snapshot(path))

    def _write_snapshot(self, path: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)  # a first try that met a damaged snapshot
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
        except BaseException:
            self._db.rollback()
            raise
        finally:
            self._db.execute("DETACH DATABASE next")


def _frame(kind: EventKind, writer: str, count: int | None = None) -> bytes:
    """A segment's begin or end line (the end counts its events), shaped as an event neither answered nor failed:
    earlier versions read it and skip it."""
    outcome = None if count is None else {"events": count}
    line = bytearray()
    records.encode_into(LedgerEvent("", kind, writer, now_iso(), outcome), line)
    return bytes(line)


def _segment_events(
    segment: ObjectStoragePath, problems: list[tuple[str, str | None]] | None = None
) -> Iterator[LedgerEvent]:
    """The events of one segment. A damaged line is skipped with a warning naming its key where it still shows
    (it costs a re-request at most), and so is a framed segment that ends before its end line or counts other
    than it holds; ``problems`` collects (cause, key or None) of each."""

    def damaged(cause: str, key: str | None = None, *, line: bool = False) -> None:
        lost = f": key {key} is requested again unless another record answers it" if key else ""
        log.warning(
            "Ledger: %s is damaged (%s)%s", uri_of(segment), cause, f"; skipping that line{lost}" if line else ""
        )
        if problems is not None:
            problems.append((cause, key))

    try:
        stream = segment.open("rb")
    except FileNotFoundError:  # folded into a newer snapshot and pruned since it was listed
        return
    framed, end, lines, number = False, None, 0, 0
    with stream:
        for number, line in enumerate(stream, start=1):
            if not line.strip():
                continue
            try:
                event = LedgerEvent.decode(line)
            except ValueError as exc:
                lines += 1
                key = _KEY_OF_LINE.match(line)
                damaged(f"line {number}: {exc}", key[1].decode("utf-8", "replace") if key else None, line=True)
                continue
            if not event.key and event.event in (EventKind.BEGIN, EventKind.END):
                framed = True
                if event.event == EventKind.END:
                    end = event
                continue
            lines += 1
            yield event
    if number == 0:
        damaged("empty: its content never reached the disk")
    elif framed and end is None:
        damaged(f"cut short after line {number}: its end line is missing, and any events after it")
    elif end is not None and (end.outcome or {}).get("events") != lines:
        damaged(f"its end line counts {(end.outcome or {}).get('events')} events where {lines} lines were found")


def _segment_damage(segment: ObjectStoragePath, problems: list[tuple[str, str | None]]) -> Damage:
    causes = [cause for cause, _ in problems]
    more = f"; and {len(causes) - 3} more" if len(causes) > 3 else ""
    return Damage(segment, "; ".join(causes[:3]) + more, tuple(key for _, key in problems if key))


def _sealed(manifest: Mapping) -> bytes:
    """A snapshot manifest's bytes, carrying a checksum of its own content: a cut or altered one fails it."""
    return orjson.dumps({**manifest, "checksum": _checksum(manifest)}, option=orjson.OPT_INDENT_2)


def _checksum(manifest: Mapping) -> str:
    return hashlib.sha256(orjson.dumps(manifest, option=orjson.OPT_SORT_KEYS)).hexdigest()


def _read_manifest(path: ObjectStoragePath) -> dict:
    """A snapshot manifest that passes its own checksum (one written before checksums has none), or _Damaged;
    FileNotFoundError when it is gone."""
    raw = path.read_bytes()
    try:
        manifest = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise _Damaged(path, f"not JSON ({len(raw)} bytes): {exc}") from None
    if (
        not isinstance(manifest, dict)
        or not isinstance(manifest.get("sqlite"), str)
        or "/" in manifest["sqlite"]
        or not isinstance(manifest.get("segments"), list)
    ):
        raise _Damaged(path, "not a snapshot manifest: no SQLite file name or segment list")
    checksum = manifest.pop("checksum", None)
    if checksum is not None and checksum != _checksum(manifest):
        raise _Damaged(path, "its content does not match its checksum")
    return manifest


def _local_copy(sqlite: ObjectStoragePath, folder: str) -> tuple[str, str | None]:
    """A snapshot's SQLite file as an OS path: a local one where it lies; a gs:// one copied into ``folder``, with
    the sha256 of what was copied."""
    if not is_gcs(sqlite):
        return sqlite.path, None
    local = os.path.join(folder, "snapshot.sqlite")
    with sqlite.open("rb") as source, open(local, "wb") as out:
        digest, _ = _copy(source, out)
    return local, digest


def _sqlite_problem(local: str, manifest: Mapping, *, deep: bool, digest: str | None = None) -> str | None:
    """Why a snapshot's SQLite file fails its checks, or None: always its size and SQLite header; ``deep`` (it is
    read whole) its sha256 too (``digest``, when already taken), or SQLite's quick check for a snapshot written
    before checksums."""
    size = os.path.getsize(local)
    if (expected := manifest.get("bytes")) is not None and size != expected:
        return f"{size} bytes where its manifest records {expected}"
    with open(local, "rb") as file:
        head = file.read(100)
    if len(head) < 100 or not head.startswith(_SQLITE_MAGIC):
        return f"not an SQLite file ({size} bytes)"
    page_size = int.from_bytes(head[16:18], "big")
    pages = int.from_bytes(head[28:32], "big")
    if head[24:28] == head[92:96] and pages * (65536 if page_size == 1 else page_size) != size:
        return f"{size} bytes where its header counts {pages} pages of {page_size}"  # the count is valid: cut short
    if not deep:
        return None
    if manifest.get("sha256") is None:
        return _quick_check(local)
    if (digest or _file_sha256(local)) != manifest["sha256"]:
        return "its sha256 differs from its manifest's"
    return None


def _quick_check(local: str) -> str | None:
    db = sqlite3.connect(f"file:{local}?mode=ro&immutable=1", uri=True)
    try:
        result = db.execute("PRAGMA quick_check").fetchone()[0]
        db.execute("SELECT count(*) FROM finished").fetchone()
    except sqlite3.DatabaseError as exc:
        return f"unreadable: {exc}"
    finally:
        db.close()
    return None if result == "ok" else f"SQLite quick check: {result}"


def _copy(source: BinaryIO, out: BinaryIO) -> tuple[str, int]:
    """Copy one file into another; the sha256 and size of what went through."""
    digest, size = hashlib.sha256(), 0
    while chunk := source.read(8 * 2**20):
        digest.update(chunk)
        out.write(chunk)
        size += len(chunk)
    return digest.hexdigest(), size


def _file_sha256(local: str) -> str:
    digest = hashlib.sha256()
    with open(local, "rb") as file:
        while chunk := file.read(8 * 2**20):
            digest.update(chunk)
    return digest.hexdigest()

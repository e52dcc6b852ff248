"""Which run requests a key: leases in the ledger, claimed before a round's shards are written.

For every key a round wants, the run claims its lease (an atomic create).
Where another run's claim holds the lease, the run judges that claim:

- its job for the key is pending or running, or has not been created yet
  while its run is alive: **adopt** it (wait for that job, take its answer);
- its job ended SUCCEEDED and this is the run's first round: **adopt** it,
  so a run that died mid-wait is not paid twice for what its job answered;
- its job ended FAILED, EXPIRED or CANCELLED, or passed its deadline, or its
  run died before submitting, or it is this run's own earlier round, or (in a
  retry round) its job ended at all: **take it over** (the next generation,
  created atomically, so of two runs taking over only one wins).

A lease that vanishes while it is read was released by a run whose keys are
answered: the key is taken from the ledger when the round is collected.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from gemini_batch.coordination.ledger import Claim, Ledger, ShardJob, claim_lost
from gemini_batch.core.batch_requests import ShardManifest
from gemini_batch.core.locations import as_path
from gemini_batch.hooks.gemini import CLOCK_SKEW, DEAD_STATES, deadline_of, is_terminal, state_name

log = logging.getLogger(__name__)
RunState = Callable[[str, str], "str | None"]  # (dag id, run id) -> the run's state, from Airflow; None: unknown
JobFinder = Callable[[str, dt.datetime], "str | None"]  # (display name, created after) -> that job's name, or None

LIVE_RUN_STATES = frozenset({"queued", "running"})
UNKNOWN_RUN_ALIVE = dt.timedelta(hours=24)  # a holder whose run this Airflow cannot see counts as alive this long
FROM_LEDGER = "ledger"  # adopts: the key was answered meanwhile; collect takes the ledger's record


@dataclass(frozen=True)
class JobState:
    """What a claim decision needs of a job: its state and when it was created."""

    state: str | None
    terminal: bool
    dead: bool  # FAILED, CANCELLING, CANCELLED or EXPIRED: it will deliver nothing more
    created_at: dt.datetime | None


def job_state(hook, name: str) -> JobState:
    """A job's JobState, read through the hook."""
    job = hook.get_job(name)
    state = state_name(job)
    return JobState(state, is_terminal(job), state in DEAD_STATES, job.create_time)


def job_finder(hook) -> JobFinder:
    """How a run finds another run's job by its display name, through the hook (paging back only to ``since``)."""

    def find(display_name: str, since: dt.datetime) -> str | None:
        job = hook.find_job(display_name, created_after=since - CLOCK_SKEW)
        return job.name if job is not None else None

    return find


def shard_job_name(ledger: Ledger, claim: str, shard: str, find_job: JobFinder | None) -> str | None:
    """The job a claim's shard was submitted as: as recorded, or found by the display name it was being
    submitted under when its submitter died before recording the name (then recorded for the next reader)."""
    record = ledger.shard_job(claim, shard)
    if record is None or record.job_name or find_job is None or record.display_name is None:
        return record.job_name if record else None
    name = find_job(record.display_name, dt.datetime.fromisoformat(record.at))
    if name is not None:
        log.info("Found job %s of claim %s shard %s by its display name %s", name, claim, shard, record.display_name)
        ledger.record_job(claim, shard, ShardJob(name, record.at, record.display_name))
    return name


@dataclass
class ClaimResult:
    """How a round's keys were claimed: how many this run requests itself (all it asked for but the adopted ones:
    not kept, so memory does not grow with the round), and the adopted ones by the claim that requests them."""

    won: int = 0
    adopted: dict[str, list[str]] = field(default_factory=dict)  # holder claim (or FROM_LEDGER) -> keys

    @property
    def adopted_keys(self) -> int:
        return sum(len(keys) for keys in self.adopted.values())

    def elsewhere(self) -> set[str]:
        """The keys another claim (or the ledger) answers."""
        return {key for keys in self.adopted.values() for key in keys}


class KeyClaimer:
    def __init__(
        self,
        ledger: Ledger,
        me: Claim,
        *,
        job_state: Callable[[str], JobState],
        run_state: RunState,
        expiry: dt.timedelta,
        conn_id: str | None = None,
        find_job: JobFinder | None = None,
    ):
        self.ledger = ledger
        self.find_job = find_job
        self.me = me
        self.job_state = job_state
        self.run_state = run_state
        self.expiry = expiry
        self.conn_id = conn_id
        self._lock = threading.Lock()
        self._claims: dict[str, Claim | None] = {}
        self._key_shards: dict[str, dict[str, str]] = {}
        self._jobs: dict[str, JobState] = {}
        self._alive: dict[str, bool] = {}

    def claim(self, keys: Iterable[str]) -> ClaimResult:
        """Claim each key, or say whose claim to adopt it from."""
        self.ledger.prepare_leases()
        current = self.ledger.current_leases()
        result = ClaimResult()
        with self.ledger.leasing(), self.ledger.lease_mapper() as map_leases:
            for key, holder in map_leases(lambda k: (k, self._claim_one(k, current.get(k))), keys):
                if holder == self.me.claim:
                    result.won += 1
                else:
                    result.adopted.setdefault(holder, []).append(key)
        if result.adopted:
            log.info(
                "Claimed %d key(s); %d are another run's to request: %s",
                result.won,
                result.adopted_keys,
                ", ".join(f"{len(v)} from {k}" for k, v in sorted(result.adopted.items())),
            )
        return result

    def _claim_one(self, key: str, generation: int | None) -> str:
        """The claim that requests ``key``: ours, another run's to adopt, or FROM_LEDGER."""
        if generation is None:
            holder = self.ledger.try_lease(key, 0, self.me.claim)
            return FROM_LEDGER if holder == claim_lost(key) else holder
        for _ in range(8):  # each lap is a takeover lost to a run that then judged its own claim
            read = self.ledger.lease_holder(key, generation)
            if read is None or read == claim_lost(key):
                return FROM_LEDGER  # released: its run answered it
            holder = read
            if holder == self.me.claim or not self._take_over(holder, key):
                return holder
            won = self.ledger.try_lease(key, generation + 1, self.me.claim)
            if won == self.me.claim:
                return won
            generation += 1
        return holder

    def _take_over(self, holder: str, key: str) -> bool:
        claim = self._claim(holder)
        if claim is None or claim.run == self.me.run:
            return True  # unreadable, or our own earlier round: we request it again ourselves
        if not claim.built:
            return not self._run_alive(claim)
        shard = self._shards_of(claim).get(key)
        if shard is None:
            return True  # the holder did not request it after all
        job_name = shard_job_name(self.ledger, claim.claim, shard, self.find_job)
        if job_name is None:
            return not self._run_alive(claim)
        job = self._job(job_name)
        if job.dead:
            return True
        if not job.terminal:
            return job.created_at is not None and dt.datetime.now(dt.timezone.utc) >= deadline_of(
                job.created_at, self.expiry
            )
        return self.me.round > 0  # SUCCEEDED: its answers are read once, its failures are ours to retry

    def _claim(self, name: str) -> Claim | None:
        with self._lock:
            if name not in self._claims:
                self._claims[name] = self.ledger.claim(name)
            return self._claims[name]

    def _shards_of(self, claim: Claim) -> dict[str, str]:
        """key -> shard id of a built claim, from its shards' keys files (read once per claim)."""
        with self._lock:
            if claim.claim not in self._key_shards:
                self._key_shards[claim.claim] = key_shards(claim, self.conn_id)
            return self._key_shards[claim.claim]

    def _job(self, name: str) -> JobState:
        with self._lock:
            if name not in self._jobs:
                self._jobs[name] = self.job_state(name)
            return self._jobs[name]

    def _run_alive(self, claim: Claim) -> bool:
        with self._lock:
            if claim.claim not in self._alive:
                self._alive[claim.claim] = run_alive(claim, self.run_state)
            return self._alive[claim.claim]


def run_state_of(context: Mapping) -> RunState:
    """How a task asks Airflow for a run's state: its task instance's ``get_dagrun_state`` where it has one."""
    return getattr(context.get("ti"), "get_dagrun_state", None) or (lambda dag_id, run_id: None)


def run_alive(claim: Claim, run_state: RunState) -> bool:
    """The claim's run is queued or running; one this Airflow does not know is alive for a day."""
    try:
        state = run_state(claim.dag_id, claim.run_id)
    except Exception as exc:
        log.debug("Cannot read the state of run %s of %s: %s", claim.run_id, claim.dag_id, exc)
        state = None
    if state is not None:  # an enum from the Execution API's models (whose str() is "DagRunState.RUNNING"), or a str
        return str(getattr(state, "value", state)).lower() in LIVE_RUN_STATES
    created = dt.datetime.fromisoformat(claim.created_at)
    return dt.datetime.now(dt.timezone.utc) - created < UNKNOWN_RUN_ALIVE


def key_shards(claim: Claim, conn_id: str | None = None) -> dict[str, str]:
    """key -> shard id for every key a built claim requests (adoption manifests excluded)."""
    folder = as_path(claim.shards, conn_id=conn_id)
    shards: dict[str, str] = {}
    if not folder.exists():
        return shards
    for path in sorted(p for p in folder.iterdir() if p.name.endswith(".manifest.json")):
        manifest = ShardManifest.load(path)
        if manifest.adopts is not None:
            continue
        shards.update(dict.fromkeys(manifest.keys(conn_id), manifest.shard_id))
    return shards


def holder_tokens(ledger: Ledger, holder: str, conn_id: str | None) -> int:
    """The estimated tokens of an in-flight slot's holder ("<claim>/<shard id>"): its shard manifest's."""
    claim_name, _, shard = holder.rpartition("/")
    claim = ledger.claim(claim_name)
    if claim is None:
        return 0
    try:
        return ShardManifest.load(as_path(f"{claim.shards.rstrip('/')}/{shard}.manifest.json", conn_id=conn_id)).tokens
    except (FileNotFoundError, ValueError):
        return 0


def slot_is_free(
    ledger: Ledger,
    holder: str,
    *,
    job_state: Callable[[str], JobState],
    run_state: RunState,
    find_job: JobFinder | None = None,
) -> bool:
    """An in-flight slot's holder ("<claim>/<shard id>") has a job that ended, or a dead run that never made one."""
    claim_name, _, shard = holder.rpartition("/")
    job_name = shard_job_name(ledger, claim_name, shard, find_job)
    if job_name is None:
        claim = ledger.claim(claim_name)
        return claim is None or not run_alive(claim, run_state)
    return job_state(job_name).terminal

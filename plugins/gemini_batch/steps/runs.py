"""One extraction run as each of its steps opens it: its settings, its work folder, its ledger and the hook.

Each task opens the run once (``Run.from_context``: settings checked once,
the ledger, the hook) and calls one step, a function of its own module
taking the run and its explicit inputs: ``planning.plan_documents``,
``budget.check_budget``, ``staging.stage_documents``,
``build.build_requests``, then per round ``collection.collect_results`` and
``retry.prepare_retry``, then ``publish.publish_results`` and
``clean_up.clean_up``. A step reads what earlier steps wrote into the run's
work folder and writes its own output there, so a task can be retried or
cleared on its own and XCom carries only URIs and counts. What outlives the
run (answers, leases, claims, jobs) is the ledger's. Work folder layout,
every file JSON lines (``gemini_batch.core.jsonl``)::

    <work>/plan.jsonl                      one line per discovered document
    <work>/staged/pass-<n>.jsonl           per key: its staged URI and expiry, or why it could not be staged
    <work>/staged/pass-round-<r>.jsonl     per key: why a text part (sent inline) could not be read for round r
    <shards>/round-<r>/*.jsonl             the requests of round r (+ .keys, .manifest.json)
    <work>/round-<r>/outcomes.jsonl        one outcome per key requested in round r

``<shards>`` is the work folder, or for Vertex AI the run's folder under the
gs:// staging prefix (Vertex reads its input from Cloud Storage only).
Each staging pass (the stage task, a retry's restaging) writes a file of its
own, read back in order with a later pass winning: a GCS object cannot be
appended to.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping

from gemini_batch.coordination.claims import RunState, run_state_of
from gemini_batch.core import jsonl, records, results
from gemini_batch.core.cost import PriceTable, load_prices
from gemini_batch.core.record_index import RecordIndex
from gemini_batch.core.staged import StageFailure, stage_record
from gemini_batch.hooks.gemini import GeminiBatchHook
from gemini_batch.steps.run_settings import RunFolder, RunSettings, prices_with_overrides
from gemini_batch.steps.staging import Staging


class Run:
    """One run as each of its steps opens it: settings checked once, work folder, ledger and hook, and what the
    steps read back from the work folder (the latest staging, the latest outcomes)."""

    def __init__(
        self,
        settings: RunSettings,
        run_id: str,
        hook: GeminiBatchHook | None = None,
        *,
        run_state: RunState | None = None,
        prices: PriceTable | None = None,
    ):
        self.settings = settings
        self.hook = hook
        self.prices = prices or load_prices()
        self.folder = RunFolder(settings, run_id, hook.backend if hook else "developer")
        self.ledger = settings.ledger()
        self.run_state: RunState = run_state or (lambda dag_id, run_id: None)

    @classmethod
    def from_context(cls, context: Mapping) -> Run:
        """The run of the task in ``context``: its params rendered and checked (RunConfigError names a bad one)."""
        hook = GeminiBatchHook(context["params"]["gemini_conn_id"])
        settings = RunSettings.from_context(context, gcp_conn_id=hook.gcp_conn_id)
        return cls(settings, context["run_id"], hook, run_state=run_state_of(context), prices=prices_with_overrides())

    @classmethod
    def from_params(cls, params: Mapping, run_id: str, hook: GeminiBatchHook | None = None, **kwargs) -> Run:
        """A run outside Airflow (tests, benchmarks): params as the DAG's, already rendered."""
        settings = RunSettings.from_params(params, gcp_conn_id=hook.gcp_conn_id if hook else None)
        return cls(settings, run_id, hook, **kwargs)

    @property
    def service(self) -> GeminiBatchHook:
        """The hook, for the steps that talk to the service (a run opened without one can only plan)."""
        if self.hook is None:
            raise RuntimeError("this run was opened without a hook: it can plan, not reach the service")
        return self.hook

    @contextlib.contextmanager
    def staging(self) -> Iterator[Staging]:
        """The latest staging of each key: a later pass wins."""
        with RecordIndex() as index:
            for path in self.folder.passes():
                index.put(
                    {
                        **records.to_builtins(r := stage_record(data)),
                        "status": "failed" if isinstance(r, StageFailure) else "staged",
                    }
                    for data in jsonl.read(path)
                )
            yield Staging(index)

    def reset_round(self, round_: int) -> None:
        """Forget what an earlier try of this run left for this round: a cleared run must not collect stale shards."""
        shards = self.folder.shards(round_)
        if shards.exists():
            shards.fs.rm(shards.path, recursive=True)
        self.folder.outcomes(round_).unlink(missing_ok=True)
        self.folder.unreadable(round_).unlink(missing_ok=True)

    @contextlib.contextmanager
    def latest_outcomes(self, last_round: int) -> Iterator[tuple[RecordIndex, dict[str, int]]]:
        """Each key's outcome in the latest round that requested it (indexed on disk: outcomes carry the data), and
        the input and output tokens of all rounds.

        The tokens count every outcome read, not only the latest: failed attempts are billed too (but not what
        was read from another run's job).
        """
        tokens = {"input_tokens": 0, "output_tokens": 0}

        def read(round_: int) -> Iterator[tuple[str, str, bytes]]:
            for line in jsonl.lines(self.folder.outcomes(round_)):
                outcome = records.decode(line, results.RowOutcome)  # checks the record
                if not outcome.reused:  # another run's job: that run was billed
                    tokens["input_tokens"] += outcome.input_tokens
                    tokens["output_tokens"] += outcome.output_tokens
                yield outcome.key, outcome.status, line.rstrip()  # indexed as written

        with RecordIndex() as latest:
            for round_ in range(last_round + 1):
                latest.put_lines(read(round_))
            yield latest, tokens

    def last_round(self) -> int:
        """The last round that wrote outcomes (0 when none did)."""
        rounds = range(self.settings.retry_rounds + 1)
        return max((r for r in rounds if self.folder.outcomes(r).exists()), default=0)

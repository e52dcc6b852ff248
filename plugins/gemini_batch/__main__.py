"""Commands for a person: ``python -m gemini_batch ledger check|repair [FOLDER] [--dag-id ID]`` and
``python -m gemini_batch preview SOURCE [--prompt P] [--schema FILE] [-n 3] [--model M] [--conn-id ID]``.

They need the package and Airflow's libraries installed, not a running Airflow. A connection is found as a task
finds it: ``AIRFLOW_CONN_<ID>`` in the environment, else the secrets backends and Airflow's database.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
from collections.abc import Iterator

DAG_ID = "gemini_batch_extract"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gemini_batch", description="gemini-batch commands for a person")
    commands = parser.add_subparsers(dest="command", required=True)
    ledger = commands.add_parser("ledger", help="check or repair a DAG's ledger (its answers by request key)")
    actions = ledger.add_subparsers(dest="action", required=True)
    for name, run, text in (
        ("check", ledger_check, "report every damaged ledger file with its cause; exit 1 if there is any"),
        (
            "repair",
            ledger_repair,
            "move damaged files aside into damaged/ and rebuild a good snapshot from what "
            "is intact; exit 1 if damage remains",
        ),
    ):
        action = actions.add_parser(name, help=text, description=text)
        action.add_argument("folder", nargs="?", help="the ledger folder, local or gs:// (default: the DAG's ledger)")
        action.add_argument("--dag-id", default=DAG_ID, help=f"the DAG whose default ledger to use (default {DAG_ID})")
        action.set_defaults(run=run)
    add_preview(commands)
    args = parser.parse_args(argv)
    return args.run(args)


def add_preview(commands) -> None:
    text = (
        "plan SOURCE and answer a few of its documents online (the largest, the smallest, the rest at random), "
        "then print their records and what a batch run over the whole source would cost"
    )
    command = commands.add_parser("preview", help=text, description=text)
    command.add_argument("source", help="a local folder or gs:// prefix with the documents")
    command.add_argument("--prompt", help="the extraction prompt (default: the DAG's invoice prompt)")
    command.add_argument(
        "--schema",
        help="a JSON schema file, or 'none' for free JSON (default: the DAG's invoice schema without --prompt, "
        "free JSON with it)",
    )
    command.add_argument("-n", "--documents", type=int, default=3, help="documents to preview (1 to 50, default 3)")
    command.add_argument("--model", help="the model (default: the DAG's)")
    command.add_argument("--conn-id", default="gemini_default", help="the Gemini connection (default gemini_default)")
    command.add_argument("--output", help="where preview.jsonl and preview.json go (default: a new temporary folder)")
    command.add_argument(
        "--state",
        help="the ledger the answers are recorded in, so a run of the DAG does not pay for them again "
        f"(default: the ledger of --dag-id, default {DAG_ID})",
    )
    command.add_argument("--dag-id", default=DAG_ID, help=argparse.SUPPRESS)
    command.set_defaults(run=run_preview)


@contextlib.contextmanager
def _stdout_to_stderr() -> Iterator[None]:
    """Whatever writes to stdout meanwhile (log lines, by file descriptor or by ``sys.stdout``) goes to stderr."""
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def run_preview(args: argparse.Namespace) -> int:
    import datetime as dt
    import json
    import pathlib
    import tempfile

    from gemini_batch.core import documents, records
    from gemini_batch.core import preview as previews
    from gemini_batch.core.settings import DEFAULTS, MAX_PREVIEW_DOCUMENTS
    from gemini_batch.hooks.gemini import GeminiBatchHook
    from gemini_batch.steps import planning
    from gemini_batch.steps import preview as previewing
    from gemini_batch.steps.run_settings import RunConfigError, prices_with_overrides
    from gemini_batch.steps.runs import Run

    if not 1 <= args.documents <= MAX_PREVIEW_DOCUMENTS:
        print(f"-n must be between 1 and {MAX_PREVIEW_DOCUMENTS}", file=sys.stderr)
        return 2
    schema = DEFAULTS["response_schema"] if args.prompt is None else None
    if args.schema is not None:
        schema = None if args.schema.lower() == "none" else json.loads(pathlib.Path(args.schema).read_text())

    def here(location: str | None) -> str | None:  # a person means a relative path from where they are
        return location if location is None or "://" in location else os.path.abspath(location)

    params = {
        "source": here(args.source),
        "output": here(args.output) or tempfile.mkdtemp(prefix="gemini-batch-preview-"),
        "prompt": args.prompt or DEFAULTS["prompt"],
        "response_schema": schema,
        "model": args.model or DEFAULTS["model"],
        "gemini_conn_id": args.conn_id,
        "state": here(args.state),
        "preview_documents": args.documents,
    }
    try:  # stdout carries the records and the projection only: the steps' log lines go to stderr
        with _stdout_to_stderr():
            hook = GeminiBatchHook(args.conn_id)
            run_id = "preview__" + dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%S%f")
            run = Run.from_params(params, run_id, hook, prices=prices_with_overrides())
            planned = records.to_builtins(planning.plan_documents(run))
            report = previewing.preview_documents(run, planned)
    except (RunConfigError, documents.SourceError, ValueError, OSError) as exc:
        print(f"preview: {exc}", file=sys.stderr)
        return 1
    if report is None:
        print("nothing to preview: no document under the source can be sent", file=sys.stderr)
        return 1
    output = run.settings.output
    for line in (output / "preview.jsonl").read_text().splitlines():
        print(line)
    print(json.dumps({k: v for k, v in report.items() if k != "shown"}, indent=2))
    print(previews.describe(report), file=sys.stderr)
    print(f"written: {output / 'preview.jsonl'}, {output / 'preview.json'}", file=sys.stderr)
    return 0


def open_ledger(args: argparse.Namespace):
    from gemini_batch.coordination.ledger import Ledger
    from gemini_batch.core.locations import as_path

    logging.getLogger("gemini_batch.coordination.ledger").setLevel(logging.ERROR)  # the report says it all, once
    if args.folder:
        return Ledger(as_path(args.folder))
    from gemini_batch.steps.run_settings import default_ledger

    return Ledger(default_ledger(args.dag_id))


def ledger_check(args: argparse.Namespace) -> int:
    ledger = open_ledger(args)
    if not ledger.folder.exists():
        return no_ledger(ledger)
    return report(ledger, ledger.check())


def ledger_repair(args: argparse.Namespace) -> int:
    ledger = open_ledger(args)
    if not ledger.folder.exists():
        return no_ledger(ledger)
    for line in ledger.repair() or ["nothing to repair"]:
        print(line)
    return report(ledger, ledger.check())


def report(ledger, found) -> int:
    from gemini_batch.core.locations import uri_of

    where = uri_of(ledger.folder)
    for damage in found.damaged:
        print(f"DAMAGED {uri_of(damage.path)}: {damage.cause}")
    snapshot = f" (snapshot {found.snapshot})" if found.snapshot else ""
    state = f"{len(found.damaged)} damaged file(s)" if found.damaged else "no damage"
    print(f"{where}: {state}; {found.answered} answered keys{snapshot}")
    for key in found.lost:
        print(f"LOST {key}: its answer was on a damaged line; the next run requests it again")
    if found.missing:
        print(f"LOST {found.missing} answered keys a damaged snapshot held: the next run requests them again")
    if found.damaged:
        print(f"to move the damaged files aside and rebuild: python -m gemini_batch ledger repair {where}")
    return 1 if found.damaged else 0


def no_ledger(ledger) -> int:
    from gemini_batch.core.locations import uri_of

    print(f"no ledger at {uri_of(ledger.folder)}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())

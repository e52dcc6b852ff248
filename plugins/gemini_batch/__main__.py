"""Commands for a person: ``python -m gemini_batch ledger check|repair [FOLDER] [--dag-id ID]``.

They need the package and Airflow's libraries installed, not a running Airflow.
"""

from __future__ import annotations

import argparse
import logging
import sys

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
    args = parser.parse_args(argv)
    return args.run(args)


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

"""`cardpay exceptions list|show|retry|resolve`: what a person must act on (card-network
exceptions and stuck sagas), from the quarantine table; see `cardpay.handlers.exceptions`."""

from __future__ import annotations

import argparse
from typing import Any

from cardpay.cli.errors import CommandFailed, UsageError
from cardpay.cli.options import positive_int
from cardpay.cli.output import add_format_options, emit
from cardpay.cli.quarantine import COLUMNS, print_entry
from cardpay.records import quarantine_records as as_records
from cardpay.settings import Settings


def register(sub: Any) -> None:
    parser = sub.add_parser(
        "exceptions", help="list, show, retry and resolve what needs a person",
        description="Exceptions: card-network messages cardpay had to accept but could not book "
        "normally (money beyond a Safe's funds, a return matching nothing, a clearing whose "
        "authorization never came, a refused body) and sagas whose compensation kept failing. "
        "Nothing is deleted: a resolved exception stays with its resolution.")
    actions = parser.add_subparsers(dest="exceptions_command", required=True, metavar="ACTION")

    listing = actions.add_parser("list", help="open exceptions, oldest first",
                                 description="List open exceptions, oldest first.")
    listing.add_argument("--all", action="store_true", help="also resolved ones")
    listing.add_argument("--limit", type=positive_int, default=None, metavar="N",
                         help="at most N rows (default: all)")
    add_format_options(listing)
    listing.set_defaults(run=list_command)

    show = actions.add_parser("show", help="one exception in full (its context as JSON)",
                              description="Print one exception with everything kept about it.")
    show.add_argument("id", type=positive_int, metavar="ID", help="its id (from `list`)")
    show.set_defaults(run=show_command)

    retry = actions.add_parser(
        "retry", help="resume the stuck saga behind an exception",
        description="Resume a stuck saga from the compensation that kept failing (after the "
        "cause was fixed, e.g. the node is back or the settlement Safe funded). The exception is "
        "resolved; if the compensation fails again, a new exception opens. Exceptions of the "
        "card network cannot be redone by cardpay: act on them, then `resolve` (exit 1).")
    retry.add_argument("id", type=positive_int, metavar="ID", help="its id (from `list`)")
    retry.set_defaults(run=retry_command)

    resolve = actions.add_parser(
        "resolve", help="close an exception you dealt with, with a note",
        description="Mark an exception resolved after acting outside cardpay; the note is kept "
        "as its resolution.")
    resolve.add_argument("id", type=positive_int, metavar="ID", help="its id (from `list`)")
    resolve.add_argument("--note", required=True, metavar="TEXT",
                         help="what was done (kept with the exception)")
    resolve.set_defaults(run=resolve_command)


def list_command(settings: Settings, args: argparse.Namespace) -> int:
    from cardpay.cli.db import reading
    from cardpay.handlers.exceptions import SOURCES
    from cardpay.postgres.queries import quarantine_entries

    with reading(settings) as (_, conn):
        rows = quarantine_entries(conn, prefixes=SOURCES, limit=args.limit,
                                  include_resolved=args.all)
    emit(args.format, COLUMNS, as_records(rows), empty="(no open exceptions)")
    return 0


def _not_found(item_id: int) -> CommandFailed:
    return CommandFailed(f"no exception with id {item_id}: `cardpay exceptions list` shows the "
                         "ids")


def show_command(settings: Settings, args: argparse.Namespace) -> int:
    from cardpay.cli.db import reading
    from cardpay.handlers.exceptions import SOURCES
    from cardpay.postgres.queries import quarantine_entry

    with reading(settings) as (_, conn):
        entry = quarantine_entry(conn, args.id)
    if entry is None or not entry.source.startswith(SOURCES):
        raise _not_found(args.id)
    print_entry(entry)
    return 0


def _report(item_id: int, outcome: Any) -> int:
    if outcome.outcome == "not_found":
        raise _not_found(item_id)
    if outcome.outcome not in ("retried", "resolved"):
        raise CommandFailed(f"exception {item_id} {outcome.outcome.replace('_', ' ')}: "
                            f"{outcome.message}")
    print(f"exception {item_id} {outcome.outcome}: {outcome.message}")
    return 0


def retry_command(settings: Settings, args: argparse.Namespace) -> int:
    from cardpay.bootstrap import database, unit_of_work
    from cardpay.bootstrap.sagas import build_runner
    from cardpay.handlers.exceptions import retry

    with database(settings, migrate=False) as engine:
        outcome = retry(unit_of_work(settings, engine), build_runner(settings, engine), args.id)
    return _report(args.id, outcome)


def resolve_command(settings: Settings, args: argparse.Namespace) -> int:
    from cardpay.bootstrap import database, unit_of_work
    from cardpay.handlers.exceptions import resolve

    if not args.note.strip():
        raise UsageError("--note must say what was done")
    with database(settings, migrate=False) as engine:
        outcome = resolve(unit_of_work(settings, engine), args.id, args.note)
    return _report(args.id, outcome)

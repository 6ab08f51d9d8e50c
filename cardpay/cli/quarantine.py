"""`cardpay quarantine list|show|retry`: what the listener and projectors set aside, and why.

`retry` hands one row back to the service layer (`cardpay.handlers.quarantine.retry`), which
decides whether it now applies; the CLI only reports the outcome.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from cardpay.cli.errors import CommandFailed
from cardpay.cli.options import positive_int
from cardpay.cli.output import Column, add_format_options, emit
from cardpay.records import quarantine_records as as_records
from cardpay.settings import Settings

COLUMNS = [
    Column("id", "id", "right"),
    Column("source", "source"),
    Column("key", "key"),
    Column("reason", "reason"),
    Column("attempts", "retries", "right"),
    Column("created_at", "quarantined at",
           render=lambda r: f"{r['created_at']:%Y-%m-%d %H:%M:%S}"),
    Column("resolved_at", "resolved at",
           render=lambda r: "-" if r["resolved_at"] is None
           else f"{r['resolved_at']:%Y-%m-%d %H:%M:%S}"),
    Column("resolution", "resolution"),
]


def register(sub: Any) -> None:
    parser = sub.add_parser(
        "quarantine", help="list, show and retry quarantined rows",
        description="Rows the listener or a projector could not apply (undecodable logs, "
        "duplicates, refunds matching nothing, out-of-order feed messages), kept with their "
        "reason and payload.",
    )
    actions = parser.add_subparsers(dest="quarantine_command", required=True, metavar="ACTION")

    listing = actions.add_parser("list", help="list quarantined rows (oldest first)",
                                 description="List quarantined rows, oldest first.")
    listing.add_argument("--source", default=None, metavar="SOURCE",
                         help="only rows from this source (e.g. listener:main, projector:payments)")
    listing.add_argument("--limit", type=positive_int, default=None, metavar="N",
                         help="at most N rows (default: all)")
    listing.add_argument("--all", action="store_true",
                         help="also rows a retry resolved (kept with their resolution)")
    add_format_options(listing)
    listing.set_defaults(run=list_command)

    show = actions.add_parser("show", help="show one row in full, payload as pretty JSON",
                              description="Print one quarantined row with its full payload.")
    show.add_argument("id", type=positive_int, metavar="ID", help="the row's id (from `list`)")
    show.set_defaults(run=show_command)

    retry = actions.add_parser(
        "retry", help="apply one row again now (after a fix or a missing event arrived)",
        description="Hand one quarantined row back to the service layer, through the same path "
        "as a live one: applied if it now can be (the row is then resolved, and kept with its "
        "resolution), else its retries are counted and the newest reason kept (exit 1).",
    )
    retry.add_argument("id", type=positive_int, metavar="ID", help="the row's id (from `list`)")
    retry.set_defaults(run=retry_command)


def list_command(settings: Settings, args: argparse.Namespace) -> int:
    from cardpay.cli.db import reading
    from cardpay.postgres.queries import quarantine_entries

    with reading(settings) as (_, conn):
        rows = quarantine_entries(conn, source=args.source, limit=args.limit,
                                  include_resolved=args.all)
    empty = f"(nothing quarantined from {args.source})" if args.source else "(nothing quarantined)"
    emit(args.format, COLUMNS, as_records(rows), empty=empty)
    return 0


def _not_found(entry_id: int) -> CommandFailed:
    return CommandFailed(f"no quarantined row with id {entry_id}: `cardpay quarantine list` "
                         "shows the ids")


def show_command(settings: Settings, args: argparse.Namespace) -> int:
    from cardpay.cli.db import reading
    from cardpay.postgres.queries import quarantine_entry

    with reading(settings) as (_, conn):
        entry = quarantine_entry(conn, args.id)
    if entry is None:
        raise _not_found(args.id)
    print_entry(entry)
    return 0


def print_entry(entry: Any) -> None:
    """One row in full (also `cardpay exceptions show`)."""
    print(f"id:             {entry.id}")
    print(f"source:         {entry.source}")
    print(f"key:            {entry.key}")
    print(f"reason:         {entry.reason}")
    print(f"quarantined at: {entry.created_at.isoformat()}")
    print(f"block hash:     {entry.block_hash or '-'}")
    print(f"retries:        {entry.attempts}")
    if entry.resolved_at is not None:
        print(f"resolved at:    {entry.resolved_at.isoformat()} ({entry.resolution})")
    print("payload:")
    print(json.dumps(entry.payload, indent=2, sort_keys=True, default=str))


RETRY_DONE = frozenset({"applied", "duplicate", "resolved"})
"""Outcomes of a retry that leave nothing to do (exit 0); the others exit 1 with their reason."""


def retry_command(settings: Settings, args: argparse.Namespace) -> int:
    from cardpay.bootstrap import database, unit_of_work
    from cardpay.handlers.quarantine import retry

    with database(settings, migrate=False) as engine:
        result = retry(unit_of_work(settings, engine), args.id)
    if result.outcome == "not_found":
        raise _not_found(args.id)
    if result.outcome not in RETRY_DONE:
        raise CommandFailed(f"row {args.id} {result.outcome.replace('_', ' ')}: {result.message}")
    print(f"row {args.id} {result.outcome}: {result.message}")
    return 0

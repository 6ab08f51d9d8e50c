"""`cardpay payments`: the payments read model, newest first, for finance and ops."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from typing import Any

from cardpay.cli.errors import CommandFailed, UsageError
from cardpay.cli.options import day, positive_int
from cardpay.cli.output import Column, Record, add_format_options, emit, print_json
from cardpay.records import amount_text
from cardpay.settings import Settings

AMOUNT_KEYS = frozenset(("authorized", "spent", "cleared", "refunded", "held", "posted",
                         "network_cleared", "reversed", "released", "over_cleared", "returned",
                         "settled"))


def _amount(key: str) -> Callable[[Record], str]:
    return lambda r: amount_text(r[key], r["decimals"])


def _day(record: Record) -> str:
    at = record.get("first_at")
    return "-" if at is None else str(at)[:19].replace("T", " ")


COLUMNS = [
    Column("payment_id", "payment"),
    Column("status", "status"),
    Column("network_status", "network"),
    Column("currency", "currency"),
    Column("decimals", "decimals", "right"),
    Column("authorized", "authorized", "right", render=_amount("authorized")),
    Column("held", "held", "right", render=_amount("held")),
    Column("network_cleared", "cleared", "right", render=_amount("network_cleared")),
    Column("returned", "returned", "right", render=_amount("returned")),
    Column("spent", "spent", "right", render=_amount("spent")),
    Column("refunded", "refunded", "right", render=_amount("refunded")),
    Column("settled", "settled", "right", render=_amount("settled")),
    Column("merchant", "merchant"),
    Column("mcc", "mcc"),
    Column("account", "account"),
    Column("spend_tx", "spend tx"),
    Column("first_at", "first seen", render=_day),
    Column("cleared", "chain cleared"),
    Column("updated_at", "updated"),
]
"""The table shows decimal amounts; JSON and CSV carry amounts as strings of base units next to
`decimals` (exact). `cleared` is the network's clearings; `chain cleared` what the chain side
posted (they differ while an over-clearing is open)."""

HISTORY = [
    Column("version", "v", "right"),
    Column("type", "event"),
    Column("occurred_at", "at"),
    Column("caused_by", "caused by"),
    Column("data", "data", render=lambda r: json.dumps(r["data"], sort_keys=True)),
]


def register(sub: Any) -> None:
    from cardpay.postgres.finance import MAX_PAGE, NETWORK_STATUSES
    from cardpay.postgres.queries import PAYMENT_STATUSES

    parser = sub.add_parser(
        "payments", help="list payments from the read model (newest first)",
        description="Payments as the projector wrote them (rm_payments), newest first (by the "
        "time of their first event): the chain side (status, spent, refunded), the network's "
        "(authorized, held, cleared, returned), the settlement. JSON and CSV give amounts as "
        "strings of base units with their decimals. When more payments match than --limit, "
        "the command prints `--after CURSOR` for the next page on stderr.",
    )
    parser.add_argument("--status", choices=PAYMENT_STATUSES, default=None,
                        help="only payments whose chain side is in this status")
    parser.add_argument("--network-status", choices=NETWORK_STATUSES, default=None,
                        help="only payments whose network side is in this status")
    parser.add_argument("--card", default=None, metavar="CARD_ID", help="only this card's")
    parser.add_argument("--account", default=None, metavar="SAFE",
                        help="only this cardholder Safe's (0x address)")
    parser.add_argument("--day", type=day, default=None, metavar="YYYY-MM-DD",
                        help="only payments first seen on this UTC day")
    parser.add_argument("--currency", default=None, metavar="CODE",
                        help="only this currency: EUR, GBP, USD or the token (EURe, GBPe, USDCe)")
    parser.add_argument("--limit", type=positive_int, default=50, metavar="N",
                        help=f"at most N payments (default 50, at most {MAX_PAGE})")
    parser.add_argument("--after", default=None, metavar="CURSOR",
                        help="the next page: the cursor the previous page printed")
    add_format_options(parser)
    parser.set_defaults(run=payments_command)

    one = sub.add_parser("payment", help="one payment: its figures and its audit trail",
                         description="One payment from the read model with every event of its "
                         "stream from the event store, in order (the audit trail).")
    actions = one.add_subparsers(dest="payment_command", required=True, metavar="ACTION")
    show = actions.add_parser("show", help="show one payment and its events",
                              description="The payment's figures (as `cardpay payments` gives "
                              "them) and its events, oldest first.")
    show.add_argument("payment_id", metavar="ID", help="the payment id (the network's "
                      "authorization id, or chain:<chain>:<tx>:<log> for a payment seen on "
                      "chain only)")
    add_format_options(show)
    show.set_defaults(run=payment_show_command)


def payments_command(settings: Settings, args: argparse.Namespace) -> int:
    from cardpay.cli.db import reading
    from cardpay.handlers.finance import BadQuery, PaymentFilter
    from cardpay.postgres.finance import MAX_PAGE, payments_page

    if args.limit > MAX_PAGE:
        raise UsageError(f"--limit is at most {MAX_PAGE}, got {args.limit}: page with --after")
    wanted = PaymentFilter(status=args.status, network_status=args.network_status,
                           account=args.account, card=args.card, day=args.day,
                           currency=args.currency)
    with reading(settings) as (_, conn):
        try:
            records, cursor = payments_page(conn, wanted, after=args.after, limit=args.limit)
        except BadQuery as exc:
            raise UsageError(str(exc)) from None
    empty = "(no payments match)" if any(vars(wanted).values()) else "(no payments yet)"
    emit(args.format, COLUMNS, records, empty=empty)
    if cursor is not None:
        print(f"more payments: add --after {cursor}", file=sys.stderr)
    return 0


def payment_show_command(settings: Settings, args: argparse.Namespace) -> int:
    from cardpay.cli.db import reading
    from cardpay.postgres.finance import payment

    with reading(settings) as (_, conn):
        found = payment(conn, args.payment_id)
    if found is None:
        raise CommandFailed(f"no payment {args.payment_id!r}: `cardpay payments` lists them")
    if args.format == "json":
        print_json(found)
        return 0
    if args.format == "csv":
        emit("csv", HISTORY, found["history"])
        return 0
    row = found["payment"]
    if row is None:
        print("(events stored, not projected yet: is `cardpay project` running?)")
    else:
        width = max(len(k) for k in row)
        for key, value in row.items():
            shown = value
            if key in AMOUNT_KEYS and value is not None:
                shown = f"{amount_text(value, row['decimals'])}  ({value})"
            print(f"{key + ':':<{width + 1}} {'-' if shown is None else shown}")
    print()
    emit("table", HISTORY, found["history"], title="events", empty="(no events)")
    return 0

"""`cardpay payments`: the payments read model, newest first, for finance and ops."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from cardpay.cli.options import positive_int
from cardpay.cli.output import Column, Record, add_format_options, emit
from cardpay.settings import Settings
from domain.money import Currency, Money


def amount_text(units: int | str | None, decimals: int | None) -> str:
    """Exact decimal amount (trailing zeros past the cents dropped); '-' when unknown."""
    if units is None:
        return "-"
    if decimals is None:
        return str(units)
    text = f"{Money(int(units), Currency('X', decimals)).to_decimal():f}"
    if "." in text:
        whole, frac = text.split(".")
        text = f"{whole}.{frac.rstrip('0').ljust(2, '0')}"
    return text


def _amount(key: str) -> Callable[[Record], str]:
    return lambda r: amount_text(r[key], r["decimals"])


COLUMNS = [
    Column("payment_id", "payment"),
    Column("status", "status"),
    Column("currency", "currency"),
    Column("decimals", "decimals", "right"),
    Column("spent", "spent", "right", render=_amount("spent")),
    Column("refunded", "refunded", "right", render=_amount("refunded")),
    Column("cleared", "cleared", "right", render=_amount("cleared")),
    Column("account", "account"),
    Column("spend_tx", "spend tx"),
    Column("updated_at", "updated", render=lambda r: f"{r['updated_at']:%Y-%m-%d %H:%M:%S}"),
]
"""JSON and CSV carry amounts as strings of base units next to `decimals` (exact); the table shows
them as decimal amounts."""


def register(sub: Any) -> None:
    from cardpay.postgres.queries import PAYMENT_STATUSES

    parser = sub.add_parser(
        "payments", help="list payments from the read model (newest first)",
        description="Payments as the projector wrote them (rm_payments), most recently updated "
        "first. JSON and CSV give amounts as strings of base units with their decimals.",
    )
    parser.add_argument("--status", choices=PAYMENT_STATUSES, default=None,
                        help="only payments in this status")
    parser.add_argument("--limit", type=positive_int, default=50, metavar="N",
                        help="at most N payments (default 50)")
    add_format_options(parser)
    parser.set_defaults(run=payments_command)


def _record(p: Any) -> Record:
    return {"payment_id": p.payment_id, "status": p.status, "currency": p.currency,
            "decimals": p.decimals, "spent": str(p.spent), "refunded": str(p.refunded),
            "cleared": None if p.cleared is None else str(p.cleared), "account": p.account,
            "spend_tx": p.spend_tx, "updated_at": p.updated_at}


def payments_command(settings: Settings, args: argparse.Namespace) -> int:
    from cardpay.cli.db import reading
    from cardpay.postgres.queries import payments

    with reading(settings) as (_, conn):
        rows = payments(conn, status=args.status, limit=args.limit)
    records = [_record(p) for p in rows]
    empty = f"(no {args.status} payments)" if args.status else "(no payments yet)"
    emit(args.format, COLUMNS, records, empty=empty)
    return 0

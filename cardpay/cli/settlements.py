"""`cardpay settlements`: the settlement batches, per day and currency, against the network's
report (what finance reconciles)."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from cardpay.cli.options import day
from cardpay.cli.output import Column, Record, add_format_options, emit
from cardpay.records import amount_text, settlement_record
from cardpay.settings import Settings
from domain.money import FIAT_CURRENCIES


def currency(text: str) -> str:
    """A card currency code (EUR, GBP, USD; any case)."""
    code = text.strip().upper()
    if code not in FIAT_CURRENCIES:
        raise argparse.ArgumentTypeError(
            f"expected one of {', '.join(sorted(FIAT_CURRENCIES))}, got {text!r}")
    return code


def _amount(key: str) -> Callable[[Record], str]:
    return lambda r: amount_text(r[key], r["decimals"])


COLUMNS = [
    Column("day", "day"),
    Column("currency", "currency"),
    Column("status", "status"),
    Column("window", "window", "right"),
    Column("payments", "payments", "right"),
    Column("decimals", "decimals", "right"),
    Column("count", "count", "right"),
    Column("credit", "credit", "right", render=_amount("credit")),
    Column("debit", "debit", "right", render=_amount("debit")),
    Column("net", "net", "right", render=_amount("net")),
    Column("report_id", "report"),
    Column("report_count", "report count", "right"),
    Column("report_credit", "report credit", "right", render=_amount("report_credit")),
    Column("report_debit", "report debit", "right", render=_amount("report_debit")),
    Column("report_net", "report net", "right", render=_amount("report_net")),
    Column("report_fees", "fees", "right", render=_amount("report_fees")),
    Column("diff_count", "diff count", "right"),
    Column("diff_credit", "diff credit", "right", render=_amount("diff_credit")),
    Column("diff_debit", "diff debit", "right", render=_amount("diff_debit")),
    Column("diff_net", "diff net", "right", render=_amount("diff_net")),
    Column("updated_at", "updated",
           render=lambda r: "-" if r["updated_at"] is None
           else f"{r['updated_at']:%Y-%m-%d %H:%M:%S}"),
]
"""Our figures (the day's payment events as the network counts them), the report's interchange
line (and its fees), and ours minus the report's. JSON and CSV give amounts as strings of fiat
minor units next to `decimals` (exact); counts are numbers."""


def register(sub: Any) -> None:
    parser = sub.add_parser(
        "settlements", help="list settlement batches against the network's reports",
        description="Settlement batches per settlement day and currency, as the settlement saga "
        "left them: status, our count/credit/debit/net, the network report's, and the "
        "difference (ours minus the report's). Oldest day first.",
    )
    parser.add_argument("--day", type=day, default=None, metavar="YYYY-MM-DD",
                        help="only this settlement day")
    parser.add_argument("--currency", type=currency, default=None, metavar="CODE",
                        help="only this currency (EUR, GBP, USD)")
    add_format_options(parser)
    parser.set_defaults(run=settlements_command)


def settlements_command(settings: Settings, args: argparse.Namespace) -> int:
    from cardpay.cli.db import reading
    from cardpay.postgres.repositories.settlement import PostgresSettlementBatches

    with reading(settings) as (_, conn):
        batches = PostgresSettlementBatches(conn).find(day=args.day, currency=args.currency)
    wanted = " ".join(x for x in (args.day and args.day.isoformat(), args.currency) if x)
    emit(args.format, COLUMNS, [settlement_record(b) for b in batches],
         empty=f"(no settlement batches{' for ' + wanted if wanted else ''})")
    return 0

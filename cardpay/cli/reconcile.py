"""`cardpay reconcile --day D`: the chain, the ledger and the network's settlement report of one
settlement day, per currency, and every break between them (ADR 0017). Exit status 1 when there
is a break, 0 when the day reconciles: a script or a cron job can act on it."""

from __future__ import annotations

import argparse
from datetime import date
from typing import Any

from cardpay.cli.options import day
from cardpay.cli.output import Column, Record, add_format_options, console, print_csv, print_json
from cardpay.cli.output import print_table as table
from cardpay.cli.settlements import currency
from cardpay.records import amount_text, reconciliation_record
from cardpay.settings import Settings
from domain.reconciliation import Reconciliation

DESCRIPTION = """\
Reconcile one settlement day, per currency, three ways:
  chain    what the day's payments moved on chain (spends and refunds the listener recorded,
           net of reorgs, whenever they happened) and transfers out of the settlement account
           that match no payment;
  ledger   the ledger's on-chain transfers for those payments, and what it posted to network
           payable on the day (clearings, force posts, returns, return reversals);
  network  the day's settlement batch (what the network counts of our payments) and the
           network's settlement report (its issuer interchange line and any other line).
The day's payments are those of the day's batch, those the ledger posted to network payable on
the day, and those with chain movements on the day that are in no batch (ADR 0017).

Amounts are the currency's token (EURe, GBPe, USDCe), exact; JSON and CSV give them as strings
of base units next to `decimals`. A break's amount is the first side its kind names minus the
second. Break kinds: chain_not_in_ledger, ledger_not_on_chain, chain_transfer_unmatched,
ledger_not_in_report, report_not_in_ledger, report_line_unexplained, totals_differ,
report_missing.

exit status: 0 every currency reconciles, 1 at least one break, 2 bad usage."""


def register(sub: Any) -> None:
    parser = sub.add_parser(
        "reconcile", help="three-way reconciliation of a settlement day: chain, ledger, report",
        description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--day", type=day, required=True, metavar="YYYY-MM-DD",
                        help="the settlement day (UTC)")
    parser.add_argument("--currency", type=currency, default=None, metavar="CODE",
                        help="only this currency (EUR, GBP, USD; default: every currency with "
                        "anything on the day)")
    add_format_options(parser)
    parser.set_defaults(run=reconcile_command)


def reconcile_command(settings: Settings, args: argparse.Namespace) -> int:
    from cardpay.cli.db import reading
    from cardpay.handlers.reconciliation import reconcile_day
    from cardpay.postgres.reconciliation import PostgresReconciliationSource

    with reading(settings) as (_, conn):
        results = reconcile_day(PostgresReconciliationSource(conn), args.day, args.currency)
    show(args.format, args.day, results)
    return 0 if all(r.clean for r in results) else 1


# -- output ---------------------------------------------------------------------------------------
def rows(r: Reconciliation) -> list[Record]:
    """The figures of each side, then the breaks: one flat row each (the CSV and the tables)."""
    base = {"day": r.day.isoformat(), "currency": r.currency, "token": r.token,
            "decimals": r.decimals, "count": None, "amount": None, "payments": None,
            "detail": None}
    n = r.network

    def figure(section: str, name: str, amount: int | None = None, *, count: int | None = None,
               detail: str | None = None) -> Record:
        return {**base, "section": section, "name": name, "count": count,
                "amount": None if amount is None else str(amount), "detail": detail}

    out = [figure("chain", "spent", r.chain.spent), figure("chain", "refunded", r.chain.refunded),
           figure("chain", "unmatched_out", r.chain.unmatched_out),
           figure("chain", "net", r.chain.net),
           figure("ledger", "onchain", r.ledger.onchain),
           figure("ledger", "payable", r.ledger.payable,
                  detail="posted to network payable on the day (owed to the network)"),
           figure("network", "batch", detail=n.batch_status or "(no batch)"),
           figure("network", "batch_net", n.ours.net, count=n.ours.count,
                  detail=f"credit {amount_text(n.ours.credit, r.decimals)}, debit "
                  f"{amount_text(n.ours.debit, r.decimals)} (net: credit - debit, as reported)")]
    if n.report is None:
        out.append(figure("network", "report_net", detail="(no report)"))
    else:
        out += [figure("network", "report_net", n.report.net, count=n.report.count,
                       detail=f"{n.report_id}: credit {amount_text(n.report.credit, r.decimals)}"
                       f", debit {amount_text(n.report.debit, r.decimals)}"),
                figure("network", "report_fees", n.fees)]
    out += [{**base, "section": "break", "name": b.kind.value, "amount": str(b.amount),
             "payments": " ".join(b.payments), "detail": b.detail} for b in r.breaks]
    return out


CSV_COLUMNS = [Column(k, k) for k in ("day", "currency", "token", "decimals", "section", "name",
                                      "count", "amount", "payments", "detail")]


def _amount(record: Record) -> str:
    return amount_text(record["amount"], record["decimals"]) if record["amount"] else "-"


FIGURE_COLUMNS = [Column("section", "side"), Column("name", "figure"),
                  Column("count", "count", "right"),
                  Column("amount", "amount", "right", render=_amount),
                  Column("detail", "")]
BREAK_COLUMNS = [Column("name", "break"), Column("amount", "amount", "right", render=_amount),
                 Column("payments", "payments"), Column("detail", "detail")]


def show(fmt: str, on: date, results: list[Reconciliation]) -> None:
    if fmt == "json":
        print_json([reconciliation_record(r) for r in results])
        return
    if fmt == "csv":
        print_csv(CSV_COLUMNS, [row for r in results for row in rows(r)])
        return
    if not results:
        console().print(f"(nothing to reconcile on {on.isoformat()})", markup=False)
        return
    for r in results:
        every = rows(r)
        state = "reconciles" if r.clean else f"{len(r.breaks)} break(s)"
        table(FIGURE_COLUMNS, [x for x in every if x["section"] != "break"],
              title=f"{on.isoformat()} {r.currency} ({r.token}, {len(r.payments)} payments): "
              f"{state}")
        if r.breaks:
            table(BREAK_COLUMNS, [x for x in every if x["section"] == "break"])

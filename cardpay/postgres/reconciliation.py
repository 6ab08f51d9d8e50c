"""What `cardpay reconcile` compares, read from the tables the write side keeps (no table of its
own): per settlement day and currency, the batch's items and the day's report, the payments'
chain events (through the event store) and the settlement-account transfers no payment
explains, and the ledger's `:onchain` transfers and network-payable postings. Read-only.

Which payments belong to day D is ADR 0017's: those of D's batch, those the ledger posted to
network payable for on D, and those with chain events on D that no batch has; their chain
movements count whenever they happened.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from sqlalchemy import Connection, text

from cardpay.postgres.eventstore import PostgresEventStore
from domain import commands as c
from domain import events as e
from domain.ledger.chart import AccountKind, ChartOfAccounts
from domain.ledger.payments import CHAIN_SPEND, Code
from domain.money import FIAT_TOKENS, Money, fiat_currency, token_for
from domain.reconciliation import (
    DayInputs,
    LedgerPosting,
    UnmatchedTransfer,
    chain_movements,
)
from domain.serialization import from_json
from domain.settlement import Figures, SettlementItem, settlement_day

PAYABLE_CODES = (Code.HOLD, Code.UNHELD_CLEARING, Code.RETURN, Code.RETURN_REVERSAL,
                 Code.UNMATCHED_RETURN)
"""The codes of what payment messages post to network payable (a hold's post keeps the hold's
code; its pending changes are not counted, only the posted ones). The payout's own codes are
left out: they settle the day, they are not part of it."""

CHAIN_EVENT_TYPES: tuple[type[e.DomainEvent], ...] = (
    e.PaymentSpent, e.PaymentRefunded, e.SpendRetracted, e.RefundRetracted)
"""All that `chain_movements` and `_token_of` look at in a payment's history: only these are
read (a day of 100,000 payments is ~5 events each, ~1 of them on chain)."""
CHAIN_EVENTS = tuple(cls.__name__ for cls in CHAIN_EVENT_TYPES)

_ITEMS = text("SELECT item_key, payment_id, count, credit, debit FROM settlement_items "
              "WHERE day = :day AND currency = :currency ORDER BY item_key")
_REPORTS = text("SELECT report FROM settlement_reports "
                "WHERE settlement_date = :day AND currency = :currency")
_BATCH = text("SELECT status FROM settlement_batches WHERE day = :day AND currency = :currency")
_PAYABLE = text(
    "SELECT t.id, t.user_data, t.code, e.credits_posted - e.debits_posted AS owed "
    "FROM ledger_entries e JOIN ledger_transfers t ON t.id = e.journal_id "
    "WHERE e.account_id = :account AND t.code = ANY(:codes) "
    "AND t.created_at >= :start AND t.created_at < :end "
    "AND (e.credits_posted <> 0 OR e.debits_posted <> 0) ORDER BY t.id")
_ONCHAIN = text(
    "SELECT id, user_data, debit_account_id, amount FROM ledger_transfers "
    "WHERE code = :code AND ledger = :ledger AND user_data = ANY(:ids) ORDER BY id")
_UNBATCHED = text(
    "SELECT DISTINCT ev.stream_id FROM events ev WHERE ev.type = ANY(:types) "
    "AND ev.recorded_at >= :start AND ev.recorded_at < :end "
    "AND NOT EXISTS (SELECT 1 FROM settlement_items i WHERE i.payment_id = ev.stream_id)")
_UNMATCHED = text("SELECT command_id, command FROM unmatched_transfers "
                  "WHERE resolved_at IS NULL ORDER BY command_id")
_DAY_CURRENCIES = text(
    "SELECT currency FROM settlement_items WHERE day = :day "
    "UNION SELECT currency FROM settlement_reports WHERE settlement_date = :day "
    "UNION SELECT currency FROM settlement_batches WHERE day = :day")
_PAYABLE_LEDGERS = text(
    "SELECT DISTINCT ledger FROM ledger_transfers WHERE code = ANY(:codes) "
    "AND created_at >= :start AND created_at < :end")

_SLACK = timedelta(days=1)
"""Chain events are dated by their own time (the block's), the table by when they were written:
candidates are read a day either side and kept by their own date."""


def _bounds(day: date) -> tuple[datetime, datetime]:
    start = datetime.combine(day, time(0), UTC)
    return start, start + timedelta(days=1)


class PostgresReconciliationSource:
    """`cardpay.handlers.reconciliation.ReconciliationSource` on one open connection."""

    def __init__(self, conn: Connection) -> None:
        self._conn = conn
        self._events = PostgresEventStore(conn)
        self._unbatched_cache: dict[date, dict[str, list[e.DomainEvent]]] = {}

    def currencies(self, day: date) -> list[str]:
        """The fiat currencies with anything on `day`: a batch, a report, a network-payable
        posting, a chain movement of a payment in no batch, a stray settlement transfer."""
        start, end = _bounds(day)
        found = {str(r[0]) for r in self._conn.execute(_DAY_CURRENCIES, {"day": day})}
        fiat_of = {token.code: fiat.code for fiat, token in FIAT_TOKENS.items()}
        for (ledger,) in self._conn.execute(_PAYABLE_LEDGERS, {
                "codes": list(PAYABLE_CODES), "start": start, "end": end}):
            if ledger in fiat_of:
                found.add(fiat_of[ledger])
        for movement_token in self._unbatched_tokens(day):
            found.add(fiat_of.get(movement_token, movement_token))
        for token, _ in self._unmatched(day):
            found.add(fiat_of.get(token, token))
        return sorted(code for code in found if code in {f.code for f in FIAT_TOKENS})

    def inputs(self, day: date, currency: str) -> DayInputs:
        token = token_for(fiat_currency(currency))
        start, end = _bounds(day)
        args = {"day": day, "currency": currency}
        items = [SettlementItem(day=day, currency=currency, key=str(key), payment_id=payment,
                                figures=Figures(int(n), int(credit), int(debit)))
                 for key, payment, n, credit, debit in self._conn.execute(_ITEMS, args)]
        chart = ChartOfAccounts(token.code)
        payable = [
            LedgerPosting(str(tid), _ref(str(user), str(code)), int(owed), str(code))
            for tid, user, code, owed in self._conn.execute(_PAYABLE, {
                "account": chart.account_id(AccountKind.NETWORK_PAYABLE),
                "codes": list(PAYABLE_CODES), "start": start, "end": end})]
        items += [_unplaced_return(day, currency, p) for p in payable
                  if p.code == Code.UNMATCHED_RETURN]
        payments = sorted({i.payment_id for i in items if i.payment_id}
                          | {p.ref for p in payable if not p.ref.startswith("return:")}
                          | set(self._unbatched(day, token.code)))
        histories = (self._events.load_many(payments, only=CHAIN_EVENT_TYPES) if payments
                     else {})
        chain = [m for pid in payments if _token_of(histories.get(pid, [])) == token.code
                 for m in chain_movements(histories[pid])]
        return DayInputs(
            day=day, currency=currency, items=items, report=self._report(day, currency),
            batch_status=self._conn.execute(_BATCH, args).scalar(), chain=chain,
            unmatched=[u for t, u in self._unmatched(day) if t == token.code],
            ledger_chain=self._onchain(token.code, payments), ledger_payable=payable)

    # -- pieces -----------------------------------------------------------------------------------
    def _report(self, day: date, currency: str) -> dict[str, Any] | None:
        reports = [dict(r[0]) for r in self._conn.execute(_REPORTS,
                                                          {"day": day, "currency": currency})]
        if not reports:
            return None
        # a correction is a later report of the same day: the latest counts (as for the desk)
        return max(reports, key=lambda r: (str(r.get("network_time", "")), str(r["report_id"])))

    def _onchain(self, ledger: str, payments: Sequence[str]) -> list[LedgerPosting]:
        if not payments:
            return []
        settlement = ChartOfAccounts(ledger).account_id(AccountKind.ONCHAIN_SETTLEMENT)
        return [LedgerPosting(str(tid), str(user),
                              int(amount) if debit == settlement else -int(amount), CHAIN_SPEND)
                for tid, user, debit, amount in self._conn.execute(_ONCHAIN, {
                    "code": CHAIN_SPEND, "ledger": ledger, "ids": list(payments)})]

    def _unbatched_histories(self, day: date) -> dict[str, list[e.DomainEvent]]:
        """Payments in no batch whose first chain movement is dated `day`, with their chain
        events (read once a day)."""
        if day in self._unbatched_cache:
            return self._unbatched_cache[day]
        start, end = _bounds(day)
        ids = [str(r[0]) for r in self._conn.execute(_UNBATCHED, {
            "types": list(CHAIN_EVENTS), "start": start - _SLACK, "end": end + _SLACK})]
        histories = self._events.load_many(ids, only=CHAIN_EVENT_TYPES) if ids else {}
        out: dict[str, list[e.DomainEvent]] = {}
        for pid, history in histories.items():
            moved = chain_movements(history)
            if moved and settlement_day(moved[0].at) == day:
                out[pid] = history
        self._unbatched_cache[day] = out
        return out

    def _unbatched(self, day: date, token: str) -> list[str]:
        return [pid for pid, history in self._unbatched_histories(day).items()
                if _token_of(history) == token]

    def _unbatched_tokens(self, day: date) -> set[str]:
        return {t for h in self._unbatched_histories(day).values()
                if (t := _token_of(h)) is not None}

    def _unmatched(self, day: date) -> list[tuple[str, UnmatchedTransfer]]:
        """The day's settlement-account transfers no refund explains, with their token."""
        out: list[tuple[str, UnmatchedTransfer]] = []
        for key, raw in self._conn.execute(_UNMATCHED):
            command = from_json(c.RecordSettlementTransfer, dict(raw))
            if settlement_day(command.at) != day:
                continue
            out.append((command.amount.currency.code, UnmatchedTransfer(
                str(key), command.evidence.tx_hash, command.recipient, command.amount.units,
                command.at)))
        return out


def _ref(user_data: str, code: str) -> str:
    """A posting's payment, or `return:<id>` for a return no payment explains."""
    return f"return:{user_data}" if code == Code.UNMATCHED_RETURN else user_data


def _unplaced_return(day: date, currency: str, posting: LedgerPosting) -> SettlementItem:
    """The network counts a return no payment explains; only its suspense posting records it
    (as the settlement desk counts it, `cardpay.handlers.settlement.unplaced_returns`)."""
    fiat = fiat_currency(currency)
    minor = Money(-posting.amount, token_for(fiat)).convert(fiat).units
    return SettlementItem(day=day, currency=currency, key=posting.ref, payment_id=None,
                          figures=Figures(1, credit=minor))


def _token_of(history: Sequence[e.DomainEvent]) -> str | None:
    """The token a payment's chain events are in (their amounts' currency)."""
    for ev in history:
        if isinstance(ev, (e.PaymentSpent, e.PaymentRefunded, e.RefundRetracted)):
            return ev.amount.currency.code
    return None

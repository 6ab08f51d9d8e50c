"""The three-way reconciliation, pure (`domain.reconciliation`): a clean day has no break, and
each way the chain, the ledger and the network's report can disagree is one break of its kind,
with the difference and the payments behind it."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest

from domain import events as e
from domain.money import EURE, Money
from domain.reconciliation import (
    Break,
    BreakKind,
    ChainMovement,
    DayInputs,
    LedgerPosting,
    UnmatchedTransfer,
    chain_movements,
    reconcile,
)
from domain.settlement import Figures, SettlementItem

pytestmark = pytest.mark.unit
DAY = date(2026, 12, 2)
T0 = datetime(2026, 12, 2, 9, tzinfo=UTC)
CENT = 10**16  # EURe base units in a euro cent
SAFE = "0x" + "5a" * 20


def line(mode: str, kind: str, n: int, credit: int, debit: int) -> dict[str, Any]:
    return {"business_mode": mode, "amount_type": kind, "count": n, "credit_amount": credit,
            "debit_amount": debit, "net_amount": credit - debit}


def report(count: int, credit: int, debit: int, *extra: dict[str, Any]) -> dict[str, Any]:
    return {"report_id": "r-1", "lines": [
        line("issuer", "interchange", count, credit, debit),
        line("issuer", "reimbursement_fees", count, 3, 0),
        line("total", "total", count, credit + 3, debit), *extra]}


def item(key: str, payment: str | None, credit: int = 0, debit: int = 0) -> SettlementItem:
    return SettlementItem(day=DAY, currency="EUR", key=key, payment_id=payment,
                          figures=Figures(1, credit, debit))


def move(key: str, payment: str, cents: int, what: str = "spend") -> ChainMovement:
    return ChainMovement(key, payment, cents * CENT, what, "0x" + "ab" * 32, T0)


def onchain(key: str, payment: str, cents: int) -> LedgerPosting:
    return LedgerPosting(f"{key}:onchain", payment, cents * CENT, "card_spend_onchain")


def payable(tid: str, ref: str, cents: int) -> LedgerPosting:
    return LedgerPosting(tid, ref, cents * CENT, "authorization_hold")


def clean_day() -> DayInputs:
    """p1 spent and cleared 10.00; p2 spent and cleared 5.50, returned 2.00 and refunded 2.00
    on chain; a return of 1.00 no payment explains (booked to suspense, counted by the
    network); the report agrees."""
    return DayInputs(
        day=DAY, currency="EUR",
        items=[item("p1:3", "p1", debit=1_000), item("p2:3", "p2", debit=550),
               item("p2:5", "p2", credit=200), item("return:r9", None, credit=100)],
        report=report(4, 300, 1_550), batch_status="settled",
        chain=[move("p1:2", "p1", 1_000), move("p2:2", "p2", 550),
               move("p2:6", "p2", -200, "refund")],
        ledger_chain=[onchain("p1:2", "p1", 1_000), onchain("p2:2", "p2", 550),
                      onchain("p2:6", "p2", -200)],
        ledger_payable=[payable("p1:3:post", "p1", 1_000), payable("p2:3:post", "p2", 550),
                        payable("p2:5:return", "p2", -200),
                        payable("return:r9:suspense", "return:r9", -100)])


def kinds(breaks: tuple[Break, ...]) -> list[BreakKind]:
    return [b.kind for b in breaks]


def test_a_clean_day_has_no_break_and_every_side_adds_up() -> None:
    result = reconcile(clean_day())
    assert result.clean and result.breaks == ()
    assert (result.token, result.decimals, result.payments) == ("EURe", 18, ("p1", "p2"))
    assert (result.chain.spent, result.chain.refunded, result.chain.net) == (
        1_550 * CENT, 200 * CENT, 1_350 * CENT)
    assert (result.ledger.onchain, result.ledger.payable) == (1_350 * CENT, 1_250 * CENT)
    assert result.network.ours == Figures(4, 300 * CENT, 1_550 * CENT)
    assert result.network.report == result.network.ours
    assert (result.network.report_id, result.network.fees) == ("r-1", 3 * CENT)


def test_a_chain_movement_the_ledger_lacks_is_a_break_naming_its_payment() -> None:
    day = clean_day()
    result = reconcile(replace(day, ledger_chain=day.ledger_chain[:2]))
    brk, = result.breaks
    assert (brk.kind, brk.amount, brk.payments) == (BreakKind.CHAIN_NOT_IN_LEDGER, -200 * CENT,
                                                    ("p2",))
    assert "refund p2:6" in brk.detail and "booked nothing" in brk.detail


def test_a_chain_movement_booked_for_another_amount_is_the_difference() -> None:
    day = clean_day()
    result = reconcile(replace(day, ledger_chain=[onchain("p1:2", "p1", 900),
                                                  *day.ledger_chain[1:]]))
    brk, = result.breaks
    assert (brk.kind, brk.amount, brk.payments) == (BreakKind.CHAIN_NOT_IN_LEDGER, 100 * CENT,
                                                    ("p1",))


def test_a_ledger_chain_transfer_no_chain_movement_explains_is_a_break() -> None:
    day = clean_day()
    result = reconcile(replace(day, chain=day.chain[:2]))
    brk, = result.breaks
    assert (brk.kind, brk.amount, brk.payments) == (BreakKind.LEDGER_NOT_ON_CHAIN, -200 * CENT,
                                                    ("p2",))


def test_a_settlement_account_transfer_matching_no_payment_is_a_break() -> None:
    stray = UnmatchedTransfer("100:0x1:7", "0x" + "cd" * 32, SAFE, 40 * CENT, T0)
    result = reconcile(replace(clean_day(), unmatched=[stray]))
    brk, = result.breaks
    assert (brk.kind, brk.amount, brk.payments) == (BreakKind.CHAIN_TRANSFER_UNMATCHED,
                                                    -40 * CENT, ())
    assert result.chain.unmatched_out == 40 * CENT and result.chain.net == 1_310 * CENT
    assert brk.detail.startswith(f"0.40 EURe left the settlement account to {SAFE}")


def test_a_ledger_posting_the_report_lacks_names_the_payment() -> None:
    day = clean_day()
    result = reconcile(replace(day, ledger_payable=[
        *day.ledger_payable, payable("p3:2:clearing", "p3", 700)]))
    brk, = result.breaks
    assert (brk.kind, brk.amount, brk.payments) == (BreakKind.LEDGER_NOT_IN_REPORT, 700 * CENT,
                                                    ("p3",))
    assert "p3" in result.payments


def test_a_ledger_posting_for_another_amount_than_counted_is_the_difference() -> None:
    day = clean_day()
    result = reconcile(replace(day, ledger_payable=[
        *day.ledger_payable, payable("p1:4:beyond_hold", "p1", 25)]))
    brk, = result.breaks
    assert (brk.kind, brk.amount, brk.payments) == (BreakKind.LEDGER_NOT_IN_REPORT, 25 * CENT,
                                                    ("p1",))


def test_a_payment_the_batch_counts_that_the_ledger_never_posted_is_a_break() -> None:
    day = clean_day()
    result = reconcile(replace(day, ledger_payable=day.ledger_payable[1:]))
    brk, = result.breaks
    assert (brk.kind, brk.amount, brk.payments) == (BreakKind.REPORT_NOT_IN_LEDGER,
                                                    1_000 * CENT, ("p1",))


def test_a_report_line_cardpay_does_not_book_is_unexplained() -> None:
    day = clean_day()
    assert day.report is not None
    extra = line("acquirer", "interchange", 1, 0, 80)
    result = reconcile(replace(day, report={**day.report,
                                            "lines": [*day.report["lines"], extra]}))
    brk, = result.breaks
    assert (brk.kind, brk.amount, brk.payments) == (BreakKind.REPORT_LINE_UNEXPLAINED,
                                                    -80 * CENT, ())
    assert "acquirer/interchange" in brk.detail


def test_a_report_on_a_day_without_payments_of_ours_is_one_unexplained_line() -> None:
    result = reconcile(DayInputs(day=DAY, currency="EUR", report=report(2, 0, 900)))
    brk, = result.breaks
    assert (brk.kind, brk.amount, brk.payments) == (BreakKind.REPORT_LINE_UNEXPLAINED,
                                                    -900 * CENT, ())
    assert result.network.ours == Figures() and result.payments == ()


def test_an_empty_report_on_a_quiet_day_is_clean() -> None:
    assert reconcile(DayInputs(day=DAY, currency="EUR", report=report(0, 0, 0))).clean


def test_totals_that_differ_from_the_report_name_the_batch() -> None:
    result = reconcile(replace(clean_day(), report=report(5, 300, 2_050)))
    brk, = result.breaks
    assert (brk.kind, brk.amount, brk.payments) == (BreakKind.TOTALS_DIFFER, 500 * CENT,
                                                    ("p1", "p2"))
    assert "count -1" in brk.detail and "debit -5.00 EURe" in brk.detail


def test_a_day_with_payments_and_no_report_is_a_break() -> None:
    result = reconcile(replace(clean_day(), report=None))
    brk, = result.breaks
    assert (brk.kind, brk.amount) == (BreakKind.REPORT_MISSING, -1_250 * CENT)
    assert result.network.report is None


def test_chain_movements_come_from_the_payment_events_retractions_included() -> None:
    def ev(cls: Any, version: int, **fields: Any) -> Any:
        return cls(stream_id="p1", version=version, occurred_at=T0 + timedelta(minutes=version),
                   correlation_id="c", causation_id="c", **fields)

    proof = e.ChainEvidence(chain_id=100, block_number=5, block_hash="0x05", tx_hash="0xt5",
                            log_index=0)
    refund = e.ChainEvidence(chain_id=100, block_number=9, block_hash="0x09", tx_hash="0xt9",
                             log_index=1)
    history = [
        ev(e.PaymentSpent, 2, account=SAFE, amount=Money(10 * CENT, EURE), evidence=proof),
        ev(e.PaymentRefunded, 3, refund_id="f1", amount=Money(4 * CENT, EURE),
           evidence=refund),
        ev(e.RefundRetracted, 4, refund_id="f1", amount=Money(4 * CENT, EURE),
           evidence=refund, reason="reorg"),
        ev(e.SpendRetracted, 5, evidence=proof, reason="reorg"),
    ]
    moved = chain_movements(history)
    assert [(m.key, m.amount, m.what, m.tx_hash) for m in moved] == [
        ("p1:2", 10 * CENT, "spend", "0xt5"), ("p1:3", -4 * CENT, "refund", "0xt9"),
        ("p1:4", 4 * CENT, "refund_retracted", "0xt9"),
        ("p1:5", -10 * CENT, "spend_retracted", "0xt5")]
    result = reconcile(DayInputs(day=DAY, currency="EUR", chain=moved))
    assert (result.chain.spent, result.chain.refunded) == (0, 0)
    assert kinds(result.breaks) == [BreakKind.CHAIN_NOT_IN_LEDGER] * 4


class Source:
    """A `ReconciliationSource` with the clean EUR day and a GBP report without payments."""

    def __init__(self) -> None:
        self.asked: list[str] = []

    def currencies(self, day: date) -> list[str]:
        return ["EUR", "GBP"] if day == DAY else []

    def inputs(self, day: date, currency: str) -> DayInputs:
        self.asked.append(currency)
        if currency == "EUR":
            return clean_day()
        if currency == "GBP":
            return DayInputs(day=day, currency=currency, report=report(1, 0, 700))
        return DayInputs(day=day, currency=currency)


def test_the_handler_reconciles_every_currency_of_the_day_or_the_one_asked() -> None:
    from cardpay.handlers.reconciliation import reconcile_day

    source = Source()
    found = reconcile_day(source, DAY)
    assert [(r.currency, r.token, r.clean) for r in found] == [
        ("EUR", "EURe", True), ("GBP", "GBPe", False)]
    assert kinds(found[1].breaks) == [BreakKind.REPORT_LINE_UNEXPLAINED]
    assert [r.currency for r in reconcile_day(source, DAY, "GBP")] == ["GBP"]
    assert reconcile_day(source, DAY - timedelta(days=1)) == []
    # a currency asked for by name is answered even on a day it has nothing: clean and empty
    quiet = reconcile_day(source, DAY - timedelta(days=1), "USD")
    assert source.asked == ["EUR", "GBP", "GBP", "USD"]
    assert [(r.currency, r.token, r.clean, r.payments) for r in quiet] == [
        ("USD", "USDCe", True, ())]

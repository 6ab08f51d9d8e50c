"""The ledger side of a card payment's chain events: the Safe's mirror and the on-chain
settlement account move with the tokens; the cardholder's funds do not (found by the full
lifecycle: without this, a spend that landed was counted against the funds twice, once as the
payment's hold and once as the Safe's lower balance, and approvals were declined)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, TypeVar

import pytest

from domain import events as e
from domain.ledger.chart import AccountKind, ChartOfAccounts
from domain.ledger.payments import CHAIN_SPEND, chain_movements
from domain.money import EURE, Money

pytestmark = pytest.mark.unit
T0 = datetime(2026, 12, 2, tzinfo=UTC)
SAFE = "0x" + "5a" * 20
CHART = ChartOfAccounts("EURe")
MIRROR, SETTLEMENT = CHART.safe_mirror(SAFE).id, CHART.account_id(AccountKind.ONCHAIN_SETTLEMENT)
E = TypeVar("E", bound=e.DomainEvent)


def ev(cls: type[E], version: int, **fields: Any) -> E:
    return cls(stream_id="auth-1", version=version, occurred_at=T0, correlation_id="auth-1",
               causation_id=f"m{version}", **fields)


def evidence(n: int) -> e.ChainEvidence:
    return e.ChainEvidence(chain_id=100, block_number=n, block_hash="0x" + f"{n:02x}" * 32,
                           tx_hash="0x" + f"{n + 1:02x}" * 32, log_index=0)


def test_a_spend_and_a_refund_move_the_mirror_against_the_settlement_account() -> None:
    spent = ev(e.PaymentSpent, 2, account=SAFE, amount=Money(10**18, EURE), evidence=evidence(7))
    refunded = ev(e.PaymentRefunded, 5, refund_id="r", amount=Money(4 * 10**17, EURE),
                  evidence=evidence(9))
    out, back = chain_movements(SAFE, [], [spent, refunded])
    assert (out.debit_account_id, out.credit_account_id, out.amount, out.code) == (
        SETTLEMENT, MIRROR, 10**18, CHAIN_SPEND)
    assert (back.debit_account_id, back.credit_account_id, back.amount) == (
        MIRROR, SETTLEMENT, 4 * 10**17)
    assert (out.id, back.id) == ("auth-1:2:onchain", "auth-1:5:onchain")  # one per event
    assert CHART.cardholder(SAFE).id not in {out.debit_account_id, out.credit_account_id}


def test_retractions_undo_what_their_logs_moved() -> None:
    spent = ev(e.PaymentSpent, 2, account=SAFE, amount=Money(10**18, EURE), evidence=evidence(7))
    retracted = ev(e.SpendRetracted, 3, evidence=evidence(7), reason="reorg")
    undone, = chain_movements(SAFE, [spent], [retracted])
    assert (undone.debit_account_id, undone.credit_account_id, undone.amount) == (
        MIRROR, SETTLEMENT, 10**18)
    refund_gone = ev(e.RefundRetracted, 6, refund_id="r", amount=Money(5, EURE),
                     evidence=evidence(9), reason="reorg")
    again, = chain_movements(SAFE, [], [refund_gone])
    assert (again.debit_account_id, again.credit_account_id) == (SETTLEMENT, MIRROR)
    other = ev(e.SpendRetracted, 4, evidence=evidence(8), reason="reorg")
    assert chain_movements(SAFE, [spent], [other]) == []  # names no spend of this payment

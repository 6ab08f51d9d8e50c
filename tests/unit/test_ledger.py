"""The pure ledger: the unit and its conversions, the chart of accounts, and rules of `decide`
that the contract suite does not reach (purity, limits, chains, clocks)."""

from __future__ import annotations

import copy
from datetime import datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from domain.errors import CurrencyMismatch, InexactConversion, NaiveTimestamp
from domain.ledger import (
    AMOUNT_MAX,
    Account,
    AccountFlags,
    AccountKind,
    ChartOfAccounts,
    CreateTransferResult,
    Ledger,
    PendingStatus,
    Transfer,
    decide,
)
from domain.ledger.chart import FLAGS
from domain.ledger.units import EURE, USDCE, split_to_fiat, to_fiat, to_ledger_units
from domain.money import EUR, GBP, USD, Currency, Money
from tests.support.ledger import ACCOUNTS, ALICE, BOB, NOW, PAYABLE, SAFES, F, deposit, hold, post

pytestmark = pytest.mark.unit
R = CreateTransferResult


# -- the unit -----------------------------------------------------------------------------------
def test_network_amounts_convert_exactly_into_token_base_units() -> None:
    assert to_ledger_units(Money(850, EUR)) == Money(8_500_000_000_000_000_000, EURE)
    assert to_ledger_units(Money(1, USD)) == Money(10_000, USDCE)
    assert to_ledger_units(Money(1, GBP)).units == 10**16
    with pytest.raises(CurrencyMismatch):
        to_ledger_units(Money(1, Currency("CHF", 2)))


def test_going_back_to_fiat_is_exact_or_refused_or_split_with_the_remainder() -> None:
    assert to_fiat(Money(8_500_000_000_000_000_000, EURE)) == Money(850, EUR)
    with pytest.raises(InexactConversion):
        to_fiat(Money(10**16 + 1, EURE))
    assert split_to_fiat(Money(3 * 10**16 + 7, EURE)) == (Money(3, EUR), Money(7, EURE))
    with pytest.raises(CurrencyMismatch):
        to_fiat(Money(1, EUR))


@given(st.integers(-(10**30), 10**30), st.sampled_from([EURE, USDCE]))
def test_a_split_adds_back_up_exactly(units: int, token: Currency) -> None:
    fiat, rest = split_to_fiat(Money(units, token))
    assert to_ledger_units(fiat) + rest == Money(units, token)
    assert abs(rest.units) < 10 ** (token.decimals - 2)


# -- the chart of accounts ---------------------------------------------------------------------
def test_the_chart_names_every_account_and_gives_it_its_flags() -> None:
    chart = ChartOfAccounts("USDCe")
    assert chart.account_id(AccountKind.FEES) == "USDCe:fees"
    holder = chart.cardholder("0xAbC")
    assert holder.id == "USDCe:cardholder_funds:0xabc" and holder.ledger == "USDCe"
    assert holder.flags is AccountFlags.DEBITS_MUST_NOT_EXCEED_CREDITS
    assert {a.code for a in chart.house_accounts()} == {k.value for k in AccountKind} - {
        "cardholder_funds"}
    assert set(FLAGS) == set(AccountKind)
    with pytest.raises(ValueError):
        chart.account_id(AccountKind.CARDHOLDER_FUNDS)
    with pytest.raises(ValueError):
        chart.account_id(AccountKind.NETWORK_PAYABLE, "0xabc")
    # the per-Safe mirror and exposure
    assert chart.safe_mirror("0xABC").id == "USDCe:safe_balances:0xabc"
    assert chart.exposure("0xABC").id == "USDCe:suspense:0xabc"


# -- decide -------------------------------------------------------------------------------------
def _book() -> Ledger:
    ledger = Ledger()
    ledger.create_accounts(ACCOUNTS)
    ledger.create_transfers([deposit("d1", ALICE, 100)], NOW)
    return ledger


def test_decide_changes_nothing_it_was_given() -> None:
    ledger = _book()
    ledger.create_transfers([hold("h1", ALICE, 50)], NOW)
    accounts, transfers = copy.deepcopy(ledger.accounts), copy.deepcopy(ledger.transfers)
    decision = decide([post("p1", "h1", 20), deposit("d2", BOB, 5), hold("h2", ALICE, 10)], NOW,
                      ledger.accounts, ledger.transfers)
    assert decision.results == [R.OK] * 3
    assert (ledger.accounts, ledger.transfers) == (accounts, transfers)
    assert decision.resolved == {"h1": PendingStatus.POSTED}
    assert decision.accounts[ALICE].debits_posted == 20
    assert decision.accounts[ALICE].debits_pending == 10


def test_limits_of_amounts_balances_and_timeouts() -> None:
    ledger = Ledger()
    ledger.create_accounts([Account("a", "EURe", "x"), Account("b", "EURe", "x")])
    assert ledger.create_transfers([Transfer("t1", "a", "b", AMOUNT_MAX, "EURe", "x")], NOW) == [
        R.OK]
    assert ledger.create_transfers([Transfer("t2", "a", "b", 1, "EURe", "x"),
                                    Transfer("t3", "b", "a", 1, "EURe", "x", F.PENDING,
                                             timeout=2**32)], NOW) == [
        R.OVERFLOWS_DEBITS, R.OVERFLOWS_TIMEOUT]
    (a,) = ledger.lookup_accounts(["a"])
    assert a.debits_posted == AMOUNT_MAX and a.balance_ok


def test_a_chain_fails_on_exists_too_and_an_open_chain_fails_whole() -> None:
    ledger = _book()
    chain = [deposit("c1", ALICE, 1, F.LINKED), deposit("c2", BOB, 5)]
    assert ledger.create_transfers(chain, NOW) == [R.OK, R.OK]
    # a retried chain: its first member EXISTS, which fails the chain (as in TigerBeetle)
    assert ledger.create_transfers(chain, NOW) == [R.EXISTS, R.LINKED_EVENT_FAILED]
    assert ledger.create_transfers([deposit("c1", ALICE, 1, F.LINKED),
                                    deposit("d2", BOB, 5)], NOW) == [
        R.EXISTS, R.LINKED_EVENT_FAILED]
    assert ledger.create_transfers([deposit("d3", BOB, 1, F.LINKED),
                                    deposit("d4", BOB, 1, F.LINKED),
                                    deposit("d5", BOB, 1, F.LINKED)], NOW) == [
        R.LINKED_EVENT_FAILED, R.LINKED_EVENT_FAILED, R.LINKED_EVENT_CHAIN_OPEN]
    assert ledger.lookup_transfers(["d2", "d3", "d4", "d5"]) == []


def test_expiry_is_its_own_balanced_journal_and_needs_a_utc_clock() -> None:
    ledger = _book()
    ledger.create_transfers([hold("h1", ALICE, 30, timeout=60)], NOW)
    assert ledger.expire_pending(NOW + timedelta(seconds=59)) == []
    assert ledger.expire_pending(NOW + timedelta(seconds=60)) == ["h1"]
    journal = [e for e in ledger.entries if e.journal_id == "expire:h1"]
    assert sorted((e.account_id, e.debits_pending, e.credits_pending) for e in journal) == [
        (ALICE, -30, 0), (PAYABLE, 0, -30)]
    with pytest.raises(NaiveTimestamp):
        ledger.create_transfers([deposit("d9", ALICE, 1)], datetime(2026, 12, 1))
    assert SAFES in ledger.accounts

"""A small EURe book for ledger tests: the house accounts, two cardholders, short names."""

from __future__ import annotations

from datetime import UTC, datetime

from domain.ledger import AccountKind, ChartOfAccounts, Transfer, TransferFlags

CHART = ChartOfAccounts("EURe")
SAFES = CHART.account_id(AccountKind.SAFE_BALANCES)
PAYABLE = CHART.account_id(AccountKind.NETWORK_PAYABLE)
SUSPENSE = CHART.account_id(AccountKind.SUSPENSE)
ALICE = CHART.account_id(AccountKind.CARDHOLDER_FUNDS, "0xa11ce")
BOB = CHART.account_id(AccountKind.CARDHOLDER_FUNDS, "0xb0b")
ACCOUNTS = [*CHART.house_accounts(), CHART.cardholder("0xa11ce"), CHART.cardholder("0xb0b")]
NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
F = TransferFlags


def deposit(tid: str, to: str, amount: int, flags: TransferFlags = F.NONE) -> Transfer:
    return Transfer(tid, SAFES, to, amount, "EURe", "deposit", flags)


def hold(tid: str, frm: str, amount: int, timeout: int = 0,
         flags: TransferFlags = F.NONE) -> Transfer:
    return Transfer(tid, frm, PAYABLE, amount, "EURe", "authorization", flags | F.PENDING,
                    timeout=timeout, user_data=f"payment-{tid}")


def post(tid: str, pending_id: str, amount: int = 0) -> Transfer:
    return Transfer(tid, amount=amount, flags=F.POST_PENDING, pending_id=pending_id)


def void(tid: str, pending_id: str) -> Transfer:
    return Transfer(tid, flags=F.VOID_PENDING, pending_id=pending_id)

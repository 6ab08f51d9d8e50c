"""The reference ledger in memory: the rules of `decide` over dictionaries.

It is the model the PostgreSQL ledger is tested against (same batches, same results, same
balances) and what the in-memory unit of work wraps. It also keeps every journal entry, so a test
can check that each journal balances and each balance is the sum of its entries.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import replace
from datetime import datetime

from domain.ledger.decide import Decision, decide, decide_expiry
from domain.ledger.model import (
    Account,
    AccountFlags,
    CreateAccountResult,
    CreateTransferResult,
    Entry,
    PendingStatus,
    Transfer,
    TransferRecord,
)

A = CreateAccountResult
_BOTH_LIMITS = (AccountFlags.DEBITS_MUST_NOT_EXCEED_CREDITS
                | AccountFlags.CREDITS_MUST_NOT_EXCEED_DEBITS)


def check_new_account(account: Account, existing: Account | None) -> CreateAccountResult:
    """TigerBeetle's create_accounts checks for one account (`existing`: one with its id)."""
    if not account.id:
        return A.ID_MUST_NOT_BE_ZERO
    if account.flags & _BOTH_LIMITS == _BOTH_LIMITS:
        return A.FLAGS_ARE_MUTUALLY_EXCLUSIVE
    if (account.debits_pending or account.debits_posted or account.credits_pending
            or account.credits_posted):
        return A.BALANCES_MUST_BE_ZERO
    if not account.ledger:
        return A.LEDGER_MUST_NOT_BE_ZERO
    if not account.code:
        return A.CODE_MUST_NOT_BE_ZERO
    if existing is not None:
        if existing.flags != account.flags:
            return A.EXISTS_WITH_DIFFERENT_FLAGS
        if existing.ledger != account.ledger:
            return A.EXISTS_WITH_DIFFERENT_LEDGER
        if existing.code != account.code:
            return A.EXISTS_WITH_DIFFERENT_CODE
        return A.EXISTS
    return A.OK


class Ledger:
    def __init__(self) -> None:
        self.accounts: dict[str, Account] = {}
        self.transfers: dict[str, TransferRecord] = {}
        self.entries: list[Entry] = []

    def create_accounts(self, accounts: Sequence[Account]) -> list[CreateAccountResult]:
        results = []
        for account in accounts:
            result = check_new_account(account, self.accounts.get(account.id))
            if result is A.OK:
                self.accounts[account.id] = account
            results.append(result)
        return results

    def create_transfers(self, batch: Sequence[Transfer],
                         now: datetime) -> list[CreateTransferResult]:
        decision = decide(batch, now, self.accounts, self.transfers)
        self._store(decision)
        return decision.results

    def expire_pending(self, now: datetime, ids: Sequence[str] | None = None) -> list[str]:
        """Void every pending transfer whose timeout has passed (of `ids`, when given);
        returns their ids, sorted."""
        due = [r for r in self.transfers.values() if r.status is PendingStatus.PENDING
               and r.expires_at is not None and r.expires_at <= now
               and (ids is None or r.transfer.id in ids)]
        decision = decide_expiry(due, now, self.accounts)
        self._store(decision)
        return sorted(decision.resolved)

    def _store(self, decision: Decision) -> None:
        self.accounts.update(decision.accounts)
        for record in decision.created:
            self.transfers[record.transfer.id] = record
        for pending_id, status in decision.resolved.items():
            self.transfers[pending_id] = replace(self.transfers[pending_id], status=status)
        self.entries.extend(decision.entries)

    def lookup_accounts(self, ids: Iterable[str]) -> list[Account]:
        return [self.accounts[i] for i in ids if i in self.accounts]

    def lookup_transfers(self, ids: Iterable[str]) -> list[TransferRecord]:
        return [self.transfers[i] for i in ids if i in self.transfers]

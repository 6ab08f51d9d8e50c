"""The ledger's records, flags and result codes, with TigerBeetle's semantics.

Accounts hold four exact balances (debits/credits, pending/posted) in one ledger (a token code:
EURe, GBPe, USDCe) and never change otherwise. A transfer moves `amount` base units from its debit
account to its credit account; a PENDING transfer only reserves it, and one later transfer with
POST_PENDING (at most the reserved amount; the rest is released) or VOID_PENDING resolves it, or
its timeout expires it. Transfer ids are chosen by the client, so a retried request is recognised:
the same id with the same fields is `EXISTS` and changes nothing, with other fields it is refused.

Names follow TigerBeetle's `CreateTransferResult` / `CreateAccountResult` (snake_case values), so
its documentation describes them; ids and ledgers are strings here, not u128 / u32.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import IntFlag, StrEnum
from typing import NamedTuple

AMOUNT_MAX = 2**128 - 1
"""Balances and amounts are u128, as in TigerBeetle (NUMERIC(39, 0) in PostgreSQL)."""


class AccountFlags(IntFlag):
    NONE = 0
    DEBITS_MUST_NOT_EXCEED_CREDITS = 1
    """debits_pending + debits_posted <= credits_posted: e.g. a cardholder cannot spend more."""
    CREDITS_MUST_NOT_EXCEED_DEBITS = 2
    """credits_pending + credits_posted <= debits_posted: e.g. an asset account cannot go below 0."""


class TransferFlags(IntFlag):
    NONE = 0
    LINKED = 1
    """This transfer and the next one succeed or fail together (a chain ends at one without)."""
    PENDING = 2
    POST_PENDING = 4
    VOID_PENDING = 8


class PendingStatus(StrEnum):
    PENDING = "pending"
    POSTED = "posted"
    VOIDED = "voided"
    EXPIRED = "expired"


class CreateAccountResult(StrEnum):
    OK = "ok"
    ID_MUST_NOT_BE_ZERO = "id_must_not_be_zero"
    FLAGS_ARE_MUTUALLY_EXCLUSIVE = "flags_are_mutually_exclusive"
    BALANCES_MUST_BE_ZERO = "balances_must_be_zero"
    LEDGER_MUST_NOT_BE_ZERO = "ledger_must_not_be_zero"
    CODE_MUST_NOT_BE_ZERO = "code_must_not_be_zero"
    EXISTS_WITH_DIFFERENT_FLAGS = "exists_with_different_flags"
    EXISTS_WITH_DIFFERENT_LEDGER = "exists_with_different_ledger"
    EXISTS_WITH_DIFFERENT_CODE = "exists_with_different_code"
    EXISTS = "exists"


class CreateTransferResult(StrEnum):
    OK = "ok"
    LINKED_EVENT_FAILED = "linked_event_failed"
    LINKED_EVENT_CHAIN_OPEN = "linked_event_chain_open"
    ID_MUST_NOT_BE_ZERO = "id_must_not_be_zero"
    FLAGS_ARE_MUTUALLY_EXCLUSIVE = "flags_are_mutually_exclusive"
    DEBIT_ACCOUNT_ID_MUST_NOT_BE_ZERO = "debit_account_id_must_not_be_zero"
    CREDIT_ACCOUNT_ID_MUST_NOT_BE_ZERO = "credit_account_id_must_not_be_zero"
    ACCOUNTS_MUST_BE_DIFFERENT = "accounts_must_be_different"
    PENDING_ID_MUST_BE_ZERO = "pending_id_must_be_zero"
    PENDING_ID_MUST_NOT_BE_ZERO = "pending_id_must_not_be_zero"
    PENDING_ID_MUST_BE_DIFFERENT = "pending_id_must_be_different"
    TIMEOUT_RESERVED_FOR_PENDING_TRANSFER = "timeout_reserved_for_pending_transfer"
    AMOUNT_MUST_NOT_BE_NEGATIVE = "amount_must_not_be_negative"
    LEDGER_MUST_NOT_BE_ZERO = "ledger_must_not_be_zero"
    CODE_MUST_NOT_BE_ZERO = "code_must_not_be_zero"
    DEBIT_ACCOUNT_NOT_FOUND = "debit_account_not_found"
    CREDIT_ACCOUNT_NOT_FOUND = "credit_account_not_found"
    ACCOUNTS_MUST_HAVE_THE_SAME_LEDGER = "accounts_must_have_the_same_ledger"
    TRANSFER_MUST_HAVE_THE_SAME_LEDGER_AS_ACCOUNTS = (
        "transfer_must_have_the_same_ledger_as_accounts")
    PENDING_TRANSFER_NOT_FOUND = "pending_transfer_not_found"
    PENDING_TRANSFER_NOT_PENDING = "pending_transfer_not_pending"
    PENDING_TRANSFER_HAS_DIFFERENT_DEBIT_ACCOUNT_ID = (
        "pending_transfer_has_different_debit_account_id")
    PENDING_TRANSFER_HAS_DIFFERENT_CREDIT_ACCOUNT_ID = (
        "pending_transfer_has_different_credit_account_id")
    PENDING_TRANSFER_HAS_DIFFERENT_LEDGER = "pending_transfer_has_different_ledger"
    PENDING_TRANSFER_HAS_DIFFERENT_CODE = "pending_transfer_has_different_code"
    EXCEEDS_PENDING_TRANSFER_AMOUNT = "exceeds_pending_transfer_amount"
    PENDING_TRANSFER_HAS_DIFFERENT_AMOUNT = "pending_transfer_has_different_amount"
    PENDING_TRANSFER_ALREADY_POSTED = "pending_transfer_already_posted"
    PENDING_TRANSFER_ALREADY_VOIDED = "pending_transfer_already_voided"
    PENDING_TRANSFER_EXPIRED = "pending_transfer_expired"
    EXISTS_WITH_DIFFERENT_FLAGS = "exists_with_different_flags"
    EXISTS_WITH_DIFFERENT_PENDING_ID = "exists_with_different_pending_id"
    EXISTS_WITH_DIFFERENT_TIMEOUT = "exists_with_different_timeout"
    EXISTS_WITH_DIFFERENT_DEBIT_ACCOUNT_ID = "exists_with_different_debit_account_id"
    EXISTS_WITH_DIFFERENT_CREDIT_ACCOUNT_ID = "exists_with_different_credit_account_id"
    EXISTS_WITH_DIFFERENT_AMOUNT = "exists_with_different_amount"
    EXISTS_WITH_DIFFERENT_USER_DATA = "exists_with_different_user_data"
    EXISTS_WITH_DIFFERENT_LEDGER = "exists_with_different_ledger"
    EXISTS_WITH_DIFFERENT_CODE = "exists_with_different_code"
    EXISTS = "exists"
    OVERFLOWS_DEBITS = "overflows_debits"
    OVERFLOWS_TIMEOUT = "overflows_timeout"
    OVERFLOWS_CREDITS = "overflows_credits"
    EXCEEDS_CREDITS = "exceeds_credits"
    EXCEEDS_DEBITS = "exceeds_debits"

    @property
    def applied(self) -> bool:
        """The transfer is in the ledger: created now (OK) or before (EXISTS)."""
        return self in (CreateTransferResult.OK, CreateTransferResult.EXISTS)


@dataclass(frozen=True, slots=True)
class Account:
    """An account and its balances, in base units of its ledger's token."""

    id: str
    ledger: str
    code: str
    """What the account is for (an `AccountKind` value of the chart of accounts)."""
    flags: AccountFlags = AccountFlags.NONE
    debits_pending: int = 0
    debits_posted: int = 0
    credits_pending: int = 0
    credits_posted: int = 0

    @property
    def balance_ok(self) -> bool:
        """The balances are within u128, non-negative, and within the account's flags."""
        values = (self.debits_pending, self.debits_posted, self.credits_pending,
                  self.credits_posted)
        if any(v < 0 or v > AMOUNT_MAX for v in values):
            return False
        if (self.flags & AccountFlags.DEBITS_MUST_NOT_EXCEED_CREDITS
                and self.debits_pending + self.debits_posted > self.credits_posted):
            return False
        return not (self.flags & AccountFlags.CREDITS_MUST_NOT_EXCEED_DEBITS
                    and self.credits_pending + self.credits_posted > self.debits_posted)


@dataclass(frozen=True, slots=True)
class Transfer:
    """A transfer request, and (with every field resolved) a stored transfer.

    For POST_PENDING and VOID_PENDING, empty `debit_account_id`, `credit_account_id`, `ledger`
    and `code` mean "the pending transfer's"; `amount` 0 means "all of it". Once stored they hold
    the pending's values and the amount actually posted (or voided).
    """

    id: str
    debit_account_id: str = ""
    credit_account_id: str = ""
    amount: int = 0
    ledger: str = ""
    code: str = ""
    flags: TransferFlags = TransferFlags.NONE
    pending_id: str = ""
    timeout: int = 0
    """Seconds a PENDING transfer holds its reservation (0: until posted or voided)."""
    user_data: str = ""
    """The caller's reference (e.g. a payment id); not compared between pending and post."""


@dataclass(frozen=True, slots=True)
class TransferRecord:
    """A stored transfer: when it was created, and for a PENDING one, what became of it."""

    transfer: Transfer
    timestamp: datetime
    expires_at: datetime | None = None
    status: PendingStatus | None = None
    """Only PENDING transfers have one."""


class Entry(NamedTuple):
    """One account's share of a journal: signed changes of its four balances.

    Every transfer is one journal of two entries (debit side, credit side); an expiry is one
    journal ("expire:" + the pending id). Per journal and ledger, the debit changes equal the
    credit changes, pending and posted separately: that is what "balanced" means here.
    (A NamedTuple: a batch makes two per transfer, and a frozen dataclass costs 3 µs each.)
    """

    journal_id: str
    account_id: str
    ledger: str
    debits_pending: int = 0
    debits_posted: int = 0
    credits_pending: int = 0
    credits_posted: int = 0


def expiry_journal(pending_id: str) -> str:
    return f"expire:{pending_id}"

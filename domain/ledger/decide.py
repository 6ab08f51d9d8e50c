"""The ledger's rules as one pure function: a batch of transfers against the state it touches.

`decide` is the functional core shared by the in-memory `Ledger` and `PostgresLedger`: each loads
what a batch needs (its accounts, existing transfers with its ids, the pending transfers it
resolves), calls `decide`, and stores the `Decision`. Both therefore give the same result for the
same batch; the database adds its own guards (balanced journals, account flags, one resolution
per pending transfer) so that no other writer can break them either.

Transfers are applied in order, each seeing the ones before it. A transfer is checked completely
before it changes anything; a linked chain is applied on a scratch layer that is merged only if
every member succeeds (TigerBeetle: any result other than OK, EXISTS included, fails the chain).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta

from domain.errors import NaiveTimestamp
from domain.ledger.model import (
    AMOUNT_MAX,
    Account,
    AccountFlags,
    CreateTransferResult,
    Entry,
    PendingStatus,
    Transfer,
    TransferFlags,
    TransferRecord,
    expiry_journal,
)

R = CreateTransferResult
F = TransferFlags
TIMEOUT_MAX = 2**32 - 1
_PHASES = F.PENDING | F.POST_PENDING | F.VOID_PENDING


@dataclass(frozen=True, slots=True)
class Decision:
    """What a batch (or an expiry sweep) does: results in batch order and the changes to store."""

    results: list[CreateTransferResult]
    accounts: dict[str, Account]
    """The new state of every account whose balances changed."""
    created: list[TransferRecord]
    resolved: dict[str, PendingStatus]
    """Pending transfer id -> what it became (posted, voided, expired)."""
    entries: list[Entry]


@dataclass
class _Layer:
    """Changes on top of a parent layer (or the loaded state); merged upward when they hold."""

    accounts_below: Mapping[str, Account]
    transfers_below: Mapping[str, TransferRecord]
    parent: _Layer | None = None
    accounts: dict[str, Account] = field(default_factory=dict)
    created: dict[str, TransferRecord] = field(default_factory=dict)
    resolved: dict[str, PendingStatus] = field(default_factory=dict)
    entries: list[Entry] = field(default_factory=list)

    def account(self, account_id: str) -> Account | None:
        found = self.accounts.get(account_id)
        if found is not None:
            return found
        if self.parent is not None:
            return self.parent.account(account_id)
        return self.accounts_below.get(account_id)

    def transfer(self, transfer_id: str) -> TransferRecord | None:
        found = self.created.get(transfer_id)
        if found is not None:
            return found
        if self.parent is not None:
            return self.parent.transfer(transfer_id)
        return self.transfers_below.get(transfer_id)

    def status(self, record: TransferRecord) -> PendingStatus | None:
        layer: _Layer | None = self
        while layer is not None:
            if record.transfer.id in layer.resolved:
                return layer.resolved[record.transfer.id]
            layer = layer.parent
        return record.status

    def child(self) -> _Layer:
        return _Layer(self.accounts_below, self.transfers_below, parent=self)

    def merge_into_parent(self) -> None:
        assert self.parent is not None
        self.parent.accounts.update(self.accounts)
        self.parent.created.update(self.created)
        self.parent.resolved.update(self.resolved)
        self.parent.entries.extend(self.entries)


def _require_utc(now: datetime) -> None:
    if now.tzinfo is None or now.utcoffset() is None:
        raise NaiveTimestamp("the ledger's clock must be UTC-aware")


def decide(batch: Sequence[Transfer], now: datetime, accounts: Mapping[str, Account],
           transfers: Mapping[str, TransferRecord]) -> Decision:
    """Apply `batch` at time `now` to the state it touches (`accounts` must hold every account
    the batch and its pending transfers name; `transfers` every stored transfer whose id the
    batch uses or resolves; anything missing counts as not found)."""
    _require_utc(now)
    top = _Layer(accounts, transfers)
    results: list[CreateTransferResult] = []
    i, n = 0, len(batch)
    while i < n:
        end = i
        while end < n - 1 and batch[end].flags & F.LINKED:
            end += 1
        if end == i and not batch[i].flags & F.LINKED:
            results.append(_apply(batch[i], now, top))  # alone: checked fully before it writes
            i += 1
            continue
        results.extend(_apply_chain(batch[i:end + 1], now, top, chain_open=end == n - 1
                                    and bool(batch[end].flags & F.LINKED)))
        i = end + 1
    return Decision(results, top.accounts, list(top.created.values()), top.resolved, top.entries)


def _apply_chain(chain: Sequence[Transfer], now: datetime, top: _Layer, *,
                 chain_open: bool) -> list[CreateTransferResult]:
    scratch = top.child()
    for index, transfer in enumerate(chain):
        last = index == len(chain) - 1
        code = R.LINKED_EVENT_CHAIN_OPEN if chain_open and last else _apply(transfer, now, scratch)
        if code is not R.OK:
            return [R.LINKED_EVENT_FAILED] * index + [code] + [
                R.LINKED_EVENT_CHAIN_OPEN if chain_open and index + 1 + k == len(chain) - 1
                else R.LINKED_EVENT_FAILED for k in range(len(chain) - index - 1)]
    scratch.merge_into_parent()
    return [R.OK] * len(chain)


def _apply(t: Transfer, now: datetime, s: _Layer) -> CreateTransferResult:
    if not t.id:
        return R.ID_MUST_NOT_BE_ZERO
    phase = t.flags & _PHASES
    if phase and phase & (phase - 1):
        return R.FLAGS_ARE_MUTUALLY_EXCLUSIVE
    if t.amount < 0:
        return R.AMOUNT_MUST_NOT_BE_NEGATIVE
    if not 0 <= t.timeout <= TIMEOUT_MAX:
        return R.OVERFLOWS_TIMEOUT
    if t.flags & (F.POST_PENDING | F.VOID_PENDING):
        return _resolve(t, now, s)
    if not t.debit_account_id:
        return R.DEBIT_ACCOUNT_ID_MUST_NOT_BE_ZERO
    if not t.credit_account_id:
        return R.CREDIT_ACCOUNT_ID_MUST_NOT_BE_ZERO
    if t.debit_account_id == t.credit_account_id:
        return R.ACCOUNTS_MUST_BE_DIFFERENT
    if t.pending_id:
        return R.PENDING_ID_MUST_BE_ZERO
    if not t.flags & F.PENDING and t.timeout:
        return R.TIMEOUT_RESERVED_FOR_PENDING_TRANSFER
    if not t.ledger:
        return R.LEDGER_MUST_NOT_BE_ZERO
    if not t.code:
        return R.CODE_MUST_NOT_BE_ZERO
    dr = s.account(t.debit_account_id)
    if dr is None:
        return R.DEBIT_ACCOUNT_NOT_FOUND
    cr = s.account(t.credit_account_id)
    if cr is None:
        return R.CREDIT_ACCOUNT_NOT_FOUND
    if dr.ledger != cr.ledger:
        return R.ACCOUNTS_MUST_HAVE_THE_SAME_LEDGER
    if t.ledger != dr.ledger:
        return R.TRANSFER_MUST_HAVE_THE_SAME_LEDGER_AS_ACCOUNTS
    existing = s.transfer(t.id)
    if existing is not None:  # after validation and before the limits, as TigerBeetle does
        return _exists(t, existing.transfer)
    amount = t.amount
    if dr.debits_pending + dr.debits_posted + amount > AMOUNT_MAX:
        return R.OVERFLOWS_DEBITS
    if cr.credits_pending + cr.credits_posted + amount > AMOUNT_MAX:
        return R.OVERFLOWS_CREDITS
    if (dr.flags & AccountFlags.DEBITS_MUST_NOT_EXCEED_CREDITS
            and dr.debits_pending + dr.debits_posted + amount > dr.credits_posted):
        return R.EXCEEDS_CREDITS
    if (cr.flags & AccountFlags.CREDITS_MUST_NOT_EXCEED_DEBITS
            and cr.credits_pending + cr.credits_posted + amount > cr.debits_posted):
        return R.EXCEEDS_DEBITS
    pending = bool(t.flags & F.PENDING)
    if pending:
        s.accounts[dr.id] = replace(dr, debits_pending=dr.debits_pending + amount)
        s.accounts[cr.id] = replace(cr, credits_pending=cr.credits_pending + amount)
        s.entries += [Entry(t.id, dr.id, dr.ledger, debits_pending=amount),
                      Entry(t.id, cr.id, cr.ledger, credits_pending=amount)]
    else:
        s.accounts[dr.id] = replace(dr, debits_posted=dr.debits_posted + amount)
        s.accounts[cr.id] = replace(cr, credits_posted=cr.credits_posted + amount)
        s.entries += [Entry(t.id, dr.id, dr.ledger, debits_posted=amount),
                      Entry(t.id, cr.id, cr.ledger, credits_posted=amount)]
    expires = now + timedelta(seconds=t.timeout) if pending and t.timeout else None
    s.created[t.id] = TransferRecord(t, now, expires,
                                     PendingStatus.PENDING if pending else None)
    return R.OK


def _exists(t: Transfer, e: Transfer) -> CreateTransferResult:
    if t.flags != e.flags:
        return R.EXISTS_WITH_DIFFERENT_FLAGS
    if t.pending_id != e.pending_id:
        return R.EXISTS_WITH_DIFFERENT_PENDING_ID
    if t.timeout != e.timeout:
        return R.EXISTS_WITH_DIFFERENT_TIMEOUT
    if t.debit_account_id != e.debit_account_id:
        return R.EXISTS_WITH_DIFFERENT_DEBIT_ACCOUNT_ID
    if t.credit_account_id != e.credit_account_id:
        return R.EXISTS_WITH_DIFFERENT_CREDIT_ACCOUNT_ID
    if t.amount != e.amount:
        return R.EXISTS_WITH_DIFFERENT_AMOUNT
    if t.user_data != e.user_data:
        return R.EXISTS_WITH_DIFFERENT_USER_DATA
    if t.ledger != e.ledger:
        return R.EXISTS_WITH_DIFFERENT_LEDGER
    if t.code != e.code:
        return R.EXISTS_WITH_DIFFERENT_CODE
    return R.EXISTS


def _resolve(t: Transfer, now: datetime, s: _Layer) -> CreateTransferResult:
    """POST_PENDING or VOID_PENDING: resolve the pending transfer `t.pending_id` once."""
    if not t.pending_id:
        return R.PENDING_ID_MUST_NOT_BE_ZERO
    if t.pending_id == t.id:
        return R.PENDING_ID_MUST_BE_DIFFERENT
    if t.timeout:
        return R.TIMEOUT_RESERVED_FOR_PENDING_TRANSFER
    record = s.transfer(t.pending_id)
    if record is None:
        return R.PENDING_TRANSFER_NOT_FOUND
    p = record.transfer
    if not p.flags & F.PENDING:
        return R.PENDING_TRANSFER_NOT_PENDING
    if t.debit_account_id and t.debit_account_id != p.debit_account_id:
        return R.PENDING_TRANSFER_HAS_DIFFERENT_DEBIT_ACCOUNT_ID
    if t.credit_account_id and t.credit_account_id != p.credit_account_id:
        return R.PENDING_TRANSFER_HAS_DIFFERENT_CREDIT_ACCOUNT_ID
    if t.ledger and t.ledger != p.ledger:
        return R.PENDING_TRANSFER_HAS_DIFFERENT_LEDGER
    if t.code and t.code != p.code:
        return R.PENDING_TRANSFER_HAS_DIFFERENT_CODE
    amount = t.amount or p.amount
    if amount > p.amount:
        return R.EXCEEDS_PENDING_TRANSFER_AMOUNT
    if t.flags & F.VOID_PENDING and amount < p.amount:
        return R.PENDING_TRANSFER_HAS_DIFFERENT_AMOUNT
    existing = s.transfer(t.id)
    if existing is not None:
        return _exists_resolving(t, existing.transfer, p)
    status = s.status(record)
    if status is PendingStatus.POSTED:
        return R.PENDING_TRANSFER_ALREADY_POSTED
    if status is PendingStatus.VOIDED:
        return R.PENDING_TRANSFER_ALREADY_VOIDED
    if status is PendingStatus.EXPIRED or (record.expires_at is not None
                                           and now >= record.expires_at):
        return R.PENDING_TRANSFER_EXPIRED
    dr = s.account(p.debit_account_id)
    cr = s.account(p.credit_account_id)
    assert dr is not None and cr is not None, "a stored pending transfer names its accounts"
    posted = amount if t.flags & F.POST_PENDING else 0
    s.accounts[dr.id] = replace(dr, debits_pending=dr.debits_pending - p.amount,
                                debits_posted=dr.debits_posted + posted)
    s.accounts[cr.id] = replace(cr, credits_pending=cr.credits_pending - p.amount,
                                credits_posted=cr.credits_posted + posted)
    s.entries += [Entry(t.id, dr.id, dr.ledger, debits_pending=-p.amount, debits_posted=posted),
                  Entry(t.id, cr.id, cr.ledger, credits_pending=-p.amount,
                        credits_posted=posted)]
    stored = Transfer(t.id, p.debit_account_id, p.credit_account_id, amount, p.ledger, p.code,
                      t.flags, t.pending_id, 0, t.user_data)
    s.created[t.id] = TransferRecord(stored, now)
    s.resolved[p.id] = (PendingStatus.POSTED if t.flags & F.POST_PENDING
                        else PendingStatus.VOIDED)
    return R.OK


def _exists_resolving(t: Transfer, e: Transfer, p: Transfer) -> CreateTransferResult:
    if t.flags != e.flags:
        return R.EXISTS_WITH_DIFFERENT_FLAGS
    if t.pending_id != e.pending_id:
        return R.EXISTS_WITH_DIFFERENT_PENDING_ID
    if t.timeout != e.timeout:
        return R.EXISTS_WITH_DIFFERENT_TIMEOUT
    if t.debit_account_id and t.debit_account_id != e.debit_account_id:
        return R.EXISTS_WITH_DIFFERENT_DEBIT_ACCOUNT_ID
    if t.credit_account_id and t.credit_account_id != e.credit_account_id:
        return R.EXISTS_WITH_DIFFERENT_CREDIT_ACCOUNT_ID
    if (t.amount or p.amount) != e.amount:
        return R.EXISTS_WITH_DIFFERENT_AMOUNT
    if t.user_data != e.user_data:
        return R.EXISTS_WITH_DIFFERENT_USER_DATA
    if t.ledger and t.ledger != e.ledger:
        return R.EXISTS_WITH_DIFFERENT_LEDGER
    if t.code and t.code != e.code:
        return R.EXISTS_WITH_DIFFERENT_CODE
    return R.EXISTS


def decide_expiry(due: Sequence[TransferRecord], now: datetime,
                  accounts: Mapping[str, Account]) -> Decision:
    """Expire the pending transfers in `due` whose timeout has passed at `now` and that are
    still pending: release their reservations, one journal each ("expire:<id>")."""
    _require_utc(now)
    top = _Layer(accounts, {})
    for record in sorted(due, key=lambda r: r.transfer.id):
        p = record.transfer
        if (record.status is not PendingStatus.PENDING or record.expires_at is None
                or record.expires_at > now or p.id in top.resolved):
            continue
        dr, cr = top.account(p.debit_account_id), top.account(p.credit_account_id)
        assert dr is not None and cr is not None, "a stored pending transfer names its accounts"
        journal = expiry_journal(p.id)
        top.accounts[dr.id] = replace(dr, debits_pending=dr.debits_pending - p.amount)
        top.accounts[cr.id] = replace(cr, credits_pending=cr.credits_pending - p.amount)
        top.entries += [Entry(journal, dr.id, dr.ledger, debits_pending=-p.amount),
                        Entry(journal, cr.id, cr.ledger, credits_pending=-p.amount)]
        top.resolved[p.id] = PendingStatus.EXPIRED
    return Decision([], top.accounts, [], top.resolved, top.entries)

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
from dataclasses import dataclass, field
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
# Plain ints: IntFlag arithmetic costs microseconds per operation, and a batch has thousands.
_LINKED, _PENDING, _POST, _VOID = int(F.LINKED), int(F.PENDING), int(F.POST_PENDING), int(
    F.VOID_PENDING)
_PHASES = _PENDING | _POST | _VOID
_DEBITS_LIMITED = int(AccountFlags.DEBITS_MUST_NOT_EXCEED_CREDITS)
_CREDITS_LIMITED = int(AccountFlags.CREDITS_MUST_NOT_EXCEED_DEBITS)


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


class _Balance:
    """An account's balances while a batch is decided: mutable, copied into the layer that
    changes it, frozen into an `Account` once per account at the end (not twice per transfer)."""

    __slots__ = ("account", "cp", "cpo", "dp", "dpo", "flags")

    def __init__(self, account: Account, dp: int, dpo: int, cp: int, cpo: int) -> None:
        self.account = account
        self.flags = int(account.flags)
        self.dp, self.dpo, self.cp, self.cpo = dp, dpo, cp, cpo

    @classmethod
    def of(cls, a: Account) -> _Balance:
        return cls(a, a.debits_pending, a.debits_posted, a.credits_pending, a.credits_posted)

    def copy(self) -> _Balance:
        return _Balance(self.account, self.dp, self.dpo, self.cp, self.cpo)

    def freeze(self) -> Account:
        a = self.account
        return Account(a.id, a.ledger, a.code, a.flags, self.dp, self.dpo, self.cp, self.cpo)


@dataclass
class _Layer:
    """Changes on top of a parent layer (or the loaded state); merged upward when they hold."""

    accounts_below: Mapping[str, Account]
    transfers_below: Mapping[str, TransferRecord]
    parent: _Layer | None = None
    balances: dict[str, _Balance] = field(default_factory=dict)
    created: dict[str, TransferRecord] = field(default_factory=dict)
    resolved: dict[str, PendingStatus] = field(default_factory=dict)
    entries: list[Entry] = field(default_factory=list)

    def balance(self, account_id: str) -> _Balance | None:
        """For reading only; `writable` before changing it."""
        found = self.balances.get(account_id)
        if found is not None:
            return found
        if self.parent is not None:
            return self.parent.balance(account_id)
        account = self.accounts_below.get(account_id)
        if account is None:
            return None
        # The root keeps what it read: unchanged it freezes back to the same account.
        found = self.balances[account_id] = _Balance.of(account)
        return found

    def writable(self, b: _Balance) -> _Balance:
        own = self.balances.get(b.account.id)
        if own is None:
            own = self.balances[b.account.id] = b.copy()
        return own

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
        self.parent.balances.update(self.balances)
        self.parent.created.update(self.created)
        self.parent.resolved.update(self.resolved)
        self.parent.entries.extend(self.entries)

    def decision(self, results: list[CreateTransferResult]) -> Decision:
        return Decision(results, {k: b.freeze() for k, b in self.balances.items()},
                        list(self.created.values()), self.resolved, self.entries)


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
        while end < n - 1 and int(batch[end].flags) & _LINKED:
            end += 1
        if end == i and not int(batch[i].flags) & _LINKED:
            results.append(_apply(batch[i], now, top))  # alone: checked fully before it writes
            i += 1
            continue
        results.extend(_apply_chain(batch[i:end + 1], now, top, chain_open=end == n - 1
                                    and bool(int(batch[end].flags) & _LINKED)))
        i = end + 1
    return top.decision(results)


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
    flags = int(t.flags)
    phase = flags & _PHASES
    if phase and phase & (phase - 1):
        return R.FLAGS_ARE_MUTUALLY_EXCLUSIVE
    if t.amount < 0:
        return R.AMOUNT_MUST_NOT_BE_NEGATIVE
    if not 0 <= t.timeout <= TIMEOUT_MAX:
        return R.OVERFLOWS_TIMEOUT
    if flags & (_POST | _VOID):
        return _resolve(t, flags, now, s)
    if not t.debit_account_id:
        return R.DEBIT_ACCOUNT_ID_MUST_NOT_BE_ZERO
    if not t.credit_account_id:
        return R.CREDIT_ACCOUNT_ID_MUST_NOT_BE_ZERO
    if t.debit_account_id == t.credit_account_id:
        return R.ACCOUNTS_MUST_BE_DIFFERENT
    if t.pending_id:
        return R.PENDING_ID_MUST_BE_ZERO
    if not flags & _PENDING and t.timeout:
        return R.TIMEOUT_RESERVED_FOR_PENDING_TRANSFER
    if not t.ledger:
        return R.LEDGER_MUST_NOT_BE_ZERO
    if not t.code:
        return R.CODE_MUST_NOT_BE_ZERO
    dr = s.balance(t.debit_account_id)
    if dr is None:
        return R.DEBIT_ACCOUNT_NOT_FOUND
    cr = s.balance(t.credit_account_id)
    if cr is None:
        return R.CREDIT_ACCOUNT_NOT_FOUND
    ledger = dr.account.ledger
    if ledger != cr.account.ledger:
        return R.ACCOUNTS_MUST_HAVE_THE_SAME_LEDGER
    if t.ledger != ledger:
        return R.TRANSFER_MUST_HAVE_THE_SAME_LEDGER_AS_ACCOUNTS
    existing = s.transfer(t.id)
    if existing is not None:  # after validation and before the limits, as TigerBeetle does
        return _exists(t, existing.transfer)
    amount = t.amount
    if dr.dp + dr.dpo + amount > AMOUNT_MAX:
        return R.OVERFLOWS_DEBITS
    if cr.cp + cr.cpo + amount > AMOUNT_MAX:
        return R.OVERFLOWS_CREDITS
    if dr.flags & _DEBITS_LIMITED and dr.dp + dr.dpo + amount > dr.cpo:
        return R.EXCEEDS_CREDITS
    if cr.flags & _CREDITS_LIMITED and cr.cp + cr.cpo + amount > cr.dpo:
        return R.EXCEEDS_DEBITS
    dr, cr = s.writable(dr), s.writable(cr)
    pending = bool(flags & _PENDING)
    if pending:
        dr.dp += amount
        cr.cp += amount
        s.entries += [Entry(t.id, dr.account.id, ledger, amount, 0, 0, 0),
                      Entry(t.id, cr.account.id, ledger, 0, 0, amount, 0)]
    else:
        dr.dpo += amount
        cr.cpo += amount
        s.entries += [Entry(t.id, dr.account.id, ledger, 0, amount, 0, 0),
                      Entry(t.id, cr.account.id, ledger, 0, 0, 0, amount)]
    expires = now + timedelta(seconds=t.timeout) if pending and t.timeout else None
    s.created[t.id] = TransferRecord(t, now, expires,
                                     PendingStatus.PENDING if pending else None)
    return R.OK


def _exists(t: Transfer, e: Transfer, p: Transfer | None = None) -> CreateTransferResult:
    """Compare a repeated id with the stored transfer, field by field in TigerBeetle's order.
    For a post or void (`p`: its pending transfer) empty fields mean the pending's, amount 0 all."""

    def differs(mine: str, stored: str) -> bool:
        return mine != stored and (p is None or mine != "")

    amount = t.amount if p is None else t.amount or p.amount
    if t.flags != e.flags:
        return R.EXISTS_WITH_DIFFERENT_FLAGS
    if t.pending_id != e.pending_id:
        return R.EXISTS_WITH_DIFFERENT_PENDING_ID
    if t.timeout != e.timeout:
        return R.EXISTS_WITH_DIFFERENT_TIMEOUT
    if differs(t.debit_account_id, e.debit_account_id):
        return R.EXISTS_WITH_DIFFERENT_DEBIT_ACCOUNT_ID
    if differs(t.credit_account_id, e.credit_account_id):
        return R.EXISTS_WITH_DIFFERENT_CREDIT_ACCOUNT_ID
    if amount != e.amount:
        return R.EXISTS_WITH_DIFFERENT_AMOUNT
    if t.user_data != e.user_data:
        return R.EXISTS_WITH_DIFFERENT_USER_DATA
    if differs(t.ledger, e.ledger):
        return R.EXISTS_WITH_DIFFERENT_LEDGER
    if differs(t.code, e.code):
        return R.EXISTS_WITH_DIFFERENT_CODE
    return R.EXISTS


def _resolve(t: Transfer, flags: int, now: datetime, s: _Layer) -> CreateTransferResult:
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
    if not int(p.flags) & _PENDING:
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
    if flags & _VOID and amount < p.amount:
        return R.PENDING_TRANSFER_HAS_DIFFERENT_AMOUNT
    existing = s.transfer(t.id)
    if existing is not None:
        return _exists(t, existing.transfer, p)
    status = s.status(record)
    if status is PendingStatus.POSTED:
        return R.PENDING_TRANSFER_ALREADY_POSTED
    if status is PendingStatus.VOIDED:
        return R.PENDING_TRANSFER_ALREADY_VOIDED
    if status is PendingStatus.EXPIRED or (record.expires_at is not None
                                           and now >= record.expires_at):
        return R.PENDING_TRANSFER_EXPIRED
    found_dr, found_cr = s.balance(p.debit_account_id), s.balance(p.credit_account_id)
    assert found_dr is not None and found_cr is not None, "a pending transfer names its accounts"
    dr, cr = s.writable(found_dr), s.writable(found_cr)
    posted = amount if flags & _POST else 0
    dr.dp -= p.amount
    dr.dpo += posted
    cr.cp -= p.amount
    cr.cpo += posted
    s.entries += [Entry(t.id, dr.account.id, p.ledger, -p.amount, posted, 0, 0),
                  Entry(t.id, cr.account.id, p.ledger, 0, 0, -p.amount, posted)]
    stored = Transfer(t.id, p.debit_account_id, p.credit_account_id, amount, p.ledger, p.code,
                      t.flags, t.pending_id, 0, t.user_data)
    s.created[t.id] = TransferRecord(stored, now)
    s.resolved[p.id] = PendingStatus.POSTED if flags & _POST else PendingStatus.VOIDED
    return R.OK


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
        found_dr, found_cr = top.balance(p.debit_account_id), top.balance(p.credit_account_id)
        assert found_dr is not None and found_cr is not None, "a pending names its accounts"
        dr, cr = top.writable(found_dr), top.writable(found_cr)
        journal = expiry_journal(p.id)
        dr.dp -= p.amount
        cr.cp -= p.amount
        top.entries += [Entry(journal, dr.account.id, p.ledger, -p.amount, 0, 0, 0),
                        Entry(journal, cr.account.id, p.ledger, 0, 0, -p.amount, 0)]
        top.resolved[p.id] = PendingStatus.EXPIRED
    return top.decision([])

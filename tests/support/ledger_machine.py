"""A hypothesis state machine for the ledger: random operations on a system under test (a unit of
work's `ledger`) and on the pure reference `Ledger`, side by side.

After every step: the system gives the same results and balances as the reference; every journal
of the reference balances per ledger (pending and posted separately); every balance is the sum of
its entries and within its account's flags; no pending transfer has more than one post or void,
and none posted more than it held. Independently of the reference, every result is checked
against what the operation asked: a post of more than is pending, or of a pending resolved
already, is never OK. Sometimes a unit of work is left without commit: nothing of it may stay.
"""

from __future__ import annotations

import copy
import itertools
from collections import defaultdict
from collections.abc import Callable
from datetime import timedelta

from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from cardpay.handlers.ports import UnitOfWork
from domain.ledger import (
    Account,
    AccountFlags,
    CreateAccountResult,
    CreateTransferResult,
    Ledger,
    PendingStatus,
    Transfer,
    TransferFlags,
)
from tests.support.ledger import NOW

R = CreateTransferResult
F = TransferFlags
_runs = itertools.count()

AMOUNTS = st.one_of(st.integers(0, 40), st.integers(0, 40), st.just(10**30 + 7))
TIMEOUTS = st.sampled_from([0, 1, 60, 3600])
KINDS = st.sampled_from(["deposit", "spend", "hold", "post", "void", "repeat", "other"])


class LedgerMachine(RuleBasedStateMachine):
    """Subclasses set `make_uow` (a unit-of-work factory) and may add `check_storage`."""

    make_uow: Callable[[], UnitOfWork]

    def __init__(self) -> None:
        super().__init__()
        run = f"r{next(_runs)}-"  # one database serves many examples: ids never collide
        self.ref = Ledger()
        self.now = NOW
        self.seq = itertools.count()
        self.sent: list[Transfer] = []
        self.cardholders = [f"{run}holder{i}" for i in range(2)]
        self.house = [f"{run}safes", f"{run}payable", f"{run}suspense"]
        self.run = run
        accounts = [Account(a, "EURe", "cardholder_funds",
                            AccountFlags.DEBITS_MUST_NOT_EXCEED_CREDITS) for a in self.cardholders]
        accounts += [Account(self.house[0], "EURe", "safe_balances",
                             AccountFlags.CREDITS_MUST_NOT_EXCEED_DEBITS),
                     Account(self.house[1], "EURe", "network_payable"),
                     Account(self.house[2], "EURe", "suspense"),
                     Account(f"{run}gbp", "GBPe", "fees")]
        self.ids = [a.id for a in accounts]
        assert set(self.ref.create_accounts(accounts)) == {CreateAccountResult.OK}
        with self.make_uow() as w:
            assert set(w.ledger.create_accounts(accounts)) == {CreateAccountResult.OK}
            w.commit()

    # -- building transfers -------------------------------------------------------------------
    def _id(self) -> str:
        return f"{self.run}t{next(self.seq)}"

    def _pendings(self) -> list[str]:
        return [t.id for t in self.sent if t.flags & F.PENDING]

    def _build(self, kind: str, data: st.DataObject) -> Transfer:
        everyone = self.cardholders + self.house + [f"{self.run}gbp"]
        amount = data.draw(AMOUNTS)
        if kind in ("post", "void") and self._pendings():
            pending = data.draw(st.sampled_from(self._pendings()))
            flags = F.POST_PENDING if kind == "post" else F.VOID_PENDING
            return Transfer(self._id(), amount=amount, flags=flags, pending_id=pending)
        if kind in ("repeat", "other") and self.sent:
            old = data.draw(st.sampled_from(self.sent))
            if kind == "repeat":
                return old
            return Transfer(old.id, old.debit_account_id, old.credit_account_id, old.amount + 1,
                            old.ledger, old.code, old.flags, old.pending_id, old.timeout)
        if kind == "deposit":
            return Transfer(self._id(), self.house[0], data.draw(st.sampled_from(self.cardholders)),
                            amount, "EURe", "deposit")
        if kind == "hold":  # mostly a card authorization; sometimes anything
            debit, credit = data.draw(st.one_of(
                st.sampled_from([(c, self.house[1]) for c in self.cardholders]),
                st.tuples(st.sampled_from(everyone), st.sampled_from(everyone))))
            return Transfer(self._id(), debit, credit, amount, "EURe", "authorization", F.PENDING,
                            timeout=data.draw(TIMEOUTS), user_data="payment")
        debit = data.draw(st.sampled_from(everyone))
        credit = data.draw(st.sampled_from(everyone))
        return Transfer(self._id(), debit, credit, amount, "EURe", "spend")

    def _send(self, batch: list[Transfer], *, commit: bool = True) -> None:
        before = {p: self._status(p) for p in self._pendings()}
        amounts = {t.transfer.id: t.transfer.amount for t in self.ref.lookup_transfers(self._pendings())}
        ref = self.ref if commit else copy.deepcopy(self.ref)
        expected = ref.create_transfers(batch, self.now)
        with self.make_uow() as w:
            got = w.ledger.create_transfers(batch, self.now)
            if commit:
                w.commit()
        assert got == expected, (batch, got, expected)
        for transfer, result in zip(batch, got, strict=True):
            if transfer.flags & (F.POST_PENDING | F.VOID_PENDING) and result is R.OK:
                # resolves once, and never for more than was pending
                assert before.get(transfer.pending_id, PendingStatus.PENDING) \
                    is PendingStatus.PENDING, (transfer, before)
                assert transfer.amount <= amounts.get(transfer.pending_id, transfer.amount)
                before[transfer.pending_id] = PendingStatus.POSTED
        if commit:
            self.sent += [t for t, r in zip(batch, got, strict=True) if r is R.OK]

    def _status(self, pending_id: str) -> PendingStatus | None:
        (record,) = self.ref.lookup_transfers([pending_id])
        return record.status

    # -- rules --------------------------------------------------------------------------------
    @rule(kind=KINDS, data=st.data())
    def one(self, kind: str, data: st.DataObject) -> None:
        self._send([self._build(kind, data)])

    @rule(kinds=st.lists(KINDS, min_size=2, max_size=5), linked=st.booleans(), data=st.data())
    def batch(self, kinds: list[str], linked: bool, data: st.DataObject) -> None:
        batch = [self._build(k, data) for k in kinds]
        if linked:  # one chain (the last may stay open: linked_event_chain_open)
            close = data.draw(st.booleans())
            batch = [Transfer(t.id, t.debit_account_id, t.credit_account_id, t.amount, t.ledger,
                              t.code, t.flags | F.LINKED if (i < len(batch) - 1 or not close)
                              else t.flags, t.pending_id, t.timeout, t.user_data)
                     for i, t in enumerate(batch)]
        self._send(batch)

    @rule(kind=KINDS, data=st.data())
    def abandoned(self, kind: str, data: st.DataObject) -> None:
        self._send([self._build(kind, data)], commit=False)

    @rule(seconds=st.sampled_from([1, 59, 60, 3600]))
    def time_passes(self, seconds: int) -> None:
        self.now += timedelta(seconds=seconds)

    @precondition(lambda self: bool(self._pendings()))
    @rule(seconds=st.sampled_from([0, 60, 3600]))
    def expire(self, seconds: int) -> None:
        self.now += timedelta(seconds=seconds)
        expected = self.ref.expire_pending(self.now)
        with self.make_uow() as w:
            got = w.ledger.expire_pending(self.now)
            w.commit()
        assert [g for g in got if g.startswith(self.run)] == expected

    # -- invariants ---------------------------------------------------------------------------
    @invariant()
    def same_balances_as_the_reference(self) -> None:
        with self.make_uow() as w:
            assert w.ledger.lookup_accounts(self.ids) == self.ref.lookup_accounts(self.ids)

    @invariant()
    def journals_balance_and_balances_are_their_entries(self) -> None:
        journals: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0, 0])
        sums: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0, 0])
        for e in self.ref.entries:
            j = journals[e.journal_id, e.ledger]
            j[0] += e.debits_pending - e.credits_pending
            j[1] += e.debits_posted - e.credits_posted
            s = sums[e.account_id]
            for i, v in enumerate((e.debits_pending, e.debits_posted, e.credits_pending,
                                   e.credits_posted)):
                s[i] += v
        assert all(v == [0, 0] for v in journals.values())
        for account in self.ref.accounts.values():
            assert account.balance_ok, account
            assert sums.get(account.id, [0, 0, 0, 0]) == [
                account.debits_pending, account.debits_posted, account.credits_pending,
                account.credits_posted]

    @invariant()
    def each_pending_resolves_once_for_at_most_its_amount(self) -> None:
        resolutions: dict[str, list[Transfer]] = defaultdict(list)
        for record in self.ref.transfers.values():
            if record.transfer.pending_id:
                resolutions[record.transfer.pending_id].append(record.transfer)
        for pending_id, resolving in resolutions.items():
            (pending,) = self.ref.lookup_transfers([pending_id])
            assert len(resolving) == 1, resolving
            assert resolving[0].amount <= pending.transfer.amount
            assert pending.status in (PendingStatus.POSTED, PendingStatus.VOIDED)

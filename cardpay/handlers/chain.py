"""The listener's sink: a block range applied in one unit of work, and reorged blocks rolled back.

Idempotency: a command's natural key (chain id + block hash + log index) is claimed first, so two
deliveries at once serialize on the key and the second is a duplicate. A command the model refuses,
or a log the listener could not use, is quarantined with its reason. A concurrency conflict is not
bad input: the command is decided again on fresh state, and if it keeps conflicting the whole range
is rolled back (the cursor does not move) and read again.
"""

from __future__ import annotations

import dataclasses
import enum
import logging
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

from cardpay.errors import CardpayError, ConcurrencyConflict
from cardpay.handlers.cards import balance_moves
from cardpay.handlers.onchain import spend_link
from cardpay.handlers.payments import (
    ChainMove,
    UowFactory,
    book_chain_moves,
    chain_moves,
    confirmation,
    execute,
    lock_safes,
    moved_safes,
)
from cardpay.handlers.ports import QuarantineItem, UnitOfWork, UnmatchedTransfer
from domain import commands as c
from domain.errors import DomainError
from domain.events import PaymentRefunded, PaymentSpent
from domain.ledger.chart import ChartOfAccounts
from domain.payment import Payment, handle
from domain.serialization import to_json
from listener.ports import BlockRef, ChainBatch, ChainCommand, Cursor

log = logging.getLogger(__name__)


class StaleCursor(CardpayError, RuntimeError):
    """Another writer moved this listener's cursor: this batch was read from an old position."""


class Outcome(enum.Enum):
    APPLIED = "applied"
    DUPLICATE = "duplicate"
    REFUSED = "refused"
    UNMATCHED = "unmatched"


def command_payload(command: ChainCommand | c.Command) -> dict[str, Any]:
    """How a quarantined command is kept: its type and its JSON form, enough to retry it."""
    return {"command_type": type(command).__name__, "command": to_json(command)}


class ChainSinkHandler:
    """Implements `listener.ports.ChainSink` on a unit of work.

    `window` is how many blocks below the cursor keep their hashes (the deepest reorg handled).
    """

    def __init__(self, uow_factory: UowFactory, *, chain_id: int, window: int = 256,
                 on_quarantine: Callable[[str], None] | None = None) -> None:
        self._uow = uow_factory
        self._on_quarantine = on_quarantine
        self._chain_id = chain_id
        self._window = window
        self.applied = 0
        self.quarantined = 0
        self.last_refusal: str | None = None
        """Why the model refused the last command it refused (for a retry's report)."""
        self._range_moves: list[tuple[str, ChainMove]] | None = None
        """While a range is applied: its ledger movements, booked at its end in chain order."""

    def load_cursor(self, name: str) -> Cursor | None:
        with self._uow() as uow:
            return uow.chain.load_cursor(name)

    def recent_blocks(self, name: str) -> list[BlockRef]:
        with self._uow() as uow:
            return uow.chain.blocks_above(name, -1)

    def _take_cursor(self, uow: UnitOfWork, name: str, previous: Cursor | None) -> None:
        """One writer per listener name: lock it, then check nobody moved the cursor meanwhile."""
        uow.lock(f"listener:{name}")
        current = uow.chain.load_cursor(name)
        if current != previous:
            raise StaleCursor(f"listener {name}: cursor is {current}, this range was read after "
                              f"{previous}; another listener with this name is running?")

    def apply(self, name: str, batch: ChainBatch) -> None:
        with self._uow() as uow:
            self._take_cursor(uow, name, batch.previous)
            for reject in batch.rejected:
                block = reject.raw.get("blockHash")
                self._quarantine(uow, name, reject.key, reject.reason, reject.raw,
                                 block.lower() if isinstance(block, str) else None)
            commands = linked(uow, batch.commands)
            # every Safe the range may move in the ledger, locked before its first append (one
            # lock order with the authorization decision: `safe_lock`)
            lock_safes(uow, _followed(uow, _safes_of(commands)))
            moves: list[tuple[str, ChainMove]] = []
            self._range_moves = moves
            try:
                for command in self._apply_spends_in_bulk(uow, name, commands):
                    self.apply_one(uow, name, command)
            finally:
                self._range_moves = None
            self._book(uow, name, moves)
            uow.chain.add_activity(self._chain_id, batch.activity)
            self._follow_cards(uow, name, batch)
            uow.chain.keep_blocks(name, batch.blocks,
                                  below=batch.cursor.block_number - self._window)
            uow.chain.save_cursor(name, batch.cursor)
            uow.commit()

    def _follow_cards(self, uow: UnitOfWork, name: str, batch: ChainBatch) -> None:
        """Registered Safes' balances and allowances move with the range's logs, in the same
        transaction as everything else the range produced (so a crash or a reorg undoes them
        together)."""
        uow.cards.apply_transfers(balance_moves(batch.activity))
        for change in uow.cards.apply_allowance_changes(batch.allowances):
            self._quarantine(
                uow, name, f"allowance:{change.key}",
                f"allowance event of Roles module {change.roles_module} names no token and the "
                "module is tracked for several: not applied",
                {"roles_module": change.roles_module, "block_number": change.block_number,
                 "log_index": change.log_index, "consumed": change.consumed,
                 "new_balance": change.new_balance,
                 "set_to": None if change.set_to is None else list(
                     (change.set_to.balance, change.set_to.max_refill, change.set_to.refill,
                      change.set_to.period, change.set_to.timestamp))},
                change.block_hash)

    def _apply_spends_in_bulk(
        self, uow: UnitOfWork, name: str, commands: Sequence[ChainCommand]
    ) -> list[ChainCommand]:
        """The backfill fast path for spends: claim every id in one statement, load every stream
        in one query, decide in memory, append everything under one lock. Returns the commands
        left for the one-by-one path (settlement transfers; spends if a writer raced us)."""
        spends = [cmd for cmd in commands if isinstance(cmd, c.ConfirmSpend)]
        rest: list[ChainCommand] = [cmd for cmd in commands if not isinstance(cmd, c.ConfirmSpend)]
        if len(spends) < 2:
            return [*spends, *rest]
        fresh = uow.claims.claim_many({cmd.command_id: cmd.evidence.block_hash for cmd in spends})
        for cmd in spends:
            if cmd.command_id not in fresh:
                self._duplicate(uow, name, cmd)
        todo = [cmd for cmd in spends if cmd.command_id in fresh]
        histories = uow.events.load_many(sorted({cmd.payment_id for cmd in todo}))
        payments = {pid: Payment.rehydrate(pid, history) for pid, history in histories.items()}
        decided: list[c.ConfirmSpend] = []
        for cmd in todo:
            try:
                handle(payments[cmd.payment_id], cmd)
                decided.append(cmd)
            except DomainError as exc:
                self._refused(uow, name, cmd, exc)
        pending = [event for p in payments.values() for event in p.pending_events]
        lock_safes(uow, moved_safes(uow, payments.values()))
        try:
            with uow.savepoint():
                uow.events.append(pending)
        except ConcurrencyConflict:
            # Another writer touched one of these payments: decide each one again, one by one.
            uow.claims.release([cmd.command_id for cmd in decided])
            return [*decided, *rest]
        for payment in payments.values():
            self._move_tokens(uow, name, payment)
        self.applied += len(decided)
        return rest

    def apply_one(self, uow: UnitOfWork, name: str, command: ChainCommand) -> Outcome:
        """Claim and apply one command in the caller's unit of work (no commit here)."""
        command = linked(uow, [command])[0]
        if not uow.claims.claim(command.command_id, block_hash=command.evidence.block_hash):
            self._duplicate(uow, name, command)
            return Outcome.DUPLICATE
        try:
            with uow.savepoint():  # a refused command leaves nothing behind
                if isinstance(command, c.RecordSettlementTransfer):
                    if not self._settlement_transfer(uow, name, command):
                        return Outcome.UNMATCHED
                else:
                    self._move_tokens(uow, name, execute(uow, command))
            self.applied += 1
            return Outcome.APPLIED
        except DomainError as exc:
            self._refused(uow, name, command, exc)
            return Outcome.REFUSED

    def _settlement_transfer(
        self, uow: UnitOfWork, name: str, command: c.RecordSettlementTransfer
    ) -> bool:
        ev = command.evidence
        expected = uow.refunds.match(ev.tx_hash, command.recipient, command.token,
                                     command.amount.units, log_key=command.command_id,
                                     block_hash=ev.block_hash)
        if expected is None:
            # Not claimed: recording the refund's submission later confirms it (the transfer can
            # be seen before the submission is recorded, e.g. after a crash in between).
            uow.claims.release([command.command_id])
            uow.refunds.keep_unmatched(UnmatchedTransfer(
                command.command_id, ev.tx_hash, command.recipient, command.token,
                command.amount.units, ev.block_hash, to_json(command)))
            self._quarantine(
                uow, name, command.command_id,
                f"transfer of {command.amount} from the settlement account to "
                f"{command.recipient} in {ev.tx_hash} matches no submitted refund (yet)",
                command_payload(command), ev.block_hash)
            return False
        self._move_tokens(uow, name, execute(uow, confirmation(command, expected)))
        return True

    def rollback(self, name: str, ancestor: BlockRef, previous: Cursor) -> int:
        """Retract what the orphaned blocks above `ancestor` produced, in one transaction."""
        with self._uow() as uow:
            self._take_cursor(uow, name, previous)
            orphaned = [b.hash for b in uow.chain.blocks_above(name, ancestor.number)]
            retracted = 0
            effects = uow.events.chain_effects(orphaned)
            lock_safes(uow, _followed(uow, _safes_retracted(uow, effects)))  # first
            for effect in effects:
                if not _still_rests_on(uow, effect):
                    continue
                retracted += 1
                command = _retraction(effect, f"reorg: block {effect.evidence.block_hash} orphaned")
                try:
                    self._move_tokens(uow, name, execute(uow, command))
                except DomainError as exc:
                    self._quarantine(uow, name, command.command_id, str(exc),
                                     command_payload(command))
            uow.claims.forget_blocks(orphaned)
            uow.refunds.forget_blocks(orphaned)
            uow.quarantine.forget_blocks(orphaned)
            uow.cards.forget_blocks(orphaned)
            uow.chain.forget_above(name, self._chain_id, ancestor.number)
            uow.chain.save_cursor(name, Cursor(ancestor.number, ancestor.hash))
            uow.commit()
        return retracted

    def _move_tokens(self, uow: UnitOfWork, name: str, payment: Payment) -> None:
        """The ledger side of a card payment's chain events (`chain_moves`): inside a range
        (`apply`) they are booked together at its end, in chain order; elsewhere (a reorg's
        retractions) at once."""
        moves = chain_moves(uow, payment)
        if self._range_moves is not None:
            self._range_moves += [(payment.id, move) for move in moves]
        else:
            self._book(uow, name, [(payment.id, move) for move in moves])

    def _book(self, uow: UnitOfWork, name: str, moves: list[tuple[str, ChainMove]]) -> None:
        """Book the moves in chain order; a movement the ledger refuses is quarantined with its
        payment."""
        payment_of = {move[2].id: pid for pid, move in moves}
        for transfer, refusal in book_chain_moves(uow, [move for _, move in moves]):
            self._quarantine(uow, name, f"ledger:{transfer.id}",
                             f"the ledger refused the chain movement {transfer.id}: {refusal}",
                             {"transfer": transfer.id, "amount": transfer.amount,
                              "payment_id": payment_of[transfer.id]})

    def _duplicate(self, uow: UnitOfWork, name: str, command: ChainCommand) -> None:
        self._quarantine(uow, name, f"duplicate:{command.command_id}",
                         "duplicate log: already applied", command_payload(command),
                         command.evidence.block_hash)

    def _refused(self, uow: UnitOfWork, name: str, command: ChainCommand,
                 exc: DomainError) -> None:
        self.last_refusal = str(exc)
        uow.claims.set_outcome(command.command_id, "quarantined")
        self._quarantine(uow, name, command.command_id, str(exc), command_payload(command),
                         command.evidence.block_hash)

    def _quarantine(self, uow: UnitOfWork, name: str, key: str, reason: str,
                    payload: dict[str, Any], block_hash: str | None = None) -> None:
        log.warning("listener %s quarantined %s: %s", name, key, reason)
        self.quarantined += 1
        uow.quarantine.add(QuarantineItem(f"listener:{name}", key, reason, payload, block_hash))
        if self._on_quarantine is not None:
            self._on_quarantine(reason)


def linked(uow: UnitOfWork, commands: Sequence[ChainCommand]) -> list[ChainCommand]:
    """Spends our relayer sent confirm the authorization's payment, not a payment of their own:
    the relayer linked each hash's chain-derived payment id to it before broadcasting
    (`cardpay.handlers.onchain.link_spend`). Other spends (observer mode, someone else's relayer)
    keep their chain-derived id."""
    spends = [cmd.payment_id for cmd in commands if isinstance(cmd, c.ConfirmSpend)]
    if not spends:
        return list(commands)
    links = uow.references.get_many([spend_link(pid) for pid in spends])
    if not links:
        return list(commands)
    out: list[ChainCommand] = []
    for cmd in commands:
        if isinstance(cmd, c.ConfirmSpend) and spend_link(cmd.payment_id) in links:
            cmd = dataclasses.replace(cmd, payment_id=links[spend_link(cmd.payment_id)])
        out.append(cmd)
    return out


def _still_rests_on(uow: UnitOfWork, effect: PaymentSpent | PaymentRefunded) -> bool:
    """True if the payment's current state still depends on this log (not retracted already)."""
    payment = Payment.rehydrate(effect.stream_id, uow.events.load(effect.stream_id))
    if isinstance(effect, PaymentSpent):
        return payment.rests_on(effect.evidence)  # any of its spends (an incremental one too)
    refund = payment.refunds.get(effect.refund_id)
    return refund is not None and refund.evidence == effect.evidence


def _retraction(effect: PaymentSpent | PaymentRefunded, reason: str) -> c.Command:
    ev = effect.evidence
    command_id = f"retract:{ev.chain_id}:{ev.block_hash}:{ev.log_index}"
    now = datetime.now(UTC)
    if isinstance(effect, PaymentSpent):
        return c.RetractSpend(command_id=command_id, payment_id=effect.stream_id, at=now,
                              evidence=ev, reason=reason)
    return c.RetractRefund(command_id=command_id, payment_id=effect.stream_id, at=now,
                           refund_id=effect.refund_id, evidence=ev, reason=reason)


def _safes_of(commands: Sequence[ChainCommand]) -> set[tuple[str, str]]:
    """(ledger, Safe) a range's spends and settlement transfers may move."""
    out: set[tuple[str, str]] = set()
    for command in commands:
        if isinstance(command, c.ConfirmSpend):
            out.add((command.amount.currency.code, command.account))
        elif isinstance(command, c.RecordSettlementTransfer):
            out.add((command.amount.currency.code, command.recipient))
    return out


def _followed(uow: UnitOfWork, safes: set[tuple[str, str]]) -> list[tuple[str, str]]:
    """Those of `safes` the ledger follows (their mirror exists: a card of ours authorized on
    them). Only their movements are booked, and only they are locked by the authorization
    decision; a range of observer-mode spends over many Safes takes no lock (one lock per Safe
    would exhaust PostgreSQL's shared lock table past ~15,000 Safes in one transaction)."""
    if not safes:
        return []
    mirrors = {ChartOfAccounts(ledger).safe_mirror(safe).id: (ledger, safe)
               for ledger, safe in safes}
    return [mirrors[a.id] for a in uow.ledger.lookup_accounts(list(mirrors))]


def _safes_retracted(uow: UnitOfWork,
                     effects: Sequence[PaymentSpent | PaymentRefunded]) -> set[tuple[str, str]]:
    """(ledger, Safe) the retraction of these spends and refunds moves (a refund names no Safe:
    its payment's)."""
    out: set[tuple[str, str]] = set()
    for effect in effects:
        if isinstance(effect, PaymentSpent):
            out.add((effect.amount.currency.code, effect.account))
        else:
            account = Payment.rehydrate(effect.stream_id, uow.events.load(effect.stream_id)).account
            if account is not None:
                out.add((effect.amount.currency.code, account))
    return out

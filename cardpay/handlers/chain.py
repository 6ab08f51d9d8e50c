"""Command handlers: load the aggregate, decide, append — one Unit of Work per message or range.

Idempotency: a command's natural key is claimed first (`INSERT ... ON CONFLICT DO NOTHING` on
`processed_commands`), so two deliveries at once serialize on the key and the second is a duplicate.
A command the model refuses, or a log the listener could not use, is quarantined with its reason.
A concurrency conflict is not bad input: the command is decided again on fresh state, and if it
keeps conflicting the whole range is rolled back (the cursor does not move) and read again.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import asdict
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Engine

from cardpay.postgres.uow import ChainEffect, ExpectedRefund, PostgresUnitOfWork
from domain import commands as c
from domain.errors import ConcurrencyConflict, DomainError
from domain.payment import Payment, handle
from domain.serialization import from_json, to_json
from listener.ports import BlockRef, ChainBatch, ChainCommand, Cursor

log = logging.getLogger(__name__)

UowFactory = Callable[[], PostgresUnitOfWork]
CONFLICT_RETRIES = 3


class StaleCursor(RuntimeError):
    """Another writer moved this listener's cursor: this batch was read from an old position."""


def execute(uow: PostgresUnitOfWork, command: c.Command) -> Payment:
    """Decide one payment command inside the caller's transaction (no commit here).

    Runs in a savepoint and decides again on fresh state when another writer appended first.
    """
    for attempt in range(1, CONFLICT_RETRIES + 1):
        try:
            with uow.conn.begin_nested():
                payment = Payment.rehydrate(command.payment_id,
                                            uow.events.load(command.payment_id))
                handle(payment, command)
                uow.events.append(payment.pending_events)
                return payment
        except ConcurrencyConflict:
            if attempt == CONFLICT_RETRIES:
                raise
            log.info("concurrent write to %s; deciding %s again", command.payment_id,
                     command.command_id)
    raise AssertionError("unreachable")


def _describe(command: Any) -> dict[str, Any]:
    return {k: str(v) for k, v in asdict(command).items()}


def _confirmation(seen: c.RecordSettlementTransfer, expected: ExpectedRefund) -> c.ConfirmRefund:
    return c.ConfirmRefund(
        command_id=seen.command_id, payment_id=expected.payment_id, at=seen.at,
        refund_id=expected.refund_id, amount=seen.amount, evidence=seen.evidence,
    )


class PostgresChainSink:
    """The listener's sink: applies a block range atomically, and rolls back reorged blocks.

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

    def load_cursor(self, name: str) -> Cursor | None:
        with self._uow() as uow:
            return uow.load_cursor(name)

    def recent_blocks(self, name: str) -> list[BlockRef]:
        with self._uow() as uow:
            return uow.recent_blocks(name)

    def _take_cursor(self, uow: PostgresUnitOfWork, name: str, previous: Cursor | None) -> None:
        """One writer per listener name: lock it, then check nobody moved the cursor meanwhile."""
        uow.lock(f"listener:{name}")
        current = uow.load_cursor(name)
        if current != previous:
            raise StaleCursor(f"listener {name}: cursor is {current}, this range was read after "
                              f"{previous}; another listener with this name is running?")

    def apply(self, name: str, batch: ChainBatch) -> None:
        with self._uow() as uow:
            self._take_cursor(uow, name, batch.previous)
            for reject in batch.rejected:
                self._quarantine(uow, name, reject.key, reject.reason, reject.raw)
            for command in self._apply_spends_in_bulk(uow, name, batch.commands):
                self._apply_one(uow, name, command)
            uow.add_activity(self._chain_id, batch.activity)
            uow.keep_blocks(name, batch.blocks, below=batch.cursor.block_number - self._window)
            uow.save_cursor(name, batch.cursor)
            uow.commit()

    def _apply_spends_in_bulk(
        self, uow: PostgresUnitOfWork, name: str, commands: Sequence[ChainCommand]
    ) -> list[ChainCommand]:
        """The backfill fast path for spends: claim every id in one statement, load every stream
        in one query, decide in memory, append everything under one lock. Returns the commands
        left for the one-by-one path (settlement transfers; spends if a writer raced us)."""
        spends = [cmd for cmd in commands if isinstance(cmd, c.ConfirmSpend)]
        rest: list[ChainCommand] = [cmd for cmd in commands if not isinstance(cmd, c.ConfirmSpend)]
        if len(spends) < 2:
            return [*spends, *rest]
        fresh = uow.claim_commands([cmd.command_id for cmd in spends])
        for cmd in spends:
            if cmd.command_id not in fresh:
                self._quarantine(uow, name, f"duplicate:{cmd.command_id}",
                                 "duplicate log: already applied", _describe(cmd))
        todo = [cmd for cmd in spends if cmd.command_id in fresh]
        histories = uow.events.load_many(sorted({cmd.payment_id for cmd in todo}))
        payments = {pid: Payment.rehydrate(pid, history) for pid, history in histories.items()}
        decided: list[c.ConfirmSpend] = []
        for cmd in todo:
            payment = payments[cmd.payment_id]
            try:
                handle(payment, cmd)
                decided.append(cmd)
            except DomainError as exc:
                uow.set_outcome(cmd.command_id, "quarantined")
                self._quarantine(uow, name, cmd.command_id, str(exc), _describe(cmd))
        pending = [event for p in payments.values() for event in p.pending_events]
        try:
            with uow.conn.begin_nested():
                uow.events.append(pending)
        except ConcurrencyConflict:
            # Another writer touched one of these payments: decide each one again, one by one.
            uow.release_commands([cmd.command_id for cmd in decided])
            return [*decided, *rest]
        self.applied += len(decided)
        return rest

    def _apply_one(self, uow: PostgresUnitOfWork, name: str, command: ChainCommand) -> None:
        if not uow.claim_command(command.command_id, "applied"):
            self._quarantine(uow, name, f"duplicate:{command.command_id}",
                             "duplicate log: already applied", _describe(command))
            return
        try:
            with uow.conn.begin_nested():  # a refused command leaves nothing behind
                if isinstance(command, c.RecordSettlementTransfer):
                    self._settlement_transfer(uow, name, command)
                else:
                    execute(uow, command)
            self.applied += 1
        except DomainError as exc:
            if isinstance(exc, ConcurrencyConflict):
                raise  # not bad input: the range is rolled back and read again
            uow.set_outcome(command.command_id, "quarantined")
            self._quarantine(uow, name, command.command_id, str(exc), _describe(command))

    def _settlement_transfer(
        self, uow: PostgresUnitOfWork, name: str, command: c.RecordSettlementTransfer
    ) -> None:
        expected = uow.match_refund(
            command.evidence.tx_hash, command.recipient, command.token, command.amount.units,
            command.command_id,
        )
        if expected is None:
            # Not claimed: recording the refund's submission later confirms it (the transfer can
            # be seen before the submission is recorded, e.g. after a crash in between).
            uow.release_command(command.command_id)
            uow.keep_unmatched(command.command_id, command.evidence.tx_hash, command.recipient,
                               command.token, command.amount.units,
                               command.evidence.block_hash, to_json(command))
            self._quarantine(
                uow, name, command.command_id,
                f"transfer of {command.amount} from the settlement account to "
                f"{command.recipient} in {command.evidence.tx_hash} matches no submitted refund "
                "(yet)", _describe(command))
            return
        execute(uow, _confirmation(command, expected))

    def rollback(self, name: str, ancestor: BlockRef, previous: Cursor) -> int:
        """Retract what the orphaned blocks above `ancestor` produced, in one transaction."""
        with self._uow() as uow:
            self._take_cursor(uow, name, previous)
            orphaned = uow.blocks_above(name, ancestor.number)
            retracted = 0
            for effect in uow.chain_effects(orphaned):
                if not _still_rests_on(uow, effect):
                    continue
                retracted += 1
                command = _retraction(effect, f"reorg: block {effect.evidence.block_hash} orphaned")
                try:
                    execute(uow, command)
                except ConcurrencyConflict:
                    raise
                except DomainError as exc:
                    self._quarantine(uow, name, command.command_id, str(exc), _describe(command))
            uow.forget_chain_blocks(name, self._chain_id, ancestor.number, orphaned)
            uow.save_cursor(name, Cursor(ancestor.number, ancestor.hash))
            uow.commit()
        return retracted

    def _quarantine(
        self, uow: PostgresUnitOfWork, name: str, key: str, reason: str, payload: dict[str, Any]
    ) -> None:
        log.warning("listener %s quarantined %s: %s", name, key, reason)
        self.quarantined += 1
        uow.quarantine(f"listener:{name}", key, reason, payload)
        if self._on_quarantine is not None:
            self._on_quarantine(reason)


def _still_rests_on(uow: PostgresUnitOfWork, effect: ChainEffect) -> bool:
    """True if the payment's current state still depends on this log (not retracted already)."""
    payment = Payment.rehydrate(effect.payment_id, uow.events.load(effect.payment_id))
    if effect.refund_id is None:
        return payment.spend_evidence == effect.evidence
    refund = payment.refunds.get(effect.refund_id)
    return refund is not None and refund.evidence == effect.evidence


def _retraction(effect: ChainEffect, reason: str) -> c.Command:
    ev = effect.evidence
    command_id = f"retract:{ev.chain_id}:{ev.block_hash}:{ev.log_index}"
    now = datetime.now(UTC)
    if effect.refund_id is None:
        return c.RetractSpend(command_id=command_id, payment_id=effect.payment_id, at=now,
                              evidence=ev, reason=reason)
    return c.RetractRefund(command_id=command_id, payment_id=effect.payment_id, at=now,
                           refund_id=effect.refund_id, evidence=ev, reason=reason)


class PaymentService:
    """Application service for commands from outside the chain (network, sagas, operators)."""

    def __init__(self, uow_factory: UowFactory) -> None:
        self._uow = uow_factory

    def submit(self, command: c.Command) -> bool:
        """Apply a command once; False if this command id was already processed (a retry)."""
        with self._uow() as uow:
            if not uow.claim_command(command.command_id, "applied"):
                return False
            execute(uow, command)
            uow.commit()
        return True

    def record_refund_submission(
        self, command: c.RecordRefundSubmission, *, recipient: str, token: str, amount: int
    ) -> bool:
        """The refund tx was (or is about to be) sent: record it and what transfer confirms it.

        If the listener already saw that transfer, the refund is confirmed right here.
        """
        with self._uow() as uow:
            if not uow.claim_command(command.command_id, "applied"):
                return False
            execute(uow, command)
            expected = ExpectedRefund(command.payment_id, command.refund_id, command.tx_hash,
                                      recipient, token, amount)
            uow.expect_refund(expected)
            seen = uow.take_unmatched(command.tx_hash, recipient, token, amount)
            if seen is not None and uow.claim_command(seen["command_id"], "applied"):
                uow.match_refund(command.tx_hash, recipient, token, amount, seen["command_id"])
                execute(uow, _confirmation(from_json(c.RecordSettlementTransfer, seen), expected))
                uow.forget_quarantine(seen["command_id"])
            uow.commit()
        return True


def make_uow_factory(engine: Engine, outbox_topic: str | None) -> UowFactory:
    return lambda: PostgresUnitOfWork(engine, outbox_topic=outbox_topic)

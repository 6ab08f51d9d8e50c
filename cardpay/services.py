"""Command handlers: load the aggregate, decide, append — one Unit of Work per message or range.

Every command is idempotent by its natural key (`processed_commands`); a command the model refuses
and a log the listener could not use are quarantined with the reason, never raised out of the loop.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import asdict
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Engine

from cardpay.uow import ChainEffect, ExpectedRefund, PostgresUnitOfWork
from domain import commands as c
from domain.errors import DomainError
from domain.payment import Payment, handle
from listener.ports import BlockRef, ChainBatch, ChainCommand, Cursor

log = logging.getLogger(__name__)

UowFactory = Callable[[], PostgresUnitOfWork]


def execute(uow: PostgresUnitOfWork, command: c.Command) -> Payment:
    """Decide one payment command inside the caller's transaction (no commit here)."""
    payment = Payment.rehydrate(command.payment_id, uow.events.load(command.payment_id))
    handle(payment, command)
    uow.events.append(payment.pending_events)
    return payment


def _describe(command: Any) -> dict[str, Any]:
    return {k: str(v) for k, v in asdict(command).items()}


class PostgresChainSink:
    """The listener's sink: applies a block range atomically, and rolls back reorged blocks.

    `window` is how many blocks below the cursor keep their hashes (the deepest reorg handled).
    """

    def __init__(self, uow_factory: UowFactory, *, chain_id: int, window: int = 256) -> None:
        self._uow = uow_factory
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

    def apply(self, name: str, batch: ChainBatch) -> None:
        with self._uow() as uow:
            for reject in batch.rejected:
                self._quarantine(uow, name, reject.key, reject.reason, reject.raw)
            for command in batch.commands:
                self._apply_one(uow, name, command)
            uow.add_activity(self._chain_id, batch.activity)
            uow.keep_blocks(name, batch.blocks, below=batch.cursor.block_number - self._window)
            uow.save_cursor(name, batch.cursor)
            uow.commit()

    def rollback(self, name: str, ancestor: BlockRef) -> int:
        """Retract what the orphaned blocks above `ancestor` produced, in one transaction."""
        with self._uow() as uow:
            orphaned = uow.blocks_above(name, ancestor.number)
            retracted = 0
            for effect in uow.chain_effects(orphaned):
                if not _still_rests_on(uow, effect):
                    continue
                retracted += 1
                command = _retraction(effect, f"reorg: block {effect.evidence.block_hash} orphaned")
                try:
                    with uow.conn.begin_nested():
                        execute(uow, command)
                except DomainError as exc:
                    self._quarantine(uow, name, f"{command.command_id}", str(exc),
                                     _describe(command))
            uow.forget_chain_blocks(name, self._chain_id, ancestor.number, orphaned)
            uow.save_cursor(name, Cursor(ancestor.number, ancestor.hash))
            uow.commit()
        return retracted

    def _apply_one(self, uow: PostgresUnitOfWork, name: str, command: ChainCommand) -> None:
        if uow.is_processed(command.command_id):
            self._quarantine(uow, name, f"duplicate:{command.command_id}",
                             "duplicate log: already applied", _describe(command))
            return
        outcome = "applied"
        try:
            with uow.conn.begin_nested():
                if isinstance(command, c.RecordSettlementTransfer):
                    self._settlement_transfer(uow, command)
                else:
                    execute(uow, command)
            self.applied += 1
        except (DomainError, UnmatchedTransfer) as exc:
            outcome = "quarantined"
            self._quarantine(uow, name, command.command_id, str(exc), _describe(command))
        uow.claim_command(command.command_id, outcome)

    @staticmethod
    def _settlement_transfer(uow: PostgresUnitOfWork, command: c.RecordSettlementTransfer) -> None:
        expected = uow.match_refund(
            command.evidence.tx_hash, command.recipient, command.token, command.amount.units,
            command.command_id,
        )
        if expected is None:
            raise UnmatchedTransfer(
                f"transfer of {command.amount} from the settlement account to {command.recipient} "
                f"in {command.evidence.tx_hash} matches no submitted refund"
            )
        execute(
            uow,
            c.ConfirmRefund(
                command_id=command.command_id, payment_id=expected.payment_id, at=command.at,
                refund_id=expected.refund_id, amount=command.amount, evidence=command.evidence,
            ),
        )

    def _quarantine(
        self, uow: PostgresUnitOfWork, name: str, key: str, reason: str, payload: dict[str, Any]
    ) -> None:
        log.warning("listener %s quarantined %s: %s", name, key, reason)
        self.quarantined += 1
        uow.quarantine(f"listener:{name}", key, reason, payload)


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


class UnmatchedTransfer(Exception):
    """A settlement-account transfer that no submitted refund accounts for."""


class PaymentService:
    """Application service for commands from outside the chain (network, sagas, operators)."""

    def __init__(self, uow_factory: UowFactory) -> None:
        self._uow = uow_factory

    def submit(self, command: c.Command) -> bool:
        """Apply a command once; False if this command id was already processed (a retry)."""
        with self._uow() as uow:
            if uow.is_processed(command.command_id):
                return False
            execute(uow, command)
            uow.claim_command(command.command_id, "applied")
            uow.commit()
        return True

    def record_refund_submission(
        self, command: c.RecordRefundSubmission, *, recipient: str, token: str, amount: int
    ) -> bool:
        """The refund tx was sent: record it and what transfer will confirm it, atomically."""
        with self._uow() as uow:
            if uow.is_processed(command.command_id):
                return False
            execute(uow, command)
            uow.expect_refund(
                ExpectedRefund(command.payment_id, command.refund_id, command.tx_hash, recipient,
                               token, amount)
            )
            uow.claim_command(command.command_id, "applied")
            uow.commit()
        return True


def make_uow_factory(engine: Engine, outbox_topic: str | None) -> UowFactory:
    return lambda: PostgresUnitOfWork(engine, outbox_topic=outbox_topic)

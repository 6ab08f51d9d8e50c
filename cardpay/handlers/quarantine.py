"""Retrying a quarantined item through the normal path, idempotently, with the trace kept.

A retry re-submits what was kept: a listener command (a spend the model refused, a settlement
transfer that matched no refund yet) goes through the same claim-and-apply step as a live one, in
one unit of work. Success resolves the item (it stays visible, with its resolution); another
refusal counts the attempt and keeps the newest reason. Items that hold nothing to apply (a log
that does not decode, a duplicate) are said to be so; a projector's items are recovered by
rebuilding the projection.
"""

from __future__ import annotations

from dataclasses import dataclass

from cardpay.handlers.chain import ChainSinkHandler, Outcome
from cardpay.handlers.payments import UowFactory, execute
from cardpay.handlers.ports import QuarantinedRow, UnitOfWork
from domain import commands as c
from domain.errors import DomainError
from domain.serialization import from_json

CHAIN_COMMANDS: dict[str, type[c.ConfirmSpend | c.RecordSettlementTransfer]] = {
    "ConfirmSpend": c.ConfirmSpend,
    "RecordSettlementTransfer": c.RecordSettlementTransfer,
}
PAYMENT_COMMANDS: dict[str, type[c.Command]] = {
    cls.__name__: cls for cls in (c.RetractSpend, c.RetractRefund, c.ConfirmRefund)
}


@dataclass(frozen=True)
class RetryResult:
    outcome: str
    """applied | duplicate | resolved | still_quarantined | not_retryable | not_found"""
    message: str


def retry(uow_factory: UowFactory, item_id: int) -> RetryResult:
    with uow_factory() as uow:
        row = uow.quarantine.get(item_id)
        if row is None:
            return RetryResult("not_found", f"no quarantined item {item_id}")
        if row.resolved_at is not None:
            return RetryResult("resolved", f"already resolved: {row.resolution}")
        result = _retry(uow, row)
        if result.outcome in ("applied", "duplicate"):
            uow.quarantine.resolve(row.id, result.message)
        elif result.outcome == "still_quarantined":
            uow.quarantine.attempted(row.id, result.message)
        uow.commit()
    return result


def _retry(uow: UnitOfWork, row: QuarantinedRow) -> RetryResult:
    if row.key.startswith("duplicate:"):
        return RetryResult("duplicate", "a repeat of a log that was applied; nothing to apply")
    if row.source == "network":
        return RetryResult("not_retryable", "a card-network body that could not be used: its "
                           "delivery was answered with this refusal, which a resend under the "
                           "same webhook id gets again; the network must send a corrected "
                           "message under a new id")
    if row.source.startswith("projector:"):
        name = row.source.split(":", 1)[1]
        return RetryResult("not_retryable", "a projector's item: rebuild the read model with "
                           f"`cardpay projections reset {name}` and run the projector again")
    kind = row.payload.get("command_type")
    raw = row.payload.get("command")
    if not isinstance(kind, str) or not isinstance(raw, dict):
        return RetryResult("not_retryable", "the item holds no command (the log itself could "
                           "not be used); nothing to apply")
    if kind in CHAIN_COMMANDS and row.source.startswith("listener:"):
        return _retry_chain_command(uow, row, from_json(CHAIN_COMMANDS[kind], raw))
    if kind in PAYMENT_COMMANDS:
        command = from_json(PAYMENT_COMMANDS[kind], raw)
        try:
            execute(uow, command)
        except DomainError as exc:
            return RetryResult("still_quarantined", str(exc))
        return RetryResult("applied", f"{kind} applied on retry")
    return RetryResult("not_retryable", f"no retry for {kind} items")


def _retry_chain_command(uow: UnitOfWork, row: QuarantinedRow,
                         command: c.ConfirmSpend | c.RecordSettlementTransfer) -> RetryResult:
    listener = row.source.split(":", 1)[1]
    claimed = uow.claims.outcome(command.command_id)
    if claimed == "applied":
        return RetryResult("duplicate", "already applied meanwhile; nothing to apply")
    if claimed == "quarantined":
        uow.claims.release([command.command_id])  # refused before: decide it again
    sink = ChainSinkHandler(lambda: uow, chain_id=command.evidence.chain_id)
    outcome = sink.apply_one(uow, listener, command)
    if outcome is Outcome.APPLIED:
        return RetryResult("applied", f"{type(command).__name__} applied on retry")
    if outcome is Outcome.DUPLICATE:
        return RetryResult("duplicate", "already applied meanwhile; nothing to apply")
    if outcome is Outcome.UNMATCHED:
        return RetryResult("still_quarantined", row.reason)
    return RetryResult("still_quarantined", sink.last_refusal or row.reason)

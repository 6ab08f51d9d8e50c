"""Past-tense domain events of the payment lifecycle, and their envelope once stored.

Events are frozen dataclasses. Every event carries its stream (the payment id), its version in that
stream, when it happened (UTC-aware) and the correlation/causation ids that tie it to the message that
caused it. The payload fields are plain values or `Money`, so `domain.serialization` can turn any of
them into JSON and back without a per-event mapping.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from domain.money import Money


@dataclass(frozen=True, kw_only=True)
class DomainEvent:
    stream_id: str
    version: int
    occurred_at: datetime
    correlation_id: str
    causation_id: str


@dataclass(frozen=True, kw_only=True)
class ChainEvidence:
    """Where on chain a fact was seen: enough to find it again and to notice when a reorg drops it."""

    chain_id: int
    block_number: int
    block_hash: str
    tx_hash: str
    log_index: int


@dataclass(frozen=True, kw_only=True)
class PaymentAuthorized(DomainEvent):
    """The network asked and the issuer approved: funds are about to be spent on chain."""

    account: str
    amount: Money
    merchant: str
    mcc: str
    expires_at: datetime


@dataclass(frozen=True, kw_only=True)
class PaymentSpent(DomainEvent):
    """The spend was seen on chain at the confirmation depth: the funds sit with the issuer (hold)."""

    account: str
    amount: Money
    evidence: ChainEvidence


@dataclass(frozen=True, kw_only=True)
class PaymentCleared(DomainEvent):
    """The network sent the final amount; the hold is posted for that amount."""

    amount: Money


@dataclass(frozen=True, kw_only=True)
class PaymentReversed(DomainEvent):
    """Authorization reversed or expired before clearing; the hold is voided."""

    reason: str


@dataclass(frozen=True, kw_only=True)
class RefundRequested(DomainEvent):
    """A refund transfer from the settlement account was asked for (not yet seen on chain)."""

    refund_id: str
    amount: Money
    reason: str


@dataclass(frozen=True, kw_only=True)
class RefundSubmitted(DomainEvent):
    """The refund transaction was sent; `tx_hash` is where the listener will find its transfer."""

    refund_id: str
    tx_hash: str


@dataclass(frozen=True, kw_only=True)
class PaymentRefunded(DomainEvent):
    """The refund transfer was seen on chain: the money is back in the cardholder's account."""

    refund_id: str
    amount: Money
    evidence: ChainEvidence


@dataclass(frozen=True, kw_only=True)
class PaymentSettled(DomainEvent):
    """The cleared payment was included in a settlement batch with the network."""

    batch_id: str


@dataclass(frozen=True, kw_only=True)
class SpendRetracted(DomainEvent):
    """The block holding the spend left the canonical chain (reorg): the hold is gone with it."""

    evidence: ChainEvidence
    reason: str


@dataclass(frozen=True, kw_only=True)
class RefundRetracted(DomainEvent):
    """The block holding the refund transfer left the canonical chain: the refund is in flight again."""

    refund_id: str
    amount: Money
    evidence: ChainEvidence
    reason: str


PAYMENT_EVENTS: tuple[type[DomainEvent], ...] = (
    PaymentAuthorized,
    PaymentSpent,
    PaymentCleared,
    PaymentReversed,
    RefundRequested,
    RefundSubmitted,
    PaymentRefunded,
    PaymentSettled,
    SpendRetracted,
    RefundRetracted,
)


@dataclass(frozen=True, slots=True)
class RecordedEvent:
    """An event as the event store keeps it and the feeds deliver it: JSON payload plus position.

    `position` is the store's global order; `data` is the JSON form from `domain.serialization`.
    """

    stream_id: str
    version: int
    position: int
    type: str
    data: dict[str, Any]
    recorded_at: datetime

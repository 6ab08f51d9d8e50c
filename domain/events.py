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
    amount: Money | None = None
    """What that spend was (None in events recorded before it was kept: their payment had one
    spend)."""


@dataclass(frozen=True, kw_only=True)
class RefundRetracted(DomainEvent):
    """The block holding the refund transfer left the canonical chain: the refund is in flight again."""

    refund_id: str
    amount: Money
    evidence: ChainEvidence
    reason: str


# -- the card network's side ------------------------------------------------------------------------
# One Payment stream per network authorization id. `PaymentAuthorized` (above) is our approval;
# the events below are the network's other messages. The causation id of each is the network's
# message id. Every event that can move the hold carries `held`, the hold left open after it, so
# the ledger can resize its pending transfer without replaying the stream; amounts released or
# posted are named so each maps to one ledger operation.


@dataclass(frozen=True, kw_only=True)
class AuthorizationDeclined(DomainEvent):
    """We declined an authorization (or an increment of an open one, which leaves its hold as it
    was). Kept so that a later advice or clearing finds the payment."""

    account: str
    amount: Money
    merchant: str
    mcc: str
    reason: str
    held: Money


@dataclass(frozen=True, kw_only=True)
class AuthorizationAdvised(DomainEvent):
    """The network decided for us (stand-in) and told us afterwards. Approved: the hold is opened,
    or an open hold resized to `amount`; declined: an open hold is released (`released`)."""

    account: str
    amount: Money
    merchant: str
    mcc: str
    expires_at: datetime
    approved: bool
    reason: str
    released: Money
    held: Money


@dataclass(frozen=True, kw_only=True)
class AuthorizationIncreased(DomainEvent):
    """An incremental authorization was approved: the hold grows by `amount` to `held`;
    `authorized` is the new total and `expires_at` the (possibly extended) deadline."""

    amount: Money
    authorized: Money
    expires_at: datetime
    held: Money


@dataclass(frozen=True, kw_only=True)
class AuthorizationReversed(DomainEvent):
    """The merchant reversed `amount` of the authorization (all of it when `full`); `released` is
    what left the hold (nothing once the hold was already resolved). A full reversal ends the hold."""

    amount: Money
    full: bool
    released: Money
    held: Money


@dataclass(frozen=True, kw_only=True)
class AuthorizationExpired(DomainEvent):
    """No final clearing before `expires_at`: what was still held is released and the hold ends.
    A clearing may still come and is accepted."""

    released: Money


@dataclass(frozen=True, kw_only=True)
class ClearingParked(DomainEvent):
    """A clearing arrived before its authorization. Nothing moves; it is applied (as a
    `ClearingRecorded` naming it) when the authorization arrives."""

    amount: Money
    final: bool


@dataclass(frozen=True, kw_only=True)
class ClearingRecorded(DomainEvent):
    """The network presented a clearing (`clearing_id` is its message id; it differs from the
    causation id when a parked clearing is applied by its authorization's arrival).

    `from_hold` is posted out of the open hold, `beyond_hold` has no hold behind it (an
    over-clearing, or a clearing after the hold was reversed, expired or declined: `basis` says
    which), `released` is the hold's remainder released by a final clearing, `held` what stays.
    """

    clearing_id: str
    amount: Money
    final: bool
    basis: str
    from_hold: Money
    beyond_hold: Money
    released: Money
    held: Money


@dataclass(frozen=True, kw_only=True)
class PaymentForcePosted(DomainEvent):
    """A clearing with no authorization at all: the payment exists only as cleared."""

    account: str
    amount: Money
    merchant: str
    mcc: str


@dataclass(frozen=True, kw_only=True)
class FinancialAuthorizationRecorded(DomainEvent):
    """A single-message (SMS) authorization: approved and cleared at once, no hold in between."""

    account: str
    amount: Money
    merchant: str
    mcc: str


@dataclass(frozen=True, kw_only=True)
class ReturnRecorded(DomainEvent):
    """The merchant refunded `amount` through the network; `returned` is the total now."""

    amount: Money
    returned: Money


@dataclass(frozen=True, kw_only=True)
class ReturnReversed(DomainEvent):
    """A return was undone for `amount`; `returned` is the total left."""

    amount: Money
    returned: Money


CHAIN_EVENTS: tuple[type[DomainEvent], ...] = (
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
"""The chain-side lifecycle (and our approval, `PaymentAuthorized`, which both sides share)."""

NETWORK_EVENTS: tuple[type[DomainEvent], ...] = (
    AuthorizationDeclined,
    AuthorizationAdvised,
    AuthorizationIncreased,
    AuthorizationReversed,
    AuthorizationExpired,
    ClearingParked,
    ClearingRecorded,
    PaymentForcePosted,
    FinancialAuthorizationRecorded,
    ReturnRecorded,
    ReturnReversed,
)
"""The card network's messages other than our approval."""

PAYMENT_EVENTS: tuple[type[DomainEvent], ...] = (*CHAIN_EVENTS, *NETWORK_EVENTS)


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

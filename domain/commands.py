"""Imperative commands on a payment. Each has a natural idempotency key, `command_id`.

Chain-sourced commands use the log's identity (chain id, block hash, log index) as their id, so a log
delivered twice is the same command twice.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from domain.events import ChainEvidence
from domain.money import Money


@dataclass(frozen=True, kw_only=True)
class Command:
    command_id: str
    payment_id: str
    at: datetime
    correlation_id: str | None = None


@dataclass(frozen=True, kw_only=True)
class AuthorizePayment(Command):
    account: str
    amount: Money
    merchant: str
    mcc: str
    expires_at: datetime
    requested: Money | None = None
    """What the network asked for, when we approve less (a partial approval); checked, not kept:
    the approved `amount` is what is held."""


@dataclass(frozen=True, kw_only=True)
class ConfirmSpend(Command):
    account: str
    amount: Money
    evidence: ChainEvidence


@dataclass(frozen=True, kw_only=True)
class ClearPayment(Command):
    amount: Money


@dataclass(frozen=True, kw_only=True)
class ReversePayment(Command):
    reason: str


@dataclass(frozen=True, kw_only=True)
class RequestRefund(Command):
    refund_id: str
    amount: Money
    reason: str


@dataclass(frozen=True, kw_only=True)
class RefundExcess(Command):
    """Refund what the Safe paid net of refunds beyond what the network cleared net of returns.

    The amount is the aggregate's to compute from its own stream, not the sender's: a saga's
    view of the payment may lag (a spend retracted, a refund already asked for), and a refund it
    sized itself could exceed what is left, or be asked twice. Nothing beyond: nothing recorded."""

    reason: str


@dataclass(frozen=True, kw_only=True)
class RecordRefundSubmission(Command):
    refund_id: str
    tx_hash: str


@dataclass(frozen=True, kw_only=True)
class ConfirmRefund(Command):
    refund_id: str
    amount: Money
    evidence: ChainEvidence


@dataclass(frozen=True, kw_only=True)
class SettlePayment(Command):
    batch_id: str


@dataclass(frozen=True, kw_only=True)
class RetractSpend(Command):
    evidence: ChainEvidence
    reason: str


@dataclass(frozen=True, kw_only=True)
class RetractRefund(Command):
    refund_id: str
    evidence: ChainEvidence
    reason: str


# -- the card network's messages -----------------------------------------------------------------
# For these (and for `AuthorizePayment`) `command_id` is the network's message id: the aggregate
# remembers every message id it recorded and treats a repeat as a no-op. `payment_id` is the
# network's authorization id (for a force post or a financial authorization, the message's own id).
# Amounts are already converted to the card's token by the handler.


@dataclass(frozen=True, kw_only=True)
class DeclineAuthorization(Command):
    """We declined an authorization request (or an incremental one, on an open authorization)."""

    account: str
    amount: Money
    merchant: str
    mcc: str
    reason: str


@dataclass(frozen=True, kw_only=True)
class AdviseAuthorization(Command):
    """AUTHORIZATION_ADVICE: the network stood in and approved or declined without us."""

    account: str
    amount: Money
    merchant: str
    mcc: str
    expires_at: datetime
    approved: bool
    reason: str = ""


@dataclass(frozen=True, kw_only=True)
class IncreaseAuthorization(Command):
    """An approved incremental authorization of `amount`; `expires_at` extends the deadline."""

    amount: Money
    expires_at: datetime | None = None


@dataclass(frozen=True, kw_only=True)
class ReverseAuthorization(Command):
    """AUTHORIZATION_REVERSAL: `amount` for a partial reversal, None for all that is held."""

    amount: Money | None = None
    reason: str = ""


@dataclass(frozen=True, kw_only=True)
class ExpireAuthorization(Command):
    """AUTHORIZATION_EXPIRY, or our own timer at `expires_at`: release what is still held.

    `by_network`: the network's own expiry message, honoured whenever it comes (its validity
    rules, not ours, decide); our timer's expiry is refused before `expires_at`."""

    by_network: bool = False


@dataclass(frozen=True, kw_only=True)
class RecordClearing(Command):
    """CLEARING against the authorization `payment_id`; `final` says no more clearings follow
    (the hold's remainder is released)."""

    amount: Money
    final: bool = True


@dataclass(frozen=True, kw_only=True)
class ForcePost(Command):
    """A CLEARING that names no authorization: the payment is created as cleared."""

    account: str
    amount: Money
    merchant: str
    mcc: str


@dataclass(frozen=True, kw_only=True)
class RecordFinancialAuthorization(Command):
    """FINANCIAL_AUTHORIZATION (single message): approved and cleared in one. A declined one is
    a `DeclineAuthorization`."""

    account: str
    amount: Money
    merchant: str
    mcc: str


@dataclass(frozen=True, kw_only=True)
class RecordReturn(Command):
    """RETURN (a merchant refund) matched to this payment. A return the handler cannot match is
    not sent here: it books it to suspense and raises an exception, and sends this command once
    an operator (or a later match) names the payment."""

    amount: Money


@dataclass(frozen=True, kw_only=True)
class ReverseReturn(Command):
    """RETURN_REVERSAL: undo `amount` of this payment's returns."""

    amount: Money


NETWORK_COMMANDS: tuple[type[Command], ...] = (
    AuthorizePayment,
    DeclineAuthorization,
    AdviseAuthorization,
    IncreaseAuthorization,
    ReverseAuthorization,
    ExpireAuthorization,
    RecordClearing,
    ForcePost,
    RecordFinancialAuthorization,
    RecordReturn,
    ReverseReturn,
)
"""Commands that carry a network message id: a repeated id is a no-op."""


@dataclass(frozen=True, kw_only=True)
class RecordSettlementTransfer:
    """A transfer out of the issuer's settlement account was seen on chain (a refund/reversal).

    Not addressed to a payment: the chain does not say which payment it refunds. The handler matches
    it to a submitted refund by transaction, recipient, token and amount.
    """

    command_id: str
    at: datetime
    recipient: str
    token: str
    amount: Money
    evidence: ChainEvidence

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

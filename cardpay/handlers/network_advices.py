"""What we tell the card network after the fact: the saga's reversal advice.

When an approved payment cannot be completed on chain (the spend failed for good, or was not
seen before its deadline), the card-payment saga's compensation tells the network we reverse
our approval (an authorization reversal advice, issuer-initiated), so the network stops
counting on it. The network keeps advices by their idempotency key (the effect request id), so
one sent twice (a worker killed after sending, before the answer was stored) is one advice.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from cardpay.errors import CardpayError
from cardpay.handlers.effects import Answer, PartyUnavailable, Perform
from cardpay.handlers.sagas import EffectRequest
from sagas.engine.retry import FailureClass


@dataclass(frozen=True, slots=True)
class ReversalAdvice:
    idempotency_key: str
    authorization_id: str
    """The network's id of the authorization (our payment id)."""
    amount: int
    """Token base units of the approval being reversed."""
    currency: str
    decimals: int
    reason: str


class AdviceRefused(CardpayError):
    """The network answered that it will not take this advice (it is malformed, or names an
    authorization it does not know): sending it again would not help."""


class NetworkAdvices(Protocol):
    def send(self, advice: ReversalAdvice) -> str:
        """Deliver the advice; returns the network's reference for it. Raises
        `PartyUnavailable` (try later) or `AdviceRefused` (final)."""
        ...


def reversal_advice(advices: NetworkAdvices) -> Perform:
    """The performer of the saga's `send_reversal_advice` effect."""

    def perform(request: EffectRequest) -> Answer:
        p = request.payload
        advice = ReversalAdvice(
            idempotency_key=request.request_id, authorization_id=str(p["payment_id"]),
            amount=int(p["amount"]), currency=str(p["currency"]), decimals=int(p["decimals"]),
            reason=str(p.get("reason") or "the approved spend did not happen on chain"))
        try:
            reference = advices.send(advice)
        except AdviceRefused as exc:
            return Answer.failed(FailureClass.HARD, str(exc))
        return Answer.ok(reference=reference)

    return perform


__all__ = ["AdviceRefused", "NetworkAdvices", "PartyUnavailable", "ReversalAdvice",
           "reversal_advice"]

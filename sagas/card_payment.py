"""The card-payment saga: one per authorization, from our approval to the last refund on chain.

It connects the card network's side of a payment with its chain side (both in the Payment
aggregate's stream) through side effects it asks of adapters and evidence it waits for:

- approved (`PaymentAuthorized`, or an approving `AuthorizationAdvised` that holds money) -> ask
  the relayer to submit the `spend` (compensation registered first: a reversal advice to the
  network, and the payment reversed) and wait for the listener's `PaymentSpent` at depth until
  `spend_deadline`; a spend that fails for good or is not seen in time is compensated;
- clearings (`ClearingRecorded`, network side) are added up; the final one -> `ClearPayment` for
  what the network cleared in total (the aggregate then asks for a refund of the difference); a
  clearing above what was spent opens a finance exception (the policy for an incremental spend
  comes with the relayer);
- a full reversal or an expiry before clearing -> `ReversePayment` (hold voided, what was spent
  refunded);
- a merchant return -> `RequestRefund` of the returned amount;
- every `RefundRequested` -> ask the settlement-account sender for the refund, then record its
  transaction (`RecordRefundSubmission`); the listener's `PaymentRefunded` confirms it;
- a reorg that takes the spend away (`SpendRetracted`) -> submit the spend again.

One effect is in flight at a time; the others wait in `data["queue"]`, in the order they were
asked for. Amounts are token base units (ints) in `data`; commands carry `Money`. The saga does
not complete at clearing: a merchant return may come weeks later and needs it (an idle saga is a
row, with no timer).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from domain import commands as c
from domain import events as e
from domain.money import Currency, Money
from sagas.engine.model import Effect, Json
from sagas.engine.react import Saga
from sagas.engine.retry import FailureClass, RetryPolicy

KIND = "card_payment"
SUBMIT_SPEND = "submit_spend"
SEND_REFUND = "send_refund"
REVERSAL_ADVICE = "send_reversal_advice"
SPEND_DEADLINE = "spend_deadline"


@dataclass(frozen=True, slots=True)
class CardPaymentSaga:
    kind: str = KIND
    policy: RetryPolicy = field(default_factory=RetryPolicy)
    spend_timeout: timedelta = timedelta(minutes=10)
    """How long an approved spend may take to appear on chain at depth before it is undone."""

    # -- events ---------------------------------------------------------------------------------
    def on_event(self, saga: Saga, event: Any) -> None:
        match event:
            case e.PaymentAuthorized(amount=amount, account=safe):
                self._spend(saga, event, safe, amount)
            case e.AuthorizationAdvised(approved=True, held=held, account=safe) \
                    if held.units > 0 and "spend" not in saga.data:
                self._spend(saga, event, safe, held)
            case e.PaymentSpent(amount=amount) if "spend" in saga.data:
                # (a spend with no approval of ours before it is observer mode: no saga)
                saga.cancel_timer(SPEND_DEADLINE)
                saga.goto("held", spent=amount.units, spend_seen=True)
            case e.ClearingRecorded(amount=amount, final=final):
                cleared = int(saga.data.get("cleared", 0)) + amount.units
                saga.goto(saga.stage, cleared=cleared)
                if final:
                    self._cleared(saga, event, cleared)
            case e.AuthorizationReversed(full=True) | e.AuthorizationExpired() \
                    if saga.stage in ("spending", "held"):
                saga.issue(c.ReversePayment(command_id=f"{event.stream_id}:saga:reverse",
                                            payment_id=event.stream_id, at=event.occurred_at,
                                            reason=type(event).__name__))
            case e.ReturnRecorded(amount=amount):
                saga.issue(c.RequestRefund(
                    command_id=f"{event.stream_id}:saga:return:{event.version}",
                    payment_id=event.stream_id, at=event.occurred_at,
                    refund_id=f"{event.stream_id}:return:{event.version}", amount=amount,
                    reason="merchant return"))
            case e.RefundRequested(refund_id=refund_id, amount=amount):
                self._enqueue(saga, SEND_REFUND, {
                    "payment_id": event.stream_id, "refund_id": refund_id,
                    "to": saga.data.get("safe"), "amount": amount.units,
                    **_currency(amount.currency)})
            case e.PaymentRefunded(refund_id=refund_id):
                saga.goto(saga.stage, refunded=[*saga.data.get("refunded", []), refund_id])
            case e.SpendRetracted():
                # the spend's block was reorged out: send it again (same payment, new step)
                saga.goto("spending", spend_seen=False)
                self._enqueue(saga, SUBMIT_SPEND, dict(saga.data["spend"]))
                saga.set_timer(SPEND_DEADLINE, saga.now + self.spend_timeout)

    def on_timer(self, saga: Saga, name: str) -> None:
        if name == SPEND_DEADLINE and not saga.data.get("spend_seen"):
            self._undo(saga, f"the spend was not seen on chain within {self.spend_timeout}")

    def on_success(self, saga: Saga, effect: Effect, result: Json) -> None:
        if effect.name == SUBMIT_SPEND:
            saga.goto(saga.stage, spend_tx=result.get("tx_hash"))
        elif effect.name == SEND_REFUND:
            p = effect.payload
            saga.issue(c.RecordRefundSubmission(
                command_id=f"{p['refund_id']}:submitted:{result.get('tx_hash')}",
                payment_id=str(p["payment_id"]), at=saga.now, refund_id=str(p["refund_id"]),
                tx_hash=str(result["tx_hash"])))
        self._next(saga)

    def on_failure(self, saga: Saga, effect: Effect, failure: FailureClass,
                   detail: str) -> None:
        if effect.name == SUBMIT_SPEND:
            self._undo(saga, f"the spend failed ({failure}): {detail}")
            return
        # a refund that cannot be sent is money owed to a cardholder: a person decides
        saga.raise_exception("refund_failed", detail, effect=effect.name,
                             request_id=effect.request_id, payload=dict(effect.payload),
                             failure=str(failure))
        self._next(saga)

    # -- steps ----------------------------------------------------------------------------------
    def _spend(self, saga: Saga, event: e.DomainEvent, safe: str, amount: Money) -> None:
        if "spend" in saga.data:
            return  # approved once: an advice after our approval changes the amount only
        spend = {"payment_id": event.stream_id, "safe": safe, "amount": amount.units,
                 **_currency(amount.currency)}
        saga.goto("spending", spend=spend, safe=safe, authorized=amount.units)
        saga.request(SUBMIT_SPEND, spend, compensation=saga.undo(REVERSAL_ADVICE, {
            "payment_id": event.stream_id, "amount": amount.units,
            **_currency(amount.currency)}))
        saga.set_timer(SPEND_DEADLINE, saga.now + self.spend_timeout)

    @staticmethod
    def _undo(saga: Saga, reason: str) -> None:
        """The approved spend did not happen: the payment is reversed (nothing was spent, so
        nothing is refunded) and the compensations tell the network."""
        payment_id = str(saga.data["spend"]["payment_id"])
        saga.issue(c.ReversePayment(command_id=f"{payment_id}:saga:undo", payment_id=payment_id,
                                    at=saga.now, reason=reason))
        saga.compensate(reason)

    def _cleared(self, saga: Saga, event: e.ClearingRecorded, cleared: int) -> None:
        """The network's clearings are final: the chain side clears for their total."""
        saga.goto("cleared")
        spent = saga.data.get("spent")
        if spent is None:
            saga.raise_exception("cleared_before_spend", "a final clearing arrived before the "
                                 "spend was seen on chain", cleared=cleared)
            return
        if cleared > int(spent):
            saga.raise_exception("over_clearing", f"the network cleared {cleared}, the chain "
                                 f"spent {spent}", cleared=cleared, spent=spent)
            cleared = int(spent)
        saga.issue(c.ClearPayment(command_id=f"{event.stream_id}:saga:clear",
                                  payment_id=event.stream_id, at=event.occurred_at,
                                  amount=Money(cleared, event.amount.currency)))

    def _enqueue(self, saga: Saga, name: str, payload: Json) -> None:
        if saga.waiting is None:
            saga.request(name, payload)
        else:
            saga.goto(saga.stage, queue=[*saga.data.get("queue", []),
                                         {"name": name, "payload": dict(payload)}])

    def _next(self, saga: Saga) -> None:
        queue = list(saga.data.get("queue", []))
        if queue and saga.waiting is None:
            first, *rest = queue
            saga.goto(saga.stage, queue=rest)
            saga.request(first["name"], first["payload"])


ROUTED = (e.PaymentAuthorized, e.AuthorizationAdvised, e.PaymentSpent, e.ClearingRecorded,
          e.AuthorizationReversed, e.AuthorizationExpired, e.ReturnRecorded, e.RefundRequested,
          e.PaymentRefunded, e.SpendRetracted)
"""The payment events the saga reacts to (its `on_event`)."""


def route(event: e.DomainEvent) -> list[tuple[str, str]]:
    """The card-payment saga of an event's payment, for the events it reacts to. A payment seen
    only on chain (observer mode) starts with `PaymentSpent`, never with an approval: its saga
    stays idle."""
    return [(KIND, event.stream_id)] if isinstance(event, ROUTED) else []


def _currency(currency: Currency) -> dict[str, Any]:
    return {"currency": currency.code, "decimals": currency.decimals}


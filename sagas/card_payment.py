"""The card-payment saga: one per authorization, from our approval to the last refund on chain.

It connects the card network's side of a payment with its chain side (both in the Payment
aggregate's stream) through side effects it asks of adapters and evidence it waits for. Its one
rule: once the network's amount is final, what the Safe paid on chain net of refunds is what the
network cleared net of returns — no more (refund the rest) and no less (collect it, or tell a
person). Step by step:

- approved (`PaymentAuthorized`, or an approving `AuthorizationAdvised` that holds money) -> ask
  the relayer to submit the `spend` (compensation registered first: a reversal advice to the
  network) and wait for the listener's `PaymentSpent` at depth until `spend_deadline`; a spend
  that fails for good or is not seen in time is given up: the payment is reversed and the
  network told (a resumable compensation: the saga runs on, because the spend may still land
  late, and the aggregate then refunds it, "spend after reversal");
- the network's amount is final at its final clearing, or when its hold ends (full reversal,
  expiry, or a declining stand-in advice: the network timed out on our approval and declined
  in our stead) -> `ClearPayment` for what it cleared (the aggregate refunds what was collected beyond
  it), or `ReversePayment` when it cleared nothing (all refunded). A clearing after the payment
  was reversed still clears it (a network cannot be refused);
- what the network cleared beyond what was collected (an over-clearing, or a clearing after the
  spend was given up) -> by the saga's `over_clearing` setting: an incremental spend (a second
  `submit_spend` for the shortfall, a new step; the aggregate takes a later spend as one more
  spend) or a finance exception;
- a merchant return, and anything collected later beyond the clearing (a late spend) ->
  `RequestRefund`;
- every `RefundRequested` -> ask the settlement-account sender for the refund, then record its
  transaction (`RecordRefundSubmission`); the listener's `PaymentRefunded` confirms it;
- a reorg that takes a spend or a refund away (`SpendRetracted`, `RefundRetracted`) -> re-drive:
  the same effect again under its first request id, so its adapter broadcasts the same signed
  transaction again (same nonce: the orphaned one and the new one can never both land; a new
  request would sign a second transaction and could pay twice). Until a retracted spend lands
  again, nothing is collected for it (no incremental spend, no refund of it).

One effect is in flight at a time; the others wait in `data["queue"]`, in the order they were
asked for (a re-drive goes first). Amounts are token base units (ints) in `data`; commands carry
`Money`. The saga reads the payment's events in stream order and ignores a version it has seen
(a redelivered event changes nothing). Its view may lag the stream (events appended by others
since, or by its own commands in this transaction), so it never sizes a refund itself: it asks
the aggregate to clear, reverse or refund what is beyond (`RefundExcess`), and the aggregate
decides from the whole stream (a repeated ask finds nothing beyond and records nothing). The saga
never completes: a merchant return may come weeks later (an idle saga is a row, with no timer).
"""

from __future__ import annotations

import enum
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

OPEN, CLEARED, REVERSED = "open", "cleared", "reversed"
"""What the saga told the chain side (`data["chain"]`)."""


class OverClearing(enum.StrEnum):
    """What the saga does when the network cleared more than the Safe paid on chain."""

    EXCEPTION = "exception"
    """A finance exception with the amount owed; nothing more is taken from the Safe."""
    INCREMENTAL_SPEND = "incremental_spend"
    """A second spend from the Safe for the shortfall (its failure is then the exception)."""


@dataclass(frozen=True, slots=True)
class CardPaymentSaga:
    kind: str = KIND
    policy: RetryPolicy = field(default_factory=RetryPolicy)
    spend_timeout: timedelta = timedelta(minutes=10)
    """How long an approved spend may take to appear on chain at depth before it is undone."""
    over_clearing: OverClearing = OverClearing.EXCEPTION

    # -- events ---------------------------------------------------------------------------------
    def on_event(self, saga: Saga, event: Any) -> None:
        if not isinstance(event, e.DomainEvent):
            return  # (the engine drops an event of the payment's stream delivered again)
        match event:
            case e.PaymentAuthorized(amount=amount, account=safe):
                self._spend(saga, event, safe, amount)
            case e.AuthorizationAdvised(approved=True, held=held, account=safe) \
                    if held.units > 0:
                self._spend(saga, event, safe, held)
            case e.PaymentSpent() if "first" in saga.data:
                # (a spend with no approval of ours before it is observer mode: no saga)
                self._landed(saga, event)
            case e.SpendRetracted():
                self._spend_retracted(saga, event)
            case e.ClearingRecorded(amount=amount, final=final):
                saga.goto(saga.stage, cleared=_int(saga, "cleared") + amount.units,
                          final=bool(saga.data.get("final")) or final)
            case e.AuthorizationReversed(full=True) | e.AuthorizationExpired() | \
                    e.AuthorizationAdvised(approved=False):
                # the hold ended: what is cleared is final (a declining advice after our
                # approval: the network timed out on us and declined in our stead)
                saga.goto(saga.stage, final=True)
            case e.ReturnRecorded(amount=amount):
                saga.goto(saga.stage, returned=_int(saga, "returned") + amount.units)
            case e.ReturnReversed(amount=amount):
                # the merchant's return was (partly) undone: the cardholder owes it again
                saga.goto(saga.stage, returned=_int(saga, "returned") - amount.units)
            case e.RefundRequested(refund_id=refund_id, amount=amount):
                self._refund_requested(saga, refund_id, amount.units)
            case e.PaymentRefunded(refund_id=refund_id):
                saga.goto(saga.stage, refunded=[*saga.data.get("refunded", []), refund_id])
            case e.RefundRetracted(refund_id=refund_id):
                self._resend_refund(saga, refund_id)
        self._settle(saga, event)

    def on_timer(self, saga: Saga, name: str) -> None:
        if name == SPEND_DEADLINE and self._first_pending(saga):
            self._give_up(saga, f"the spend was not seen on chain within {self.spend_timeout}")
            self._settle(saga, None)

    def on_success(self, saga: Saga, effect: Effect, result: Json) -> None:
        if effect.name == SUBMIT_SPEND and result.get("tx_hash"):
            saga.goto(saga.stage, spend_tx=result.get("tx_hash"),
                      answered={**saga.data.get("answered", {}),
                                str(result["tx_hash"]): effect.request_id})
        elif effect.name == SEND_REFUND:
            self._refund_sent(saga, effect, str(result["tx_hash"]))
        self._next(saga)

    def on_failure(self, saga: Saga, effect: Effect, failure: FailureClass,
                   detail: str) -> None:
        rid = effect.request_id
        if effect.name == SUBMIT_SPEND:
            if rid == saga.data.get("first") and self._first_pending(saga):
                saga.goto(saga.stage, redrive=_without(saga.data.get("redrive", {}), rid),
                          dead=[*saga.data.get("dead", []), rid] if failure is FailureClass.HARD
                          else saga.data.get("dead", []))
                self._give_up(saga, f"the spend failed ({failure}): {detail}")
            elif rid in saga.data.get("redrive", {}):
                # the reorged spend cannot be sent again: what rests on it is owed
                amount = int(saga.data["redrive"][rid])
                saga.raise_exception("spend_redrive_failed", detail, request_id=rid,
                                     amount=amount, failure=str(failure))
                saga.goto(saga.stage, owed=_int(saga, "owed") + amount,
                          redrive=_without(saga.data["redrive"], rid))
            elif rid in saga.data.get("topups", {}):
                amount = int(saga.data["topups"][rid])
                saga.raise_exception("over_clearing", f"the incremental spend failed "
                                     f"({failure}): {detail}", owed=amount, request_id=rid,
                                     cleared=_int(saga, "cleared"))
                # its transaction may still land: remembered, to know the log when it does
                saga.goto(saga.stage, owed=_int(saga, "owed") + amount,
                          topups=_without(saga.data["topups"], rid),
                          failed={**saga.data.get("failed", {}), rid: amount})
            self._settle(saga, None)
        else:
            # a refund that cannot be sent is money owed to a cardholder: a person decides
            saga.raise_exception("refund_failed", detail, effect=effect.name, request_id=rid,
                                 payload=dict(effect.payload), failure=str(failure))
        self._next(saga)

    # -- the first spend ------------------------------------------------------------------------
    def _spend(self, saga: Saga, event: e.DomainEvent, safe: str, amount: Money) -> None:
        if "spend" in saga.data:
            return  # approved once: an advice after our approval changes the amount only
        spend = {"payment_id": event.stream_id, "safe": safe, "amount": amount.units,
                 **_currency(amount.currency)}
        saga.goto("spending", spend=spend, safe=safe, authorized=amount.units, chain=OPEN,
                  **_currency(amount.currency))
        effect = saga.request(SUBMIT_SPEND, spend, compensation=saga.undo(REVERSAL_ADVICE, {
            "payment_id": event.stream_id, "amount": amount.units,
            **_currency(amount.currency)}))
        saga.goto("spending", first=effect.request_id)
        saga.set_timer(SPEND_DEADLINE, saga.now + self.spend_timeout)

    @staticmethod
    def _first_pending(saga: Saga) -> bool:
        """The first spend was asked for and neither landed nor was given up."""
        first = saga.data.get("first")
        landed = {v["request"] for v in saga.data.get("landed", {}).values()}
        return first is not None and first not in landed and not saga.data.get("gave_up")

    def _give_up(self, saga: Saga, reason: str) -> None:
        """The approved spend did not happen (in time): stop waiting for it and tell the network
        (the compensation registered with it); the chain side is settled by `_settle` (reversed,
        or cleared if the network already cleared). If it lands later it is refunded."""
        saga.cancel_timer(SPEND_DEADLINE)
        waiting = saga.waiting
        if waiting is not None and waiting.effect.request_id != saga.data.get("first"):
            # another effect was in flight (a refund): ask it again once the advice is sent
            self._enqueue(saga, waiting.effect.name, waiting.effect.payload,
                          request_id=waiting.effect.request_id, first=True)
        saga.goto("given_up", gave_up=True)
        saga.compensate(reason, resume=True)
        self._next(saga)

    # -- spends on chain ------------------------------------------------------------------------
    def _landed(self, saga: Saga, event: e.PaymentSpent) -> None:
        key = _log_key(event.evidence)
        landed = dict(saga.data.get("landed", {}))
        if key in landed:
            return
        rid = self._request_of(saga, event.evidence.tx_hash, event.amount.units, landed)
        landed[key] = {"amount": event.amount.units, "request": rid}
        saga.goto(saga.stage, landed=landed, spent=_int(saga, "spent") + event.amount.units,
                  redrive=_without(saga.data.get("redrive", {}), rid),
                  topups=_without(saga.data.get("topups", {}), rid),
                  failed=_without(saga.data.get("failed", {}), rid))
        if rid == saga.data.get("first") and saga.stage == "spending":
            saga.cancel_timer(SPEND_DEADLINE)
            saga.goto("held")

    @staticmethod
    def _request_of(saga: Saga, tx_hash: str, amount: int, landed: Json) -> str:
        """Which of our spend requests a spend log belongs to: the one its adapter answered
        with that transaction; else (the answer may come after the log) one not landed for that
        amount, else the oldest not landed."""
        answered = saga.data.get("answered", {})
        if tx_hash in answered:
            return str(answered[tx_hash])
        done = {v["request"] for v in landed.values()}
        first = saga.data.get("first")
        asked = {**({first: saga.data["spend"]["amount"]} if first else {}),
                 **saga.data.get("redrive", {}), **saga.data.get("topups", {}),
                 **saga.data.get("failed", {})}
        dead = set(saga.data.get("dead", []))  # reverted: their transaction cannot land
        open_ = {str(r): int(a) for r, a in asked.items() if r not in done and r not in dead}
        same = [r for r, a in open_.items() if a == amount]
        return next(iter(same or open_), "unknown")

    def _spend_retracted(self, saga: Saga, event: e.SpendRetracted) -> None:
        key = _log_key(event.evidence)
        landed = dict(saga.data.get("landed", {}))
        if key not in landed:
            return
        gone = landed.pop(key)
        rid, amount = str(gone["request"]), int(gone["amount"])
        saga.goto(saga.stage, landed=landed, spent=_int(saga, "spent") - amount,
                  redrive={**saga.data.get("redrive", {}), rid: amount})
        payload = saga.data["spend"] if rid == saga.data.get("first") else \
            {**saga.data["spend"], "amount": amount}
        if rid == saga.data.get("first") and saga.data.get("chain") == OPEN \
                and not saga.data.get("gave_up") and not saga.data.get("final"):
            saga.goto("spending")
            saga.set_timer(SPEND_DEADLINE, saga.now + self.spend_timeout)
        self._enqueue(saga, SUBMIT_SPEND, payload, request_id=rid, first=True)

    # -- refunds --------------------------------------------------------------------------------
    def _refund_requested(self, saga: Saga, refund_id: str, amount: int) -> None:
        refunds = dict(saga.data.get("refunds", {}))
        known = refunds.get(refund_id, {})
        refunds[refund_id] = {**known, "amount": amount, "asked": True}
        saga.goto(saga.stage, refunds=refunds)
        if not known.get("asked"):
            self._enqueue(saga, SEND_REFUND, {
                "payment_id": saga.instance.saga_id, "refund_id": refund_id,
                "to": saga.data.get("safe"), "amount": amount,
                "currency": saga.data.get("currency"), "decimals": saga.data.get("decimals")})

    def _refund_sent(self, saga: Saga, effect: Effect, tx_hash: str) -> None:
        p = effect.payload
        refund_id = str(p["refund_id"])
        refunds = dict(saga.data.get("refunds", {}))
        refund = dict(refunds.get(refund_id, {}))
        txs = list(refund.get("txs", []))
        refund.update(request=effect.request_id, payload=dict(p))
        if tx_hash not in txs:  # sent again after a reorg: the same transaction, recorded once
            saga.issue(c.RecordRefundSubmission(
                command_id=f"{refund_id}:submitted:{tx_hash}",
                payment_id=str(p["payment_id"]), at=saga.now, refund_id=refund_id,
                tx_hash=tx_hash))
            refund["txs"] = [*txs, tx_hash]
        refunds[refund_id] = refund
        saga.goto(saga.stage, refunds=refunds)

    def _resend_refund(self, saga: Saga, refund_id: str) -> None:
        refund = saga.data.get("refunds", {}).get(refund_id)
        if refund is None or "request" not in refund:
            return  # never sent by this saga: nothing to send again
        self._enqueue(saga, SEND_REFUND, refund["payload"], request_id=refund["request"])

    # -- the rule: collected on chain == cleared by the network ---------------------------------
    def _settle(self, saga: Saga, event: e.DomainEvent | None) -> None:
        """Once the network's amount is final and the first spend's fate is known, bring the
        chain side to it: clear or reverse the payment once, then refund what was collected
        beyond it and collect (or raise) what is short."""
        data = saga.data
        if "first" not in data or self._first_pending(saga):
            return
        cleared, chain, final = _int(saga, "cleared"), data.get("chain"), data.get("final")
        pid = saga.instance.saga_id
        currency = Currency(str(data["currency"]), int(data["decimals"]))
        at = event.occurred_at if event is not None else saga.now
        if chain == OPEN and cleared == 0 and (final or data.get("gave_up")):
            # nothing to pay for (yet): the hold is voided and what was spent refunded
            saga.goto("reversed", chain=REVERSED)
            reason = saga.instance.problem if data.get("gave_up") else None
            saga.issue(c.ReversePayment(command_id=f"{pid}:saga:reverse", payment_id=pid,
                                        at=at, reason=reason or "the network's hold ended"))
            return
        if not final or cleared == 0:
            return
        if chain != CLEARED:
            saga.goto("cleared", chain=CLEARED)
            saga.issue(c.ClearPayment(command_id=f"{pid}:saga:clear", payment_id=pid, at=at,
                                      amount=Money(cleared, currency)))
            cap = cleared  # the clearing itself refunds what was collected beyond it
        else:
            cap = None
        target = cleared - _int(saga, "returned")
        net, owed = self._net(saga), _int(saga, "owed")
        net = net if cap is None else min(net, cap)
        landing = sum(int(v) for v in data.get("redrive", {}).values()) + sum(
            int(v) for v in data.get("topups", {}).values())
        excess = net + landing + owed - target
        if excess > 0:
            if net > target:
                # the aggregate sizes it from its own stream (this view may lag it)
                saga.issue(c.RefundExcess(
                    command_id=f"{pid}:saga:excess:{saga.instance.version + 1}",
                    payment_id=pid, at=at,
                    reason="merchant return" if isinstance(event, e.ReturnRecorded)
                    else "collected beyond what the network cleared"))
            cut = min(owed, excess - max(net - target, 0) - landing)
            if cut > 0:
                # nothing left on chain to refund: what finance was told to collect shrinks
                saga.raise_exception("over_clearing", f"what is owed shrinks by {cut} (a return, "
                                     "or a spend that landed since)",
                                     cleared=cleared, returned=_int(saga, "returned"),
                                     collected=net, owed=-cut)
                saga.goto(saga.stage, owed=owed - cut)
            return
        short = -excess
        if short == 0:
            return
        if self.over_clearing is OverClearing.INCREMENTAL_SPEND:
            topup = {**data["spend"], "amount": short, "incremental": True}
            # silence counts as a failure (retried, then the exception): it must not wait for ever
            rid = self._enqueue(saga, SUBMIT_SPEND, topup, timeout=self.spend_timeout)
            saga.goto(saga.stage, topups={**saga.data.get("topups", {}), rid: short})
            return
        saga.raise_exception("over_clearing", f"the network cleared {cleared}, the Safe paid "
                             f"{net} net of refunds on chain", cleared=cleared,
                             returned=_int(saga, "returned"), collected=net, owed=short)
        saga.goto(saga.stage, owed=owed + short)

    @staticmethod
    def _net(saga: Saga) -> int:
        """Paid on chain by the Safe net of every refund asked for (sent or not)."""
        refunds = saga.data.get("refunds", {})
        return _int(saga, "spent") - sum(int(r["amount"]) for r in refunds.values())

    # -- one effect at a time -------------------------------------------------------------------
    def _enqueue(self, saga: Saga, name: str, payload: Json, *, request_id: str | None = None,
                 first: bool = False, timeout: timedelta | None = None) -> str:
        """Ask for the effect now if nothing is in flight, else queue it. Returns its request id
        (a queued new step's id is fixed now, so it can be named before it is sent)."""
        new = request_id is None
        if request_id is None:  # new steps leave the queue in order: their numbers are known
            reserved = _int(saga, "reserved")
            request_id = saga.key(name, saga.instance.steps + 1 + reserved)
            saga.goto(saga.stage, reserved=reserved + 1)
        item = {"name": name, "payload": dict(payload), "request_id": request_id, "new": new,
                "timeout_s": None if timeout is None else timeout.total_seconds()}
        queue = list(saga.data.get("queue", []))
        saga.goto(saga.stage, queue=[item, *queue] if first else [*queue, item])
        self._next(saga)
        return request_id

    def _next(self, saga: Saga) -> None:
        queue = list(saga.data.get("queue", []))
        if queue and saga.waiting is None:
            item, *rest = queue
            saga.goto(saga.stage, queue=rest)
            if not item.get("new"):
                saga.request(item["name"], item["payload"], request_id=item["request_id"])
                return
            saga.goto(saga.stage, reserved=_int(saga, "reserved") - 1)
            timeout_s = item.get("timeout_s")
            effect = saga.request(item["name"], item["payload"], timeout=None if timeout_s is None
                                  else timedelta(seconds=float(timeout_s)))
            if effect.request_id != item["request_id"]:
                raise RuntimeError(f"saga {saga.instance.saga_id}: step {effect.request_id} "
                                   f"was queued as {item['request_id']}")


def _int(saga: Saga, name: str) -> int:
    return int(saga.data.get(name, 0))


def _without(mapping: Json, key: str) -> dict[str, Any]:
    return {k: v for k, v in mapping.items() if k != key}


def _log_key(evidence: e.ChainEvidence) -> str:
    return f"{evidence.block_hash}:{evidence.tx_hash}:{evidence.log_index}"


ROUTED = (e.PaymentAuthorized, e.AuthorizationAdvised, e.PaymentSpent, e.ClearingRecorded,
          e.AuthorizationReversed, e.AuthorizationExpired, e.ReturnRecorded, e.ReturnReversed,
          e.RefundRequested, e.PaymentRefunded, e.SpendRetracted, e.RefundRetracted)
"""The payment events the saga reacts to (its `on_event`)."""


def route(event: e.DomainEvent) -> list[tuple[str, str]]:
    """The card-payment saga of an event's payment, for the events it reacts to. A payment seen
    only on chain (observer mode) starts with `PaymentSpent`, never with an approval: its saga
    stays idle."""
    return [(KIND, event.stream_id)] if isinstance(event, ROUTED) else []


def _currency(currency: Currency) -> dict[str, Any]:
    return {"currency": currency.code, "decimals": currency.decimals}

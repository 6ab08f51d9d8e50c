"""The card-payment saga, message by message, on the pure engine (no storage)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import pytest

from domain import commands as c
from domain import events as e
from domain.money import EURE, Money
from sagas.card_payment import (
    KIND,
    REVERSAL_ADVICE,
    SEND_REFUND,
    SPEND_DEADLINE,
    SUBMIT_SPEND,
    CardPaymentSaga,
    OverClearing,
)
from sagas.engine.model import (
    Action,
    CancelTimer,
    EffectFailed,
    EffectSucceeded,
    EventArrived,
    IssueCommand,
    Message,
    OpenException,
    RequestEffect,
    SagaInstance,
    SetTimer,
    Status,
    TimerFired,
)
from sagas.engine.react import react
from sagas.engine.retry import FailureClass

pytestmark = pytest.mark.unit
T0 = datetime(2026, 12, 1, 12, tzinfo=UTC)
SAFE = "0x" + "5a" * 20
PID = "auth-1"
SAGA = CardPaymentSaga()


def eure(cents: int) -> Money:
    return Money(cents * 10**16, EURE)


E = TypeVar("E", bound=e.DomainEvent)


def ev(cls: type[E], version: int, **fields: Any) -> E:
    return cls(stream_id=PID, version=version, occurred_at=T0, correlation_id=PID,
               causation_id=f"m{version}", **fields)


def authorized(cents: int = 1_000) -> e.PaymentAuthorized:
    return ev(e.PaymentAuthorized, 1, account=SAFE, amount=eure(cents), merchant="Shop",
              mcc="5411", expires_at=T0 + timedelta(days=7))


def spent(cents: int = 1_000) -> e.PaymentSpent:
    return ev(e.PaymentSpent, 2, account=SAFE, amount=eure(cents), evidence=e.ChainEvidence(
        chain_id=100, block_number=7, block_hash="0x" + "b7" * 32, tx_hash="0x" + "77" * 32,
        log_index=3))


def clearing(cents: int, version: int, *, final: bool = True) -> e.ClearingRecorded:
    return ev(e.ClearingRecorded, version, clearing_id=f"c{version}", amount=eure(cents),
              final=final, basis="hold", from_hold=eure(cents), beyond_hold=eure(0),
              released=eure(0), held=eure(0))


def refund_requested(cents: int, version: int) -> e.RefundRequested:
    return ev(e.RefundRequested, version, refund_id=f"{PID}:r{version}", amount=eure(cents),
              reason="test")


def feed(instance: SagaInstance, *messages: Message, now: datetime = T0,
         definition: CardPaymentSaga = SAGA) -> tuple[SagaInstance, list[Action]]:
    actions: list[Action] = []
    for message in messages:
        instance, more = react(definition, instance, message, now)
        actions += more
    return instance, actions


def effects(actions: list[Action]) -> list[str]:
    return [a.effect.name for a in actions if isinstance(a, RequestEffect)]


def commands(actions: list[Action]) -> list[Any]:
    return [a.command for a in actions if isinstance(a, IssueCommand)]


def rid(instance: SagaInstance) -> str:
    assert instance.waiting is not None
    return instance.waiting.effect.request_id


def approved() -> SagaInstance:
    s, actions = feed(SagaInstance(PID, SAGA.kind), EventArrived(authorized()))
    assert effects(actions) == [SUBMIT_SPEND]
    spend, = [a.effect for a in actions if isinstance(a, RequestEffect)]
    assert spend.payload == {"payment_id": PID, "safe": SAFE, "amount": 1_000 * 10**16,
                             "currency": "EURe", "decimals": 18}
    assert SetTimer(SPEND_DEADLINE, T0 + SAGA.spend_timeout) in actions
    return s


def test_an_approval_is_spent_on_chain_and_held_once_the_listener_sees_it() -> None:
    s = approved()
    s, _ = feed(s, EffectSucceeded(rid(s), {"tx_hash": "0xabc"}))
    assert s.data["spend_tx"] == "0xabc" and s.stage == "spending"
    s, actions = feed(s, EventArrived(spent()))
    assert CancelTimer(SPEND_DEADLINE) in actions and s.stage == "held"
    s, actions = feed(s, TimerFired(SPEND_DEADLINE))  # delivered late anyway: nothing happens
    assert actions == [] and s.status is Status.RUNNING


@pytest.mark.parametrize("how", ["not seen in time", "reverted"])
def test_a_spend_that_never_lands_is_reversed_and_the_network_told(how: str) -> None:
    s = approved()
    if how == "not seen in time":
        s, actions = feed(s, EffectSucceeded(rid(s), {"tx_hash": "0xabc"}),
                          TimerFired(SPEND_DEADLINE))
    else:
        s, actions = feed(s, EffectFailed(rid(s), FailureClass.HARD, "execution reverted"))
    reverse, = commands(actions)
    assert isinstance(reverse, c.ReversePayment) and reverse.payment_id == PID
    assert effects(actions) == [REVERSAL_ADVICE] and s.status is Status.COMPENSATING
    s, _ = feed(s, EffectSucceeded(rid(s)))
    # resumed, not finished: the spend may still land late and must then be refunded
    assert s.status is Status.RUNNING and s.stage == "reversed" and s.waiting is None


def test_a_spend_landing_after_the_saga_gave_up_is_refunded() -> None:
    s = approved()
    s, _ = feed(s, TimerFired(SPEND_DEADLINE))  # gave up: reversed, advice in flight
    late = ev(e.PaymentSpent, 3, account=SAFE, amount=eure(1_000), evidence=spent().evidence)
    s, actions = feed(s, EventArrived(late), EventArrived(ev(
        e.RefundRequested, 4, refund_id=f"{PID}:late:after-reversal", amount=eure(1_000),
        reason="spend after reversal")))
    assert commands(actions) == [] and effects(actions) == []  # queued behind the advice
    s, actions = feed(s, EffectSucceeded(rid(s)))  # the network acknowledged the advice
    assert effects(actions) == [SEND_REFUND] and s.status is Status.RUNNING
    assert s.waiting is not None and s.waiting.effect.payload["amount"] == 1_000 * 10**16


def test_clearings_add_up_and_the_final_one_clears_the_chain_side_for_their_total() -> None:
    s, _ = feed(approved(), EventArrived(spent()))
    s, actions = feed(s, EventArrived(clearing(300, 3, final=False)))
    assert commands(actions) == []
    s, actions = feed(s, EventArrived(clearing(500, 4)))
    clear, = commands(actions)  # its difference refund is the aggregate's: no RefundExcess
    assert isinstance(clear, c.ClearPayment) and clear.amount == eure(800)
    assert feed(s, EventArrived(clearing(500, 4))) == (s, [])  # delivered again: nothing
    assert s.stage == "cleared" and s.status is Status.RUNNING  # returns may still come


def test_each_requested_refund_is_sent_in_turn_and_its_transaction_recorded() -> None:
    s, _ = feed(approved(), EffectSucceeded("spend-done-elsewhere"))
    s, _ = feed(s, EffectSucceeded(rid(s), {"tx_hash": "0xspend"}), EventArrived(spent()))
    s, actions = feed(s, EventArrived(refund_requested(200, 5)),
                      EventArrived(refund_requested(100, 6)))
    assert effects(actions) == [SEND_REFUND]  # one at a time: the second waits
    first = s.waiting.effect if s.waiting else None
    assert first is not None and first.payload["amount"] == 200 * 10**16
    assert first.payload["to"] == SAFE
    s, actions = feed(s, EffectSucceeded(first.request_id, {"tx_hash": "0xr1"}))
    submitted, = commands(actions)
    assert isinstance(submitted, c.RecordRefundSubmission)
    assert (submitted.refund_id, submitted.tx_hash) == (f"{PID}:r5", "0xr1")
    assert effects(actions) == [SEND_REFUND] and s.waiting is not None
    assert s.waiting.effect.payload["refund_id"] == f"{PID}:r6"


def test_a_refund_that_cannot_be_sent_is_an_exception_and_the_queue_goes_on() -> None:
    s, _ = feed(approved(), EffectSucceeded("x"))
    s, _ = feed(s, EffectSucceeded(rid(s), {"tx_hash": "0xspend"}), EventArrived(spent()),
                EventArrived(refund_requested(200, 5)), EventArrived(refund_requested(100, 6)))
    s, actions = feed(s, EffectFailed(rid(s), FailureClass.HARD, "settlement Safe empty"))
    exception, = [a for a in actions if isinstance(a, OpenException)]
    assert exception.reason == "refund_failed"
    assert exception.context["payload"]["refund_id"] == f"{PID}:r5"
    assert effects(actions) == [SEND_REFUND] and s.status is Status.RUNNING


def test_over_clearing_opens_a_finance_exception_for_what_is_owed_by_default() -> None:
    s, _ = feed(approved(), EventArrived(spent(1_000)))
    s, actions = feed(s, EventArrived(clearing(1_200, 3)))
    exception, = [a for a in actions if isinstance(a, OpenException)]
    assert exception.reason == "over_clearing"
    assert exception.context["owed"] == 200 * 10**16
    clear, = commands(actions)
    assert clear.amount == eure(1_200)  # the network's amount; the chain is 200 short
    assert effects(actions) == []


def test_over_clearing_is_an_incremental_spend_by_the_setting() -> None:
    saga = CardPaymentSaga(over_clearing=OverClearing.INCREMENTAL_SPEND)
    s, actions = feed(SagaInstance(PID, KIND), EventArrived(authorized()), definition=saga)
    s, _ = feed(s, EffectSucceeded(rid(s), {"tx_hash": "0xspend"}), EventArrived(spent(1_000)),
                definition=saga)
    s, actions = feed(s, EventArrived(clearing(1_200, 3)), definition=saga)
    assert [a for a in actions if isinstance(a, OpenException)] == []
    assert effects(actions) == [SUBMIT_SPEND]
    topup = s.waiting.effect if s.waiting else None
    assert topup is not None and topup.request_id == f"{PID}:2:{SUBMIT_SPEND}"
    assert topup.payload["amount"] == 200 * 10**16 and topup.payload["incremental"] is True
    s, _ = feed(s, EffectSucceeded(topup.request_id, {"tx_hash": "0xtopup"}), definition=saga)
    more = ev(e.PaymentSpent, 5, account=SAFE, amount=eure(200), evidence=e.ChainEvidence(
        chain_id=100, block_number=9, block_hash="0x" + "b9" * 32, tx_hash="0xtopup",
        log_index=0))
    s, actions = feed(s, EventArrived(ev(e.PaymentCleared, 4, amount=eure(1_200))),
                      EventArrived(more), definition=saga)
    assert actions == [] and s.data["spent"] == 1_200 * 10**16 and s.data["topups"] == {}


def test_a_full_reversal_before_clearing_reverses_the_payment_and_a_return_asks_a_refund() -> None:
    s, _ = feed(approved(), EventArrived(spent()))
    s, actions = feed(s, EventArrived(ev(e.AuthorizationReversed, 3, amount=eure(1_000),
                                         full=True, released=eure(1_000), held=eure(0))))
    reverse, = commands(actions)
    assert isinstance(reverse, c.ReversePayment)
    s, _ = feed(approved(), EventArrived(spent()), EventArrived(clearing(1_000, 3)))
    s, actions = feed(s, EventArrived(ev(e.ReturnRecorded, 4, amount=eure(250),
                                         returned=eure(250))))
    refund, = commands(actions)  # sized by the aggregate, from its whole stream
    assert isinstance(refund, c.RefundExcess) and refund.reason == "merchant return"


def test_a_reorged_spend_is_submitted_again() -> None:
    s, _ = feed(approved(), EffectSucceeded("x"))
    s, _ = feed(s, EffectSucceeded(rid(s), {"tx_hash": "0xspend"}), EventArrived(spent()))
    s, actions = feed(s, EventArrived(ev(e.SpendRetracted, 3, evidence=spent().evidence,
                                         reason="reorg")))
    assert effects(actions) == [SUBMIT_SPEND] and s.stage == "spending"
    assert SetTimer(SPEND_DEADLINE, T0 + SAGA.spend_timeout) in actions
    # the same request: its adapter broadcasts the same transaction again, never a second one
    assert s.waiting is not None and s.waiting.effect.request_id == f"{PID}:1:{SUBMIT_SPEND}"


def test_a_reorged_refund_is_sent_again_under_its_request_and_recorded_once() -> None:
    s, _ = feed(approved(), EffectSucceeded("x"))
    s, _ = feed(s, EffectSucceeded(rid(s), {"tx_hash": "0xspend"}), EventArrived(spent()),
                EventArrived(refund_requested(200, 3)))
    first = rid(s)
    s, actions = feed(s, EffectSucceeded(first, {"tx_hash": "0xr1"}))
    assert [type(x) for x in commands(actions)] == [c.RecordRefundSubmission]
    evidence = e.ChainEvidence(chain_id=100, block_number=8, block_hash="0x" + "b8" * 32,
                               tx_hash="0xr1", log_index=0)
    s, actions = feed(s, EventArrived(ev(e.RefundRetracted, 4, refund_id=f"{PID}:r3",
                                         amount=eure(200), evidence=evidence,
                                         reason="reorg")))
    assert effects(actions) == [SEND_REFUND] and rid(s) == first
    s, actions = feed(s, EffectSucceeded(first, {"tx_hash": "0xr1"}))
    assert commands(actions) == []  # the same transaction: its submission is recorded already


def test_a_payment_seen_only_on_chain_starts_no_saga() -> None:
    """Observer mode (real Gnosis data, no network): the spend is the payment's first event."""
    observed = ev(e.PaymentSpent, 1, account=SAFE, amount=eure(500),
                  evidence=spent().evidence)
    fresh = SagaInstance(PID, SAGA.kind)
    assert feed(fresh, EventArrived(observed)) == (fresh, [])


def test_a_clearing_delivered_twice_is_counted_once() -> None:
    s, _ = feed(approved(), EffectSucceeded("x"))
    s, _ = feed(s, EffectSucceeded(rid(s), {"tx_hash": "0xspend"}), EventArrived(spent()))
    partial = clearing(300, 3, final=False)
    s, _ = feed(s, EventArrived(partial), EventArrived(partial))
    assert s.data["cleared"] == 300 * 10**16


def test_a_reversed_return_is_owed_again_by_the_cardholder() -> None:
    """Found by the full lifecycle: a return refunded on chain, then partly reversed by the
    merchant, left the chain 'returned' more than the network."""
    s, _ = feed(approved(), EventArrived(spent(1_000)), EventArrived(clearing(1_000, 3)))
    s, actions = feed(s, EventArrived(ev(e.ReturnRecorded, 4, amount=eure(400),
                                         returned=eure(400))))
    assert [type(x) for x in commands(actions)] == [c.RefundExcess]
    s, _ = feed(s, EventArrived(refund_requested(400, 5)))
    s, actions = feed(s, EventArrived(ev(e.ReturnReversed, 6, amount=eure(150),
                                         returned=eure(250))))
    exception, = [a for a in actions if isinstance(a, OpenException)]
    assert (exception.reason, exception.context["owed"]) == ("over_clearing", 150 * 10**16)
    topup = CardPaymentSaga(over_clearing=OverClearing.INCREMENTAL_SPEND)
    t, _ = feed(SagaInstance(PID, topup.kind), EventArrived(authorized()), definition=topup)
    t, _ = feed(t, EffectSucceeded(rid(t), {"tx_hash": "0xspend"}), EventArrived(spent(1_000)),
                EventArrived(clearing(1_000, 3)), EventArrived(ev(
                    e.ReturnRecorded, 4, amount=eure(400), returned=eure(400))),
                EventArrived(refund_requested(400, 5)), definition=topup)
    t, actions = feed(t, EventArrived(ev(e.ReturnReversed, 6, amount=eure(150),
                                         returned=eure(250))), definition=topup)
    assert [a for a in actions if isinstance(a, OpenException)] == []
    assert 150 * 10**16 in {int(v) for v in t.data.get("topups", {}).values()}


def declined_advice(version: int, released: int = 1_000) -> e.AuthorizationAdvised:
    """The network stood in and declined after all (our approval came too late for it)."""
    return ev(e.AuthorizationAdvised, version, account=SAFE, amount=eure(1_000),
              merchant="Shop", mcc="5411", expires_at=T0 + timedelta(days=7), approved=False,
              reason="stand_in_decline", released=eure(released), held=eure(0))


def test_a_stand_in_decline_after_our_approval_reverses_and_refunds_the_spend() -> None:
    """Approve-then-timeout: we approved and spent, but the network had timed out and declined
    in our stead; its advice releases the hold, so nothing will be cleared and what the Safe
    paid goes back (a clearing after it still clears: a network cannot be refused)."""
    s, _ = feed(approved(), EventArrived(spent()))
    s, actions = feed(s, EventArrived(declined_advice(3)))
    reverse, = commands(actions)
    assert isinstance(reverse, c.ReversePayment)
    assert s.data["chain"] == "reversed"


def test_a_stand_in_decline_before_the_spend_lands_reverses_once_it_does() -> None:
    s, actions = feed(approved(), EventArrived(declined_advice(2)))
    assert commands(actions) == []  # the spend's fate is not known yet
    s, actions = feed(s, EventArrived(ev(e.PaymentSpent, 3, account=SAFE, amount=eure(1_000),
                                         evidence=spent().evidence)))
    reverse, = commands(actions)
    assert isinstance(reverse, c.ReversePayment)

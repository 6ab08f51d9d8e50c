"""The metrics move when the thing happens: authorization decisions through the real ingress,
saga steps, retries, compensations, timers and exceptions through the real `SagaRunner` (both on
the in-memory fakes), the state gauges from a `SystemState`, and the readiness rule."""

from __future__ import annotations

import math
from datetime import UTC, datetime, time, timedelta
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from cardpay.bootstrap.state import settled_days
from cardpay.handlers.health import SystemState, feed_lag_reasons
from cardpay.handlers.network import EffectUnavailable, NetworkIngress, Received
from cardpay.handlers.ports import UnitOfWork
from cardpay.handlers.sagas import SagaRunner
from cardpay.metrics.api import ApiMetrics
from cardpay.metrics.sagas import SagaMetrics
from cardpay.metrics.state import StateMetrics
from domain.authorization import DeclineReason
from domain.money import EUR, Money
from domain.network import AuthorizationDecision, AuthorizationRequest, Merchant
from sagas.engine.retry import FailureClass
from tests.fakes.sagas import FakeSagaDatabase
from tests.fakes.storage import FakeDatabase
from tests.integration.test_saga_runner import EXPIRY, T0, Clock, Commands, TwoSteps, route, told

pytestmark = pytest.mark.unit

SHOP = Merchant(name="Shop", merchant_id="m1", country="DE", mcc="5411")


def value(registry: CollectorRegistry, name: str, **labels: str) -> float:
    return registry.get_sample_value(name, labels) or 0.0


# -- authorization decisions ----------------------------------------------------------------
def auth(authorization_id: str, units: int, *, partial: bool = False) -> AuthorizationRequest:
    return AuthorizationRequest(authorization_id=authorization_id, card_id="c1",
                                amount=Money(units, EUR), merchant=SHOP, network_time=T0,
                                partial_approval_supported=partial)


def decide(uow: UnitOfWork, request: AuthorizationRequest,
           received_at: datetime) -> AuthorizationDecision:
    """Approves up to 1000 (partially where allowed), declines above for lack of funds, and
    cannot decide request `down`."""
    if request.authorization_id == "down":
        raise EffectUnavailable("ledger down")
    if request.amount.units <= 1000:
        return AuthorizationDecision.approve(request)
    if request.partial_approval_supported:
        return AuthorizationDecision.approve(request, Money(1000, EUR))
    return AuthorizationDecision.decline(request, DeclineReason.INSUFFICIENT_FUNDS)


def delivery(webhook_id: str) -> Received:
    return Received(webhook_id, webhook_id.encode(), {"webhook-id": webhook_id}, T0)


def test_each_committed_decision_is_counted_once_by_outcome_and_reason() -> None:
    metrics = ApiMetrics()
    ingress = NetworkIngress(FakeDatabase().uow, decide, lambda uow, m: {}, observer=metrics)
    ingress.authorize(delivery("w1"), auth("a1", 500))
    ingress.authorize(delivery("w2"), auth("a2", 5000))
    ingress.authorize(delivery("w3"), auth("a3", 5000, partial=True))
    ingress.authorize(delivery("w1"), auth("a1", 500))  # a repeat decides nothing
    assert ingress.authorize(delivery("w4"), auth("down", 500)).status == 503
    r = metrics.registry
    name = "cardpay_authorization_decisions_total"
    assert value(r, name, outcome="approved", reason="none") == 1
    assert value(r, name, outcome="partial", reason="none") == 1
    assert value(r, name, outcome="declined", reason="insufficient_funds") == 1
    total = sum(s.value for m in r.collect() if m.name == name.removesuffix("_total")
                for s in m.samples if s.name == name)
    assert total == 3  # neither the repeat nor the 503 counted


# -- sagas ------------------------------------------------------------------------------------
def saga_runner(db: FakeSagaDatabase, metrics: SagaMetrics, clock: Clock | None = None,
                commands: Commands | None = None) -> SagaRunner:
    return SagaRunner(db.uow, [TwoSteps()], route, commands or Commands(), clock or Clock(),
                      observer=metrics)


def test_saga_steps_retries_timers_and_completion_are_counted_after_commit() -> None:
    db, metrics, clock = FakeSagaDatabase(), SagaMetrics(), Clock()
    r, reg = saga_runner(db, metrics, clock), metrics.registry
    r.handle_batch("sagas", [told("p1", "go"), told("p2", "hello")], {"events": 2})
    assert value(reg, "cardpay_saga_steps_total", kind="two_steps", message="event") == 1
    assert value(reg, "cardpay_saga_effects_requested_total", kind="two_steps",
                 effect="reserve") == 1
    # a temporary failure, then the retry timer asks again (attempt 2): one retry
    assert r.effect_done("p1:1:reserve", succeeded=False, failure=FailureClass.TEMPORARY)
    assert value(reg, "cardpay_saga_retries_total", kind="two_steps", effect="reserve") == 0
    clock.now = T0 + timedelta(seconds=2)
    assert r.fire_due_timers().advanced == 1
    assert value(reg, "cardpay_saga_retries_total", kind="two_steps", effect="reserve") == 1
    assert value(reg, "cardpay_saga_timers_fired_total", kind="two_steps",
                 outcome="advanced") == 1
    assert r.effect_done("p1:1:reserve", succeeded=True)
    assert r.effect_done("p1:2:charge", succeeded=True)
    assert value(reg, "cardpay_saga_finished_total", kind="two_steps", status="completed") == 1
    assert value(reg, "cardpay_saga_steps_total", kind="two_steps",
                 message="effect_succeeded") == 2
    assert value(reg, "cardpay_saga_compensations_total", kind="two_steps") == 0


def test_a_compensation_that_keeps_failing_is_counted_stuck_with_its_exception() -> None:
    db, metrics, clock = FakeSagaDatabase(), SagaMetrics(), Clock()
    r, reg = saga_runner(db, metrics, clock), metrics.registry
    r.handle_batch("sagas", [told("p1", "go")], {"events": 1})
    assert r.effect_done("p1:1:reserve", succeeded=True)
    clock.now = T0 + EXPIRY  # the expiry timer: compensate (refund the charge in flight)
    assert r.fire_due_timers().advanced == 1
    assert value(reg, "cardpay_saga_compensations_total", kind="two_steps") == 1
    assert r.effect_done("p1:2:undo:refund", succeeded=False, failure=FailureClass.HARD)
    assert value(reg, "cardpay_saga_stuck_total", kind="two_steps") == 1
    assert value(reg, "cardpay_saga_exceptions_opened_total", kind="two_steps",
                 reason="compensation_failed") == 1
    r.retry("two_steps", "p1")  # a person resumes it: compensating again, not a new one
    assert value(reg, "cardpay_saga_steps_total", kind="two_steps",
                 message="retry_requested") == 1
    assert value(reg, "cardpay_saga_compensations_total", kind="two_steps") == 1
    assert r.effect_done("p1:2:undo:refund", succeeded=True)
    assert r.effect_done("p1:1:undo:release", succeeded=True)
    assert value(reg, "cardpay_saga_finished_total", kind="two_steps", status="compensated") == 1


def test_a_unit_of_work_that_rolls_back_counts_nothing() -> None:
    db, metrics = FakeSagaDatabase(), SagaMetrics()
    commands = Commands()
    commands.fail_on = ("hold", "p1")
    r = saga_runner(db, metrics, commands=commands)
    with pytest.raises(RuntimeError):
        r.handle_batch("sagas", [told("p1", "go")], {"events": 1})
    assert value(metrics.registry, "cardpay_saga_steps_total", kind="two_steps",
                 message="event") == 0
    commands.refuse, commands.fail_on = ("hold", "p1"), None
    r.handle_batch("sagas", [told("p1", "go")], {"events": 1})
    assert value(metrics.registry, "cardpay_saga_exceptions_opened_total", kind="two_steps",
                 reason="command_refused") == 1


def test_a_timer_whose_saga_is_gone_is_counted_ignored() -> None:
    db, metrics, clock = FakeSagaDatabase(), SagaMetrics(), Clock()
    r = saga_runner(db, metrics, clock)
    r.handle_batch("sagas", [told("p1", "go")], {"events": 1})
    db.sagas.instances.clear()  # the instance vanished (deleted by hand); its timers did not
    clock.now = T0 + timedelta(seconds=11)
    r.fire_due_timers()
    assert value(metrics.registry, "cardpay_saga_timers_fired_total", kind="two_steps",
                 outcome="ignored") == 1


def test_the_workers_rare_event_counters_are_exported_at_zero_before_the_first_event() -> None:
    """A series that does not exist is "no data" to Prometheus (a blank panel, an alert on
    rate() that cannot be told from a renamed metric); `expect` makes them exist at 0."""
    from cardpay.bootstrap.sagas import SAGA_EFFECTS

    metrics = SagaMetrics()
    reg = metrics.registry
    assert reg.get_sample_value("cardpay_saga_retries_total",
                                {"kind": "card_payment", "effect": "submit_spend"}) is None
    metrics.expect(SAGA_EFFECTS)
    for kind, effects in SAGA_EFFECTS.items():
        for effect in effects:
            assert reg.get_sample_value("cardpay_saga_retries_total",
                                        {"kind": kind, "effect": effect}) == 0
        assert reg.get_sample_value("cardpay_saga_compensations_total", {"kind": kind}) == 0
        assert reg.get_sample_value("cardpay_saga_stuck_total", {"kind": kind}) == 0
        for status in ("completed", "compensated"):
            assert reg.get_sample_value("cardpay_saga_finished_total",
                                        {"kind": kind, "status": status}) == 0
        for outcome in ("advanced", "ignored"):
            assert reg.get_sample_value("cardpay_saga_timers_fired_total",
                                        {"kind": kind, "outcome": outcome}) == 0
    assert set(SAGA_EFFECTS) == {"card_payment", "settlement"}
    assert "send_reversal_advice" in SAGA_EFFECTS["card_payment"]
    # counting still adds to the same series
    metrics.timer_fired("settlement", advanced=True)
    assert value(reg, "cardpay_saga_timers_fired_total", kind="settlement",
                 outcome="advanced") == 1


# -- state gauges and readiness ------------------------------------------------------------
def test_state_gauges_follow_the_state_and_a_vanished_label_drops_to_zero() -> None:
    registry = CollectorRegistry()
    state = StateMetrics(registry)
    before = registry.get_sample_value("cardpay_ledger_balanced")
    assert before is not None and math.isnan(before)  # unknown: neither alerted nor fine
    state.update(SystemState(ledger_balanced=True, ledger_transfers={"authorization_hold": 12},
                             open_exceptions={"network": 2, "saga:card_payment": 1},
                             saga_timers_due=3, feed_lag={"payments": 7},
                             listener_cursor_age_s={"main": 4.5}), now=1000.0)
    state.update_breaks({"EUR": 2, "USD": 0})
    assert value(registry, "cardpay_ledger_balanced") == 1
    assert value(registry, "cardpay_ledger_transfers", code="authorization_hold") == 12
    assert value(registry, "cardpay_open_exceptions", source="saga:card_payment") == 1
    assert value(registry, "cardpay_saga_timers_due") == 3
    assert value(registry, "cardpay_feed_lag_events", consumer="payments") == 7
    assert value(registry, "cardpay_listener_cursor_age_seconds", listener="main") == 4.5
    assert value(registry, "cardpay_reconciliation_breaks", currency="EUR") == 2
    assert value(registry, "cardpay_state_refreshed_timestamp_seconds") == 1000.0
    state.update(SystemState(ledger_balanced=False, ledger_transfers={"authorization_hold": 13},
                             open_exceptions={"network": 1}), now=1015.0)
    state.update_breaks({"USD": 0})
    assert value(registry, "cardpay_ledger_balanced") == 0
    assert registry.get_sample_value("cardpay_open_exceptions",
                                     {"source": "saga:card_payment"}) == 0
    assert registry.get_sample_value("cardpay_reconciliation_breaks", {"currency": "EUR"}) == 0


def test_each_currency_has_a_breaks_series_from_the_start_unknown_until_reconciled() -> None:
    """A reconciliation names a currency only once a settled day holds something in it: the
    gauge must not wait for that to have a series (NaN: unknown, neither alerted nor fine)."""
    registry = CollectorRegistry()
    state = StateMetrics(registry)
    for code in ("EUR", "GBP", "USD"):
        before = registry.get_sample_value("cardpay_reconciliation_breaks", {"currency": code})
        assert before is not None and math.isnan(before), code
    state.update_breaks({"EUR": 3})  # a reconciliation that found nothing in GBP and USD
    assert value(registry, "cardpay_reconciliation_breaks", currency="EUR") == 3
    assert registry.get_sample_value("cardpay_reconciliation_breaks", {"currency": "GBP"}) == 0
    assert registry.get_sample_value("cardpay_reconciliation_breaks", {"currency": "USD"}) == 0
    only = CollectorRegistry()
    StateMetrics(only, currencies=["EUR"])
    assert only.get_sample_value("cardpay_reconciliation_breaks", {"currency": "USD"}) is None


def test_readiness_names_each_consumer_beyond_the_bound() -> None:
    assert feed_lag_reasons({"payments": 10, "sagas": 0}, max_lag=10) == []
    assert feed_lag_reasons({"payments": 11, "sagas": 500}, max_lag=10) == [
        "consumer payments is 11 events behind the event log (bound 10)",
        "consumer sagas is 500 events behind the event log (bound 10)"]


@pytest.mark.parametrize(("now", "first"), [
    (datetime(2026, 12, 3, 2, 59, tzinfo=UTC), datetime(2026, 12, 1).date()),
    (datetime(2026, 12, 3, 3, 0, tzinfo=UTC), datetime(2026, 12, 2).date()),
])
def test_breaks_are_counted_on_days_whose_report_is_due(now: datetime, first: Any) -> None:
    days = settled_days(now, time(2, 0))
    assert days == [first, first - timedelta(days=1)]

"""The saga worker on real PostgreSQL: the event log feed, durable timers, the effects outbox and
the network's advice endpoint over HTTP (the simulator's recorder), end to end.

An approved payment whose spend never shows up on chain is reversed when its deadline passes,
and the network is told (a reversal advice, once). The deadline is a row in the database: it
fires after a restart of the worker, on a fresh engine, when the clock has moved past it. An
advice the network cannot take is retried with backoff, then lands in the exceptions queue, and
a person's retry completes it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import Engine, select, text

from cardpay.bootstrap.sagas import SagaWorker, build_worker
from cardpay.devstack.network_advices import AdviceRecorder
from cardpay.handlers.payments import PaymentService
from cardpay.outbound.network import HttpNetworkAdvices
from cardpay.postgres.engine import make_engine
from cardpay.postgres.schema import quarantine, saga_effects
from cardpay.postgres.uow import unit_of_work_factory
from cardpay.settings import Settings
from domain import commands as c
from domain.money import EURE, Money
from domain.payment import Payment, Status
from sagas.card_payment import REVERSAL_ADVICE, SUBMIT_SPEND, CardPaymentSaga
from sagas.engine.model import Status as SagaStatus

pytestmark = pytest.mark.integration
SECRET = "whsec_" + "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
SAFE = "0x" + "5a" * 20
T0 = datetime(2026, 12, 1, 12, tzinfo=UTC)
DEADLINE = CardPaymentSaga().spend_timeout


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def recorder() -> Iterator[AdviceRecorder]:
    with AdviceRecorder(SECRET) as r:
        yield r


def settings() -> Settings:
    return Settings(webhook_secrets=(SECRET,))


def authorize(engine: Engine, payment_id: str) -> None:
    PaymentService(unit_of_work_factory(engine, "t")).submit(c.AuthorizePayment(
        command_id=f"{payment_id}:auth", payment_id=payment_id, at=T0, account=SAFE,
        amount=Money(25 * 10**18, EURE), merchant="Shop", mcc="5411",
        expires_at=T0 + timedelta(days=7)))


def worker(engine: Engine, clock: Clock, recorder: AdviceRecorder) -> SagaWorker:
    return build_worker(settings(), engine, clock=clock,
                        advices=HttpNetworkAdvices(recorder.url, SECRET))


def until_idle(w: SagaWorker, each_turn: Callable[[], None] = lambda: None) -> None:
    async def run() -> None:
        await w.start()
        try:
            idle = 0
            while idle < 2:
                idle = idle + 1 if (await w.run_once(0.05)).total == 0 else 0
                each_turn()
        finally:
            await w.stop()

    asyncio.run(run())


def payment(engine: Engine, payment_id: str) -> Payment:
    with unit_of_work_factory(engine, "t")() as uow:
        return Payment.rehydrate(payment_id, uow.events.load(payment_id))


def saga_status(engine: Engine, payment_id: str) -> tuple[str, str]:
    with engine.connect() as conn:
        row = conn.execute(text("SELECT status, stage FROM saga_instances WHERE saga_id = :s"),
                           {"s": payment_id}).one()
    return row.status, row.stage


def effects(engine: Engine) -> dict[str, str]:
    with engine.connect() as conn:
        return {r.name: r.status for r in conn.execute(
            select(saga_effects.c.name, saga_effects.c.status))}


def test_a_spend_never_seen_is_reversed_at_its_deadline_and_the_network_advised_once(
        pg_engine: Engine, recorder: AdviceRecorder) -> None:
    clock = Clock()
    authorize(pg_engine, "p1")
    w = worker(pg_engine, clock, recorder)
    until_idle(w)
    # the spend was asked for (nobody performs it here) and the deadline set
    assert effects(pg_engine) == {SUBMIT_SPEND: "pending"}
    assert saga_status(pg_engine, "p1") == ("running", "spending")
    assert payment(pg_engine, "p1").status is Status.AUTHORIZED

    clock.now = T0 + DEADLINE - timedelta(seconds=1)
    until_idle(w)
    assert recorder.advices == {} and payment(pg_engine, "p1").status is Status.AUTHORIZED

    clock.now = T0 + DEADLINE + timedelta(seconds=1)
    until_idle(w)
    assert payment(pg_engine, "p1").status is Status.REVERSED
    assert recorder.reversed_authorizations() == ["p1"]
    # the compensation resumes the saga: a spend landing late would still be refunded
    assert saga_status(pg_engine, "p1") == (SagaStatus.RUNNING, "reversed")
    # the spend request was withdrawn: no relayer may send it after its compensation
    assert effects(pg_engine) == {SUBMIT_SPEND: "failed", REVERSAL_ADVICE: "succeeded"}

    until_idle(w)  # nothing more: one advice, one delivery
    assert recorder.deliveries == 1


def test_a_timer_set_before_a_restart_fires_after_it(pg_url: str,
                                                      recorder: AdviceRecorder) -> None:
    clock = Clock()
    first = make_engine(pg_url)
    try:
        authorize(first, "p1")
        until_idle(worker(first, clock, recorder))
        assert saga_status(first, "p1") == ("running", "spending")
    finally:
        first.dispose()  # the worker and every connection it had are gone

    clock.now = T0 + DEADLINE + timedelta(minutes=5)
    second = make_engine(pg_url)
    try:
        until_idle(worker(second, clock, recorder))
        assert payment(second, "p1").status is Status.REVERSED
        assert recorder.reversed_authorizations() == ["p1"]
    finally:
        second.dispose()


@pytest.mark.parametrize("via", ["cli_function", "api"])
def test_an_advice_the_network_cannot_take_is_retried_then_an_exception_a_retry_completes(
        pg_engine: Engine, recorder: AdviceRecorder, via: str) -> None:
    from cardpay.bootstrap.sagas import build_runner
    from cardpay.handlers.exceptions import retry

    clock = Clock()
    authorize(pg_engine, "p1")
    w = worker(pg_engine, clock, recorder)
    until_idle(w)
    recorder.failing = 503
    clock.now = T0 + DEADLINE + timedelta(seconds=1)
    policy = CardPaymentSaga().policy
    for _ in range(policy.max_attempts + 1):  # each retry's timer is due by then
        until_idle(w)
        clock.now += policy.cap
    assert saga_status(pg_engine, "p1")[0] == SagaStatus.STUCK
    assert recorder.advices == {}
    with pg_engine.connect() as conn:
        opened = conn.execute(select(quarantine.c.id, quarantine.c.reason)
                              .where(quarantine.c.source == "saga:card_payment")).all()
    assert [r.reason for r in opened] == ["compensation_failed"]

    # the network is back; a person retries the exception (`cardpay exceptions retry`, or
    # the ops API: POST /v1/exceptions/{id}/retry with ops:write)
    recorder.failing = None
    if via == "api":
        from prometheus_client import CollectorRegistry
        from starlette.testclient import TestClient

        from cardpay.bootstrap.api import build_app
        from cardpay.postgres.repositories.api_tokens import PostgresTokenStore

        store = PostgresTokenStore(pg_engine)
        reader = store.create(["ops:read"]).token
        writer = store.create(["ops:write"]).token
        with TestClient(build_app(settings(), pg_engine, registry=CollectorRegistry())) as api:
            path = f"/v1/exceptions/{opened[0].id}/retry"
            assert api.post(path, headers={"Authorization": f"Bearer {reader}"}
                            ).status_code == 403
            answer = api.post(path, headers={"Authorization": f"Bearer {writer}"})
            assert answer.status_code == 200 and answer.json()["outcome"] == "retried", \
                answer.text
            missing = api.post("/v1/exceptions/999999/retry",
                               headers={"Authorization": f"Bearer {writer}"})
            assert missing.status_code == 404
    else:
        outcome = retry(unit_of_work_factory(pg_engine, "t"),
                        build_runner(settings(), pg_engine, clock=clock), opened[0].id)
        assert outcome.outcome == "retried", outcome
    until_idle(w)
    assert recorder.reversed_authorizations() == ["p1"]
    assert saga_status(pg_engine, "p1") == (SagaStatus.RUNNING, "reversed")
    assert payment(pg_engine, "p1").status is Status.REVERSED


def test_payments_seen_only_on_chain_leave_the_sagas_idle(pg_engine: Engine,
                                                           recorder: AdviceRecorder) -> None:
    """Observer mode (real Gnosis data, no card network): the listener's spends and refunds
    are the payments' only events; no saga starts, nothing is asked of anyone."""
    from domain.events import ChainEvidence
    from listener.translate import payment_id_for_spend

    service = PaymentService(unit_of_work_factory(pg_engine, "t"))
    for n in range(5):
        tx = "0x" + f"{n + 1:02x}" * 32
        service.submit(c.ConfirmSpend(
            command_id=f"chain:100:{n}", payment_id=payment_id_for_spend(100, tx), at=T0,
            account=SAFE, amount=Money((n + 1) * 10**18, EURE),
            evidence=ChainEvidence(chain_id=100, block_number=10 + n,
                                   block_hash="0x" + f"{n + 1:02x}" * 32, tx_hash=tx,
                                   log_index=0)))
    clock = Clock()
    w = worker(pg_engine, clock, recorder)
    until_idle(w)
    clock.now = T0 + timedelta(days=40)
    until_idle(w)
    assert w.totals.events == 5  # every event was read (and its position stored)
    with pg_engine.connect() as conn:
        counts = [conn.execute(text(f"SELECT count(*) FROM {t}")).scalar()
                  for t in ("saga_instances", "saga_timers", "saga_effects")]
        stored = conn.execute(text("SELECT source, position FROM consumer_positions "
                                   "WHERE consumer = 'sagas'")).all()
    assert counts == [0, 0, 0] and recorder.deliveries == 0
    assert [tuple(r) for r in stored] == [("events", 6)]  # the next position to read


def test_the_worker_sets_its_lag_gauge_each_turn_from_its_feed(
        pg_engine: Engine, recorder: AdviceRecorder) -> None:
    """`cardpay_saga_lag_messages` is how far the worker's feed is behind, measured each turn:
    events past its position while it works through a backlog, 0 once it has caught up."""
    from prometheus_client import generate_latest

    from cardpay.metrics.sagas import SagaMetrics

    for n in range(3):
        authorize(pg_engine, f"lag{n}")
    with pg_engine.connect() as conn:
        total = conn.execute(text("SELECT count(*) FROM events")).scalar_one()
    metrics = SagaMetrics()
    w = build_worker(settings(), pg_engine, clock=Clock(), batch_size=1, metrics=metrics,
                     advices=HttpNetworkAdvices(recorder.url, SECRET))
    assert metrics.lag is not None
    gauge = metrics.lag
    seen: list[float] = []
    until_idle(w, lambda: seen.append(gauge._value.get()))
    assert total >= 3 and seen[0] == total - 1  # one event taken, the rest behind
    assert seen[-1] == 0 and sorted(seen, reverse=True) == seen
    assert "cardpay_saga_lag_messages 0.0" in generate_latest(metrics.registry).decode()

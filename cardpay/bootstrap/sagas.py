"""Composition root of the saga side: the `SagaRunner` on the database with the card-payment and
settlement sagas and the commands their actions issue, the settlement desk that answers the
settlement saga's effects, and `cardpay sagas run`'s worker around them.

The worker's turn (`SagaWorker.run_once`), under `cardpay.runtime.supervise` like the projector:
1. a batch of the event feed goes to the sagas it concerns, stored with the feed positions in
   one transaction (records that are not events are quarantined in it);
2. the timers due by the clock fire;
3. each effect worker performs the effect requests it can (the settlement desk's report fetches
   and payouts, the network's reversal advice; the relayer's spends and refunds when they are
   configured).
A failed turn stops the feed; the next turn starts it again from the stored positions, so no
batch is skipped, and a batch decided twice changes nothing the second time (the positions were
stored with its effects, or nothing was).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Engine

from cardpay.bootstrap import Lag, feed_lag
from cardpay.bootstrap import feed as event_feed
from cardpay.handlers.effects import EffectWorker, Perform
from cardpay.handlers.network_advices import NetworkAdvices, reversal_advice
from cardpay.handlers.payments import execute, submit_own_refund
from cardpay.handlers.ports import QuarantineItem
from cardpay.handlers.sagas import SagaObserver, SagaRunner, SagaUnitOfWork
from cardpay.handlers.settlement import SettlementDesk, settlement_command
from cardpay.metrics.sagas import SagaMetrics
from cardpay.postgres.uow import PostgresSagaUnitOfWork, saga_uow_factory
from cardpay.runtime.supervise import DEFAULT_BACKOFF, Backoff, Outcome, supervise_feed
from cardpay.settings import Settings
from domain.commands import Command, RecordRefundSubmission
from domain.errors import DomainError
from domain.events import DomainEvent
from domain.serialization import from_recorded
from listener.presets import ChainConfig
from projector.errors import FeedChanged
from projector.feed import Feed
from sagas import card_payment, settlement
from sagas.card_payment import REVERSAL_ADVICE, CardPaymentSaga, OverClearing
from sagas.engine.react import Definition
from sagas.settlement import SettlementSaga

SAGAS = "sagas"
"""The saga workers' consumer name (their feed positions, and their lock: one batch at a time)."""
SAGA_EFFECTS: dict[str, tuple[str, ...]] = {
    card_payment.KIND: (card_payment.SUBMIT_SPEND, card_payment.SEND_REFUND, REVERSAL_ADVICE),
    settlement.KIND: settlement.EFFECTS,
}
"""Each saga kind the worker runs (`build_runner`) and the effects it may request: the label
values its metrics export as 0 from the start (`SagaMetrics.expect`)."""


def _now() -> datetime:
    return datetime.now(UTC)


def payment_command(uow: SagaUnitOfWork, command: Any) -> None:
    """A saga's domain command, decided on its payment in the saga's unit of work (the
    settlement saga's own commands first: its batch rows and tolerant `SettlePayment`)."""
    if not isinstance(uow, PostgresSagaUnitOfWork):
        raise TypeError(f"cannot run {type(command).__name__} on {type(uow).__name__}")
    if settlement_command(uow, command):
        return
    if not isinstance(command, Command):
        raise TypeError(f"cannot run {type(command).__name__} on {type(uow).__name__}")
    if isinstance(command, RecordRefundSubmission):
        # the listener matches the refund's transfer by this expectation
        submit_own_refund(uow, command)
    else:
        execute(uow, command)


def route(event: DomainEvent) -> list[tuple[str, str]]:
    """Every saga an event concerns: its payment's, and its settlement day's."""
    return [*card_payment.route(event), *settlement.route(event)]


def build_runner(settings: Settings, engine: Engine, *,
                 clock: Callable[[], datetime] = _now,
                 observer: SagaObserver | None = None) -> SagaRunner:
    sagas: list[Definition] = [CardPaymentSaga(spend_timeout=settings.spend_timeout,
                                               over_clearing=OverClearing(settings.over_clearing)),
                               SettlementSaga(cutoff=settings.settlement_cutoff)]
    return SagaRunner(saga_uow_factory(engine, settings.outbox_topic), sagas, route,
                      payment_command, clock, observer=observer)


def build_settlement_desk(settings: Settings, engine: Engine, runner: SagaRunner, *,
                          clock: Callable[[], datetime] = _now) -> SettlementDesk:
    return SettlementDesk(saga_uow_factory(engine, settings.outbox_topic), runner, clock)


@dataclass
class Turn:
    """What one turn of the worker did."""

    events: int = 0
    timers: int = 0
    effects: int = 0

    @property
    def total(self) -> int:
        return self.events + self.timers + self.effects


@dataclass
class SagaWorker:
    name: str
    feed: Feed
    runner: SagaRunner
    uow_factory: Callable[[], SagaUnitOfWork]
    pollers: Sequence[Callable[[], int]] = ()
    """The effect workers' polls (settlement desk and advices, relayer, refund sender): each
    performs what it can and says how much it did (0: nothing to do)."""
    batch_size: int = 500
    metrics: SagaMetrics | None = None
    """Its `errors` count the failed turns (`run_saga_worker`), its `lag` is set each turn."""
    lag: Lag | None = None
    """How far the feed is behind (`feed_lag`), for `metrics.lag`."""
    totals: Turn = field(default_factory=Turn)

    async def start(self) -> None:
        with self.uow_factory() as uow:
            positions = uow.load_positions(self.name)
        await self.feed.start(positions)

    async def stop(self) -> None:
        await self.feed.stop()

    async def run_once(self, timeout: float = 0.5) -> Turn:
        turn = Turn()
        batch = await self.feed.poll(self.batch_size, timeout)
        rejected = self.feed.take_rejected()
        if batch or rejected:
            positions = self.feed.positions()
            events: list[DomainEvent] = []
            bad = [QuarantineItem(f"saga-worker:{self.name}", f"{r.source}@{r.offset}",
                                  r.reason, {"raw": r.raw.decode("utf-8", errors="replace")})
                   for r in rejected]
            for message in batch:
                try:
                    events.append(from_recorded(message.event))
                except (DomainError, KeyError, TypeError, ValueError) as exc:
                    bad.append(QuarantineItem(
                        f"saga-worker:{self.name}", f"{message.source}@{message.offset}",
                        f"undecodable event: {exc}",
                        {"stream_id": message.event.stream_id, "type": message.event.type,
                         "version": message.event.version, "data": message.event.data}))
            await asyncio.to_thread(self.runner.handle_batch, self.name, events, positions, bad)
            turn.events = len(batch) + len(rejected)
        gauge = None if self.metrics is None else self.metrics.lag
        if gauge is not None and self.lag is not None:
            behind = await asyncio.to_thread(self.lag)
            if behind is not None:
                gauge.set(behind)
        fired = await asyncio.to_thread(self.runner.fire_due_timers)
        turn.timers = fired.advanced + fired.ignored
        for poll in self.pollers:
            turn.effects += await asyncio.to_thread(poll)
        self.totals.events += turn.events
        self.totals.timers += turn.timers
        self.totals.effects += turn.effects
        return turn


def build_worker(settings: Settings, engine: Engine, *,
                 clock: Callable[[], datetime] = _now,
                 advices: NetworkAdvices | None = None,
                 performers: dict[str, Perform] | None = None,
                 chain: ChainConfig | None = None,
                 batch_size: int = 500,
                 metrics: SagaMetrics | None = None) -> SagaWorker:
    """The saga worker of `cardpay sagas run`: the feed, the runner, and the effect workers of
    the effects that have a party: the settlement desk (always), the network's advices
    (`advices`, or CARDPAY_NETWORK_ADVICE_URL), `performers` for others, and on `chain` the
    spend relayer (CARDPAY_RELAYER_KEY, or CARDPAY_TX_SIGNER=impersonate) and the refund
    sender (CARDPAY_SETTLEMENT_KEY, or impersonate). Effects
    with no party stay pending (`missing_parties` names them). `metrics` are told every
    committed step (`cardpay sagas run --metrics-port`)."""
    runner = build_runner(settings, engine, clock=clock, observer=metrics)
    uows = saga_uow_factory(engine, settings.outbox_topic)
    desk = build_settlement_desk(settings, engine, runner, clock=clock)
    todo: dict[str, Perform] = {name: desk.perform for name in settlement.EFFECTS}
    todo.update(performers or {})
    if advices is None and settings.network_advice_url and settings.webhook_secrets:
        from cardpay.outbound.network import HttpNetworkAdvices

        advices = HttpNetworkAdvices(settings.network_advice_url, settings.webhook_secrets[0])
    if advices is not None:
        todo[REVERSAL_ADVICE] = reversal_advice(advices)
    effects = EffectWorker(uows, runner, todo)
    pollers: list[Callable[[], int]] = [lambda: effects.run_once().total]
    if chain is not None:
        from cardpay.bootstrap.relayer import build_refund_sender, build_spend_relayer

        if settings.sends_spends:
            pollers.append(build_spend_relayer(settings, engine, chain, runner,
                                               clock=clock).run_once)
        if settings.sends_refunds:
            pollers.append(build_refund_sender(settings, engine, chain, runner,
                                               clock=clock).run_once)
    feed = event_feed(settings, engine, SAGAS)
    return SagaWorker(SAGAS, feed, runner, uows, pollers, batch_size=batch_size,
                      metrics=metrics, lag=feed_lag(engine, feed))


def missing_parties(settings: Settings, chain: ChainConfig | None) -> list[str]:
    """What `cardpay sagas run` cannot do with these settings (one line each, for its start)."""
    missing = []
    if chain is None or not settings.sends_spends:
        missing.append(f"no spend relayer (CARDPAY_RELAYER_KEY and a chain): approved spends "
                       f"wait, and each is undone after CARDPAY_SPEND_TIMEOUT "
                       f"({settings.spend_timeout})")
    if chain is None or not settings.sends_refunds:
        missing.append("no refund sender (CARDPAY_SETTLEMENT_KEY and a chain): refunds wait "
                       "in the effects outbox")
    if not (settings.network_advice_url and settings.webhook_secrets):
        missing.append("no network advice endpoint (CARDPAY_NETWORK_ADVICE_URL): reversal "
                       "advices wait in the effects outbox")
    return missing


async def run_saga_worker(
    worker: SagaWorker,
    stop: asyncio.Event,
    *,
    until_idle: bool = False,
    give_up_after: float | None = None,
    backoff: Backoff = DEFAULT_BACKOFF,
    poll_timeout: float = 0.5,
) -> Outcome:
    """Turn after turn until `stop` (or, `until_idle`, until two turns in a row did nothing).
    Raises `FeedChanged` when the stored positions cannot be used, `GaveUp` after
    `give_up_after` seconds of failures."""

    async def turn() -> int:
        return (await worker.run_once(poll_timeout)).total

    return await supervise_feed(worker.start, turn, worker.stop, component="saga worker",
                                stop=stop, backoff=backoff, fatal=(FeedChanged,),
                                until_idle=until_idle, idle_steps=2, give_up_after=give_up_after,
                                errors=worker.metrics.errors if worker.metrics else None)

"""Composition root of the saga side: the `SagaRunner` on the database, with the card-payment
and settlement sagas and the commands their actions issue, and the settlement desk that answers
the settlement saga's effects."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Engine

from cardpay.handlers.payments import execute
from cardpay.handlers.sagas import SagaRunner, SagaUnitOfWork
from cardpay.handlers.settlement import SettlementDesk, settlement_command
from cardpay.postgres.uow import PostgresSagaUnitOfWork, saga_uow_factory
from cardpay.settings import Settings
from domain.commands import Command
from domain.events import DomainEvent
from sagas import card_payment, settlement
from sagas.card_payment import CardPaymentSaga
from sagas.settlement import SettlementSaga


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
    execute(uow, command)


def route(event: DomainEvent) -> list[tuple[str, str]]:
    """Every saga an event concerns: its payment's, and its settlement day's."""
    return [*card_payment.route(event), *settlement.route(event)]


def build_runner(settings: Settings, engine: Engine, *,
                 clock: Callable[[], datetime] = _now) -> SagaRunner:
    return SagaRunner(saga_uow_factory(engine, settings.outbox_topic),
                      [CardPaymentSaga(), SettlementSaga(cutoff=settings.settlement_cutoff)],
                      route, payment_command, clock)


def build_settlement_desk(settings: Settings, engine: Engine, runner: SagaRunner, *,
                          clock: Callable[[], datetime] = _now) -> SettlementDesk:
    return SettlementDesk(saga_uow_factory(engine, settings.outbox_topic), runner, clock)

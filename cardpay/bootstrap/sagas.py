"""Composition root of the saga side: the `SagaRunner` on the database, with the card-payment
saga and the payment commands its actions issue."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Engine

from cardpay.handlers.payments import execute, submit_own_refund
from cardpay.handlers.sagas import SagaRunner, SagaUnitOfWork
from cardpay.postgres.uow import PostgresSagaUnitOfWork, saga_uow_factory
from cardpay.settings import Settings
from domain.commands import Command, RecordRefundSubmission
from sagas.card_payment import CardPaymentSaga, route


def _now() -> datetime:
    return datetime.now(UTC)


def payment_command(uow: SagaUnitOfWork, command: Any) -> None:
    """A saga's domain command, decided on its payment in the saga's unit of work."""
    if not isinstance(uow, PostgresSagaUnitOfWork) or not isinstance(command, Command):
        raise TypeError(f"cannot run {type(command).__name__} on {type(uow).__name__}")
    if isinstance(command, RecordRefundSubmission):
        # the listener matches the refund's transfer by this expectation
        submit_own_refund(uow, command)
    else:
        execute(uow, command)


def build_runner(settings: Settings, engine: Engine, *,
                 clock: Callable[[], datetime] = _now) -> SagaRunner:
    return SagaRunner(saga_uow_factory(engine, settings.outbox_topic), [CardPaymentSaga()],
                      route, payment_command, clock)

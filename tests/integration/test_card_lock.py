"""Two authorizations of one card on real PostgreSQL serialize on the card's row lock.

Each thread does what the authorization handler will do: lock the card, decide from what it
read, record its effect, commit. With the lock, the second decision sees the first one's effect;
without it (a plain read) both would see the same state and both approve.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime

import pytest
from sqlalchemy import Engine

from cardpay.handlers.ports import Card, ChainReading
from cardpay.postgres.uow import PostgresUnitOfWork
from domain.authorization import AuthorizationRequest, Decision, decide
from domain.money import Currency, Money

pytestmark = pytest.mark.integration

EURE = Currency("EURe", 18)
NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
SAFE, TOKEN = "0x" + "5a" * 20, "0x" + "e0" * 20


def _register(engine: Engine, velocity_limit: int) -> None:
    with PostgresUnitOfWork(engine) as uow:
        uow.cards.add(Card("c1", SAFE, TOKEN, EURE, velocity_limit=velocity_limit),
                      ChainReading(1, "0x" + "11" * 32, 1_000))
        uow.cards.add(Card("c2", "0x" + "5b" * 20, TOKEN, EURE), ChainReading(1, "0x" + "11" * 32,
                                                                              1_000))
        uow.commit()


def _authorize(engine: Engine, card_id: str, hold: float, out: list[Decision],
               locked: threading.Event | None = None) -> Callable[[], None]:
    def run() -> None:
        with PostgresUnitOfWork(engine) as uow:
            card = uow.cards.lock_for_authorization(card_id, NOW)
            if locked is not None:
                locked.set()
            time.sleep(hold)  # decide slowly while holding the lock
            request = AuthorizationRequest(card_id, Money(100, EURE), 5411)
            decision = decide(request, None if card is None else card.snapshot(Money(0, EURE)),
                              NOW)
            if decision.approved:
                uow.cards.record_authorization(card_id, NOW)
            uow.commit()
            out.append(decision)
    return run


def test_two_authorizations_of_one_card_serialize(pg_engine: Engine) -> None:
    _register(pg_engine, velocity_limit=1)
    decisions: list[Decision] = []
    first_locked = threading.Event()
    first = threading.Thread(target=_authorize(pg_engine, "c1", 0.5, decisions, first_locked))
    second = threading.Thread(target=_authorize(pg_engine, "c1", 0.0, decisions))
    first.start()
    assert first_locked.wait(10)
    started = time.monotonic()
    second.start()
    second.join(20)
    first.join(20)
    waited = time.monotonic() - started
    # the second waited for the first's commit, then saw its authorization: one approval only
    assert [d.approved for d in decisions] == [True, False]
    assert decisions[1].reason is not None and decisions[1].reason.value == "velocity"
    assert waited >= 0.4


def test_another_card_is_not_blocked(pg_engine: Engine) -> None:
    _register(pg_engine, velocity_limit=1)
    decisions: list[Decision] = []
    first_locked = threading.Event()
    first = threading.Thread(target=_authorize(pg_engine, "c1", 2.0, decisions, first_locked))
    first.start()
    assert first_locked.wait(10)
    started = time.monotonic()
    _authorize(pg_engine, "c2", 0.0, decisions)()
    assert time.monotonic() - started < 1.5
    first.join(20)
    assert [d.approved for d in decisions] == [True, True]

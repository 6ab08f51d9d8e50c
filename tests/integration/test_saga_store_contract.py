"""The sagas' storage contract (`SagaUnitOfWork`: instances, durable timers, the effects
outbox, positions, exceptions), run against the in-memory fake and PostgreSQL: exact round
trips, optimistic concurrency, everything committed together or not at all, and the SKIP LOCKED
sharing of timers and effects between workers (on PostgreSQL with real connections and
threads)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import Engine

from cardpay.errors import ConcurrencyConflict
from cardpay.handlers.ports import QuarantineItem
from cardpay.handlers.sagas import DueTimer, EffectRequest
from cardpay.postgres.uow import saga_uow_factory
from sagas.engine.model import Effect, SagaInstance, Status, Waiting
from tests.fakes.sagas import FakeSagaDatabase

T0 = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


class PostgresDatabase:
    def __init__(self, engine: Engine) -> None:
        self.uow = saga_uow_factory(engine)


@pytest.fixture(params=[pytest.param("memory", marks=pytest.mark.unit),
                        pytest.param("postgres", marks=pytest.mark.integration)])
def db(request: pytest.FixtureRequest) -> Any:
    return FakeSagaDatabase() if request.param == "memory" else \
        PostgresDatabase(request.getfixturevalue("pg_engine"))


def instance(saga_id: str = "p1", kind: str = "card_payment", version: int = 1,
             **changes: Any) -> SagaInstance:
    return SagaInstance(saga_id, kind, version, **changes)


def busy() -> SagaInstance:
    """Every field away from its default."""
    return instance(
        "p9", version=4, status=Status.STUCK, stage="refunding",
        data={"amount": 12_345, "currency": "EURe", "refs": ["a", "b"], "nested": {"k": None}},
        compensations=(Effect("p9:1:undo:reserve", "release", {"hold": "h1"}),
                       Effect("p9:2:undo:charge", "refund", {"amount": 10})),
        waiting=Waiting(Effect("p9:3:refund", "refund", {"amount": 10}), attempt=3,
                        compensating=True, timeout=timedelta(seconds=90.5), retry_set=True),
        steps=3, problem="refund failed (hard): reverted")


def saved(db: Any, *instances: SagaInstance) -> None:
    with db.uow() as uow:
        for i in instances:
            uow.sagas.save(i, 0)  # new ones
        uow.commit()


def timer(name: str, minutes: int, saga_id: str = "p1") -> DueTimer:
    return DueTimer("card_payment", saga_id, name, T0 + timedelta(minutes=minutes))


def effect(request_id: str = "p1:1:spend", attempt: int = 1, name: str = "spend",
           **payload: Any) -> EffectRequest:
    return EffectRequest(request_id, "card_payment", "p1", name, payload or {"amount": 5},
                         attempt)


# -- instances --------------------------------------------------------------------------------
def test_an_instance_round_trips_exactly_with_every_field(db: Any) -> None:
    plain = instance("p1")
    saved(db, busy(), plain)
    with db.uow() as uow:
        assert uow.sagas.load("card_payment", ["p9", "p1", "never"]) == {
            "p9": busy(), "p1": plain}
        assert uow.sagas.load("other_kind", ["p9"]) == {}
        assert uow.sagas.load("card_payment", []) == {}


def test_a_save_over_a_moved_version_is_a_conflict_and_the_stored_one_stays(db: Any) -> None:
    saved(db, instance(stage="one"))
    with db.uow() as uow, pytest.raises(ConcurrencyConflict):
        uow.sagas.save(instance(stage="again"), 0)  # "new", but it exists
    with db.uow() as uow, pytest.raises(ConcurrencyConflict):
        uow.sagas.save(instance(version=3, stage="skipped"), 2)
    with db.uow() as uow:
        uow.sagas.save(instance(version=2, stage="two"), 1)
        uow.commit()
    with db.uow() as uow:
        assert uow.sagas.load("card_payment", ["p1"])["p1"].stage == "two"


def test_a_conflict_is_seen_after_timers_and_effects_asked_in_the_same_unit_of_work(
        db: Any) -> None:
    """(On PostgreSQL those are sent in one round trip with the save.)"""
    saved(db, instance())
    with db.uow() as uow:
        uow.saga_timers.set(timer("expiry", 1))
        uow.effects.request(effect())
        uow.saga_timers.cancel("card_payment", "p1", "expiry")
        with pytest.raises(ConcurrencyConflict):
            uow.sagas.save(instance(version=2), 5)
    with db.uow() as uow:
        uow.saga_timers.set(timer("expiry", 1))
        uow.effects.request(effect())
        uow.sagas.save(instance(version=2, stage="two"), 1)
        uow.commit()
    with db.uow() as uow:
        assert uow.sagas.load("card_payment", ["p1"])["p1"].stage == "two"
        assert uow.saga_timers.take_due(T0 + timedelta(hours=1), 10) == [timer("expiry", 1)]
        assert uow.effects.claim(["spend"], 10) == [effect()]


def test_find_filters_by_status_and_kind_oldest_change_first(db: Any) -> None:
    saved(db, instance("a", status=Status.STUCK))
    saved(db, instance("b", status=Status.STUCK), instance("c"))
    saved(db, instance("d", kind="settlement", status=Status.STUCK))
    with db.uow() as uow:
        assert [i.saga_id for i in uow.sagas.find(Status.STUCK)] == ["a", "b", "d"]
        assert [i.saga_id for i in uow.sagas.find(Status.STUCK, "card_payment")] == ["a", "b"]
        assert [i.saga_id for i in uow.sagas.find(limit=2)] == ["a", "b"]
        uow.sagas.save(instance("a", version=2, status=Status.STUCK), 1)  # changed last now
        uow.commit()
    with db.uow() as uow:
        assert [i.saga_id for i in uow.sagas.find(Status.STUCK)] == ["b", "d", "a"]
        assert uow.sagas.find(Status.COMPENSATED) == []


def test_two_writers_of_one_instance_from_the_same_version_one_commits(db: Any) -> None:
    saved(db, instance(stage="start"))
    a_saved, b_saving = threading.Event(), threading.Event()
    results: dict[str, str] = {}

    def writer(name: str, first: bool) -> None:
        try:
            with db.uow() as uow:
                uow.sagas.load("card_payment", ["p1"])
                if not first:
                    a_saved.wait(5)
                    b_saving.set()
                uow.sagas.save(instance(version=2, stage=name), 1)  # waits for A on Postgres
                if first:
                    a_saved.set()
                    b_saving.wait(5)
                    time.sleep(0.2)  # B is blocked on A's row lock (Postgres) by now
                uow.commit()
            results[name] = "committed"
        except ConcurrencyConflict:
            results[name] = "conflict"

    run_threads(lambda: writer("A", True), lambda: writer("B", False))
    assert results == {"A": "committed", "B": "conflict"}
    with db.uow() as uow:
        assert uow.sagas.load("card_payment", ["p1"])["p1"].stage == "A"


def test_leaving_without_a_commit_keeps_nothing(db: Any) -> None:
    with db.uow() as uow:
        uow.sagas.save(instance(), 0)
        uow.saga_timers.set(timer("expiry", 1))
        uow.effects.request(effect())
        uow.save_positions("sagas", {"events": 7})
        uow.add_exception(QuarantineItem("saga:card_payment", "p1:1", "stuck", {"d": 1}))
    with db.uow() as uow:
        assert uow.sagas.load("card_payment", ["p1"]) == {}
        assert uow.saga_timers.take_due(T0 + timedelta(days=1), 10) == []
        assert uow.effects.claim(["spend"], 10) == []
        assert uow.load_positions("sagas") == {}
        assert uow.quarantine.list("saga:") == []


def test_positions_and_exceptions_commit_with_the_instances(db: Any) -> None:
    with db.uow() as uow:
        uow.sagas.save(instance(), 0)
        uow.save_positions("sagas", {"events": 7, "chain": 3})
        uow.add_exception(QuarantineItem("saga:card_payment", "p1:1", "stuck", {"d": 1}))
        uow.commit()
    with db.uow() as uow:
        assert uow.load_positions("sagas") == {"events": 7, "chain": 3}
        uow.save_positions("sagas", {"events": 5, "chain": 4})  # never backwards
        uow.commit()
    with db.uow() as uow:
        assert uow.load_positions("sagas") == {"events": 7, "chain": 4}
        row, = uow.quarantine.list("saga:")
        assert (row.source, row.key, row.reason, row.payload) == (
            "saga:card_payment", "p1:1", "stuck", {"d": 1})


# -- timers -----------------------------------------------------------------------------------
def test_timers_set_move_cancel_and_come_due_earliest_first_up_to_the_limit(db: Any) -> None:
    with db.uow() as uow:
        uow.saga_timers.set(timer("late", 30))
        uow.saga_timers.set(timer("early", 10))
        uow.saga_timers.set(timer("moved", 50))
        uow.saga_timers.set(timer("cancelled", 1))
        uow.saga_timers.set(timer("other", 20, saga_id="p2"))
        uow.commit()
    with db.uow() as uow:
        uow.saga_timers.set(timer("moved", 5))  # setting again moves it
        uow.saga_timers.cancel("card_payment", "p1", "cancelled")
        uow.saga_timers.cancel("card_payment", "p1", "never-set")
        uow.commit()
    with db.uow() as uow:
        assert uow.saga_timers.take_due(T0 + timedelta(minutes=4), 10) == []
        assert uow.saga_timers.take_due(T0 + timedelta(minutes=25), 2) == [
            timer("moved", 5), timer("early", 10)]
        assert uow.saga_timers.take_due(T0 + timedelta(minutes=25), 10) == [
            timer("other", 20, saga_id="p2")]
        uow.commit()
    with db.uow() as uow:
        assert uow.saga_timers.take_due(T0 + timedelta(days=1), 10) == [timer("late", 30)]


def test_a_taken_timer_is_gone_after_commit_and_back_after_rollback(db: Any) -> None:
    with db.uow() as uow:
        uow.saga_timers.set(timer("a", 1))
        uow.saga_timers.set(timer("b", 2))
        uow.commit()
    later = T0 + timedelta(hours=1)
    with db.uow() as uow:
        assert uow.saga_timers.take_due(later, 1) == [timer("a", 1)]
        uow.commit()
    with db.uow() as uow:
        assert uow.saga_timers.take_due(later, 10) == [timer("b", 2)]  # no commit
    with db.uow() as uow:
        assert uow.saga_timers.take_due(later, 10) == [timer("b", 2)]
        uow.saga_timers.set(timer("b", 90))  # re-set after it fired: a new timer
        uow.commit()
    with db.uow() as uow:
        assert uow.saga_timers.take_due(later, 10) == []
        assert uow.saga_timers.take_due(T0 + timedelta(hours=2), 10) == [timer("b", 90)]


def test_two_open_units_of_work_never_take_the_same_timer(db: Any) -> None:
    with db.uow() as uow:
        for n in range(5):
            uow.saga_timers.set(timer(f"t{n}", n))
        uow.commit()
    later = T0 + timedelta(hours=1)
    with db.uow() as first, db.uow() as second:
        a = first.saga_timers.take_due(later, 2)
        b = second.saga_timers.take_due(later, 10)
        assert [t.name for t in a] == ["t0", "t1"] and [t.name for t in b] == ["t2", "t3", "t4"]
        second.commit()
    with db.uow() as uow:  # the first rolled back: its timers are due again
        assert [t.name for t in uow.saga_timers.take_due(later, 10)] == ["t0", "t1"]


@pytest.mark.integration
def test_workers_on_threads_share_the_due_timers_each_taken_once(pg_engine: Engine) -> None:
    db = PostgresDatabase(pg_engine)
    with db.uow() as uow:
        for n in range(60):
            uow.saga_timers.set(timer(f"t{n:02}", n % 7, saga_id=f"p{n % 5}"))
        uow.commit()
    taken: list[list[str]] = [[], [], []]

    def worker(mine: list[str]) -> None:
        while True:
            with db.uow() as uow:
                batch = uow.saga_timers.take_due(T0 + timedelta(hours=1), 4)
                if not batch:
                    return
                time.sleep(0.01)  # hold the rows while the others look
                uow.commit()
            mine += [t.name for t in batch]

    run_threads(*(lambda mine=mine: worker(mine) for mine in taken))
    everything = [name for mine in taken for name in mine]
    assert sorted(everything) == [f"t{n:02}" for n in range(60)]  # each exactly once
    assert sum(1 for mine in taken if mine) >= 2  # they did share


# -- the effects outbox -----------------------------------------------------------------------
def test_an_effect_is_claimed_while_pending_and_finished_once(db: Any) -> None:
    with db.uow() as uow:
        uow.effects.request(effect("p1:1:spend", amount=5))
        uow.effects.request(effect("p1:2:notify", name="advice"))
        uow.commit()
    with db.uow() as uow:
        assert uow.effects.claim(["spend"], 10) == [effect("p1:1:spend", amount=5)]
        assert uow.effects.claim([], 10) == []
        assert uow.effects.finish("p1:1:spend", succeeded=True, result={"tx": "0xab"}) \
            == effect("p1:1:spend", amount=5)
        assert uow.effects.finish("p1:1:spend", succeeded=True, result={}) is None
        uow.commit()
    with db.uow() as uow:
        assert uow.effects.finish("p1:1:spend", succeeded=False, result={}) is None
        assert uow.effects.finish("never-asked", succeeded=True, result={}) is None
        assert uow.effects.claim(["spend", "advice"], 10) == [
            effect("p1:2:notify", name="advice")]


def test_a_retry_asks_again_under_the_same_id_with_its_attempt(db: Any) -> None:
    with db.uow() as uow:
        uow.effects.request(effect())
        uow.commit()
    with db.uow() as uow:
        assert uow.effects.finish("p1:1:spend", succeeded=False, result={"e": "down"})
        uow.commit()
    with db.uow() as uow:
        assert uow.effects.claim(["spend"], 10) == []
        uow.effects.request(effect(attempt=2))
        uow.commit()
    with db.uow() as uow:
        assert uow.effects.claim(["spend"], 10) == [effect(attempt=2)]
        assert uow.effects.finish("p1:1:spend", succeeded=True, result={}) == effect(attempt=2)
        uow.commit()


def test_claims_skip_what_another_open_unit_of_work_claimed(db: Any) -> None:
    with db.uow() as uow:
        for n in range(4):
            uow.effects.request(effect(f"p1:{n}:spend"))
        uow.commit()
    with db.uow() as first, db.uow() as second:
        a = first.effects.claim(["spend"], 3)
        b = second.effects.claim(["spend"], 3)
        assert len(a) == 3 and len(b) == 1
        assert {r.request_id for r in a} | {r.request_id for r in b} == {
            f"p1:{n}:spend" for n in range(4)}
    with db.uow() as uow:  # both rolled back: all pending again
        assert len(uow.effects.claim(["spend"], 10)) == 4


def run_threads(*targets: Callable[[], None]) -> None:
    errors: list[BaseException] = []

    def guarded(target: Callable[[], None]) -> None:
        try:
            target()
        except BaseException as exc:  # re-raised in the test's thread
            errors.append(exc)

    threads = [threading.Thread(target=guarded, args=(t,)) for t in targets]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert not any(t.is_alive() for t in threads), "a worker hangs"
    if errors:
        raise errors[0]

"""`SagaRunner` (the saga service layer) on the in-memory fake and on PostgreSQL, with a small
two-step saga: feed batches start and advance sagas with their positions in one transaction, a
failing command undoes all of it, adapters' answers are taken once, timers survive a restart,
a stuck compensation goes to the exceptions and is retried to completion, and two workers never
both advance one saga from the same state."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import Engine

from cardpay.errors import ConcurrencyConflict
from cardpay.handlers.sagas import (
    CONFLICT_RETRIES,
    DueTimer,
    EffectRequest,
    SagaRunner,
    SagaUnitOfWork,
)
from cardpay.postgres.engine import make_engine
from cardpay.postgres.uow import saga_uow_factory
from domain.errors import InvalidTransition
from domain.events import DomainEvent
from sagas.engine.model import Effect, Json, SagaInstance, Status
from sagas.engine.react import Saga
from sagas.engine.retry import FailureClass, RetryPolicy
from tests.fakes.sagas import FakeSagaDatabase
from tests.integration.test_saga_store_contract import run_threads

T0 = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
KIND = "two_steps"
POLICY = RetryPolicy(max_attempts=3, base=timedelta(seconds=1), cap=timedelta(seconds=30))
EXPIRY = timedelta(days=7)


@dataclass(frozen=True, kw_only=True)
class Told(DomainEvent):
    """A test event: `what` the saga of `stream_id` is told."""

    what: str


@dataclass
class TwoSteps:
    """reserve (undo: release), then charge (undo: refund), then done; it issues a hold command
    when it starts, expires after a week, and notes who poked it."""

    kind: str = KIND
    policy: RetryPolicy = POLICY

    def on_event(self, saga: Saga, event: Any) -> None:
        if event.what == "go" and saga.stage == "started":
            saga.issue(("hold", saga.instance.saga_id))
            saga.request("reserve", {"n": 1}, compensation=saga.undo("release"),
                         timeout=timedelta(seconds=10))
            saga.set_timer("expiry", saga.now + EXPIRY)
            saga.goto("reserving")
        elif event.what == "cancel":
            saga.compensate("cancelled")
        elif event.what.startswith("poke:"):
            saga.issue(("poked", event.what))
            saga.goto(saga.stage, pokes=[*saga.data.get("pokes", []), event.what])

    def on_timer(self, saga: Saga, name: str) -> None:
        if name == "expiry":
            saga.compensate("expired")

    def on_success(self, saga: Saga, effect: Effect, result: Json) -> None:
        if effect.name == "reserve":
            saga.request("charge", compensation=saga.undo("refund"))
            saga.goto("charging", reserved=result.get("id"))
        elif effect.name == "charge":
            saga.cancel_timer("expiry")
            saga.complete()

    def on_failure(self, saga: Saga, effect: Effect, failure: FailureClass,
                   detail: str) -> None:
        saga.compensate(f"{effect.name}: {detail}")


class Clock:
    def __init__(self) -> None:
        self.now = T0
        self.on_read: Callable[[], None] = lambda: None
        self.reads = 0

    def __call__(self) -> datetime:
        self.reads += 1
        self.on_read()
        return self.now


class Commands:
    """The domain commands port: records what it handled, and raises for `fail_on`."""

    def __init__(self) -> None:
        self.handled: list[Any] = []
        self.fail_on: Any = None
        self.refuse: Any = None
        """A command the domain model refuses (`InvalidTransition`)."""
        self.during: Callable[[Any], None] = lambda command: None

    def __call__(self, uow: SagaUnitOfWork, command: Any) -> None:
        if command == self.fail_on:
            raise RuntimeError(f"command {command} refused")
        if command == self.refuse:
            raise InvalidTransition(f"payment {command[1]} cannot do {command[0]}")
        self.during(command)
        self.handled.append(command)


def route(event: DomainEvent) -> Sequence[tuple[str, str]]:
    return [(KIND, event.stream_id)]


class PostgresDatabase:
    def __init__(self, engine: Engine) -> None:
        self.uow = saga_uow_factory(engine)


@pytest.fixture(params=[pytest.param("memory", marks=pytest.mark.unit),
                        pytest.param("postgres", marks=pytest.mark.integration)])
def backend(request: pytest.FixtureRequest) -> Callable[[], Any]:
    """Opens the database (again, for a restart: on PostgreSQL a new engine)."""
    if request.param == "memory":
        db = FakeSagaDatabase()
        return lambda: db
    url = request.getfixturevalue("pg_url")
    engines: list[Engine] = []

    def open_db() -> PostgresDatabase:
        engines.append(make_engine(url))
        return PostgresDatabase(engines[-1])

    request.addfinalizer(lambda: [e.dispose() for e in engines])
    return open_db


@pytest.fixture
def db(backend: Callable[[], Any]) -> Any:
    return backend()


def runner(db: Any, clock: Clock | None = None, commands: Commands | None = None) -> SagaRunner:
    return SagaRunner(db.uow, [TwoSteps()], route, commands or Commands(), clock or Clock())


def told(saga_id: str, what: str, version: int = 1) -> Told:
    return Told(stream_id=saga_id, version=version, occurred_at=T0, correlation_id=saga_id,
                causation_id=f"{saga_id}:{version}", what=what)


# -- looking at the database (nothing committed) ----------------------------------------------
def saga(db: Any, saga_id: str = "p1") -> SagaInstance | None:
    with db.uow() as uow:
        return uow.sagas.load(KIND, [saga_id]).get(saga_id)  # type: ignore[no-any-return]


def pending(db: Any) -> list[EffectRequest]:
    with db.uow() as uow:  # claimed, then rolled back
        found = uow.effects.claim(["reserve", "charge", "release", "refund"], 100)
    return sorted(found, key=lambda r: r.request_id)


def due(db: Any, at: datetime) -> list[DueTimer]:
    with db.uow() as uow:  # taken, then rolled back
        return uow.saga_timers.take_due(at, 100)  # type: ignore[no-any-return]


def positions(db: Any, consumer: str = "sagas") -> dict[str, int]:
    with db.uow() as uow:
        return uow.load_positions(consumer)  # type: ignore[no-any-return]


def started(db: Any, *saga_ids: str) -> SagaRunner:
    r = runner(db)
    r.handle_batch("sagas", [told(s, "go") for s in saga_ids], {"events": len(saga_ids)})
    return r


def waiting_for(db: Any, saga_id: str = "p1") -> Effect:
    instance = saga(db, saga_id)
    assert instance is not None and instance.waiting is not None
    return instance.waiting.effect


# -- tests ------------------------------------------------------------------------------------
def test_a_batch_starts_sagas_with_their_actions_and_positions_in_one_commit(db: Any) -> None:
    commands = Commands()
    r = runner(db, commands=commands)
    batch = [told("p1", "go"), told("p2", "go"), told("p3", "hello")]
    outcome = r.handle_batch("sagas", batch, {"events": 3})
    assert (outcome.advanced, outcome.ignored) == (2, 1)
    assert commands.handled == [("hold", "p1"), ("hold", "p2")]
    for saga_id in ("p1", "p2"):
        instance = saga(db, saga_id)
        assert instance is not None
        assert (instance.version, instance.stage, instance.status) == (1, "reserving",
                                                                       Status.RUNNING)
        assert [e.name for e in instance.compensations] == ["release"]
    assert saga(db, "p3") is None  # told something before it started: nothing to keep
    assert positions(db) == {"events": 3}
    assert [(r.request_id, r.name, r.attempt, r.payload) for r in pending(db)] == [
        ("p1:1:reserve", "reserve", 1, {"n": 1}), ("p2:1:reserve", "reserve", 1, {"n": 1})]
    assert {(t.saga_id, t.name, t.due) for t in due(db, T0 + EXPIRY)} == {
        ("p1", "timeout:p1:1:reserve", T0 + timedelta(seconds=10)),
        ("p2", "timeout:p2:1:reserve", T0 + timedelta(seconds=10)),
        ("p1", "expiry", T0 + EXPIRY), ("p2", "expiry", T0 + EXPIRY)}

    # the same batch again (a redelivery before the feed resumed after the positions): it is
    # decided again on the stored state, which already moved on, so nothing changes
    again = r.handle_batch("sagas", batch, {"events": 3})
    assert (again.advanced, again.ignored) == (0, 3)
    assert commands.handled == [("hold", "p1"), ("hold", "p2")]
    assert [i.version for i in (saga(db, "p1"), saga(db, "p2")) if i] == [1, 1]
    assert len(pending(db)) == 2


def test_a_failing_command_undoes_instances_timers_effects_and_positions(db: Any) -> None:
    commands = Commands()
    commands.fail_on = ("hold", "p2")
    r = runner(db, commands=commands)
    with pytest.raises(RuntimeError, match="refused"):
        r.handle_batch("sagas", [told("p1", "go"), told("p2", "go")], {"events": 2})
    assert saga(db, "p1") is None and saga(db, "p2") is None
    assert pending(db) == [] and due(db, T0 + EXPIRY) == [] and positions(db) == {}

    commands.fail_on = None  # the batch again, now that the command goes through
    assert r.handle_batch("sagas", [told("p1", "go"), told("p2", "go")],
                          {"events": 2}).advanced == 2
    assert positions(db) == {"events": 2} and len(pending(db)) == 2


def test_a_command_the_model_refuses_is_an_exception_and_the_batch_goes_on(db: Any) -> None:
    commands = Commands()
    commands.refuse = ("hold", "p2")
    r = runner(db, commands=commands)
    outcome = r.handle_batch("sagas", [told("p1", "go"), told("p2", "go")], {"events": 2})
    assert outcome.advanced == 2 and outcome.exceptions == ["two_steps:p2:1:command"]
    assert positions(db) == {"events": 2} and len(pending(db)) == 2
    with db.uow() as uow:
        [item] = [q for q in uow.quarantine.list() if q.source == "saga:two_steps"]
    assert (item.reason, item.payload["command_type"]) == ("command_refused", "tuple")
    assert "cannot do hold" in item.payload["detail"]


def test_an_answer_is_taken_once_and_a_duplicate_changes_nothing(db: Any) -> None:
    r = started(db, "p1")
    reserve = waiting_for(db)
    assert r.effect_done(reserve.request_id, succeeded=True, result={"id": "r-9"}) is True
    after = saga(db)
    assert after is not None and (after.stage, after.version) == ("charging", 2)
    assert after.data == {"reserved": "r-9"}
    assert [(p.name, p.attempt) for p in pending(db)] == [("charge", 1)]
    assert r.effect_done(reserve.request_id, succeeded=True, result={"id": "other"}) is False
    assert r.effect_done(reserve.request_id, succeeded=False) is False
    assert r.effect_done("never-asked", succeeded=True) is False
    assert saga(db) == after

    assert r.effect_done(waiting_for(db).request_id, succeeded=True) is True
    done = saga(db)
    assert done is not None and done.status is Status.COMPLETED
    assert pending(db) == [] and due(db, T0 + 2 * EXPIRY) == []  # every timer cancelled


def test_a_temporary_failure_is_asked_again_when_its_retry_timer_fires(db: Any) -> None:
    clock = Clock()
    started(db, "p1")
    r = runner(db, clock)
    rid = waiting_for(db).request_id
    assert r.effect_done(rid, succeeded=False, failure=FailureClass.TEMPORARY, detail="down")
    assert pending(db) == []  # answered; the retry waits for its timer
    clock.now = T0 + timedelta(seconds=2)  # past the first retry (0.5-1 s)
    assert r.fire_due_timers().advanced == 1
    assert [(p.request_id, p.attempt) for p in pending(db)] == [(rid, 2)]
    assert r.effect_done(rid, succeeded=True, result={"id": "r-1"}) is True
    after = saga(db)
    assert after is not None and after.stage == "charging"


def test_a_timer_set_before_a_restart_fires_after_it(backend: Callable[[], Any]) -> None:
    before = backend()
    r = started(before, "p1")
    assert r.effect_done(waiting_for(before).request_id, succeeded=True) is True  # charging

    clock = Clock()  # a new process, with a new engine, on the same database
    after = backend()
    restarted = runner(after, clock)
    clock.now = T0 + EXPIRY - timedelta(seconds=1)
    assert restarted.fire_due_timers().advanced == 0
    clock.now = T0 + EXPIRY
    assert restarted.fire_due_timers().advanced == 1
    instance = saga(after)
    assert instance is not None and instance.status is Status.COMPENSATING
    assert instance.problem == "expired"
    assert instance.waiting is not None
    assert instance.waiting.effect.request_id == "p1:2:undo:refund"
    # the charge in flight is withdrawn: no adapter does it after its refund
    assert [(p.name, p.request_id) for p in pending(after)] == [("refund", "p1:2:undo:refund")]
    assert restarted.effect_done("p1:2:charge", succeeded=True) is False
    assert restarted.fire_due_timers().advanced == 0  # taken once


def test_an_effect_the_saga_stops_waiting_for_is_withdrawn_unless_an_adapter_holds_it(
        db: Any) -> None:
    clock = Clock()
    started(db, "p1", "p2")
    r = runner(db, clock)
    fired = 0
    for _ in range(6):  # reserve never answered: a timeout, a retry, a timeout... 3 tries
        clock.now += timedelta(seconds=30)
        fired += r.fire_due_timers().advanced
    assert fired == 2 * 5  # per saga: 3 timeouts and the 2 retries between them
    assert [(p.saga_id, p.name) for p in pending(db)] == [("p1", "release"),
                                                          ("p2", "release")]
    assert r.effect_done("p1:1:reserve", succeeded=True) is False  # withdrawn: a late answer

    # an adapter that holds a request when the saga gives up on it: the saga waits for it
    clock.now = T0
    started(db, "p3")
    held, answered = threading.Event(), threading.Event()

    def adapter() -> None:
        with db.uow() as uow:
            assert [q.request_id for q in uow.effects.claim(["reserve"], 10)] == ["p3:1:reserve"]
            held.set()
            time.sleep(0.3)  # the saga's worker now waits for this row
            assert uow.effects.finish("p3:1:reserve", succeeded=True, result={"id": "r"})
            uow.commit()
        answered.set()

    def give_up() -> None:
        assert held.wait(5)
        runner(db).handle_batch("sagas", [told("p3", "cancel", 2)], {"events": 2})

    run_threads(adapter, give_up)
    after = saga(db, "p3")
    assert after is not None and after.status is Status.COMPENSATING
    assert [(p.saga_id, p.name) for p in pending(db)] == [("p1", "release"), ("p2", "release"),
                                                          ("p3", "release")]


def test_a_due_timer_of_an_unknown_saga_is_dropped(db: Any) -> None:
    with db.uow() as uow:
        uow.saga_timers.set(DueTimer(KIND, "ghost", "expiry", T0))
        uow.commit()
    outcome = runner(db).fire_due_timers()
    assert (outcome.advanced, outcome.ignored) == (0, 1)
    assert due(db, T0) == []


def test_a_failing_compensation_goes_to_the_exceptions_and_is_retried_to_the_end(
        db: Any) -> None:
    r = started(db, "p1")
    assert r.effect_done(waiting_for(db).request_id, succeeded=False,
                         failure=FailureClass.HARD, detail="refused")
    release = waiting_for(db)
    assert release.name == "release"
    assert r.effect_done(release.request_id, succeeded=False, failure=FailureClass.HARD,
                         detail="hold unknown")
    stuck = saga(db)
    assert stuck is not None and stuck.status is Status.STUCK
    with db.uow() as uow:
        row, = uow.quarantine.list("saga:")
    assert (row.source, row.key, row.reason) == (f"saga:{KIND}", f"{KIND}:p1:{stuck.version}",
                                                 "compensation_failed")
    assert row.payload["request_id"] == release.request_id
    assert row.payload["effect"] == "release" and row.payload["detail"] == "hold unknown"
    assert pending(db) == []  # nothing retried for ever without a trace

    resumed = r.retry(KIND, "p1")
    assert resumed is not None and resumed.status is Status.COMPENSATING
    assert [(p.request_id, p.attempt) for p in pending(db)] == [(release.request_id, 1)]
    assert r.effect_done(release.request_id, succeeded=True) is True
    done = saga(db)
    assert done is not None and done.status is Status.COMPENSATED
    assert r.retry(KIND, "nobody") is None


def test_two_workers_advancing_one_saga_from_one_state_only_one_commits(db: Any) -> None:
    """B loads the saga, then A commits over the same version: B's save conflicts, its whole
    unit of work rolls back, and it decides its batch again on A's state (never over it)."""
    started(db, "p1")
    b_loaded = threading.Event()
    clock_b = Clock()
    clock_b.on_read = b_loaded.set  # B reads the clock once it has loaded the saga

    commands_a = Commands()

    def hold_until_b_waits(command: Any) -> None:
        assert b_loaded.wait(5)
        time.sleep(0.3)  # B is now saving over the same version: it waits for A

    commands_a.during = hold_until_b_waits
    a, b = runner(db, commands=commands_a), runner(db, clock_b)
    results: dict[str, int] = {}

    def worker(name: str, r: SagaRunner) -> None:
        version = {"a": 2, "b": 3}[name]
        outcome = r.handle_batch(f"worker-{name}", [told("p1", f"poke:{name}", version)],
                                 {"events": version})
        results[name] = outcome.advanced

    run_threads(lambda: worker("a", a), lambda: worker("b", b))
    assert results == {"a": 1, "b": 1}
    after = saga(db)
    # one version per commit, and B's poke on top of A's: nothing decided on a stale state
    assert after is not None and (after.version, after.data["pokes"]) == (3, ["poke:a", "poke:b"])
    assert positions(db, "worker-a") == {"events": 2} and positions(db, "worker-b") == {"events": 3}
    assert clock_b.reads >= 2  # B decided twice: once on the stale state, once on A's


def test_a_conflict_that_keeps_coming_reaches_the_caller(db: Any,
                                                          monkeypatch: pytest.MonkeyPatch
                                                          ) -> None:
    started(db, "p1")
    r = runner(db)
    tries: list[int] = []

    def always_conflicts(consumer: str, events: Any, positions: Any, quarantined: Any) -> Any:
        tries.append(1)
        raise ConcurrencyConflict("another worker advanced p1")

    monkeypatch.setattr(r, "_handle_batch", always_conflicts)
    with pytest.raises(ConcurrencyConflict):
        r.handle_batch("w", [told("p1", "poke", 2)], {"events": 2})
    assert len(tries) == CONFLICT_RETRIES


def test_two_workers_of_one_consumer_take_turns(db: Any) -> None:
    started(db, "p1")
    a_inside = threading.Event()
    commands_a = Commands()

    def hold(command: Any) -> None:
        a_inside.set()
        time.sleep(0.3)  # B is now at the consumer's lock

    commands_a.during = hold
    a, b = runner(db, commands=commands_a), runner(db)

    def second() -> None:
        assert a_inside.wait(5)
        b.handle_batch("sagas", [told("p1", "poke:b", 3)], {"events": 3})

    run_threads(lambda: a.handle_batch("sagas", [told("p1", "poke:a", 2)], {"events": 2}),
                second)
    after = saga(db)
    assert after is not None and after.version == 3
    assert after.data["pokes"] == ["poke:a", "poke:b"] and positions(db) == {"events": 3}

"""The saga engine on a two-step saga: retries, timeouts, compensations, duplicates, stuck and
resumed; then a hypothesis state machine that throws any order of answers at it."""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from sagas.engine import codec
from sagas.engine.model import (
    Action,
    CancelTimer,
    Effect,
    EffectFailed,
    EffectSucceeded,
    EventArrived,
    Json,
    Message,
    OpenException,
    RequestEffect,
    RetryRequested,
    SagaInstance,
    SetTimer,
    Status,
    TimerFired,
)
from sagas.engine.react import RETRY, TIMEOUT, Saga, react
from sagas.engine.retry import FailureClass, RetryPolicy, jitter

pytestmark = pytest.mark.unit
T0 = datetime(2026, 12, 1, tzinfo=UTC)
POLICY = RetryPolicy(max_attempts=3, base=timedelta(seconds=1), cap=timedelta(seconds=30))


@dataclass
class TwoSteps:
    """reserve (undo: release), then charge (undo: refund), then done."""

    kind: str = "two_steps"
    policy: RetryPolicy = POLICY

    def on_event(self, saga: Saga, event: Any) -> None:
        if event == "go" and saga.stage == "started":
            saga.request("reserve", {"n": 1}, compensation=saga.undo("release"),
                         timeout=timedelta(seconds=10))
            saga.goto("reserving")
        elif event == "cancel":
            saga.compensate("cancelled")

    def on_timer(self, saga: Saga, name: str) -> None:
        if name == "give_up":
            saga.compensate("gave up")

    def on_success(self, saga: Saga, effect: Effect, result: Json) -> None:
        if effect.name == "reserve":
            saga.request("charge", compensation=saga.undo("refund"))
            saga.goto("charging", reserved=result.get("id"))
        elif effect.name == "charge":
            saga.complete()

    def on_failure(self, saga: Saga, effect: Effect, failure: FailureClass,
                   detail: str) -> None:
        saga.compensate(f"{effect.name}: {detail}")


def run(instance: SagaInstance, *messages: Message,
        now: datetime = T0) -> tuple[SagaInstance, list[Action]]:
    actions: list[Action] = []
    for message in messages:
        instance, more = react(TwoSteps(), instance, message, now)
        actions += more
    return instance, actions


def requested(actions: list[Action]) -> list[tuple[str, int]]:
    return [(a.effect.name, a.attempt) for a in actions if isinstance(a, RequestEffect)]


def waiting_id(instance: SagaInstance) -> str:
    assert instance.waiting is not None
    return instance.waiting.effect.request_id


def start() -> SagaInstance:
    instance, actions = run(SagaInstance("p1", "two_steps"), EventArrived("go"))
    assert requested(actions) == [("reserve", 1)]
    assert SetTimer(TIMEOUT + waiting_id(instance), T0 + timedelta(seconds=10)) in actions
    return instance


def test_the_happy_path_completes_and_then_ignores_everything() -> None:
    s = start()
    s, actions = run(s, EffectSucceeded(waiting_id(s), {"id": "r-9"}))
    assert requested(actions) == [("charge", 1)] and s.data == {"reserved": "r-9"}
    s, _ = run(s, EffectSucceeded(waiting_id(s)))
    assert s.status is Status.COMPLETED and s.version == 3
    assert run(s, EventArrived("cancel"), TimerFired("give_up"), RetryRequested()) == (s, [])


def test_a_duplicate_or_stale_answer_changes_nothing() -> None:
    s = start()
    first = waiting_id(s)
    s, _ = run(s, EffectSucceeded(first))
    assert run(s, EffectSucceeded(first)) == (s, [])  # again: already taken
    assert run(s, EffectFailed(first, FailureClass.HARD)) == (s, [])
    assert run(s, EffectSucceeded("nobody-asked")) == (s, [])


@dataclass(frozen=True)
class Told:
    """A domain-like event: a stream and a version."""

    stream_id: str
    version: int
    what: str


def test_an_event_delivered_again_is_taken_once_per_stream_and_version() -> None:
    s = start()
    s, _ = run(s, EventArrived(Told("p1", 4, "noted")))
    assert s.seen == {"p1": 4}
    for again in (Told("p1", 4, "noted"), Told("p1", 3, "older")):
        assert run(s, EventArrived(again)) == (s, [])
    # another stream's events are not kept (a saga fed by many streams dedupes them itself)
    cancelled, _ = run(s, EventArrived("cancel"), EventArrived(Told("q", 1, "other")))
    assert cancelled.status is Status.COMPENSATING and cancelled.seen == {"p1": 4}


def test_an_event_the_definition_does_nothing_with_does_not_start_a_saga() -> None:
    fresh = SagaInstance("p1", "two_steps")
    assert run(fresh, EventArrived(Told("p1", 1, "hello"))) == (fresh, [])
    started, _ = run(fresh, EventArrived("go"))
    assert started.version == 1


def test_temporary_failures_are_retried_with_growing_jittered_delays_then_compensated() -> None:
    s = start()
    rid = waiting_id(s)
    delays = []
    for attempt in (1, 2):
        s, actions = run(s, EffectFailed(rid, FailureClass.TEMPORARY, "node down"))
        timer, = [a for a in actions if isinstance(a, SetTimer)]
        assert timer.name == RETRY + rid
        delays.append(timer.due - T0)
        s, actions = run(s, TimerFired(timer.name))
        assert requested(actions) == [("reserve", attempt + 1)]
        assert waiting_id(s) == rid  # the same idempotency key on every try
    assert timedelta(seconds=0.5) <= delays[0] < timedelta(seconds=1)
    assert timedelta(seconds=1) <= delays[1] < timedelta(seconds=2)
    s, actions = run(s, EffectFailed(rid, FailureClass.TEMPORARY, "node down"))  # 3rd of 3
    assert s.status is Status.COMPENSATING and requested(actions) == [("release", 1)]
    assert s.problem == "reserve: node down"


def test_a_hard_failure_is_not_retried_and_silence_counts_as_a_temporary_failure() -> None:
    s = start()
    s, actions = run(s, TimerFired(TIMEOUT + waiting_id(s)))  # no answer in 10 s
    assert any(isinstance(a, SetTimer) and a.name.startswith(RETRY) for a in actions)
    s, actions = run(s, EffectFailed(waiting_id(s), FailureClass.HARD, "reverted"))
    assert requested(actions) == [("release", 1)]
    assert CancelTimer(RETRY + "p1:1:reserve") in actions


def test_compensations_run_last_first_each_waiting_for_the_one_before() -> None:
    s = start()
    s, _ = run(s, EffectSucceeded(waiting_id(s)))
    s, actions = run(s, EventArrived("cancel"))  # while charging: its refund registered first
    assert requested(actions) == [("refund", 1)] and s.status is Status.COMPENSATING
    s, actions = run(s, EffectSucceeded(waiting_id(s)))
    assert requested(actions) == [("release", 1)]
    s, actions = run(s, EffectSucceeded(waiting_id(s)))
    assert s.status is Status.COMPENSATED and actions == [CancelTimer(TIMEOUT + "p1:1:undo:release"),
                                                        CancelTimer(RETRY + "p1:1:undo:release")]


def test_a_compensation_that_keeps_failing_opens_one_exception_and_can_be_retried() -> None:
    s = start()
    s, _ = run(s, EventArrived("cancel"))
    rid = waiting_id(s)
    for _ in range(2):
        s, actions = run(s, EffectFailed(rid, FailureClass.TEMPORARY, "rpc down"))
        s, _ = run(s, TimerFired(RETRY + rid))
    s, actions = run(s, EffectFailed(rid, FailureClass.TEMPORARY, "rpc down"))
    assert s.status is Status.STUCK
    exception, = [a for a in actions if isinstance(a, OpenException)]
    assert exception.reason == "compensation_failed"
    assert exception.context["effect"] == "release" and exception.context["attempts"] == 3
    assert run(s, EffectFailed(rid, FailureClass.TEMPORARY)) == (s, [])  # stuck: no loop
    s, actions = run(s, RetryRequested())
    assert s.status is Status.COMPENSATING and requested(actions) == [("release", 1)]
    s, _ = run(s, EffectSucceeded(rid))
    assert s.status is Status.COMPENSATED


@dataclass
class Resumable:
    """One step whose failure is compensated with `resume`: the saga runs on afterwards."""

    kind: str = "resumable"
    policy: RetryPolicy = POLICY

    def on_event(self, saga: Saga, event: Any) -> None:
        if event == "go":
            saga.request("step", compensation=saga.undo("undo"))
        else:  # heard while compensating too: remembered, acted on once running again
            saga.goto(saga.stage, heard=[*saga.data.get("heard", []), event])

    def on_timer(self, saga: Saga, name: str) -> None:
        saga.goto(saga.stage, timers=[*saga.data.get("timers", []), name])

    def on_success(self, saga: Saga, effect: Effect, result: Json) -> None:
        if effect.name == "undo":
            saga.request("after", {"heard": list(saga.data.get("heard", []))})

    def on_failure(self, saga: Saga, effect: Effect, failure: FailureClass,
                   detail: str) -> None:
        saga.compensate(detail, resume=True)


def test_a_resumable_compensation_hears_events_meanwhile_and_runs_on_after_it() -> None:
    d = Resumable()
    s, _ = react(d, SagaInstance("r1", "resumable"), EventArrived("go"), T0)
    s, actions = react(d, s, EffectFailed(waiting_id(s), FailureClass.HARD, "no"), T0)
    assert s.status is Status.COMPENSATING and s.resume and requested(actions) == [("undo", 1)]
    s, _ = react(d, s, EventArrived("late news"), T0)
    s, _ = react(d, s, TimerFired("nudge"), T0)
    assert s.data == {"heard": ["late news"], "timers": ["nudge"]}
    s, actions = react(d, s, EffectSucceeded(waiting_id(s)), T0)
    assert s.status is Status.RUNNING and not s.resume and s.problem == "no"
    assert requested(actions) == [("after", 1)]  # it heard its compensation's success
    assert s.waiting is not None and s.waiting.effect.payload == {"heard": ["late news"]}


def test_an_effect_asked_again_under_its_request_id_is_not_a_new_step() -> None:
    s = start()
    first = waiting_id(s)
    s, _ = run(s, EffectSucceeded(first, {"id": "r-1"}))
    saga = Saga(replace(s, waiting=None), T0, POLICY)
    effect = saga.request("reserve", {"n": 1}, request_id=first)
    assert effect.request_id == first and saga.instance.steps == s.steps
    assert saga.key("charge") == f"p1:{s.steps + 1}:charge"  # the next new step's number


def test_the_codec_keeps_every_field_and_reads_instances_stored_before_resume() -> None:
    d = Resumable()
    s, _ = react(d, SagaInstance("r1", "resumable"), EventArrived("go"), T0)
    s, _ = react(d, s, EffectFailed(waiting_id(s), FailureClass.HARD, "no"), T0)
    stored = codec.to_json(s)
    assert codec.from_json("r1", "resumable", s.version, stored) == s
    old = {k: v for k, v in stored.items() if k != "resume"}
    assert codec.from_json("r1", "resumable", s.version, old) == replace(s, resume=False)


def test_retry_policy_bounds_and_jitter() -> None:
    assert all(0.5 <= jitter(str(i)) < 1 for i in range(1000))
    assert POLICY.retries(FailureClass.SOFT, 2) and not POLICY.retries(FailureClass.SOFT, 3)
    assert not POLICY.retries(FailureClass.FRAUD, 1) and not POLICY.retries(FailureClass.HARD, 1)
    assert POLICY.delay(50, "k") < POLICY.cap
    with pytest.raises(ValueError, match="max_attempts"):
        RetryPolicy(max_attempts=0)


class EngineMachine(RuleBasedStateMachine):
    """Any order of answers, duplicates, timers and cancellations: the engine keeps its promises."""

    def __init__(self) -> None:
        super().__init__()
        self.saga = SagaInstance("p1", "two_steps")
        self.log: list[Action] = []
        self.seen_ids: list[str] = []
        self.now = T0
        self.saga, actions = run(self.saga, EventArrived("go"))
        self._record(actions)

    def _record(self, actions: list[Action]) -> None:
        self.log += actions
        for a in actions:
            if isinstance(a, RequestEffect):
                self.seen_ids.append(a.effect.request_id)

    def _send(self, message: Message) -> None:
        before = self.saga
        self.saga, actions = run(self.saga, message, now=self.now)
        assert (self.saga == before) == (not actions)
        assert self.saga.version in (before.version, before.version + 1)
        if before.status in (Status.COMPLETED, Status.COMPENSATED):
            assert actions == [] and self.saga == before
        self._record(actions)

    @rule(ok=st.booleans(), failure=st.sampled_from(FailureClass), stale=st.booleans())
    def answer(self, ok: bool, failure: FailureClass, stale: bool) -> None:
        rid = self.seen_ids[0] if stale and self.seen_ids else (
            self.saga.waiting.effect.request_id if self.saga.waiting else "none")
        self._send(EffectSucceeded(rid) if ok else EffectFailed(rid, failure, "x"))

    @rule(kind=st.sampled_from([RETRY, TIMEOUT]))
    def fire_effect_timer(self, kind: str) -> None:
        rid = self.saga.waiting.effect.request_id if self.saga.waiting else "none"
        self._send(TimerFired(kind + rid))

    @rule(event=st.sampled_from(["go", "cancel"]))
    def event(self, event: str) -> None:
        self._send(EventArrived(event))

    @rule()
    def retry(self) -> None:
        self._send(RetryRequested())

    @invariant()
    def compensations_only_ever_run_last_first(self) -> None:
        undone = [a.effect.name for a in self.log if isinstance(a, RequestEffect)
                  and a.effect.name in ("release", "refund") and a.attempt == 1]
        # a compensation is asked again only after a person's retry; refund always before release
        names = list(dict.fromkeys(undone))
        assert names in ([], ["release"], ["refund", "release"], ["refund"])

    @invariant()
    def tries_are_bounded_and_stuck_means_an_open_exception(self) -> None:
        counts: dict[tuple[str, int], int] = {}
        for a in self.log:
            if isinstance(a, RequestEffect):
                counts[(a.effect.request_id, a.attempt)] = \
                    counts.get((a.effect.request_id, a.attempt), 0) + 1
                assert a.attempt <= POLICY.max_attempts
        exceptions = [a for a in self.log if isinstance(a, OpenException)]
        retries = sum(1 for a in self.log if isinstance(a, RequestEffect) and a.attempt == 1
                      and a.effect.name in ("release", "refund")) - len(
            {a.effect.request_id for a in self.log if isinstance(a, RequestEffect)
             and a.effect.name in ("release", "refund")})
        if self.saga.status is Status.STUCK:
            assert len(exceptions) == retries + 1
        assert self.saga.status is not Status.COMPENSATED or self.saga.compensations == ()
        assert self.saga.status is not Status.COMPLETED or self.saga.waiting is None


TestEngineMachine = EngineMachine.TestCase
TestEngineMachine.settings = settings(max_examples=100, stateful_step_count=30, deadline=None)

"""The effect worker on the saga store (the in-memory fake and PostgreSQL): claim, perform,
answer once; an unreachable party is a temporary failure the saga's retry policy takes over."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from cardpay.handlers.effects import Answer, EffectWorker, PartyUnavailable
from cardpay.handlers.sagas import EffectRequest
from sagas.engine.model import Status
from sagas.engine.retry import FailureClass
from tests.integration import test_saga_runner as base
from tests.integration.test_saga_runner import T0, Clock, pending, runner, saga, started

backend, db = base.backend, base.db  # the saga store fixtures: the fake and PostgreSQL


class Party:
    """Performs `reserve` with an idempotency key, as the network and our sender do."""

    def __init__(self) -> None:
        self.done: dict[str, int] = {}
        self.calls = 0
        self.down = False
        self.refuse = False

    def __call__(self, request: EffectRequest) -> Answer:
        self.calls += 1
        if self.down:
            raise PartyUnavailable("the party is down")
        if self.refuse:
            return Answer.failed(FailureClass.HARD, "refused")
        self.done.setdefault(request.request_id, len(self.done) + 1)
        return Answer.ok(id=self.done[request.request_id])


def test_a_claimed_request_is_performed_and_answered_once(db: Any) -> None:
    r = started(db, "p1", "p2")
    party = Party()
    worker = EffectWorker(db.uow, r, {"reserve": party})
    done = worker.run_once()
    assert (done.answered, done.duplicates, party.calls) == (2, 0, 2)
    for saga_id in ("p1", "p2"):
        instance = saga(db, saga_id)
        assert instance is not None and instance.stage == "charging"
    assert [p.name for p in pending(db)] == ["charge", "charge"]
    assert worker.run_once().answered == 0  # nothing left for it


def test_two_workers_that_both_perform_a_request_answer_it_once(db: Any) -> None:
    r = started(db, "p1")
    party = Party()
    with db.uow() as uow:  # both workers saw it pending before either answered
        claimed = uow.effects.claim(["reserve"], 10)
    assert [c.request_id for c in claimed] == ["p1:1:reserve"]
    answers = [r.effect_done(claimed[0].request_id, succeeded=True,
                             result=party(claimed[0]).result) for _worker in range(2)]
    assert answers == [True, False]
    assert party.done == {"p1:1:reserve": 1}  # the party kept one, by its key
    instance = saga(db)
    assert instance is not None and instance.data["reserved"] == 1


def test_a_party_that_is_down_is_a_temporary_failure_retried_by_the_policy(db: Any) -> None:
    clock = Clock()
    r = started(db, "p1")
    r = runner(db, clock)
    party = Party()
    party.down = True
    worker = EffectWorker(db.uow, r, {"reserve": party})
    done = worker.run_once()
    assert (done.unavailable, done.answered) == (1, 1)
    assert pending(db) == []  # not asked again before its retry timer
    instance = saga(db)
    assert instance is not None and instance.waiting is not None
    assert instance.waiting.retry_set

    party.down = False
    clock.now = T0 + timedelta(minutes=1)
    r.fire_due_timers()
    assert [(p.name, p.attempt) for p in pending(db)] == [("reserve", 2)]
    assert worker.run_once().answered == 1
    instance = saga(db)
    assert instance is not None and instance.stage == "charging"


def test_a_refusal_is_final_and_the_saga_compensates(db: Any) -> None:
    r = started(db, "p1")
    party = Party()
    party.refuse = True
    EffectWorker(db.uow, r, {"reserve": party}).run_once()
    instance = saga(db)
    assert instance is not None and instance.status is Status.COMPENSATING
    assert [p.name for p in pending(db)] == ["release"]


@pytest.mark.unit
def test_an_answer_carries_its_class() -> None:
    assert Answer.ok(tx="0x1") == Answer(True, {"tx": "0x1"})
    failed = Answer.failed(FailureClass.FRAUD, "flagged")
    assert (failed.succeeded, failed.failure, failed.detail) == (False, FailureClass.FRAUD,
                                                                 "flagged")

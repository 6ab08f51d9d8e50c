"""Effect workers: the adapters' side of the sagas' effects outbox.

A worker claims pending requests for the effects it performs (`EffectRequests.claim`, SKIP
LOCKED), commits the claim, performs each one outside any transaction and reports the answer
through `SagaRunner.effect_done`, which takes it once.

The claim is only a lock for the claiming transaction: a request stays pending until answered,
so a worker killed mid-way leaves it for the next poll, and two workers can both perform it.
Every effect is therefore performed with its request id as an idempotency key, and the party at
the other end (the network, our transaction sender) keeps what it did under that key: a second
performance answers the first one's result.

A party that cannot be reached is a temporary failure of this attempt: the saga's retry policy
sets the next attempt (backoff with jitter) and, for a compensation out of attempts, opens an
exception. Nothing is retried for ever without a trace, and nothing hammers a party that is down.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

from cardpay.errors import CardpayError
from cardpay.handlers.sagas import EffectRequest, EffectRequests, SagaRunner
from sagas.engine.model import Json
from sagas.engine.retry import FailureClass

log = logging.getLogger(__name__)


class PartyUnavailable(CardpayError):
    """The party that performs an effect cannot be reached now (a temporary failure)."""


@dataclass(frozen=True, slots=True)
class Answer:
    """What a party said about one effect request."""

    succeeded: bool
    result: Json = field(default_factory=dict)
    failure: FailureClass = FailureClass.TEMPORARY
    detail: str = ""

    @classmethod
    def ok(cls, **result: object) -> Answer:
        return cls(True, dict(result))

    @classmethod
    def failed(cls, failure: FailureClass, detail: str) -> Answer:
        return cls(False, {}, failure, detail)


class Perform(Protocol):
    def __call__(self, request: EffectRequest) -> Answer:
        """Do the effect (idempotently, keyed by `request.request_id`) and say how it went;
        raise `PartyUnavailable` when the party cannot be asked now."""
        ...


class ClaimingUnitOfWork(Protocol):
    """What a worker needs of a unit of work: the effects outbox and a commit."""

    @property
    def effects(self) -> EffectRequests: ...

    def commit(self) -> None: ...

    def __enter__(self) -> ClaimingUnitOfWork: ...

    def __exit__(self, *exc: object) -> None: ...


@dataclass
class Performed:
    answered: int = 0
    duplicates: int = 0
    unavailable: int = 0

    @property
    def total(self) -> int:
        """Requests this poll performed (for a loop deciding whether it is idle)."""
        return self.answered + self.duplicates + self.unavailable


class EffectWorker:
    """Performs the effects named in `performers`, `batch` requests per poll."""

    def __init__(self, uow_factory: Callable[[], ClaimingUnitOfWork], runner: SagaRunner,
                 performers: Mapping[str, Perform], *, batch: int = 50) -> None:
        self._uow = uow_factory
        self._runner = runner
        self._performers = dict(performers)
        self._batch = batch

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self._performers)

    def run_once(self) -> Performed:
        """One poll: claim, perform, answer. Returns what happened to the claimed requests."""
        with self._uow() as uow:
            requests = uow.effects.claim(list(self._performers), self._batch)
            uow.commit()
        done = Performed()
        for request in requests:
            try:
                answer = self._performers[request.name](request)
            except PartyUnavailable as exc:
                done.unavailable += 1
                log.warning("effect %s %s (attempt %d) not performed: %s", request.name,
                            request.request_id, request.attempt, exc)
                answer = Answer.failed(FailureClass.TEMPORARY, str(exc))
            if self._runner.effect_done(request.request_id, succeeded=answer.succeeded,
                                        result=answer.result, failure=answer.failure,
                                        detail=answer.detail):
                done.answered += 1
            else:
                done.duplicates += 1
        return done

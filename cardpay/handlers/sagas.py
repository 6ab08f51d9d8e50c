"""The saga service layer: messages in, instances and their actions stored in one transaction.

Three kinds of message reach a saga, each through one unit of work:
- domain events from the event feed (`handle_batch`): the feed positions are stored in the same
  transaction as every instance they advanced, so a redelivered batch is seen as already done;
- due timers (`fire_due_timers`): taken with SKIP LOCKED, so several workers share them and a
  timer fires once; it is deleted in the transaction that delivered it;
- effect answers from the adapters (`effect_done`): the effect request is finished in the same
  transaction as the saga's reaction, so an answer is taken once.

An instance is saved with optimistic concurrency (its version): two workers that advanced one
saga from the same state cannot both commit; the loser's whole unit of work rolls back and its
message (or batch) is decided again on fresh state, a few times (`CONFLICT_RETRIES`) before the
conflict reaches the caller. The actions run here (timers, effect requests into the
effects outbox, domain commands, exceptions); side effects outside the database run in the
adapters, which poll the effects outbox (`claim_effects`) and report back. An effect the saga
stops waiting for without its answer (timed out for good, or a compensation started) is
withdrawn from the outbox in the same transaction, so no adapter does it after its compensation.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol, TypeVar

from cardpay.errors import ConcurrencyConflict
from cardpay.handlers.ports import QuarantineItem
from domain.commands import Command
from domain.errors import DomainError
from domain.events import DomainEvent
from domain.serialization import to_json
from sagas.engine.model import (
    Action,
    CancelTimer,
    Effect,
    EffectFailed,
    EffectSucceeded,
    EventArrived,
    IssueCommand,
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
from sagas.engine.react import Definition, react
from sagas.engine.retry import FailureClass

log = logging.getLogger(__name__)

_T = TypeVar("_T")
CONFLICT_RETRIES = 5
"""How many times a unit of work that lost a race on a saga instance is decided again."""


# -- ports ------------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class DueTimer:
    kind: str
    saga_id: str
    name: str
    due: datetime


@dataclass(frozen=True, slots=True)
class EffectRequest:
    """A side effect a saga asked for, as an adapter sees it."""

    request_id: str
    kind: str
    saga_id: str
    name: str
    payload: Json
    attempt: int


class SagaStore(Protocol):
    def load(self, kind: str, saga_ids: Sequence[str]) -> dict[str, SagaInstance]:
        """The stored instances among `saga_ids` (absent: never started)."""
        ...

    def save(self, instance: SagaInstance, expected_version: int) -> None:
        """Store `instance` if the stored version is still `expected_version` (0: not stored
        yet); otherwise `ConcurrencyConflict` (another worker advanced it first)."""
        ...

    def find(self, status: Status | None = None, kind: str | None = None,
             limit: int = 100) -> list[SagaInstance]:
        """Instances by status (e.g. the stuck ones), oldest change first."""
        ...


class SagaTimers(Protocol):
    def set(self, timer: DueTimer) -> None:
        """Set (or move) the saga's timer of that name."""
        ...

    def cancel(self, kind: str, saga_id: str, name: str) -> None: ...

    def take_due(self, now: datetime, limit: int) -> list[DueTimer]:
        """Timers due at `now`, earliest first, locked for this transaction and skipped by
        other workers' (SKIP LOCKED); deleted when this transaction commits."""
        ...


class EffectRequests(Protocol):
    def request(self, request: EffectRequest) -> None:
        """Ask for the effect (again, for a retry: the same request id with a new attempt)."""
        ...

    def claim(self, names: Sequence[str], limit: int) -> list[EffectRequest]:
        """Pending requests for these effects, oldest first, locked for this transaction and
        skipped by other adapters' (SKIP LOCKED)."""
        ...

    def finish(self, request_id: str, *, succeeded: bool, result: Json) -> EffectRequest | None:
        """Mark the request answered; None if it is not pending (answered already, or never
        asked): the answer is then a duplicate."""
        ...


class SagaUnitOfWork(Protocol):
    @property
    def sagas(self) -> SagaStore: ...

    @property
    def saga_timers(self) -> SagaTimers: ...

    @property
    def effects(self) -> EffectRequests: ...

    def add_exception(self, item: QuarantineItem) -> None: ...

    def load_positions(self, consumer: str) -> dict[str, int]: ...

    def save_positions(self, consumer: str, positions: Mapping[str, int]) -> None: ...

    def lock(self, key: str) -> None: ...

    def commit(self) -> None: ...

    def __enter__(self) -> SagaUnitOfWork: ...

    def __exit__(self, *exc: object) -> None: ...


Route = Callable[[DomainEvent], Sequence[tuple[str, str]]]
"""Which sagas (kind, saga id) an event concerns; a saga starts at the first event routed to it."""
Commands = Callable[[SagaUnitOfWork, Any], None]
"""Handles a domain command a saga issued, in the saga's unit of work."""


class SagaObserver(Protocol):
    """Told what a unit of work did once it is committed (a unit of work that lost a race and
    was decided again is told once, for the try that committed): the metrics port
    (`cardpay.metrics.sagas.SagaMetrics`), so this module needs no metrics library."""

    def reacted(self, before: SagaInstance, after: SagaInstance, message: Message,
                actions: Sequence[Action]) -> None:
        """A saga moved from `before` to `after` on `message`, asking for `actions`."""
        ...

    def timer_fired(self, kind: str, advanced: bool) -> None:
        """A due timer was taken and delivered (`advanced`: its saga moved; otherwise the saga
        was gone or ignored it)."""
        ...

    def exception_opened(self, kind: str, reason: str) -> None: ...


@dataclass(frozen=True, slots=True)
class Reaction:
    before: SagaInstance
    after: SagaInstance
    message: Message
    actions: tuple[Action, ...]


@dataclass
class Outcome:
    advanced: int = 0
    ignored: int = 0
    exceptions: list[str] = field(default_factory=list)
    reactions: list[Reaction] = field(default_factory=list)
    """What moved, for the observer once committed."""
    timers: list[tuple[str, bool]] = field(default_factory=list)
    """(kind, advanced) of each timer taken."""
    opened: list[tuple[str, str]] = field(default_factory=list)
    """(kind, reason) of each exception opened."""


class SagaRunner:
    def __init__(self, uow_factory: Callable[[], SagaUnitOfWork],
                 definitions: Sequence[Definition], route: Route, commands: Commands,
                 clock: Callable[[], datetime], observer: SagaObserver | None = None) -> None:
        self._uow = uow_factory
        self._observer = observer
        self._definitions = {d.kind: d for d in definitions}
        self._route = route
        self._commands = commands
        self._clock = clock

    # -- the three ways in ------------------------------------------------------------------------
    def handle_batch(self, consumer: str, events: Sequence[DomainEvent],
                     positions: Mapping[str, int],
                     quarantined: Sequence[QuarantineItem] = ()) -> Outcome:
        """Route a feed batch to its sagas and store everything with the positions (and the
        batch's records that were not events, `quarantined`)."""
        return _retrying(lambda: self._handle_batch(consumer, events, positions, quarantined))

    def _handle_batch(self, consumer: str, events: Sequence[DomainEvent],
                      positions: Mapping[str, int],
                      quarantined: Sequence[QuarantineItem] = ()) -> Outcome:
        outcome = Outcome()
        with self._uow() as uow:
            uow.lock(f"saga-consumer:{consumer}")  # one writer per consumer name
            for item in quarantined:
                uow.add_exception(item)
            wanted: dict[str, list[tuple[str, DomainEvent]]] = {}
            for event in events:
                for kind, saga_id in self._route(event):
                    wanted.setdefault(kind, []).append((saga_id, event))
            for kind, items in wanted.items():
                stored = uow.sagas.load(kind, sorted({sid for sid, _ in items}))
                for saga_id, event in items:
                    instance = stored.get(saga_id) or SagaInstance(saga_id, kind)
                    stored[saga_id] = self._react(uow, instance, EventArrived(event), outcome)
            uow.save_positions(consumer, positions)
            uow.commit()
        self._report(outcome)
        return outcome

    def fire_due_timers(self, limit: int = 100) -> Outcome:
        """Deliver the timers due now (by the clock), at most `limit`, in one unit of work."""
        return _retrying(lambda: self._fire_due_timers(limit))

    def _fire_due_timers(self, limit: int) -> Outcome:
        outcome = Outcome()
        now = self._clock()
        with self._uow() as uow:
            for timer in uow.saga_timers.take_due(now, limit):
                instance = uow.sagas.load(timer.kind, [timer.saga_id]).get(timer.saga_id)
                if instance is None:
                    outcome.ignored += 1
                    outcome.timers.append((timer.kind, False))
                    continue
                after = self._react(uow, instance, TimerFired(timer.name), outcome)
                outcome.timers.append((timer.kind, after is not instance))
            uow.commit()
        self._report(outcome)
        return outcome

    def effect_done(self, request_id: str, *, succeeded: bool, result: Json | None = None,
                    failure: FailureClass = FailureClass.TEMPORARY, detail: str = "") -> bool:
        """An adapter's answer; False when it was a duplicate (nothing changed)."""
        return _retrying(lambda: self._effect_done(request_id, succeeded, result, failure,
                                                   detail))

    def _effect_done(self, request_id: str, succeeded: bool, result: Json | None,
                     failure: FailureClass, detail: str) -> bool:
        outcome = Outcome()
        with self._uow() as uow:
            request = uow.effects.finish(request_id, succeeded=succeeded, result=result or {})
            if request is None:
                return False
            instance = uow.sagas.load(request.kind, [request.saga_id]).get(request.saga_id)
            if instance is not None:
                message: Message = EffectSucceeded(request_id, result or {}) if succeeded \
                    else EffectFailed(request_id, failure, detail)
                self._react(uow, instance, message, outcome)
            uow.commit()
        self._report(outcome)
        return True

    def retry(self, kind: str, saga_id: str) -> SagaInstance | None:
        """A person's retry of a stuck saga (`cardpay exceptions retry`)."""
        return _retrying(lambda: self._retry(kind, saga_id))

    def _retry(self, kind: str, saga_id: str) -> SagaInstance | None:
        with self._uow() as uow:
            instance = uow.sagas.load(kind, [saga_id]).get(saga_id)
            if instance is None:
                return None
            outcome = Outcome()
            instance = self._react(uow, instance, RetryRequested(), outcome)
            uow.commit()
        self._report(outcome)
        return instance

    def _report(self, outcome: Outcome) -> None:
        if self._observer is None:
            return
        for r in outcome.reactions:
            self._observer.reacted(r.before, r.after, r.message, r.actions)
        for kind, advanced in outcome.timers:
            self._observer.timer_fired(kind, advanced)
        for kind, reason in outcome.opened:
            self._observer.exception_opened(kind, reason)

    # -- one reaction -----------------------------------------------------------------------------
    def _react(self, uow: SagaUnitOfWork, instance: SagaInstance, message: Message,
               outcome: Outcome) -> SagaInstance:
        definition = self._definitions[instance.kind]
        now = self._clock()
        after, actions = react(definition, instance, message, now)
        if after is instance:
            outcome.ignored += 1
            return instance
        uow.sagas.save(after, instance.version)
        outcome.advanced += 1
        outcome.reactions.append(Reaction(instance, after, message, tuple(actions)))
        abandoned = _abandoned(instance, after, message)
        if abandoned is not None:
            # the saga stopped waiting for it without its answer (a timeout, a compensation):
            # unless an adapter already took it, it must never be done now, after or while its
            # compensation runs; an adapter holding it makes this wait, then finds it answered
            uow.effects.finish(abandoned, succeeded=False, result={"withdrawn": after.stage})
        for action in actions:
            match action:
                case RequestEffect(effect=effect, attempt=attempt):
                    uow.effects.request(_request(after, effect, attempt))
                case SetTimer(name=name, due=due):
                    uow.saga_timers.set(DueTimer(after.kind, after.saga_id, name, due))
                case CancelTimer(name=name):
                    uow.saga_timers.cancel(after.kind, after.saga_id, name)
                case IssueCommand(command=command):
                    try:
                        self._commands(uow, command)
                    except DomainError as refused:
                        # the model refused what the saga decided (its writes were rolled back
                        # with the command's savepoint): a person looks; the feed goes on
                        key = f"{after.kind}:{after.saga_id}:{after.version}:command"
                        uow.add_exception(QuarantineItem(
                            source=f"saga:{after.kind}", key=key, reason="command_refused",
                            payload={"detail": str(refused), "saga_id": after.saga_id,
                                     "kind": after.kind, "stage": after.stage,
                                     "command_type": type(command).__name__,
                                     "command": to_json(command)
                                     if isinstance(command, Command) else repr(command)}))
                        outcome.exceptions.append(key)
                        outcome.opened.append((after.kind, "command_refused"))
                        log.warning("saga %s %s: %s refused: %s", after.kind, after.saga_id,
                                    type(command).__name__, refused)
                case OpenException(reason=reason, detail=detail, context=context):
                    key = f"{after.kind}:{after.saga_id}:{after.version}"
                    uow.add_exception(QuarantineItem(
                        source=f"saga:{after.kind}", key=key, reason=reason,
                        payload={"detail": detail, **context}))
                    outcome.exceptions.append(key)
                    outcome.opened.append((after.kind, reason))
                    log.warning("saga %s %s: %s (%s)", after.kind, after.saga_id, reason,
                                detail)
        return after


def _retrying(work: Callable[[], _T]) -> _T:
    """`work` (one unit of work) again while it loses races on an instance: each try reads
    fresh state, and the loser's writes were all rolled back."""
    for attempt in range(CONFLICT_RETRIES):
        try:
            return work()
        except ConcurrencyConflict:
            if attempt == CONFLICT_RETRIES - 1:
                raise
            log.info("saga unit of work lost a race; deciding again (try %d)", attempt + 2)
    raise AssertionError("unreachable")


def _abandoned(before: SagaInstance, after: SagaInstance, message: Message) -> str | None:
    """The request id of the effect `before` waited for and `after` no longer does, unless
    `message` was its answer (then it is answered already)."""
    if before.waiting is None:
        return None
    request_id = before.waiting.effect.request_id
    if after.waiting is not None and after.waiting.effect.request_id == request_id:
        return None
    if isinstance(message, EffectSucceeded | EffectFailed) and message.request_id == request_id:
        return None
    return request_id


def _request(instance: SagaInstance, effect: Effect, attempt: int) -> EffectRequest:
    return EffectRequest(effect.request_id, instance.kind, instance.saga_id, effect.name,
                         effect.payload, attempt)

"""The engine: one message in, the next instance and its actions out (pure; the shell stores and
executes them in one transaction).

What every saga gets from here, so that no definition writes it again:
- effect results are matched to the effect the saga waits for; a duplicate, a late answer to an
  abandoned try or an answer to nothing is ignored (at-least-once delivery, reordering);
- a failed effect is retried with backoff (a durable `retry:` timer) while its failure class and
  the policy allow, and a `timeout:` timer turns silence into a temporary failure;
- compensations are registered before their step and run last first, one at a time, each
  waiting for its success; one that keeps failing leaves the saga `STUCK` with an exception open
  (never lost, never retried for ever), and `RetryRequested` resumes it from there;
- a compensation started with `resume` undoes a step without ending the saga: while it runs the
  saga still hears its events and timers (it must queue what it wants to ask for), and once it
  succeeds the saga runs on and hears that success (a card payment reversed after a spend that
  did not land may still see that spend land late, and must refund it);
- an effect may be asked again under the request id it had (`request(..., request_id=)`): a
  re-drive of the same effect, which its adapter does at most once (a reorged transaction is
  broadcast again, never signed anew with another nonce);
- a finished saga ignores everything (it is never advanced twice).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any, Protocol

from sagas.engine.model import (
    FINISHED,
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
    Waiting,
)
from sagas.engine.retry import RETRIED, FailureClass, RetryPolicy

RETRY = "retry:"
TIMEOUT = "timeout:"


class Definition(Protocol):
    """One kind of saga: what it does on each message addressed to it."""

    @property
    def kind(self) -> str: ...

    @property
    def policy(self) -> RetryPolicy: ...

    def on_event(self, saga: Saga, event: Any) -> None: ...

    def on_timer(self, saga: Saga, name: str) -> None: ...

    def on_success(self, saga: Saga, effect: Effect, result: Json) -> None: ...

    def on_failure(self, saga: Saga, effect: Effect, failure: FailureClass,
                   detail: str) -> None:
        """The effect failed for good (not retried, or out of tries)."""
        ...


@dataclass
class Saga:
    """One reaction in progress: the instance as it becomes, and the actions asked so far."""

    instance: SagaInstance
    now: datetime
    policy: RetryPolicy
    actions: list[Action] = field(default_factory=list)

    # -- read -------------------------------------------------------------------------------
    @property
    def stage(self) -> str:
        return self.instance.stage

    @property
    def data(self) -> Json:
        return self.instance.data

    @property
    def waiting(self) -> Waiting | None:
        return self.instance.waiting

    # -- what a definition may do -------------------------------------------------------------
    def goto(self, stage: str, **data: Any) -> None:
        self.instance = replace(self.instance, stage=stage,
                                data={**self.instance.data, **data})

    def request(self, name: str, payload: Json | None = None, *,
                compensation: Effect | None = None, timeout: timedelta | None = None,
                request_id: str | None = None) -> Effect:
        """Ask for a side effect and wait for it. Its `compensation` (if any) is registered
        first, so it runs even when the step's outcome is never known (a crash, a timeout).
        `request_id`: the same effect again under the key it had (a re-drive, done at most once
        by its adapter), not a new step."""
        if self.instance.waiting is not None:
            raise RuntimeError(f"saga {self.instance.saga_id} already waits for "
                               f"{self.instance.waiting.effect.name}")
        steps = self.instance.steps + (request_id is None)
        effect = Effect(request_id or self.key(name, steps), name, dict(payload or {}))
        compensations = self.instance.compensations
        if compensation is not None:
            compensations = (*compensations, compensation)
        self.instance = replace(self.instance, steps=steps, compensations=compensations)
        self._send(Waiting(effect, timeout=timeout))
        return effect

    def key(self, name: str, step: int | None = None) -> str:
        """The idempotency key of step `step` (default: the next one) of this saga: derived,
        so a replay of the same messages asks for the same keys."""
        return f"{self.instance.saga_id}:{self.instance.steps + 1 if step is None else step}:{name}"

    def undo(self, name: str, payload: Json | None = None) -> Effect:
        """The compensation of the next step (pass it as `request(..., compensation=)`)."""
        return Effect(self.key(f"undo:{name}"), name, dict(payload or {}))

    def set_timer(self, name: str, due: datetime) -> None:
        self.actions.append(SetTimer(name, due))

    def cancel_timer(self, name: str) -> None:
        self.actions.append(CancelTimer(name))

    def issue(self, command: Any) -> None:
        self.actions.append(IssueCommand(command))

    def raise_exception(self, reason: str, detail: str, **context: Any) -> None:
        self.actions.append(OpenException(reason, detail, {
            "saga_id": self.instance.saga_id, "kind": self.instance.kind,
            "stage": self.instance.stage, **context}))

    def complete(self) -> None:
        self._abandon()
        self.instance = replace(self.instance, status=Status.COMPLETED)

    def compensate(self, reason: str, *, resume: bool = False) -> None:
        """Undo what was done: the registered compensations, last first (the step in flight is
        abandoned: its compensation was registered before it). `resume`: the saga runs on once
        they succeed (and hears its events meanwhile) instead of ending `COMPENSATED`."""
        self._abandon()
        self.instance = replace(self.instance, status=Status.COMPENSATING, problem=reason,
                                resume=resume)
        self._next_compensation()

    @property
    def listening(self) -> bool:
        """Whether the definition hears events and its timers now: while running, and while a
        resumable compensation runs (or is stuck)."""
        return self.instance.status is Status.RUNNING or (
            self.instance.resume and self.instance.status in (Status.COMPENSATING, Status.STUCK))

    # -- the engine's own moves ---------------------------------------------------------------
    def _send(self, waiting: Waiting) -> None:
        self.instance = replace(self.instance, waiting=waiting)
        self.actions.append(RequestEffect(waiting.effect, waiting.attempt))
        if waiting.timeout is not None:
            self.set_timer(TIMEOUT + waiting.effect.request_id, self.now + waiting.timeout)

    def _abandon(self) -> None:
        waiting = self.instance.waiting
        if waiting is not None:
            self.cancel_timer(TIMEOUT + waiting.effect.request_id)
            self.cancel_timer(RETRY + waiting.effect.request_id)
            self.instance = replace(self.instance, waiting=None)

    def _next_compensation(self) -> None:
        *rest, last = self.instance.compensations or (None,)
        if last is None:
            status = Status.RUNNING if self.instance.resume else Status.COMPENSATED
            self.instance = replace(self.instance, status=status, resume=False)
            return
        self.instance = replace(self.instance, compensations=tuple(rest))
        self._send(Waiting(last, compensating=True))


def react(definition: Definition, instance: SagaInstance, message: Message,
          now: datetime) -> tuple[SagaInstance, list[Action]]:
    """The next instance and its actions. Unchanged instance and no actions: nothing to do
    (the shell then writes nothing but its feed position)."""
    if instance.status in FINISHED:
        return instance, []
    saga = Saga(instance, now, definition.policy)
    match message:
        case EventArrived(event=event):
            stream, version = _position(event)
            if stream != instance.saga_id:
                stream = None  # another stream's events (a day's batch): the definition dedupes
            if stream is not None and version <= int(instance.seen.get(stream, 0)):
                return instance, []  # delivered again: taken already
            if saga.listening:
                definition.on_event(saga, event)
            if instance.version == 0 and saga.instance == instance and not saga.actions:
                return instance, []  # nothing starts a saga that does nothing with the event
            if stream is not None:
                saga.instance = replace(saga.instance, seen={**saga.instance.seen,
                                                             stream: version})
        case EffectSucceeded(request_id=rid, result=result):
            waiting = _matching(instance, rid)
            if waiting is not None:
                saga._abandon()
                if waiting.compensating:
                    saga._next_compensation()
                    if instance.resume and saga.instance.status is Status.RUNNING:
                        definition.on_success(saga, waiting.effect, result)  # resumed
                else:
                    definition.on_success(saga, waiting.effect, result)
        case EffectFailed(request_id=rid, failure=failure, detail=detail):
            waiting = _matching(instance, rid)
            # while a retry is set, another retriable failure is a duplicate; a final one (a
            # late answer to the try that timed out) still counts
            if waiting is not None and not (waiting.retry_set and failure in RETRIED):
                _failed(definition, saga, waiting, failure, detail)
        case TimerFired(name=name):
            _timer(definition, saga, name)
        case RetryRequested():
            waiting = instance.waiting
            if instance.status is Status.STUCK and waiting is not None:
                saga.instance = replace(instance, status=Status.COMPENSATING, problem=None)
                saga._send(Waiting(waiting.effect, compensating=True))
    if saga.instance == instance and not saga.actions:
        return instance, []
    return replace(saga.instance, version=instance.version + 1), saga.actions


def _position(event: Any) -> tuple[str | None, int]:
    """The event's stream and version, when it has them (domain events do)."""
    stream, version = getattr(event, "stream_id", None), getattr(event, "version", None)
    if isinstance(stream, str) and isinstance(version, int):
        return stream, version
    return None, 0


def _matching(instance: SagaInstance, request_id: str) -> Waiting | None:
    waiting = instance.waiting
    if waiting is None or waiting.effect.request_id != request_id \
            or instance.status is Status.STUCK:
        return None
    return waiting


def _failed(definition: Definition, saga: Saga, waiting: Waiting, failure: FailureClass,
            detail: str) -> None:
    rid = waiting.effect.request_id
    saga.cancel_timer(TIMEOUT + rid)
    if saga.policy.retries(failure, waiting.attempt):
        delay = saga.policy.delay(waiting.attempt, f"{saga.instance.saga_id}:{rid}")
        saga.set_timer(RETRY + rid, saga.now + delay)
        saga.instance = replace(saga.instance, waiting=replace(waiting, retry_set=True))
        return
    if waiting.compensating:
        saga.cancel_timer(RETRY + rid)
        saga.instance = replace(saga.instance, status=Status.STUCK,
                                problem=f"{waiting.effect.name} failed ({failure}): {detail}")
        saga.raise_exception("compensation_failed", detail, effect=waiting.effect.name,
                             request_id=rid, attempts=waiting.attempt, failure=str(failure))
        return
    saga._abandon()
    definition.on_failure(saga, waiting.effect, failure, detail)


def _timer(definition: Definition, saga: Saga, name: str) -> None:
    waiting = saga.instance.waiting
    if name.startswith((RETRY, TIMEOUT)):
        if waiting is None or name.split(":", 1)[1] != waiting.effect.request_id \
                or saga.instance.status is Status.STUCK:
            return  # a timer of an effect no longer waited for
        if name.startswith(RETRY):
            if waiting.retry_set:
                saga._send(replace(waiting, attempt=waiting.attempt + 1, retry_set=False))
        elif not waiting.retry_set:  # a try that already failed cannot also time out
            _failed(definition, saga, waiting, FailureClass.TEMPORARY, "timed out")
        return
    if saga.listening:
        definition.on_timer(saga, name)


__all__ = ["Definition", "IssueCommand", "Saga", "react"]

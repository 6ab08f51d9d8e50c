"""A saga instance, what it may be told, and what it may ask for: plain values, no I/O.

A saga (a process manager) coordinates one long-running process across parties that fail
independently: for a card payment, the card network, the chain and the ledger. Its state is a
`SagaInstance`, stored with optimistic concurrency (`version`); each `Message` it receives
produces a new instance and `Action`s that the shell carries out in the same transaction
(commands, timers, exceptions) or hands to an adapter through the outbox (`RequestEffect`: a side
effect outside the database, such as an on-chain transaction). A saga never assumes an effect
happened because it asked: it waits for `EffectSucceeded` (or the evidence, as a domain event).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from sagas.engine.retry import FailureClass

Json = Mapping[str, Any]


class Status(StrEnum):
    RUNNING = "running"
    COMPENSATING = "compensating"
    """Undoing what was done, last step first."""
    COMPLETED = "completed"
    COMPENSATED = "compensated"
    """Every registered compensation succeeded."""
    STUCK = "stuck"
    """A compensation kept failing: an exception is open; `RetryRequested` resumes it."""


FINISHED = frozenset({Status.COMPLETED, Status.COMPENSATED})


@dataclass(frozen=True, slots=True)
class Effect:
    """A side effect asked of an adapter. `request_id` is its idempotency key: derived from the
    saga and the step, the same on every retry, so an adapter that already did it answers with
    what it did instead of doing it again."""

    request_id: str
    name: str
    payload: Json = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Waiting:
    """The effect the saga waits for, and on which try."""

    effect: Effect
    attempt: int = 1
    compensating: bool = False
    timeout: timedelta | None = None
    """Silence for this long counts as a temporary failure (each try)."""
    retry_set: bool = False
    """The try failed and its `retry:` timer is set: only then does that timer send again (a
    timer delivered twice, or late, must not add a try)."""


@dataclass(frozen=True, slots=True)
class SagaInstance:
    saga_id: str
    kind: str
    version: int = 0
    status: Status = Status.RUNNING
    stage: str = "started"
    """Where the saga definition is (its own names)."""
    data: Json = field(default_factory=dict)
    compensations: tuple[Effect, ...] = ()
    """Registered before their steps ran; run last first."""
    waiting: Waiting | None = None
    steps: int = 0
    """Effects requested so far: numbers each step's idempotency key."""
    problem: str | None = None
    """Why the saga is stuck, or why it compensated."""
    seen: Json = field(default_factory=dict)
    """The last event version taken from the saga's own stream (the stream named like the saga,
    e.g. its payment's): an event at or below it is a redelivery (the feed is at-least-once) and
    changes nothing. A saga fed by many streams (a settlement day) dedupes them itself, so this
    does not grow with them."""
    resume: bool = False
    """The compensations under way were started with `resume`: once they succeed the saga runs
    on (it still hears its events while they run) instead of ending `COMPENSATED`."""


# -- what a saga is told ------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class EventArrived:
    """A domain event of the saga's process (from the event feed)."""

    event: Any


@dataclass(frozen=True, slots=True)
class TimerFired:
    name: str


@dataclass(frozen=True, slots=True)
class EffectSucceeded:
    request_id: str
    result: Json = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class EffectFailed:
    request_id: str
    failure: FailureClass
    detail: str = ""


@dataclass(frozen=True, slots=True)
class RetryRequested:
    """A person retried the saga's exception (`cardpay exceptions retry`)."""


Message = EventArrived | TimerFired | EffectSucceeded | EffectFailed | RetryRequested


# -- what a saga asks for -----------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class RequestEffect:
    effect: Effect
    attempt: int


@dataclass(frozen=True, slots=True)
class SetTimer:
    """Deliver `TimerFired(name)` at `due` (durable: survives restarts; setting it again moves it)."""

    name: str
    due: datetime


@dataclass(frozen=True, slots=True)
class CancelTimer:
    name: str


@dataclass(frozen=True, slots=True)
class IssueCommand:
    """A domain command the shell handles in the same transaction (e.g. release a hold)."""

    command: Any


@dataclass(frozen=True, slots=True)
class OpenException:
    """Something a person must look at; `context` says what, with everything needed to act."""

    reason: str
    detail: str
    context: Json = field(default_factory=dict)


Action = RequestEffect | SetTimer | CancelTimer | IssueCommand | OpenException

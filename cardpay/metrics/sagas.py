"""Prometheus metrics of the saga worker: steps, retries, compensations, timers fired, exceptions
opened, finished sagas.

`SagaMetrics` is the `cardpay.handlers.sagas.SagaObserver` the runner tells after each commit, so
a unit of work that rolled back counts nothing. Labels are bounded: the saga kind, the message
kind, the effect name, the exception reason (fixed codes of the saga definitions) and the status.
Timers due but not yet fired and the open exceptions are state, read from the database
(`cardpay.metrics.state`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server

from cardpay.runtime.supervise import supervised_errors
from sagas.engine.model import (
    FINISHED,
    Action,
    EffectFailed,
    EffectSucceeded,
    EventArrived,
    Message,
    RequestEffect,
    RetryRequested,
    SagaInstance,
    Status,
    TimerFired,
)


def message_kind(message: Message) -> str:
    """The bounded label of what a saga was told."""
    match message:
        case EventArrived():
            return "event"
        case TimerFired():
            return "timer"
        case EffectSucceeded():
            return "effect_succeeded"
        case EffectFailed():
            return "effect_failed"
        case RetryRequested():
            return "retry_requested"
    return "other"


class SagaMetrics:
    """One registry per process (`cardpay sagas run --metrics-port`, or the API's registry when
    its exceptions routes resume a saga)."""

    def __init__(self, registry: CollectorRegistry | None = None, *,
                 with_errors: bool = True) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.steps = Counter(
            "cardpay_saga_steps_total",
            "Saga reactions committed (the saga moved), by saga kind and what it was told "
            "(event, timer, effect_succeeded, effect_failed, retry_requested)",
            ["kind", "message"], registry=r)
        self.effects_requested = Counter(
            "cardpay_saga_effects_requested_total",
            "Side effects requested through the effects outbox (first tries and retries), by "
            "saga kind and effect", ["kind", "effect"], registry=r)
        self.retries = Counter(
            "cardpay_saga_retries_total",
            "Side effects requested again after a failed or silent try, by saga kind and effect",
            ["kind", "effect"], registry=r)
        self.compensations = Counter(
            "cardpay_saga_compensations_total",
            "Sagas that started undoing their steps (running to compensating or compensated)",
            ["kind"], registry=r)
        self.finished = Counter(
            "cardpay_saga_finished_total",
            "Sagas that ended, by kind and final status (completed, compensated)",
            ["kind", "status"], registry=r)
        self.stuck = Counter(
            "cardpay_saga_stuck_total",
            "Sagas that became stuck (a compensation kept failing; an exception is open)",
            ["kind"], registry=r)
        self.timers_fired = Counter(
            "cardpay_saga_timers_fired_total",
            "Due timers taken and delivered, by saga kind and outcome (advanced: the saga "
            "moved; ignored: the saga was gone or had moved on)", ["kind", "outcome"],
            registry=r)
        self.exceptions_opened = Counter(
            "cardpay_saga_exceptions_opened_total",
            "Exceptions the sagas opened for a person, by saga kind and reason code",
            ["kind", "reason"], registry=r)
        self.lag: Gauge | None = None
        """Set by the saga worker's own process only (the API resumes sagas, consumes nothing)."""
        if with_errors:
            self.errors = supervised_errors(r)
            """Failed turns of the saga worker, retried (component `saga worker`)."""
            self.lag = Gauge(
                "cardpay_saga_lag_messages",
                "Messages on the saga worker's feed beyond its position (Kafka: the last "
                "fetch's high watermarks minus its offsets; PostgreSQL log: events past its "
                "stored position)", registry=r)

    def expect(self, effects: Mapping[str, Sequence[str]]) -> None:
        """Export 0 now for what the worker may count later: per saga kind (`effects`: kind ->
        its effect names), its retries per effect, compensations, stuck sagas, finished sagas
        per status and fired timers per outcome. Why: a counter with labels has no series until
        its first increment, and `rate()` of no series is no data, so a dashboard panel or an
        alert on a rare event (a retry, a compensation) would stay blank, indistinguishable
        from a renamed metric, until the first one happens (Prometheus's advice: initialise the
        label values you know). Exception reasons are not listed here: they are open-ended
        codes per saga definition (`cardpay_open_exceptions` shows what is open)."""
        for kind, names in effects.items():
            for name in names:
                self.retries.labels(kind, name)
            self.compensations.labels(kind)
            self.stuck.labels(kind)
            for status in (Status.COMPLETED, Status.COMPENSATED):
                self.finished.labels(kind, status.value)
            for outcome in ("advanced", "ignored"):
                self.timers_fired.labels(kind, outcome)

    # -- cardpay.handlers.sagas.SagaObserver --------------------------------------------------
    def reacted(self, before: SagaInstance, after: SagaInstance, message: Message,
                actions: Sequence[Action]) -> None:
        self.steps.labels(after.kind, message_kind(message)).inc()
        for action in actions:
            if isinstance(action, RequestEffect):
                self.effects_requested.labels(after.kind, action.effect.name).inc()
                if action.attempt > 1:
                    self.retries.labels(after.kind, action.effect.name).inc()
        if before.status is Status.RUNNING and after.status in (Status.COMPENSATING,
                                                               Status.COMPENSATED):
            self.compensations.labels(after.kind).inc()
        if after.status in FINISHED and before.status not in FINISHED:
            self.finished.labels(after.kind, after.status.value).inc()
        if after.status is Status.STUCK and before.status is not Status.STUCK:
            self.stuck.labels(after.kind).inc()

    def timer_fired(self, kind: str, advanced: bool) -> None:
        self.timers_fired.labels(kind, "advanced" if advanced else "ignored").inc()

    def exception_opened(self, kind: str, reason: str) -> None:
        self.exceptions_opened.labels(kind, reason).inc()

    def serve(self, port: int, host: str = "127.0.0.1") -> None:
        """Expose /metrics on host:port (loopback by default)."""
        start_http_server(port, addr=host, registry=self.registry)

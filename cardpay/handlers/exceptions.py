"""The exceptions queue: what a person must act on, kept in the quarantine table.

Exceptions are the quarantine rows of the card network (messages it imposed beyond the funds,
returns matching nothing, clearings parked past their timeout, bodies refused) and of the sagas
(a compensation out of tries: the saga is `STUCK` until someone retries it). A person sees them
(`cardpay exceptions list|show`), retries a stuck saga (`retry`: it resumes the compensation
that failed; if that fails again, a new exception opens and this one keeps its trace) or
resolves one with a note after acting outside cardpay (`resolve`). Nothing is deleted.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from cardpay.handlers.ports import QuarantinedRow, UnitOfWork
from cardpay.handlers.sagas import SagaRunner
from sagas.engine.model import Status

SOURCES = ("network", "saga:")
"""Quarantine sources whose rows are exceptions (prefixes)."""

UowFactory = Callable[[], UnitOfWork]


@dataclass(frozen=True, slots=True)
class ExceptionOutcome:
    outcome: str
    """retried | resolved | already_resolved | not_retryable | not_found"""
    message: str


def is_exception(row: QuarantinedRow) -> bool:
    return row.source.startswith(SOURCES)


def _find(uow_factory: UowFactory, item_id: int) -> QuarantinedRow | ExceptionOutcome:
    with uow_factory() as uow:
        row = uow.quarantine.get(item_id)
    if row is None or not is_exception(row):
        return ExceptionOutcome("not_found", f"no exception {item_id}")
    if row.resolved_at is not None:
        return ExceptionOutcome("already_resolved", f"already resolved: {row.resolution}")
    return row


def open_exceptions(uow_factory: UowFactory, *, include_resolved: bool = False,
                    limit: int | None = None) -> list[QuarantinedRow]:
    """The exceptions still open (with `include_resolved`, every one), oldest first."""
    with uow_factory() as uow:
        rows = [row for prefix in SOURCES
                for row in uow.quarantine.list(prefix, include_resolved=include_resolved)]
    rows.sort(key=lambda row: row.id)
    return rows if limit is None else rows[:limit]


class ExceptionsQueue:
    """The queue as the API serves it: list, resolve and (with the saga runner) retry, on one
    unit-of-work factory — the same functions `cardpay exceptions` uses."""

    def __init__(self, uow_factory: UowFactory, runner: SagaRunner | None = None) -> None:
        self._uow = uow_factory
        self._runner = runner

    def retry(self, item_id: int) -> ExceptionOutcome:
        if self._runner is None:
            return ExceptionOutcome("not_retryable", "this server has no saga runner: use "
                                    "`cardpay exceptions retry`")
        return retry(self._uow, self._runner, item_id)

    def list(self, *, include_resolved: bool = False,
             limit: int | None = None) -> list[QuarantinedRow]:
        return open_exceptions(self._uow, include_resolved=include_resolved, limit=limit)

    def resolve(self, item_id: int, note: str) -> ExceptionOutcome:
        return resolve(self._uow, item_id, note)


def retry(uow_factory: UowFactory, runner: SagaRunner, item_id: int) -> ExceptionOutcome:
    """Resume the stuck saga behind an exception."""
    row = _find(uow_factory, item_id)
    if isinstance(row, ExceptionOutcome):
        return row
    saga_id = row.payload.get("saga_id")
    if not row.source.startswith("saga:") or not isinstance(saga_id, str):
        return ExceptionOutcome("not_retryable", "nothing in cardpay can redo this: act on it "
                                "(see `show`), then `resolve` it with a note")
    kind = row.source.split(":", 1)[1]
    instance = runner.retry(kind, saga_id)
    if instance is None:
        return ExceptionOutcome("not_retryable", f"saga {kind} {saga_id} does not exist")
    if instance.status is Status.STUCK:
        return ExceptionOutcome("not_retryable", f"saga {saga_id} is stuck at another step; "
                                "its newest exception is the one to retry")
    message = f"retried: saga {saga_id} is {instance.status.value}"
    _resolve(uow_factory, row.id, message)
    return ExceptionOutcome("retried", message)


def resolve(uow_factory: UowFactory, item_id: int, note: str) -> ExceptionOutcome:
    """Close an exception a person dealt with; the note says how."""
    if not note.strip():
        raise ValueError("a resolution needs a note saying what was done")
    row = _find(uow_factory, item_id)
    if isinstance(row, ExceptionOutcome):
        return row
    message = f"resolved by hand: {note.strip()}"
    _resolve(uow_factory, row.id, message)
    return ExceptionOutcome("resolved", message)


def _resolve(uow_factory: UowFactory, item_id: int, message: str) -> None:
    with uow_factory() as uow:
        uow.quarantine.resolve(item_id, message)
        uow.commit()

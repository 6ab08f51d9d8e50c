"""The sagas' storage in memory (`cardpay.handlers.sagas.SagaUnitOfWork`), with PostgreSQL's
semantics where the service layer depends on them; it passes the same contract suite as the
Postgres repositories (tests/integration/test_saga_store_contract.py).

`FakeSagaDatabase` is a `FakeDatabase` (so a saga's commands can use the write side's fakes in
the same unit of work) with the saga tables kept apart: a unit of work stages its saga writes
in an overlay and merges them row by row on commit, as PostgreSQL does, so two open units of
work do not overwrite each other's rows. (The inherited tables, the quarantine among them, keep
`FakeDatabase`'s whole-state commit: last commit wins between overlapping units of work.)

What PostgreSQL does with row locks, the fake does with a lock table on the database, released
when the unit of work commits or ends:
- `take_due` and `claim` skip rows another open unit of work holds (SKIP LOCKED);
- a write to a row another open unit of work holds waits for it (units of work on threads), as
  PostgreSQL's does, then reads the row again: a second writer of one instance then finds the
  version moved (`ConcurrencyConflict`), a second answer finds the effect answered (None). In a
  single thread that wait could never end, so after a few seconds it is a `RuntimeError`.
Instances are stored as their JSON text (`sagas.engine.codec`), so what does not survive
PostgreSQL's JSONB does not survive here either.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime

from cardpay.errors import ConcurrencyConflict
from cardpay.handlers.ports import QuarantineItem
from cardpay.handlers.sagas import DueTimer, EffectRequest
from sagas.engine.codec import from_json, to_json
from sagas.engine.model import Json, SagaInstance, Status
from tests.fakes.storage import FakeDatabase, FakeUnitOfWork

WAIT_S = 5.0
SagaKey = tuple[str, str]
TimerKey = tuple[str, str, str]


@dataclass(frozen=True)
class _Stored:
    version: int
    state: str
    """`to_json` as JSON text."""
    stamp: int
    """The writing unit of work's start (PostgreSQL's `now()` in `updated_at`)."""

    def instance(self, kind: str, saga_id: str) -> SagaInstance:
        return from_json(saga_id, kind, self.version, json.loads(self.state))


@dataclass(frozen=True)
class EffectRow:
    request: EffectRequest
    stamp: int
    """When it was (last) requested: the unit of work's start, as `requested_at`."""
    status: str = "pending"
    result: Json | None = None


@dataclass
class SagaTables:
    instances: dict[SagaKey, _Stored] = field(default_factory=dict)
    timers: dict[TimerKey, DueTimer] = field(default_factory=dict)
    effects: dict[str, EffectRow] = field(default_factory=dict)
    positions: dict[str, dict[str, int]] = field(default_factory=dict)


@dataclass
class _Overlay:
    """A unit of work's saga writes (None: deleted)."""

    instances: dict[SagaKey, _Stored] = field(default_factory=dict)
    timers: dict[TimerKey, DueTimer | None] = field(default_factory=dict)
    effects: dict[str, EffectRow] = field(default_factory=dict)
    positions: dict[str, dict[str, int]] = field(default_factory=dict)
    expected: dict[SagaKey, _Stored | None] = field(default_factory=dict)
    """Each saved instance's committed row as it was read (None: absent): checked on commit."""
    finished: dict[str, EffectRow] = field(default_factory=dict)
    """Each finished effect's committed row as it was pending: checked on commit."""


class FakeSagaDatabase(FakeDatabase):
    def __init__(self) -> None:
        super().__init__()
        self.sagas = SagaTables()
        self.locks: dict[object, int] = {}
        """Row -> the open unit of work holding it (its stamp)."""
        self.released = threading.Condition()
        self.started = 0

    def uow(self) -> FakeSagaUnitOfWork:
        return FakeSagaUnitOfWork(self)


class FakeSagaUnitOfWork(FakeUnitOfWork):
    def __init__(self, db: FakeSagaDatabase) -> None:
        super().__init__(db)
        self._saga_db = db
        self._overlay: _Overlay | None = None
        self.stamp = 0

    def __enter__(self) -> FakeSagaUnitOfWork:
        super().__enter__()
        self._saga_db.started += 1
        self.stamp = self._saga_db.started
        self._overlay = _Overlay()
        self.sagas = FakeSagaStore(self)
        self.saga_timers = FakeSagaTimers(self)
        self.effects = FakeEffectRequests(self)
        return self

    def __exit__(self, *exc: object) -> None:
        self._release()
        self._overlay = None
        super().__exit__(*exc)

    def _release(self) -> None:
        db = self._saga_db
        with db.released:
            for row in [r for r, owner in db.locks.items() if owner == self.stamp]:
                del db.locks[row]
            db.released.notify_all()

    # -- shared by the repositories -----------------------------------------------------------
    @property
    def overlay(self) -> _Overlay:
        if self._overlay is None:
            raise RuntimeError("unit of work used outside its `with` block")
        return self._overlay

    @property
    def tables(self) -> SagaTables:
        return self._saga_db.sagas

    def lock_row(self, row: object, *, wait: bool = True) -> bool:
        """Take `row` for this unit of work, waiting for the open one that holds it (or, with
        `wait=False`, False at once: SKIP LOCKED)."""
        db = self._saga_db
        with db.released:
            while db.locks.setdefault(row, self.stamp) != self.stamp:
                if not wait:
                    return False
                if not db.released.wait(WAIT_S):
                    raise RuntimeError(f"{row} stayed locked by another open unit of work "
                                       "(in this thread it never ends)")
            return True

    # -- SagaUnitOfWork -----------------------------------------------------------------------
    def lock(self, key: str) -> None:
        """PostgreSQL's transaction-scoped advisory lock: held until commit or the end."""
        self._staged()
        self.lock_row(("advisory", key))

    def add_exception(self, item: QuarantineItem) -> None:
        self.quarantine.add(item)

    def load_positions(self, consumer: str) -> dict[str, int]:
        return dict(self.overlay.positions.get(consumer)
                    or self.tables.positions.get(consumer, {}))

    def save_positions(self, consumer: str, positions: Mapping[str, int]) -> None:
        merged = self.load_positions(consumer)
        for source, position in positions.items():
            merged[source] = max(position, merged.get(source, position))  # only forward
        self.overlay.positions[consumer] = merged

    def commit(self) -> None:
        overlay, tables = self.overlay, self.tables
        for key, seen in overlay.expected.items():
            if tables.instances.get(key) is not seen:
                raise ConcurrencyConflict(f"saga {key[0]}/{key[1]} was advanced by another "
                                          "unit of work first")
        for request_id, pending in overlay.finished.items():
            if tables.effects.get(request_id) is not pending:
                raise ConcurrencyConflict(f"effect {request_id} was answered by another "
                                          "unit of work first")
        super().commit()
        tables.instances.update(overlay.instances)
        for timer_key, timer in overlay.timers.items():
            if timer is None:
                tables.timers.pop(timer_key, None)
            else:
                tables.timers[timer_key] = timer
        tables.effects.update(overlay.effects)
        for consumer, positions in overlay.positions.items():
            stored = tables.positions.setdefault(consumer, {})
            for source, position in positions.items():
                stored[source] = max(position, stored.get(source, position))
        self._release()  # PostgreSQL's locks end with the transaction
        self._overlay = _Overlay()  # and what follows is a new one


class FakeSagaStore:
    def __init__(self, uow: FakeSagaUnitOfWork) -> None:
        self._uow = uow

    def _get(self, key: SagaKey) -> _Stored | None:
        return self._uow.overlay.instances.get(key) or self._uow.tables.instances.get(key)

    def load(self, kind: str, saga_ids: Sequence[str]) -> dict[str, SagaInstance]:
        found = {}
        for saga_id in saga_ids:
            stored = self._get((kind, saga_id))
            if stored is not None:
                found[saga_id] = stored.instance(kind, saga_id)
        return found

    def save(self, instance: SagaInstance, expected_version: int) -> None:
        key = (instance.kind, instance.saga_id)
        self._uow.lock_row(("saga", key))
        current = self._get(key)
        if (current.version if current is not None else 0) != expected_version:
            raise ConcurrencyConflict(f"saga {key[0]}/{key[1]} is no longer at version "
                                      f"{expected_version}: another worker advanced it")
        overlay = self._uow.overlay
        if key not in overlay.expected:
            overlay.expected[key] = self._uow.tables.instances.get(key)
        # JSON text as JSONB keeps it: what cannot be stored fails here, as it would there
        overlay.instances[key] = _Stored(instance.version, json.dumps(to_json(instance)),
                                         self._uow.stamp)

    def find(self, status: Status | None = None, kind: str | None = None,
             limit: int = 100) -> list[SagaInstance]:
        rows = {**self._uow.tables.instances, **self._uow.overlay.instances}
        found = [(stored.stamp, k, sid, stored) for (k, sid), stored in rows.items()
                 if kind in (None, k)]
        instances = [stored.instance(k, sid) for _, k, sid, stored in sorted(
            found, key=lambda f: (f[0], f[1], f[2]))]
        return [i for i in instances if status in (None, i.status)][:limit]


class FakeSagaTimers:
    def __init__(self, uow: FakeSagaUnitOfWork) -> None:
        self._uow = uow

    def _visible(self) -> dict[TimerKey, DueTimer]:
        merged: dict[TimerKey, DueTimer | None] = {**self._uow.tables.timers,
                                                   **self._uow.overlay.timers}
        return {k: t for k, t in merged.items() if t is not None}

    def set(self, timer: DueTimer) -> None:
        key = (timer.kind, timer.saga_id, timer.name)
        self._uow.lock_row(("timer", key))
        self._uow.overlay.timers[key] = timer

    def cancel(self, kind: str, saga_id: str, name: str) -> None:
        key = (kind, saga_id, name)
        if key in self._visible():
            self._uow.lock_row(("timer", key))
            self._uow.overlay.timers[key] = None

    def take_due(self, now: datetime, limit: int) -> list[DueTimer]:
        due = sorted((t for t in self._visible().values() if t.due <= now),
                     key=lambda t: (t.due, t.kind, t.saga_id, t.name))
        taken: list[DueTimer] = []
        for timer in due:
            if len(taken) == limit:
                break
            key = (timer.kind, timer.saga_id, timer.name)
            if self._uow.lock_row(("timer", key), wait=False):  # SKIP LOCKED
                self._uow.overlay.timers[key] = None
                taken.append(timer)
        return taken


class FakeEffectRequests:
    def __init__(self, uow: FakeSagaUnitOfWork) -> None:
        self._uow = uow

    def _get(self, request_id: str) -> EffectRow | None:
        return self._uow.overlay.effects.get(request_id) \
            or self._uow.tables.effects.get(request_id)

    def request(self, request: EffectRequest) -> None:
        stored = replace(request, payload=json.loads(json.dumps(dict(request.payload))))
        self._uow.lock_row(("effect", request.request_id))
        self._uow.overlay.effects[request.request_id] = EffectRow(stored, self._uow.stamp)

    def claim(self, names: Sequence[str], limit: int) -> list[EffectRequest]:
        rows = {**self._uow.tables.effects, **self._uow.overlay.effects}
        pending = sorted((r for r in rows.values()
                          if r.status == "pending" and r.request.name in names),
                         key=lambda r: (r.stamp, r.request.request_id))
        claimed: list[EffectRequest] = []
        for row in pending:
            if len(claimed) == limit:
                break
            if self._uow.lock_row(("effect", row.request.request_id), wait=False):
                claimed.append(row.request)
        return claimed

    def finish(self, request_id: str, *, succeeded: bool, result: Json) -> EffectRequest | None:
        self._uow.lock_row(("effect", request_id))
        row = self._get(request_id)
        if row is None or row.status != "pending":
            return None
        overlay = self._uow.overlay
        committed = self._uow.tables.effects.get(request_id)
        if committed is row and request_id not in overlay.finished:
            overlay.finished[request_id] = committed
        overlay.effects[request_id] = replace(
            row, status="succeeded" if succeeded else "failed",
            result=json.loads(json.dumps(dict(result))))
        return row.request


__all__ = ["EffectRow", "FakeSagaDatabase", "FakeSagaUnitOfWork"]


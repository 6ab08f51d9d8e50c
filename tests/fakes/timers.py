"""The network sweep's repository in memory (`cardpay.handlers.network_timers.NetworkTimers`),
on the fake database's staged state, so it commits and rolls back with the unit of work. It
passes the same contract suite as `PostgresNetworkTimers`
(tests/integration/test_network_timers_contract.py)."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime

from cardpay.handlers.network_timers import DueHold, ParkedWatch
from domain.ledger.model import PendingStatus
from domain.serialization import from_recorded
from tests.fakes.storage import FakeDatabase, FakeUnitOfWork, State


class FakeNetworkTimers:
    def __init__(self, state: State) -> None:
        self._s = state  # a savepoint restores `state` in place: read it each time

    def due_holds(self, now: datetime, limit: int,
                  after: tuple[datetime, str] | None = None) -> list[DueHold]:
        due = [DueHold(r.transfer.id, r.transfer.user_data, r.expires_at)
               for r in self._s.ledger.transfers.values()
               if r.status is PendingStatus.PENDING and r.expires_at is not None
               and r.expires_at <= now]
        due.sort(key=lambda h: (h.expires_at, h.transfer_id))
        return [h for h in due if after is None or (h.expires_at, h.transfer_id) > after][:limit]

    def watch_new_parked(self, limit: int) -> int:
        new = [r for r in self._s.log
               if r.position > self._s.sweep_position and r.type == "ClearingParked"][:limit]
        for recorded in new:
            if recorded.stream_id not in self._s.parked_watch:
                self._s.parked_watch[recorded.stream_id] = ParkedWatch(
                    recorded.stream_id, from_recorded(recorded).occurred_at)
        if new:
            self._s.sweep_position = new[-1].position
        return len(new)

    def parked_to_check(self, cutoff: datetime, limit: int) -> list[ParkedWatch]:
        versions: dict[str, int] = {}
        for recorded in self._s.log:
            versions[recorded.stream_id] = max(versions.get(recorded.stream_id, 0),
                                               recorded.version)
        found = [w for w in self._s.parked_watch.values()
                 if (w.exception_at is None and w.parked_since <= cutoff)
                 or versions.get(w.payment_id, 0) > w.checked_version]
        return sorted(found, key=lambda w: (w.parked_since, w.payment_id))[:limit]

    def checked(self, payment_id: str, version: int,
                exception_at: datetime | None = None) -> None:
        watch = self._s.parked_watch.get(payment_id)
        if watch is not None:
            self._s.parked_watch[payment_id] = replace(
                watch, checked_version=version, exception_at=watch.exception_at or exception_at)

    def unwatch(self, payment_id: str) -> None:
        self._s.parked_watch.pop(payment_id, None)


class FakeSweepUnitOfWork(FakeUnitOfWork):
    def __enter__(self) -> FakeSweepUnitOfWork:
        super().__enter__()
        self.timers = FakeNetworkTimers(self._staged())
        return self


class FakeSweepDatabase(FakeDatabase):
    """A `FakeDatabase` whose units of work carry the sweep's repository."""

    def uow(self) -> FakeSweepUnitOfWork:
        return FakeSweepUnitOfWork(self)

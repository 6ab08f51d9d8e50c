"""In-memory fakes of the projector's ports: the event `Feed` and the `ProjectionUnitOfWork`.

`FakeFeed` delivers a fixed list of records (events and undecodable records) from one or more
sources, at least once: `start` resumes after the positions it is given, so a restart from older
positions redelivers. `FakeProjectionStore` is the committed state; each `FakeProjectionUnitOfWork`
stages its writes and publishes them all at once on `commit` (or not at all when the commit fails
or the unit of work is left without committing).
"""

from __future__ import annotations

import copy
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from typing import Any

from projector.daily import DayFigures, DayKey
from projector.feed import FeedMessage, Positions, RejectedMessage
from projector.payments import PaymentRow

Record = FeedMessage | RejectedMessage


class FakeFeed:
    def __init__(self, records: Sequence[Record]) -> None:
        self.records = list(records)
        self.started_with: dict[str, int] | None = None
        self.stopped = False
        self.polls = 0
        self._positions: dict[str, int] = {}
        self._cursor = 0
        self._rejected: list[RejectedMessage] = []

    def append(self, record: Record) -> None:
        self.records.append(record)

    async def start(self, positions: Positions) -> None:
        self.started_with = dict(positions)
        self._positions = dict(positions)
        self._cursor = 0
        self._rejected = []

    async def poll(self, max_messages: int, timeout: float) -> list[FeedMessage]:
        assert self.started_with is not None, "poll before start"
        self.polls += 1
        out: list[FeedMessage] = []
        while self._cursor < len(self.records) and len(out) < max_messages:
            record = self.records[self._cursor]
            self._cursor += 1
            if record.offset < self._positions.get(record.source, 0):
                continue  # consumed before the stored positions
            self._positions[record.source] = record.offset + 1
            if isinstance(record, RejectedMessage):
                self._rejected.append(record)
            else:
                out.append(record)
        return out

    def positions(self) -> dict[str, int]:
        return dict(self._positions)

    def take_rejected(self) -> list[RejectedMessage]:
        rejected, self._rejected = self._rejected, []
        return rejected

    async def stop(self) -> None:
        self.stopped = True


@dataclass(frozen=True)
class Quarantined:
    source: str
    key: str
    reason: str
    payload: dict[str, Any]


class CommitFailed(Exception):
    """The fake database refused the commit."""


@dataclass
class Commit:
    """What one commit wrote: rows and positions together."""

    rows: list[PaymentRow]
    positions: dict[str, dict[str, int]]
    quarantined: list[Quarantined]


@dataclass
class FakeProjectionStore:
    rows: dict[str, PaymentRow] = field(default_factory=dict)
    daily: dict[DayKey, DayFigures] = field(default_factory=dict)
    positions: dict[str, dict[str, int]] = field(default_factory=dict)
    quarantined: list[Quarantined] = field(default_factory=list)
    commits: list[Commit] = field(default_factory=list)
    fail_commits: bool = False
    locks: list[str] = field(default_factory=list)

    def uow(self) -> FakeProjectionUnitOfWork:
        return FakeProjectionUnitOfWork(self)

    def snapshot(self) -> tuple[object, ...]:
        return (dict(self.rows), copy.deepcopy(self.positions), list(self.quarantined),
                len(self.commits))


class FakeProjectionUnitOfWork:
    def __init__(self, store: FakeProjectionStore) -> None:
        self.store = store
        self._rows: dict[str, PaymentRow] = {}
        self._daily: dict[DayKey, DayFigures] = {}
        self._positions: dict[str, dict[str, int]] = {}
        self._quarantined: list[Quarantined] = []
        self.committed = False

    def __enter__(self) -> FakeProjectionUnitOfWork:
        return self

    def __exit__(self, *exc: object) -> None:
        # Leaving without a commit (or after a failed one) rolls everything back.
        self._rows, self._daily, self._positions, self._quarantined = {}, {}, {}, []

    def lock(self, key: str) -> None:
        """One process, one writer: nothing to serialize in memory; recorded for the tests."""
        self.store.locks.append(key)

    def lock_sources(self, key: str, sources: Collection[str]) -> None:
        """As `lock`: recorded, one entry per source (`key:source`), in the order taken."""
        self.store.locks.extend(f"{key}:{source}" for source in sorted(set(sources)))

    def commit(self) -> None:
        if self.store.fail_commits:
            raise CommitFailed("commit refused")
        for pid, row in self._rows.items():
            stored = self.store.rows.get(pid)
            if stored is None or stored.last_version < row.last_version:
                self.store.rows[pid] = row  # a row only moves to a newer version
        for key, figures in self._daily.items():
            self.store.daily[key] = self.store.daily.get(key, DayFigures()) + figures
        for consumer, positions in self._positions.items():
            kept = self.store.positions.setdefault(consumer, {})
            for source, position in positions.items():
                kept[source] = max(position, kept.get(source, position))  # only forward
        seen = {(q.source, q.key) for q in self.store.quarantined}
        for q in self._quarantined:
            if (q.source, q.key) not in seen:  # once per source and key
                seen.add((q.source, q.key))
                self.store.quarantined.append(q)
        self.store.commits.append(Commit(list(self._rows.values()),
                                         copy.deepcopy(self._positions),
                                         list(self._quarantined)))
        self._rows, self._daily, self._positions, self._quarantined = {}, {}, {}, []
        self.committed = True

    def load_positions(self, consumer: str) -> dict[str, int]:
        return {**self.store.positions.get(consumer, {}), **self._positions.get(consumer, {})}

    def save_positions(self, consumer: str, positions: Positions) -> None:
        self._positions.setdefault(consumer, {}).update(positions)

    def get_payments(self, payment_ids: list[str]) -> dict[str, PaymentRow]:
        rows = {**self.store.rows, **self._rows}
        return {pid: rows[pid] for pid in payment_ids if pid in rows}

    def put_payments(self, rows: list[PaymentRow]) -> None:
        for row in rows:
            self._rows[row.payment_id] = row

    def add_daily(self, figures: dict[DayKey, DayFigures]) -> None:
        for key, moved in figures.items():
            self._daily[key] = self._daily.get(key, DayFigures()) + moved

    def get_daily(self, keys: list[DayKey]) -> dict[DayKey, DayFigures]:
        out: dict[DayKey, DayFigures] = {}
        for key in keys:
            figures = self.store.daily.get(key, DayFigures()) + self._daily.get(key, DayFigures())
            if key in self.store.daily or key in self._daily:
                out[key] = figures
        return out

    def quarantine(self, source: str, key: str, reason: str, payload: dict[str, Any]) -> None:
        self._quarantined.append(Quarantined(source, key, reason, dict(payload)))

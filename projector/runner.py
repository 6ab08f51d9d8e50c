"""The projector loop: feed batch → read-model rows + feed positions, one transaction per batch.

One feed feeds two read models in the same transaction: `payments` (a row per payment) and
`daily` (per day and token, the sum of what each applied event changed in its payment's row).

Exactly-once effects over an at-least-once feed: positions are stored with the rows they produced,
and rows remember the last version applied, so a redelivered event changes nothing.

These are the pure parts: `start` (load the stored positions, start the feed there), `run_once`
(one batch, one transaction) and `stop`. The long-running loop lives in the shell
(`cardpay.bootstrap.project`, on `cardpay.runtime.supervise`): when `run_once` fails the feed has
already moved past the batch in memory, so the loop stops the feed and starts it again from the
positions stored with the last committed batch: no batch is skipped.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection
from typing import Any, Protocol

from domain.errors import DomainError
from domain.events import DomainEvent
from domain.serialization import from_recorded
from projector.daily import DayFigures, DayKey, from_rows_and_events
from projector.errors import OutOfOrder
from projector.feed import Feed, FeedMessage, Positions, RejectedMessage, not_yet_stored
from projector.payments import PaymentRow, evolve, is_duplicate

log = logging.getLogger(__name__)


class ProjectionUnitOfWork(Protocol):
    def __enter__(self) -> ProjectionUnitOfWork: ...
    def __exit__(self, *exc: object) -> None: ...
    def commit(self) -> None: ...
    def load_positions(self, consumer: str) -> dict[str, int]: ...
    def save_positions(self, consumer: str, positions: Positions) -> None: ...
    def lock(self, key: str) -> None:
        """Serialize writers of one consumer name for the rest of the transaction."""
        ...
    def lock_sources(self, key: str, sources: Collection[str]) -> None:
        """For the rest of the transaction: `key` shared (a reset takes it exclusively) and each
        of `sources` under `key` exclusively, taken in one order so two writers cannot deadlock.
        Writers of disjoint sources do not wait for each other."""
        ...
    def get_payments(self, payment_ids: list[str]) -> dict[str, PaymentRow]: ...
    def put_payments(self, rows: list[PaymentRow]) -> None: ...
    def add_daily(self, figures: dict[DayKey, DayFigures]) -> None:
        """Add each day's figures to what it holds (a day not there yet starts at zero)."""
        ...
    def get_daily(self, keys: list[DayKey]) -> dict[DayKey, DayFigures]: ...
    def quarantine(self, source: str, key: str, reason: str, payload: dict[str, Any]) -> None: ...


class Projector:
    def __init__(
        self,
        name: str,
        feed: Feed,
        uow_factory: Callable[[], ProjectionUnitOfWork],
        *,
        batch_size: int = 500,
    ) -> None:
        self.name = name
        self._feed = feed
        self._uow = uow_factory
        self._batch_size = batch_size
        self.applied = 0
        self.redelivered = 0
        """Events skipped because their row already had them (the feed delivered them again)."""
        self.fenced = 0
        """Records dropped at commit because another transaction had stored a position past
        them (another instance applied them): never applied twice, never counted as applied."""

    @property
    def uow_factory(self) -> Callable[[], ProjectionUnitOfWork]:
        return self._uow

    @property
    def feed(self) -> Feed:
        return self._feed

    async def start(self) -> None:
        with self._uow() as uow:
            positions = uow.load_positions(self.name)
        await self._feed.start(positions)

    async def stop(self) -> None:
        await self._feed.stop()

    async def run_once(self, timeout: float = 0.5) -> int:
        """Consume one batch; returns how many feed messages it covered (0 when idle)."""
        batch = await self._feed.poll(self._batch_size, timeout)
        rejected = self._feed.take_rejected()
        if not batch and not rejected:
            return 0
        sources = sorted({m.source for m in batch} | {r.source for r in rejected})
        feed_positions = self._feed.positions()
        positions = {source: feed_positions[source] for source in sources}
        with self._uow() as uow:
            uow.lock_sources(f"projector:{self.name}", sources)
            stored = uow.load_positions(self.name)
            fresh = not_yet_stored(batch, stored)
            fresh_rejected = not_yet_stored(rejected, stored)
            fenced = len(batch) - len(fresh) + len(rejected) - len(fresh_rejected)
            if fenced:
                log.warning("projector %s: %d records of this batch were applied by another "
                            "instance already (a rebalance); skipped", self.name, fenced)
            for bad in fresh_rejected:
                self._quarantine_rejected(uow, bad)
            applied, redelivered = self._apply(uow, fresh)
            uow.save_positions(self.name, positions)  # forward only, in SQL
            uow.commit()
        self.applied += applied
        self.redelivered += redelivered
        self.fenced += fenced
        return len(batch) + len(rejected)

    async def run_until_idle(self, idle_polls: int = 2, timeout: float = 0.2) -> None:
        idle = 0
        while idle < idle_polls:
            idle = idle + 1 if await self.run_once(timeout) == 0 else 0

    def _apply(self, uow: ProjectionUnitOfWork, batch: list[FeedMessage]) -> tuple[int, int]:
        """Evolve the rows by the batch; returns how many events changed a row and how many
        rows had already (counted by the caller once the transaction commits, so a failed
        batch counts nothing)."""
        typed: list[tuple[FeedMessage, DomainEvent]] = []
        for message in batch:
            try:
                typed.append((message, from_recorded(message.event)))
            except (DomainError, KeyError, TypeError, ValueError) as exc:
                self._quarantine(uow, message, f"undecodable event: {exc}")
        rows = uow.get_payments(sorted({event.stream_id for _, event in typed}))
        changed: dict[str, PaymentRow] = {}
        steps: list[tuple[PaymentRow | None, PaymentRow, DomainEvent]] = []
        applied = redelivered = 0
        for message, event in typed:
            row = changed.get(event.stream_id) or rows.get(event.stream_id)
            if is_duplicate(row, event):
                redelivered += 1
                continue
            try:
                changed[event.stream_id] = evolve(row, event)
                applied += 1
            except OutOfOrder as exc:
                self._quarantine(uow, message, str(exc))
                continue
            steps.append((row, changed[event.stream_id], event))
        uow.put_payments(list(changed.values()))
        uow.add_daily(from_rows_and_events(steps))
        return applied, redelivered

    def _quarantine_rejected(self, uow: ProjectionUnitOfWork, bad: RejectedMessage) -> None:
        log.warning("projector %s quarantined %s@%d: %s", self.name, bad.source, bad.offset,
                    bad.reason)
        uow.quarantine(
            f"projector:{self.name}", f"{bad.source}@{bad.offset}", bad.reason,
            {"raw": bad.raw.decode("utf-8", errors="replace")},
        )

    def _quarantine(self, uow: ProjectionUnitOfWork, message: FeedMessage, reason: str) -> None:
        log.warning("projector %s quarantined %s@%d: %s", self.name, message.source,
                    message.offset, reason)
        uow.quarantine(
            f"projector:{self.name}",
            f"{message.source}@{message.offset}",
            reason,
            {"stream_id": message.event.stream_id, "version": message.event.version,
             "type": message.event.type, "data": message.event.data},
        )

"""Composition root of `cardpay project`: the payments projector on its feed, under supervision.

`projector.runner.Projector` keeps the pure parts (`start`, `run_once`, `stop`); the loop around
them is `run_projector` here, on `cardpay.runtime.supervise`: a failed batch stops the feed and
the next turn starts it again from the stored positions (the feed had moved past the batch in
memory, so without that restart the batch would be skipped). `FeedChanged` (a recreated or
truncated topic) is fatal: the loop ends and the command names `cardpay projections reset`.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

from sqlalchemy import Connection, Engine, delete, text, update

from cardpay.bootstrap import PAYMENTS, Lag, feed_lag, payments_projector
from cardpay.errors import CardpayError
from cardpay.kafka.identity import forget_identity
from cardpay.metrics.projector import ProjectorMetrics
from cardpay.postgres.schema import consumer_positions, metadata, outbox, quarantine
from cardpay.runtime.supervise import DEFAULT_BACKOFF, Backoff, Outcome, supervise_feed
from cardpay.settings import Settings
from projector.errors import FeedChanged
from projector.runner import Projector

READ_MODELS = {PAYMENTS: ("rm_payments", "rm_daily")}
"""The read-model tables each projector owns (what `cardpay projections reset` deletes)."""

def build_projector(settings: Settings, engine: Engine, *, batch_size: int = 500
                    ) -> tuple[Projector, Lag]:
    """The payments projector and a function telling its lag (None when unknown).

    With Kafka the feed checks the topic's identity against `feed_identity` (migration 0006)."""
    projector = payments_projector(settings, engine, batch_size=batch_size)
    return projector, feed_lag(engine, projector.feed)


async def run_projector(
    projector: Projector,
    stop: asyncio.Event,
    *,
    until_idle: bool = False,
    give_up_after: float | None = None,
    backoff: Backoff = DEFAULT_BACKOFF,
    metrics: ProjectorMetrics | None = None,
    lag: Lag | None = None,
    poll_timeout: float = 0.5,
) -> Outcome:
    """Start the projector's feed, project batch after batch until `stop` (or, `until_idle`,
    until two polls in a row find nothing), and stop the feed. Raises `FeedChanged` when the
    stored positions cannot be used, `GaveUp` after `give_up_after` seconds of failures."""

    async def turn() -> int:
        applied = projector.applied
        consumed = await projector.run_once(poll_timeout)
        if metrics is not None:
            metrics.applied.inc(projector.applied - applied)
            metrics.messages.inc(consumed)
            behind = await asyncio.to_thread(lag) if lag is not None else None
            if behind is not None:
                metrics.lag.set(behind)
        return consumed

    return await supervise_feed(projector.start, turn, projector.stop, component="projector",
                                stop=stop, backoff=backoff, fatal=(FeedChanged,),
                                until_idle=until_idle, idle_steps=2, give_up_after=give_up_after,
                                errors=metrics.errors if metrics is not None else None)


class ProjectorBusy(CardpayError, RuntimeError):
    """A running projector holds its session lock; a reset must wait until it is stopped."""


def _session_key(name: str) -> str:
    return f"projector-session:{name}"


@contextlib.contextmanager
def running_projector(engine: Engine, name: str) -> Iterator[None]:
    """Held by `cardpay project` while it runs (shared: several instances may run, their
    transaction lock keeps one writer at a time). A reset takes it exclusively, so it never
    runs under a projector whose in-memory position would be saved again after the reset."""
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as guard:
        guard.execute(text("SELECT pg_advisory_lock_shared(hashtext(:k))"),
                      {"k": _session_key(name)})
        try:
            yield
        finally:
            # A dead connection (database restarted) has released the lock already.
            with contextlib.suppress(Exception):
                guard.execute(text("SELECT pg_advisory_unlock_shared(hashtext(:k))"),
                              {"k": _session_key(name)})


def _lock_for_reset(conn: Connection, name: str) -> None:
    """Take the projector's session lock exclusively for the rest of `conn`'s transaction, or
    raise `ProjectorBusy` if a projector of that name is running."""
    taken = conn.execute(text("SELECT pg_try_advisory_xact_lock(hashtext(:k))"),
                         {"k": _session_key(name)}).scalar()
    if not taken:
        raise ProjectorBusy(f"projector {name!r} is running; stop `cardpay project` first")
    # The per-batch writer lock too, so no batch of a projector started meanwhile interleaves.
    conn.execute(text("SELECT pg_advisory_xact_lock(hashtext(:k))"), {"k": f"projector:{name}"})


@dataclass(frozen=True)
class ResetResult:
    rows: int
    positions: int
    quarantined: int
    republished: int


def reset_projection(engine: Engine, name: str, *, republish: bool = False) -> ResetResult:
    """In one transaction: delete the projector's read-model rows, positions, feed identity and
    quarantined records; with `republish`, mark every outbox row unpublished so the relay sends
    the whole history again (into a recreated topic). The next run rebuilds from the start."""
    tables = READ_MODELS.get(name)
    if tables is None:
        raise KeyError(name)
    with engine.begin() as conn:
        _lock_for_reset(conn, name)
        rows = sum(conn.execute(delete(metadata.tables[t])).rowcount for t in tables)
        positions = conn.execute(delete(consumer_positions)
                                 .where(consumer_positions.c.consumer == name)).rowcount
        forget_identity(conn, name)
        quarantined = conn.execute(delete(quarantine)
                                   .where(quarantine.c.source == f"projector:{name}")).rowcount
        republished = 0
        if republish:
            republished = conn.execute(update(outbox).where(outbox.c.published_at.is_not(None))
                                       .values(published_at=None)).rowcount
    return ResetResult(rows, positions, quarantined, republished)

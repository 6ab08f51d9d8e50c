"""Read-only queries behind `cardpay status`, `cardpay quarantine`, `cardpay payments` and
`cardpay sagas list`.

Plain rows out (frozen dataclasses of Python values); nothing here writes. Amounts stay integers
of base units with their decimals, as the read model stores them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, get_args

from sqlalchemy import Connection, func, inspect, or_, select

from cardpay.handlers.finance import ChainStatus
from cardpay.postgres.log_feed import SOURCE as EVENT_LOG_SOURCE
from cardpay.postgres.schema import (
    chain_cursor,
    chain_identity,
    consumer_positions,
    events,
    outbox,
    quarantine,
    rm_payments,
    saga_effects,
    saga_instances,
    saga_timers,
)

PAYMENT_STATUSES: tuple[str, ...] = get_args(ChainStatus)
"""Every status the payments read model writes (projector/payments.py)."""


@dataclass(frozen=True)
class ListenerPosition:
    name: str
    block_number: int
    block_hash: str
    updated_at: datetime
    chain_id: int | None
    """None until the listener has checked its node (`listen`/`backfill` store it)."""


@dataclass(frozen=True)
class ConsumerPosition:
    consumer: str
    source: str
    position: int
    """The next offset the consumer will read from `source`."""
    updated_at: datetime
    lag: int | None
    """Messages of the source not yet applied; known for the Postgres event log only."""


@dataclass(frozen=True)
class OutboxBacklog:
    unpublished: int
    oldest_created_at: datetime | None


@dataclass(frozen=True)
class QuarantineCount:
    source: str
    reason: str
    count: int


@dataclass(frozen=True)
class QuarantineEntry:
    id: int
    source: str
    key: str
    reason: str
    created_at: datetime
    attempts: int
    """Retries that were refused again."""
    resolved_at: datetime | None
    resolution: str | None
    """How a retry resolved it (resolved rows stay, for the trace)."""
    block_hash: str | None = None
    payload: Any = None
    """Only when one entry is read in full (`quarantine_entry`)."""


@dataclass(frozen=True)
class PaymentView:
    payment_id: str
    status: str
    account: str | None
    currency: str | None
    decimals: int | None
    spent: int
    refunded: int
    cleared: int | None
    spend_tx: str | None
    updated_at: datetime


def has_schema(conn: Connection) -> bool:
    """Whether the cardpay tables exist (a fresh database has none until `cardpay db upgrade`)."""
    return inspect(conn).has_table(chain_cursor.name)


def listeners(conn: Connection) -> list[ListenerPosition]:
    t, identity = chain_cursor, chain_identity
    rows = conn.execute(
        select(t.c.name, t.c.block_number, t.c.block_hash, t.c.updated_at, identity.c.chain_id)
        .select_from(t.outerjoin(identity, identity.c.listener == t.c.name))
        .order_by(t.c.name)
    )
    out = []
    for row in rows:
        chain_id: int | None = row[4]
        out.append(ListenerPosition(str(row[0]), int(row[1]), str(row[2]), row[3],
                                    None if chain_id is None else int(chain_id)))
    return out


def consumers(conn: Connection) -> list[ConsumerPosition]:
    t = consumer_positions
    out = []
    for consumer, source, position, updated_at in conn.execute(
        select(t.c.consumer, t.c.source, t.c.position, t.c.updated_at)
        .order_by(t.c.consumer, t.c.source)
    ):
        lag = None
        if source == EVENT_LOG_SOURCE:
            # positions are the next offset to read; the log can have gaps (rolled-back inserts)
            lag = int(conn.execute(select(func.count()).select_from(events)
                                   .where(events.c.position >= position)).scalar_one())
        out.append(ConsumerPosition(consumer, source, int(position), updated_at, lag))
    return out


def event_log_size(conn: Connection) -> tuple[int, int | None]:
    """(events stored, highest global position or None)."""
    count, last = conn.execute(select(func.count(), func.max(events.c.position))).one()
    return int(count), None if last is None else int(last)


def outbox_backlog(conn: Connection) -> OutboxBacklog:
    count, oldest = conn.execute(
        select(func.count(), func.min(outbox.c.created_at))
        .where(outbox.c.published_at.is_(None))
    ).one()
    return OutboxBacklog(int(count), oldest)


def database_now(conn: Connection) -> datetime:
    """The server's clock: ages are measured against it, not against this machine's."""
    now: datetime = conn.execute(select(func.now())).scalar_one()
    return now


def quarantine_counts(conn: Connection) -> list[QuarantineCount]:
    q = quarantine
    rows = conn.execute(
        select(q.c.source, q.c.reason, func.count())
        .where(q.c.resolved_at.is_(None))
        .group_by(q.c.source, q.c.reason)
        .order_by(q.c.source, func.count().desc(), q.c.reason)
    )
    return [QuarantineCount(source, reason, int(count)) for source, reason, count in rows]


def quarantine_entries(conn: Connection, *, source: str | None = None, limit: int | None = None,
                       include_resolved: bool = False,
                       prefixes: Sequence[str] = ()) -> list[QuarantineEntry]:
    """Rows still in quarantine (with `include_resolved`, also those a retry resolved); with
    `prefixes`, only rows whose source starts with one of them."""
    q = quarantine
    query = select(q.c.id, q.c.source, q.c.key, q.c.reason, q.c.created_at, q.c.attempts,
                   q.c.resolved_at, q.c.resolution).order_by(q.c.id)
    if not include_resolved:
        query = query.where(q.c.resolved_at.is_(None))
    if source is not None:
        query = query.where(q.c.source == source)
    if prefixes:
        query = query.where(or_(*(q.c.source.startswith(p, autoescape=True) for p in prefixes)))
    if limit is not None:
        query = query.limit(limit)
    return [QuarantineEntry(int(r.id), r.source, r.key, r.reason, r.created_at, int(r.attempts),
                            r.resolved_at, r.resolution)
            for r in conn.execute(query)]


def quarantine_entry(conn: Connection, entry_id: int) -> QuarantineEntry | None:
    q = quarantine
    row = conn.execute(select(q).where(q.c.id == entry_id)).first()
    if row is None:
        return None
    return QuarantineEntry(int(row.id), row.source, row.key, row.reason, row.created_at,
                           int(row.attempts), row.resolved_at, row.resolution, row.block_hash,
                           row.payload)


def quarantine_sources(conn: Connection) -> list[str]:
    return [s for (s,) in conn.execute(select(quarantine.c.source).distinct()
                                       .order_by(quarantine.c.source))]


def payments(conn: Connection, *, status: str | None = None,
             limit: int | None = None) -> list[PaymentView]:
    """Most recently updated first."""
    p = rm_payments
    query = select(p).order_by(p.c.updated_at.desc(), p.c.payment_id)
    if status is not None:
        query = query.where(p.c.status == status)
    if limit is not None:
        query = query.limit(limit)
    return [
        PaymentView(
            payment_id=r.payment_id, status=r.status, account=r.account, currency=r.currency,
            decimals=r.decimals, spent=int(r.spent), refunded=int(r.refunded),
            cleared=None if r.cleared is None else int(r.cleared), spend_tx=r.spend_tx,
            updated_at=r.updated_at,
        )
        for r in conn.execute(query)
    ]


@dataclass(frozen=True)
class SagaView:
    kind: str
    saga_id: str
    status: str
    stage: str
    version: int
    waiting_for: str | None
    """The effect the saga waits for (its name), if any."""
    effect_status: str | None
    """That effect request's status: pending (not answered yet), succeeded, failed."""
    next_timer: datetime | None
    updated_at: datetime


def sagas(conn: Connection, *, status: str | None = None, kind: str | None = None,
          limit: int | None = None) -> list[SagaView]:
    """Most recently changed first, with what each waits for and its next timer."""
    i, t, fx = saga_instances, saga_timers, saga_effects
    request_id = i.c.state["waiting"]["effect"]["request_id"].astext
    next_timer = (select(func.min(t.c.due_at))
                  .where(t.c.kind == i.c.kind, t.c.saga_id == i.c.saga_id)
                  .scalar_subquery())
    query = (select(i.c.kind, i.c.saga_id, i.c.status, i.c.stage, i.c.version, i.c.updated_at,
                    i.c.state["waiting"]["effect"]["name"].astext.label("waiting_for"),
                    fx.c.status.label("effect_status"), next_timer.label("next_timer"))
             .outerjoin(fx, fx.c.request_id == request_id)
             .order_by(i.c.updated_at.desc(), i.c.kind, i.c.saga_id))
    if status is not None:
        query = query.where(i.c.status == status)
    if kind is not None:
        query = query.where(i.c.kind == kind)
    if limit is not None:
        query = query.limit(limit)
    return [SagaView(r.kind, r.saga_id, r.status, r.stage, r.version, r.waiting_for,
                     r.effect_status, r.next_timer, r.updated_at) for r in conn.execute(query)]

"""The network sweep's reads and its watch table (`cardpay.handlers.network_timers`).

- Due holds: pending ledger transfers by `expires_at`, through the partial index
  `ledger_transfers_pending_due` (only pending rows: the resolved past never gets scanned).
- Parked clearings: `ClearingParked` events after the sweep's stored position (consumer
  "network-sweep" in `consumer_positions`), through the partial index `events_clearing_parked`.
  The event log assigns positions in commit order (ADR 0002), so reading "after the last one
  seen" never skips a late commit. Their payments go into `network_parked_clearings`, a table
  as small as the number of clearings still waiting for their authorization.
"""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import Connection, text
from sqlalchemy.dialects.postgresql import insert as pg_insert

from cardpay.handlers.network_timers import DueHold, ParkedWatch
from cardpay.postgres import schema as s

CONSUMER = "network-sweep"
SOURCE = "parked-clearings"

_DUE = text("SELECT id, user_data, expires_at FROM ledger_transfers "
            "WHERE pending_status = 'pending' AND expires_at <= :now "
            "AND (expires_at, id) > (:after_at, :after_id) "
            "ORDER BY expires_at, id LIMIT :limit")
_BEGINNING = (datetime(1, 1, 1, tzinfo=UTC), "")
_POSITION = text("SELECT position FROM consumer_positions "
                 "WHERE consumer = :consumer AND source = :source")
_PARKED_AFTER = text("SELECT position, stream_id, data->'meta'->>'occurred_at' FROM events "
                     "WHERE type = 'ClearingParked' AND position > :after "
                     "ORDER BY position LIMIT :limit")
_TO_CHECK = text(
    "SELECT w.payment_id, w.parked_since, w.checked_version, w.exception_at "
    "FROM network_parked_clearings w "
    "WHERE (w.exception_at IS NULL AND w.parked_since <= :cutoff) "
    "OR EXISTS (SELECT 1 FROM events e WHERE e.stream_id = w.payment_id "
    "           AND e.version > w.checked_version) "
    "ORDER BY w.parked_since, w.payment_id LIMIT :limit")
_CHECKED = text("UPDATE network_parked_clearings SET checked_version = :version, "
                "exception_at = COALESCE(exception_at, :exception_at) "
                "WHERE payment_id = :payment_id")
_UNWATCH = text("DELETE FROM network_parked_clearings WHERE payment_id = :payment_id")


class PostgresNetworkTimers:
    def __init__(self, conn: Connection) -> None:
        self._conn = conn

    def due_holds(self, now: datetime, limit: int,
                  after: tuple[datetime, str] | None = None) -> list[DueHold]:
        after_at, after_id = after or _BEGINNING
        rows = self._conn.execute(_DUE, {"now": now, "limit": limit, "after_at": after_at,
                                         "after_id": after_id})
        return [DueHold(r[0], r[1], r[2]) for r in rows]

    def watch_new_parked(self, limit: int) -> int:
        after = self._conn.execute(_POSITION, {"consumer": CONSUMER, "source": SOURCE}
                                   ).scalar_one_or_none()
        rows = self._conn.execute(_PARKED_AFTER, {"after": after or 0, "limit": limit}).all()
        if not rows:
            return 0
        first: dict[str, datetime] = {}  # a payment's earliest parked clearing
        for _, stream_id, at in rows:
            first.setdefault(stream_id, datetime.fromisoformat(at))
        watched = pg_insert(s.network_parked_clearings).values(
            [{"payment_id": p, "parked_since": at} for p, at in first.items()])
        self._conn.execute(watched.on_conflict_do_nothing(index_elements=["payment_id"]))
        position = pg_insert(s.consumer_positions).values(
            consumer=CONSUMER, source=SOURCE, position=int(rows[-1][0]))
        self._conn.execute(position.on_conflict_do_update(
            index_elements=["consumer", "source"],
            set_={"position": position.excluded.position, "updated_at": text("now()")}))
        return len(rows)

    def parked_to_check(self, cutoff: datetime, limit: int) -> list[ParkedWatch]:
        rows = self._conn.execute(_TO_CHECK, {"cutoff": cutoff, "limit": limit})
        return [ParkedWatch(r[0], r[1], int(r[2]), r[3]) for r in rows]

    def checked(self, payment_id: str, version: int,
                exception_at: datetime | None = None) -> None:
        self._conn.execute(_CHECKED, {"payment_id": payment_id, "version": version,
                                      "exception_at": exception_at})

    def unwatch(self, payment_id: str) -> None:
        self._conn.execute(_UNWATCH, {"payment_id": payment_id})

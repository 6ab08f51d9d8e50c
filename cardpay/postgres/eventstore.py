"""The PostgreSQL event store (its in-memory twin for fast tests is in tests/fakes).

Ordering guarantee (docs/adr/0002-event-store-ordering.md): a writer takes
`LOCK TABLE events IN EXCLUSIVE MODE` before inserting and keeps it until commit, so global positions
are assigned in commit order. A reader that asks for "positions after the last one I saw" can never
skip an event that commits later with a lower position, because no such event can exist. The lock
blocks other writers only (EXCLUSIVE does not conflict with the ACCESS SHARE that readers take).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from sqlalchemy import Connection, select
from sqlalchemy.exc import IntegrityError

from cardpay.errors import ConcurrencyConflict
from cardpay.kafka.wire import encode_event
from cardpay.postgres import raw
from cardpay.postgres.schema import events as events_table
from domain.events import DomainEvent, PaymentRefunded, PaymentSpent, RecordedEvent
from domain.serialization import from_recorded, to_data

_LOAD = ("SELECT stream_id, version, position, type, data, recorded_at FROM events "
         "WHERE stream_id = %s ORDER BY version")
_LOCK = "LOCK TABLE events IN EXCLUSIVE MODE"
_VERSIONS = ("SELECT stream_id, max(version) FROM events WHERE stream_id = ANY(%s) "
             "GROUP BY stream_id")
# The arrays go in binary (%b): in text form psycopg quotes and escapes every element with a
# regular expression, which for the JSON of a range's events was a fifth of a backfill's CPU
# (docs/benchmarks.md, issue 11).
_INSERT = """
    INSERT INTO events (stream_id, version, type, data)
    SELECT s, v, t, d::jsonb FROM unnest(%b::text[], %b::int[], %b::text[], %b::text[])
        WITH ORDINALITY AS x(s, v, t, d, n)
    ORDER BY n
    RETURNING position, recorded_at
"""
_OUTBOX = ("INSERT INTO outbox (topic, key, value) "
           "SELECT %s, k, v FROM unnest(%b::text[], %b::bytea[]) AS x(k, v)")

LOAD_MANY_CHUNK = 10_000
"""Block hashes per `chain_effects` query: well under PostgreSQL's 65,535 bind parameters."""


def check_sequence(current: int, new: Sequence[DomainEvent]) -> None:
    expected = current + 1
    for event in new:
        if event.version != expected:
            raise ConcurrencyConflict(
                f"stream {event.stream_id}: expected version {expected}, got {event.version}"
            )
        expected += 1


class PostgresEventStore:
    """Event store on one open connection: the caller's transaction is the unit of work.

    With `outbox_topic` set, every appended event also gets an outbox row in the same transaction.
    """

    def __init__(self, conn: Connection, *, outbox_topic: str | None = None) -> None:
        self._conn = conn
        self._outbox_topic = outbox_topic

    def load(self, stream_id: str) -> list[DomainEvent]:
        return [from_recorded(r) for r in self.load_recorded(stream_id)]

    def load_many(self, stream_ids: Sequence[str], *,
                  only: Sequence[type[DomainEvent]] = ()) -> dict[str, list[DomainEvent]]:
        """Several streams in one query (empty list for a stream that does not exist): the ids
        go as one array parameter (an IN list of thousands of parameters costs more to convert
        and plan than to run). `only`: just the events of these types, in order (a reader that
        looks at a few types need not decode whole histories)."""
        out: dict[str, list[DomainEvent]] = {sid: [] for sid in stream_ids}
        if not out:
            return out
        sql = _LOAD_MANY_OF_TYPES if only else _LOAD_MANY
        params: tuple[Any, ...] = ((list(out), [cls.__name__ for cls in only]) if only
                                   else (list(out),))
        for row in raw.execute(self._conn, sql, params):
            recorded = _row_event(row)
            out[recorded.stream_id].append(from_recorded(recorded))
        return out

    def load_recorded(self, stream_id: str) -> list[RecordedEvent]:
        return [_row_event(row) for row in raw.execute(self._conn, _LOAD, (stream_id,))]

    def append(self, new: Sequence[DomainEvent]) -> list[RecordedEvent]:
        if not new:
            return []
        by_stream: dict[str, list[DomainEvent]] = {}
        for event in new:
            by_stream.setdefault(event.stream_id, []).append(event)
        raw.defer(self._conn, _LOCK)
        current = dict(raw.execute(self._conn, _VERSIONS, (list(by_stream),)).fetchall())
        for stream_id, stream_events in by_stream.items():
            check_sequence(int(current.get(stream_id, 0)), stream_events)
        rows = [(e.stream_id, e.version, type(e).__name__, to_data(e)) for e in new]
        try:
            # one INSERT of every row (unnest keeps it one statement whatever the count); the
            # positions come back in the rows' order (WITH ORDINALITY)
            inserted = raw.execute(self._conn, _INSERT, (
                [r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows],
                [json.dumps(r[3]) for r in rows])).fetchall()
        except IntegrityError as exc:  # pragma: no cover - the version check above runs first
            raise ConcurrencyConflict(str(exc.orig)) from exc
        recorded = [
            RecordedEvent(stream_id=stream_id, version=version, position=int(position),
                          type=type_, data=data, recorded_at=recorded_at)
            for (stream_id, version, type_, data), (position, recorded_at)
            in zip(rows, inserted, strict=True)
        ]
        if self._outbox_topic is not None:
            raw.defer(self._conn, _OUTBOX, (
                self._outbox_topic, [r.stream_id for r in recorded],
                [encode_event(r) for r in recorded]))
        return recorded

    def read_after(self, position: int, limit: int) -> list[RecordedEvent]:
        """The feeds' read (every event, in order, a batch at a time): on the driver's cursor,
        rows as tuples, since a rebuild reads a million of them."""
        rows = raw.execute(self._conn, _READ_AFTER, (position, limit)).fetchall()
        return [_row_event(row) for row in rows]

    def chain_effects(self, block_hashes: Sequence[str]) -> list[PaymentSpent | PaymentRefunded]:
        """Spends and refunds whose chain evidence lies in these blocks, newest first."""
        found: list[tuple[int, PaymentSpent | PaymentRefunded]] = []
        evidence_block = events_table.c.data[("payload", "evidence", "block_hash")].astext
        hashes = list(block_hashes)
        for start in range(0, len(hashes), LOAD_MANY_CHUNK):
            rows = self._conn.execute(
                select(events_table)
                .where(events_table.c.type.in_([PaymentSpent.__name__, PaymentRefunded.__name__]),
                       evidence_block.in_(hashes[start:start + LOAD_MANY_CHUNK]))
            )
            for row in rows:
                event = from_recorded(_recorded(row._mapping))
                assert isinstance(event, PaymentSpent | PaymentRefunded)
                found.append((int(row._mapping["position"]), event))
        return [event for _, event in sorted(found, key=lambda pair: -pair[0])]

    def events_of_type(self, *types: type[DomainEvent]) -> list[DomainEvent]:
        """Every event of these types, in the global order."""
        rows = self._conn.execute(
            select(events_table)
            .where(events_table.c.type.in_([cls.__name__ for cls in types]))
            .order_by(events_table.c.position)
        )
        return [from_recorded(_recorded(row._mapping)) for row in rows]


_LOAD_MANY = ("SELECT stream_id, version, position, type, data, recorded_at FROM events "
              "WHERE stream_id = ANY(%s) ORDER BY stream_id, version")
_LOAD_MANY_OF_TYPES = ("SELECT stream_id, version, position, type, data, recorded_at FROM events "
                       "WHERE stream_id = ANY(%s) AND type = ANY(%s) ORDER BY stream_id, version")
_READ_AFTER = ("SELECT stream_id, version, position, type, data, recorded_at FROM events "
               "WHERE position > %s ORDER BY position LIMIT %s")


def _row_event(row: Sequence[Any]) -> RecordedEvent:
    """A row of `_LOAD`, `_LOAD_MANY` or `_READ_AFTER` (stream_id, version, position, type,
    data, recorded_at) as the event it stores."""
    stream_id, version, position, type_, data, recorded_at = row
    return RecordedEvent(stream_id, int(version), int(position), type_, data, recorded_at)


def _recorded(row: Any) -> RecordedEvent:
    return RecordedEvent(
        stream_id=row["stream_id"],
        version=int(row["version"]),
        position=int(row["position"]),
        type=row["type"],
        data=row["data"],
        recorded_at=row["recorded_at"],
    )

"""`cardpay projections rebuild|verify NAME`: a projector's read models built again from the start
of the feed into shadow tables while the live projector keeps running, compared with the live
ones at the same feed position, and (rebuild) swapped in atomically.

1. Shadow tables `<table>__rebuild` (`CREATE TABLE ... (LIKE <table> INCLUDING ALL)`), and a
   projector named `<name>__rebuild` writing them from the start of the feed, bounded by the live
   projector's stored positions (`projector.feed.BoundedFeed`: it never passes them), in rounds
   while the live one moves on.
2. Then, in one transaction holding the live projector's batch lock (its next batch waits):
   the live positions are read, the rebuild is brought exactly to them, and each table's rows
   are compared by checksum (md5 over every row but `updated_at`, in key order). A difference
   aborts (`RebuildMismatch`) with the rows found on one side only; nothing is swapped.
3. Rebuild only: still in that transaction, the live tables are dropped and the shadows renamed
   (with their indexes, back to the live names). The live projector's positions stay: they are
   the position both sides were compared at. The lock is released on commit; the live projector
   carries on, on the new tables.

Verify does steps 1 and 2 and drops the shadows.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, Engine, delete, text

from cardpay.bootstrap import feed
from cardpay.errors import CardpayError
from cardpay.kafka.identity import forget_identity
from cardpay.postgres.buffered import BufferedProjection
from cardpay.postgres.schema import consumer_positions, quarantine
from cardpay.settings import Settings
from projector.feed import BoundedFeed, Positions
from projector.runner import Projector

SUFFIX = "__rebuild"
KEYS = {"rm_payments": ("payment_id",), "rm_daily": ("day", "currency")}
"""Each read-model table's key: the order of its checksum."""
SHOWN = 20
"""Rows shown per side when tables differ."""
Progress = Callable[[int, int], None]


class RebuildError(CardpayError, RuntimeError):
    """The rebuild cannot start or finish (one line for the user)."""


@dataclass
class TableCheck:
    table: str
    rows_live: int
    rows_rebuilt: int
    checksum_live: str
    checksum_rebuilt: str
    only_live: list[dict[str, Any]] = field(default_factory=list)
    only_rebuilt: list[dict[str, Any]] = field(default_factory=list)

    @property
    def equal(self) -> bool:
        return self.checksum_live == self.checksum_rebuilt and self.rows_live == self.rows_rebuilt


@dataclass
class RebuildResult:
    name: str
    positions: dict[str, int]
    """The feed position both sides were compared at (the live projector's)."""
    applied: int
    seconds: float
    tables: list[TableCheck]
    swapped: bool

    @property
    def equal(self) -> bool:
        return all(t.equal for t in self.tables)


class RebuildMismatch(RebuildError):
    def __init__(self, result: RebuildResult) -> None:
        differing = [t.table for t in result.tables if not t.equal]
        super().__init__(f"the rebuilt {', '.join(differing)} differ from the live ones at the "
                         "same feed position: nothing was swapped")
        self.result = result


def _lock(conn: Connection, key: str) -> None:
    conn.execute(text("SELECT pg_advisory_xact_lock(hashtext(:k))"), {"k": key})


@contextmanager
def _rebuild_lock(engine: Engine, name: str) -> Iterator[None]:
    """One rebuild or verify of a projector at a time (they share the shadow tables): a
    session lock held for the whole run, on its own connection; a second one is refused."""
    with engine.connect() as conn:
        key = f"rebuild:{name}"
        if not conn.execute(text("SELECT pg_try_advisory_lock(hashtext(:k))"), {"k": key}).scalar():
            raise RebuildError(f"a rebuild or verify of {name} is running already; wait for it "
                               "to end")
        try:
            yield
        finally:
            conn.execute(text("SELECT pg_advisory_unlock(hashtext(:k))"), {"k": key})
            conn.commit()


def _live_positions(conn: Connection, name: str) -> dict[str, int]:
    rows = conn.execute(text("SELECT source, position FROM consumer_positions "
                             "WHERE consumer = :c"), {"c": name})
    return {str(source): int(position) for source, position in rows}


def _columns(conn: Connection, table: str) -> list[str]:
    rows = conn.execute(text("SELECT column_name FROM information_schema.columns "
                             "WHERE table_schema = current_schema() AND table_name = :t "
                             "ORDER BY ordinal_position"), {"t": table})
    return [str(c) for (c,) in rows if c != "updated_at"]


def checksum(conn: Connection, table: str, columns: list[str],
             key: tuple[str, ...]) -> tuple[int, str]:
    """(rows, md5 over every row's compared columns in key order)."""
    cols = ", ".join(f'"{c}"' for c in columns)
    order = ", ".join(f'"{k}"' for k in key)
    count, digest = conn.execute(text(
        f'SELECT count(*), md5(coalesce(string_agg(md5(ROW({cols})::text), \'\' '
        f'ORDER BY {order}), \'\')) FROM "{table}"')).one()
    return int(count), str(digest)


def _only_in(conn: Connection, first: str, second: str, columns: list[str]
             ) -> list[dict[str, Any]]:
    cols = ", ".join(f'"{c}"' for c in columns)
    rows = conn.execute(text(f'SELECT {cols} FROM "{first}" EXCEPT '
                             f'SELECT {cols} FROM "{second}" LIMIT {SHOWN}'))
    return [dict(r._mapping) for r in rows]


def compare(conn: Connection, table: str) -> TableCheck:
    shadow = table + SUFFIX
    columns = _columns(conn, table)
    key = KEYS[table]
    live_rows, live_sum = checksum(conn, table, columns, key)
    new_rows, new_sum = checksum(conn, shadow, columns, key)
    check = TableCheck(table, live_rows, new_rows, live_sum, new_sum)
    if not check.equal:
        check.only_live = _only_in(conn, table, shadow, columns)
        check.only_rebuilt = _only_in(conn, shadow, table, columns)
    return check


def _swap(conn: Connection, table: str) -> None:
    """Drop the live table and give the shadow its name and its indexes' names (matched by
    definition). Inside the caller's transaction."""
    shadow = table + SUFFIX

    def indexes(of: str) -> dict[str, str]:
        rows = conn.execute(text("SELECT indexname, indexdef FROM pg_indexes "
                                 "WHERE schemaname = current_schema() AND tablename = :t"),
                            {"t": of})
        return {re.sub(r"INDEX \S+ ON \S+ ", "INDEX ? ON ? ", str(d)): str(n) for n, d in rows}

    live, new = indexes(table), indexes(shadow)
    conn.execute(text(f'DROP TABLE "{table}"'))
    conn.execute(text(f'ALTER TABLE "{shadow}" RENAME TO "{table}"'))
    for definition, name in new.items():
        wanted = live.get(definition)
        if wanted is not None and wanted != name:
            conn.execute(text(f'ALTER INDEX "{name}" RENAME TO "{wanted}"'))


def _forget(conn: Connection, consumer: str) -> None:
    """The rebuild's own positions, feed identity and quarantined records (what it found
    wrong, the live projector found too: they are in the live projector's quarantine)."""
    conn.execute(delete(consumer_positions).where(consumer_positions.c.consumer == consumer))
    conn.execute(delete(quarantine).where(quarantine.c.source == f"projector:{consumer}"))
    forget_identity(conn, consumer)


def rebuild_projection(settings: Settings, engine: Engine, name: str, tables: tuple[str, ...],
                       *, swap: bool, progress: Progress | None = None,
                       batch_size: int = 2000, rounds: int = 5,
                       flush_rows: int = 100_000) -> RebuildResult:
    """Rebuild (`swap`) or verify projector `name`'s `tables`. Raises `RebuildMismatch` when
    the rebuilt rows differ (the shadows are dropped, the live tables untouched)."""
    consumer = name + SUFFIX
    started = time.monotonic()
    with _rebuild_lock(engine, name):
        with engine.begin() as conn:
            live = _live_positions(conn, name)
            if not live:
                raise RebuildError(f"projector {name} has no stored position yet: nothing to compare "
                                   f"with; run `cardpay project` first")
            for table in tables:
                conn.execute(text(f'DROP TABLE IF EXISTS "{table}{SUFFIX}"'))
                conn.execute(text(f'CREATE TABLE "{table}{SUFFIX}" (LIKE "{table}" INCLUDING ALL)'))
            _forget(conn, consumer)
        bounded = BoundedFeed(feed(settings, engine, consumer), live)
        buffer = BufferedProjection(engine, suffix=SUFFIX)
        projector = Projector(consumer, bounded, buffer, batch_size=batch_size)

        async def catch_up(bound: Positions) -> None:
            bounded.raise_bound(bound)
            while not bounded.reached(bound):
                await projector.run_once(0.5)
                if buffer.pending >= flush_rows:
                    buffer.flush()
                if progress is not None:
                    progress(sum(bounded.positions().values()), sum(bound.values()))

        async def run() -> RebuildResult:
            await projector.start()
            try:
                bound = live
                for _ in range(rounds):  # follow the live projector while it moves
                    await catch_up(bound)
                    buffer.flush()
                    with engine.connect() as conn:
                        moved = _live_positions(conn, name)
                    if sum(moved.values()) - sum(bound.values()) < batch_size:
                        break
                    bound = moved
                with engine.begin() as conn:  # the live projector's next batch waits from here
                    _lock(conn, f"projector:{name}")
                    at = _live_positions(conn, name)
                    await catch_up(at)
                    buffer.flush(conn)
                    checks = [compare(conn, table) for table in tables]
                    result = RebuildResult(name, at, projector.applied, 0.0, checks, False)
                    if result.equal and swap:
                        for table in tables:
                            _swap(conn, table)
                        _forget(conn, consumer)
                        result.swapped = True
                return result
            finally:
                await projector.stop()

        try:
            result = asyncio.run(run())
        finally:
            with engine.begin() as conn:
                for table in tables:
                    conn.execute(text(f'DROP TABLE IF EXISTS "{table}{SUFFIX}"'))
                _forget(conn, consumer)
    result.seconds = time.monotonic() - started
    if not result.equal:
        raise RebuildMismatch(result)
    return result

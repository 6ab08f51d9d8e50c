"""A projector's unit of work that keeps its rows in memory and writes them with COPY: for a
rebuild into shadow tables (`cardpay projections rebuild|verify`).

A rebuild is the only writer of its shadow tables and starts them empty, so what it has applied
lives in memory and nothing needs reading back: each batch's unit of work stages its rows,
day sums, positions and quarantined items and moves them into the buffer on commit (a batch
that fails leaves the buffer as it was, like a rolled-back transaction). `flush` writes what
changed in one transaction: the changed rows with COPY (after deleting their older copies
written by an earlier flush), the day sums added, the positions and the quarantined items; then
it forgets the rows, so memory holds at most one flush interval of payments. A payment that
shows up again after a flush is read back from the shadow table.

The live projector cannot work like this: it shares its tables with readers and must make
every batch durable with its position. The rebuild can: a crash loses the shadows anyway
(they are dropped and the rebuild starts again), and the comparison reads them only after the
last flush. Serialising two rebuilds of one projector is the caller's lock.
"""

from __future__ import annotations

import json
import operator
from collections.abc import Collection
from typing import Any

from sqlalchemy import Connection, Engine, text

from cardpay.handlers.ports import QuarantineItem
from cardpay.postgres import raw
from cardpay.postgres.repositories.payments_view import COLUMNS, PostgresPaymentsView
from cardpay.postgres.repositories.positions import PostgresConsumerPositions
from cardpay.postgres.repositories.quarantine import PostgresQuarantine
from projector.daily import DayFigures, DayKey
from projector.feed import Positions
from projector.payments import PaymentRow


class BufferedProjection:
    """The buffer, and the factory of its units of work (`projector.runner.Projector` takes it
    as `uow_factory`)."""

    def __init__(self, engine: Engine, *, suffix: str) -> None:
        if not suffix:
            raise ValueError("a buffered projection writes shadow tables only (give a suffix)")
        self._engine = engine
        self._suffix = suffix
        self._rows: dict[str, PaymentRow] = {}
        self._dirty: set[str] = set()
        self._stored: set[str] = set()
        """Payments with a row in the shadow table (written by an earlier flush)."""
        self._daily: dict[DayKey, DayFigures] = {}
        self._positions: dict[str, dict[str, int]] = {}
        self._quarantined: list[QuarantineItem] = []
        self.pending = 0
        """Rows changed since the last flush."""

    def __call__(self) -> _BufferedUnitOfWork:
        return _BufferedUnitOfWork(self)

    # -- what the units of work read and commit ------------------------------------------------
    def positions(self, consumer: str) -> dict[str, int]:
        known = self._positions.get(consumer)
        if known is None:
            with self._engine.connect() as conn:
                known = self._positions[consumer] = PostgresConsumerPositions(conn).load(consumer)
        return dict(known)

    def rows(self, payment_ids: list[str]) -> dict[str, PaymentRow]:
        out = {pid: self._rows[pid] for pid in payment_ids if pid in self._rows}
        flushed = [pid for pid in payment_ids if pid not in out and pid in self._stored]
        if flushed:
            with self._engine.connect() as conn:
                read = PostgresPaymentsView(conn, self._suffix).get(flushed)
            self._rows.update(read)  # kept (not changed) until the next flush forgets them
            out.update(read)
        return out

    def daily(self, keys: list[DayKey]) -> dict[DayKey, DayFigures]:
        with self._engine.connect() as conn:
            out = PostgresPaymentsView(conn, self._suffix).get_daily(keys)
        for key in keys:
            if key in self._daily:
                out[key] = out.get(key, DayFigures()) + self._daily[key]
        return out

    def commit(self, uow: _BufferedUnitOfWork) -> None:
        current = self.rows([row.payment_id for row in uow.rows])
        for row in uow.rows:
            known = current.get(row.payment_id)
            if known is not None and known.last_version >= row.last_version:
                continue  # a row only moves to a newer version, as in the live tables
            self._rows[row.payment_id] = current[row.payment_id] = row
            self._dirty.add(row.payment_id)
        self.pending = len(self._dirty)
        for key, figures in uow.daily.items():
            self._daily[key] = self._daily.get(key, DayFigures()) + figures
        for consumer, positions in uow.positions.items():
            stored = self._positions.setdefault(consumer, {})
            for source, position in positions.items():
                stored[source] = max(stored.get(source, 0), position)  # forward only
        self._quarantined += uow.quarantined

    # -- to the tables ---------------------------------------------------------------------------
    def flush(self, conn: Connection | None = None) -> None:
        """Write everything changed since the last flush in one transaction (the caller's, when
        `conn` is given), then forget the rows."""
        if conn is None:
            with self._engine.begin() as own:
                self._write(own)
        else:
            self._write(conn)
        self._stored |= self._dirty
        self._rows.clear()
        self._dirty.clear()
        self._daily.clear()
        self._quarantined.clear()
        self.pending = 0

    def _write(self, conn: Connection) -> None:
        table = "rm_payments" + self._suffix
        rewritten = sorted(self._dirty & self._stored)
        if rewritten:
            conn.execute(text(f'DELETE FROM "{table}" WHERE payment_id = ANY(:ids)'),
                         {"ids": rewritten})
        columns = ", ".join(f'"{c}"' for c in COLUMNS)
        with raw.errors(conn) as pg, pg.cursor() as cursor, \
                cursor.copy(f'COPY "{table}" ({columns}) FROM STDIN') as copy:
            for pid in sorted(self._dirty):
                copy.write_row(_copy_values(self._rows[pid]))
        view = PostgresPaymentsView(conn, self._suffix)
        view.add_daily(self._daily)
        positions = PostgresConsumerPositions(conn)
        for consumer, stored in self._positions.items():
            positions.save(consumer, stored)
        quarantine = PostgresQuarantine(conn)
        for item in self._quarantined:
            quarantine.add(item)


def _copy_values(row: PaymentRow) -> list[Any]:
    values = list(_ALL(row))
    values[_REFUND_TXS] = json.dumps(list(row.refund_txs))
    return values


_REFUND_TXS = COLUMNS.index("refund_txs")
_ALL = operator.attrgetter(*COLUMNS)


class _BufferedUnitOfWork:
    """`projector.runner.ProjectionUnitOfWork` over the buffer: reads what the buffer holds,
    stages the batch's writes and hands them to the buffer on commit."""

    def __init__(self, buffer: BufferedProjection) -> None:
        self._buffer = buffer
        self.rows: list[PaymentRow] = []
        self.daily: dict[DayKey, DayFigures] = {}
        self.positions: dict[str, dict[str, int]] = {}
        self.quarantined: list[QuarantineItem] = []

    def __enter__(self) -> _BufferedUnitOfWork:
        return self

    def __exit__(self, *exc: object) -> None:
        pass  # nothing committed: the staged writes are dropped with this object

    def commit(self) -> None:
        self._buffer.commit(self)

    def lock(self, key: str) -> None:
        pass  # one writer: the rebuild holds its projector's rebuild lock for its whole run

    def lock_sources(self, key: str, sources: Collection[str]) -> None:
        pass

    def load_positions(self, consumer: str) -> dict[str, int]:
        return self._buffer.positions(consumer)

    def save_positions(self, consumer: str, positions: Positions) -> None:
        self.positions[consumer] = dict(positions)

    def get_payments(self, payment_ids: list[str]) -> dict[str, PaymentRow]:
        return self._buffer.rows(payment_ids)

    def put_payments(self, rows: list[PaymentRow]) -> None:
        self.rows += rows

    def add_daily(self, figures: dict[DayKey, DayFigures]) -> None:
        for key, value in figures.items():
            self.daily[key] = self.daily.get(key, DayFigures()) + value

    def get_daily(self, keys: list[DayKey]) -> dict[DayKey, DayFigures]:
        return self._buffer.daily(keys)

    def quarantine(self, source: str, key: str, reason: str, payload: dict[str, Any]) -> None:
        self.quarantined.append(QuarantineItem(source, key, reason, payload))

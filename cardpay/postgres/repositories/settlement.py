"""Settlement batches as the settlement saga leaves them (`SettlementBatches`): one row per
settlement day and currency, replaced only by a newer saga version; and their items, kept once
per event and added up in SQL at the cut-off (the saga keeps totals, not the items)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date
from typing import Any

from sqlalchemy import Connection, func, select
from sqlalchemy.dialects.postgresql import insert as pg_insert

from cardpay.postgres import schema as s
from domain.settlement import (
    BatchStatus,
    BatchTotals,
    Figures,
    ReportFigures,
    SettlementBatch,
    SettlementItem,
)


class PostgresSettlementBatches:
    def __init__(self, conn: Connection) -> None:
        self._conn = conn

    def put(self, batch: SettlementBatch) -> bool:
        t = s.settlement_batches
        values = {
            "day": batch.day, "currency": batch.currency, "status": batch.status.value,
            "count": batch.ours.count, "credit": batch.ours.credit, "debit": batch.ours.debit,
            "report": None if batch.report is None else batch.report.to_json(),
            "window": batch.window, "payment_ids": list(batch.payment_ids),
            "revision": batch.revision, "updated_at": batch.updated_at,
        }
        statement = pg_insert(t).values(**values)
        # only a newer (or the same: several changes in one reaction) saga version replaces it
        statement = statement.on_conflict_do_update(
            index_elements=[t.c.day, t.c.currency],
            set_={k: statement.excluded[k] for k in values if k not in ("day", "currency")},
            where=t.c.revision <= statement.excluded.revision)
        kept = self._conn.execute(statement.returning(t.c.revision)).scalar()
        return kept is not None

    def get(self, day: date, currency: str) -> SettlementBatch | None:
        found = self.find(day=day, currency=currency)
        return found[0] if found else None

    def find(self, *, day: date | None = None, currency: str | None = None,
             limit: int = 1000) -> list[SettlementBatch]:
        t = s.settlement_batches
        query = select(t).order_by(t.c.day, t.c.currency).limit(limit)
        if day is not None:
            query = query.where(t.c.day == day)
        if currency is not None:
            query = query.where(t.c.currency == currency)
        return [_batch(row) for row in self._conn.execute(query).mappings()]

    def add_item(self, item: SettlementItem) -> bool:
        t = s.settlement_items
        kept = self._conn.execute(pg_insert(t).values(
            day=item.day, currency=item.currency, item_key=item.key,
            payment_id=item.payment_id, count=item.figures.count, credit=item.figures.credit,
            debit=item.figures.debit).on_conflict_do_nothing().returning(t.c.item_key)).scalar()
        return kept is not None

    def totals(self, day: date, currency: str) -> BatchTotals:
        t = s.settlement_items
        mine = (t.c.day == day, t.c.currency == currency)
        count, credit, debit = self._conn.execute(select(
            func.coalesce(func.sum(t.c.count), 0), func.coalesce(func.sum(t.c.credit), 0),
            func.coalesce(func.sum(t.c.debit), 0)).where(*mine)).one()
        ids = self._conn.execute(select(t.c.payment_id).distinct().where(
            *mine, t.c.payment_id.is_not(None)).order_by(t.c.payment_id)).scalars()
        return BatchTotals(Figures(int(count), int(credit), int(debit)), tuple(ids))


def _batch(row: Any) -> SettlementBatch:
    report = row["report"]
    ids: Sequence[str] = row["payment_ids"]
    return SettlementBatch(
        day=row["day"], currency=row["currency"], status=BatchStatus(row["status"]),
        ours=Figures(row["count"], row["credit"], row["debit"]),
        report=None if report is None else ReportFigures.from_json(report),
        window=row["window"], payment_ids=tuple(ids), revision=row["revision"],
        updated_at=row["updated_at"])

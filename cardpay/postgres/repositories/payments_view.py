"""The `payments` read model's rows (`rm_payments`) and the `daily` read model's (`rm_daily`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import fields
from typing import Any

from sqlalchemy import Connection, MetaData, Table, func, select
from sqlalchemy.dialects.postgresql import insert as pg_insert

from cardpay.postgres import schema as s
from cardpay.postgres.repositories import chunks
from projector.daily import DayFigures, DayKey
from projector.payments import PaymentRow

COLUMNS = tuple(f.name for f in fields(PaymentRow))
AMOUNTS = ("authorized", "spent", "cleared", "refunded", "held", "posted", "network_cleared",
           "reversed", "released", "over_cleared", "returned", "settled")
DAY_FIGURES = tuple(f.name for f in fields(DayFigures))


def shadow(table: Table, suffix: str) -> Table:
    """The same table under another name (a rebuild's shadow: `<name><suffix>`)."""
    return table if not suffix else table.to_metadata(MetaData(), name=table.name + suffix)


class PostgresPaymentsView:
    """`suffix` names the shadow tables a rebuild writes (`rm_payments__rebuild`, ...)."""

    def __init__(self, conn: Connection, suffix: str = "") -> None:
        self._conn = conn
        self._payments = shadow(s.rm_payments, suffix)
        self._daily = shadow(s.rm_daily, suffix)

    def get(self, payment_ids: Sequence[str]) -> dict[str, PaymentRow]:
        out: dict[str, PaymentRow] = {}
        for part in chunks(payment_ids):
            t = self._payments
            rows = self._conn.execute(select(t).where(t.c.payment_id.in_(list(part))))
            out.update((r.payment_id, _payment_row(r._mapping)) for r in rows)
        return out

    def put(self, rows: Sequence[PaymentRow]) -> None:
        if not rows:
            return
        values = [{**{k: getattr(r, k) for k in COLUMNS}, "refund_txs": list(r.refund_txs)}
                  for r in rows]
        t = self._payments
        stmt = pg_insert(t)
        updatable = {k: stmt.excluded[k] for k in COLUMNS if k != "payment_id"}
        stmt = stmt.on_conflict_do_update(
            index_elements=["payment_id"], set_={**updatable, "updated_at": func.now()},
            # a row only moves to a newer version: a stale projector cannot overwrite it
            where=t.c.last_version < stmt.excluded.last_version,
        )
        for part in chunks(values, params_per_item=len(COLUMNS)):
            self._conn.execute(stmt, list(part))  # executemany: compiled once, not per row


    def add_daily(self, figures: Mapping[DayKey, DayFigures]) -> None:
        """Add to each day's sums (one upsert per day: the deltas of a batch are summed first)."""
        if not figures:
            return
        d = self._daily
        stmt = pg_insert(d)
        stmt = stmt.on_conflict_do_update(
            index_elements=["day", "currency"],
            set_={k: d.c[k] + stmt.excluded[k] for k in DAY_FIGURES})
        self._conn.execute(stmt, [{"day": day, "currency": currency, **f.as_dict()}
                                  for (day, currency), f in sorted(figures.items())])

    def get_daily(self, keys: Sequence[DayKey]) -> dict[DayKey, DayFigures]:
        d = self._daily
        out: dict[DayKey, DayFigures] = {}
        for day, currency in keys:
            found = self._conn.execute(select(d).where(d.c.day == day,
                                                       d.c.currency == currency)).first()
            if found is not None:
                out[(day, currency)] = DayFigures(**{k: int(found._mapping[k])
                                                     for k in DAY_FIGURES})
        return out


def _payment_row(m: Any) -> PaymentRow:
    values = {k: m[k] for k in COLUMNS}
    for k in AMOUNTS:
        if values[k] is not None:
            values[k] = int(values[k])
    values["last_version"] = int(values["last_version"])
    values["refund_txs"] = tuple(values["refund_txs"] or ())
    return PaymentRow(**values)

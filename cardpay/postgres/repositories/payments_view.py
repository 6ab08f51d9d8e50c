"""The `payments` read model's rows (`rm_payments`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import Connection, func, select
from sqlalchemy.dialects.postgresql import insert as pg_insert

from cardpay.postgres import schema as s
from cardpay.postgres.repositories import chunks
from projector.payments import PaymentRow

t = s.rm_payments
COLUMNS = ("payment_id", "account", "currency", "decimals", "status", "authorized", "spent",
           "cleared", "refunded", "spend_tx", "last_version")


class PostgresPaymentsView:
    def __init__(self, conn: Connection) -> None:
        self._conn = conn

    def get(self, payment_ids: Sequence[str]) -> dict[str, PaymentRow]:
        out: dict[str, PaymentRow] = {}
        for part in chunks(payment_ids):
            rows = self._conn.execute(select(t).where(t.c.payment_id.in_(list(part))))
            out.update((r.payment_id, _payment_row(r._mapping)) for r in rows)
        return out

    def put(self, rows: Sequence[PaymentRow]) -> None:
        if not rows:
            return
        values = [{k: getattr(r, k) for k in COLUMNS} for r in rows]
        stmt = pg_insert(t)
        updatable = {k: stmt.excluded[k] for k in COLUMNS if k != "payment_id"}
        stmt = stmt.on_conflict_do_update(
            index_elements=["payment_id"], set_={**updatable, "updated_at": func.now()},
            # a row only moves to a newer version: a stale projector cannot overwrite it
            where=t.c.last_version < stmt.excluded.last_version,
        )
        for part in chunks(values, params_per_item=len(COLUMNS)):
            self._conn.execute(stmt, list(part))  # executemany: compiled once, not per row


def _payment_row(m: Any) -> PaymentRow:
    return PaymentRow(
        payment_id=m["payment_id"],
        status=m["status"],
        last_version=int(m["last_version"]),
        account=m["account"],
        currency=m["currency"],
        decimals=m["decimals"],
        authorized=None if m["authorized"] is None else int(m["authorized"]),
        spent=int(m["spent"]),
        cleared=None if m["cleared"] is None else int(m["cleared"]),
        refunded=int(m["refunded"]),
        spend_tx=m["spend_tx"],
    )

"""What later card-network messages refer to (`PaymentReferences`) and the daily settlement
reports as the network sent them (`SettlementReports`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import date
from typing import Any

from sqlalchemy import Connection, select, text
from sqlalchemy.dialects.postgresql import insert as pg_insert

from cardpay.postgres import schema as s


class PostgresPaymentReferences:
    def __init__(self, conn: Connection) -> None:
        self._conn = conn

    def put(self, ref: str, payment_id: str) -> None:
        self._conn.execute(pg_insert(s.payment_references).values(ref=ref, payment_id=payment_id)
                           .on_conflict_do_nothing())

    def get(self, ref: str) -> str | None:
        t = s.payment_references
        found: str | None = self._conn.execute(
            select(t.c.payment_id).where(t.c.ref == ref)).scalar()
        return found

    def get_many(self, refs: Sequence[str]) -> dict[str, str]:
        if not refs:
            return {}
        # one array parameter: a backfill range can hold more spends than a statement may
        # have parameters (65,535)
        rows = self._conn.execute(
            text("SELECT ref, payment_id FROM payment_references WHERE ref = ANY(:refs)"),
            {"refs": sorted(set(refs))})
        return {ref: payment_id for ref, payment_id in rows}


class PostgresSettlementReports:
    def __init__(self, conn: Connection) -> None:
        self._conn = conn

    def add(self, report_id: str, settlement_date: date, currency: str,
            report: Mapping[str, Any]) -> bool:
        t = s.settlement_reports
        kept = self._conn.execute(pg_insert(t).values(
            report_id=report_id, settlement_date=settlement_date, currency=currency,
            report=dict(report)).on_conflict_do_nothing().returning(t.c.report_id)).scalar()
        return kept is not None

    def get(self, report_id: str) -> dict[str, Any] | None:
        t = s.settlement_reports
        found = self._conn.execute(select(t.c.report).where(t.c.report_id == report_id)).scalar()
        return None if found is None else dict(found)

    def for_day(self, settlement_date: date, currency: str) -> list[dict[str, Any]]:
        t = s.settlement_reports
        rows = self._conn.execute(select(t.c.report).where(
            t.c.settlement_date == settlement_date, t.c.currency == currency)
            .order_by(t.c.report_id)).scalars()
        return [dict(r) for r in rows]

"""The settlement repositories' contract (`SettlementBatches`, and `SettlementReports.for_day`),
run against the in-memory fake and PostgreSQL: a batch round-trips whole, only a newer (or the
same) revision replaces it, filters by day and currency; items are kept once per key and added
up per day and currency; nothing survives a rollback."""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Any

import pytest

from cardpay.postgres.uow import unit_of_work_factory
from domain.settlement import (
    BatchStatus,
    BatchTotals,
    Figures,
    ReportFigures,
    SettlementBatch,
    SettlementItem,
)
from tests.fakes.storage import FakeDatabase

T0 = datetime(2026, 12, 3, 2, tzinfo=UTC)
DAY = date(2026, 12, 2)


class PostgresDatabase:
    def __init__(self, engine: Any) -> None:
        self.uow = unit_of_work_factory(engine, None)


@pytest.fixture(params=[pytest.param("memory", marks=pytest.mark.unit),
                        pytest.param("postgres", marks=pytest.mark.integration)])
def db(request: pytest.FixtureRequest) -> Any:
    return FakeDatabase() if request.param == "memory" else \
        PostgresDatabase(request.getfixturevalue("pg_engine"))


def batch(revision: int, status: BatchStatus = BatchStatus.OPEN, *, day: date = DAY,
          currency: str = "EUR", report: ReportFigures | None = None) -> SettlementBatch:
    return SettlementBatch(day=day, currency=currency, status=status,
                           ours=Figures(3, 200, 10**15), report=report, window=revision,
                           payment_ids=("p1", "p2"), revision=revision, updated_at=T0)


def put(db: Any, *batches: SettlementBatch) -> list[bool]:
    with db.uow() as uow:
        kept = [uow.settlement_batches.put(b) for b in batches]
        uow.commit()
    return kept


def test_a_batch_round_trips_whole(db: Any) -> None:
    report = ReportFigures("r1", Figures(3, 200, 10**15), 7, 200 - 10**15 + 7)
    stored = batch(2, BatchStatus.MISMATCHED, report=report)
    assert put(db, stored) == [True]
    with db.uow() as uow:
        assert uow.settlement_batches.get(DAY, "EUR") == stored
        assert uow.settlement_batches.get(DAY, "GBP") is None
        assert stored.difference == Figures()


def test_only_a_newer_or_equal_revision_replaces_a_batch(db: Any) -> None:
    assert put(db, batch(3, BatchStatus.MATCHING)) == [True]
    assert put(db, batch(2, BatchStatus.OPEN)) == [False]  # an older reaction's leftover
    assert put(db, batch(3, BatchStatus.PAYING), batch(5, BatchStatus.SETTLED)) == [True, True]
    with db.uow() as uow:
        found = uow.settlement_batches.get(DAY, "EUR")
        assert found is not None and found.status is BatchStatus.SETTLED
        assert found.revision == 5


def test_batches_are_found_by_day_and_currency_in_order(db: Any) -> None:
    later = date(2026, 12, 3)
    put(db, batch(1, day=later, currency="EUR"), batch(1, currency="GBP"), batch(1))
    with db.uow() as uow:
        every = uow.settlement_batches.find()
        assert [(b.day, b.currency) for b in every] == [
            (DAY, "EUR"), (DAY, "GBP"), (later, "EUR")]
        assert [b.currency for b in uow.settlement_batches.find(day=DAY)] == ["EUR", "GBP"]
        assert [b.day for b in uow.settlement_batches.find(currency="EUR")] == [DAY, later]
        assert uow.settlement_batches.find(day=later, currency="GBP") == []


def test_a_batch_is_not_kept_without_a_commit(db: Any) -> None:
    with db.uow() as uow:
        uow.settlement_batches.put(batch(1))
    with db.uow() as uow:
        assert uow.settlement_batches.find() == []


def test_reports_are_found_by_settlement_day_and_currency(db: Any) -> None:
    with db.uow() as uow:
        uow.settlement_reports.add("r-b", DAY, "EUR", {"report_id": "r-b"})
        uow.settlement_reports.add("r-a", DAY, "EUR", {"report_id": "r-a"})
        uow.settlement_reports.add("r-gbp", DAY, "GBP", {"report_id": "r-gbp"})
        uow.settlement_reports.add("r-next", date(2026, 12, 3), "EUR", {"report_id": "r-next"})
        uow.commit()
    with db.uow() as uow:
        assert [r["report_id"] for r in uow.settlement_reports.for_day(DAY, "EUR")] == [
            "r-a", "r-b"]
        assert uow.settlement_reports.for_day(date(2026, 12, 1), "EUR") == []


def item(key: str, payment_id: str | None, figures: Figures, *, day: date = DAY,
         currency: str = "EUR") -> SettlementItem:
    return SettlementItem(day=day, currency=currency, key=key, payment_id=payment_id,
                          figures=figures)


def test_items_are_kept_once_and_added_up_per_day_and_currency(db: Any) -> None:
    with db.uow() as uow:
        assert uow.settlement_batches.totals(DAY, "EUR") == BatchTotals(Figures(), ())
        kept = [uow.settlement_batches.add_item(i) for i in (
            item("p2:3", "p2", Figures(1, 0, 10**15)),
            item("p1:4", "p1", Figures(1, 0, 550)),
            item("p1:6", "p1", Figures(1, 200, 0)),
            item("p1:4", "p1", Figures(1, 0, 550)),  # the same event again
            item("u:r9", None, Figures(1, 300, 0)),
            item("p3:1", "p3", Figures(1, 0, 7), currency="GBP"),
            item("p4:1", "p4", Figures(1, 0, 9), day=date(2026, 12, 3)))]
        uow.commit()
    assert kept == [True, True, True, False, True, True, True]
    with db.uow() as uow:
        assert uow.settlement_batches.totals(DAY, "EUR") == BatchTotals(
            Figures(4, 500, 10**15 + 550), ("p1", "p2"))
        assert uow.settlement_batches.totals(DAY, "GBP") == BatchTotals(Figures(1, 0, 7),
                                                                        ("p3",))


def test_items_are_not_kept_without_a_commit(db: Any) -> None:
    with db.uow() as uow:
        uow.settlement_batches.add_item(item("p1:4", "p1", Figures(1, 0, 550)))
    with db.uow() as uow:
        assert uow.settlement_batches.totals(DAY, "EUR").figures == Figures()

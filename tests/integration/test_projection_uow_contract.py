"""One contract for a projector's unit of work, run against the fake (tests/fakes/projection.py),
`PostgresProjectionUnitOfWork` and the rebuild's `BufferedProjection` (its rows in memory, and
again with a flush to its shadow tables after every commit, so reads come back from PostgreSQL):
what `projector.runner.Projector` relies on."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, cast

import pytest
from sqlalchemy import Engine, text

from projector.payments import PaymentRow
from projector.runner import ProjectionUnitOfWork
from tests.fakes.projection import FakeProjectionStore

Factory = Callable[[], ProjectionUnitOfWork]


@pytest.fixture(params=[pytest.param("memory", marks=pytest.mark.unit),
                        pytest.param("postgres", marks=pytest.mark.integration),
                        pytest.param("buffered", marks=pytest.mark.integration),
                        pytest.param("buffered-flushed", marks=pytest.mark.integration)])
def uow(request: pytest.FixtureRequest) -> Iterator[Factory]:
    if request.param == "memory":
        yield FakeProjectionStore().uow
        return
    engine: Engine = request.getfixturevalue("pg_engine")
    if request.param == "postgres":
        from cardpay.postgres.uow import projection_uow_factory

        yield projection_uow_factory(engine)
        return
    from cardpay.postgres.buffered import BufferedProjection

    with engine.begin() as conn:
        for table in SHADOWED:
            conn.execute(text(f'DROP TABLE IF EXISTS "{table}{SHADOW}"'))
            conn.execute(text(f'CREATE TABLE "{table}{SHADOW}" (LIKE "{table}" INCLUDING ALL)'))
    buffer = BufferedProjection(engine, suffix=SHADOW)
    try:
        yield buffer if request.param == "buffered" else _FlushedOnCommit(buffer)
    finally:
        with engine.begin() as conn:
            for table in SHADOWED:
                conn.execute(text(f'DROP TABLE IF EXISTS "{table}{SHADOW}"'))


SHADOW = "__contract"
SHADOWED = ("rm_payments", "rm_daily")


class _FlushedOnCommit:
    """The buffer's units of work, each commit followed by a flush to the shadow tables."""

    def __init__(self, buffer: Any) -> None:
        self.buffer = buffer

    def __call__(self) -> ProjectionUnitOfWork:
        unit = self.buffer()
        commit = unit.commit

        def commit_and_flush() -> None:
            commit()
            self.buffer.flush()

        unit.commit = commit_and_flush
        return cast(ProjectionUnitOfWork, unit)


def _row(pid: str, version: int, status: str = "held", **more: Any) -> PaymentRow:
    return PaymentRow(payment_id=pid, status=status, last_version=version, account="0xa",
                      currency="EURe", decimals=18, spent=10**18, **more)


def test_rows_and_positions_commit_together_or_not_at_all(uow: Factory) -> None:
    with uow() as w:
        w.put_payments([_row("p1", 1)])
        w.save_positions("payments", {"events": 5})
    with uow() as w:
        assert w.get_payments(["p1"]) == {} and w.load_positions("payments") == {}
        w.put_payments([_row("p1", 1)])
        w.save_positions("payments", {"events": 5})
        w.commit()
    with uow() as w:
        assert w.get_payments(["p1", "p2"]) == {"p1": _row("p1", 1)}
        assert w.load_positions("payments") == {"events": 5}


def test_positions_only_move_forward_per_source(uow: Factory) -> None:
    with uow() as w:
        w.save_positions("payments", {"t:0": 10, "t:1": 4})
        w.save_positions("other", {"t:0": 99})
        w.commit()
    with uow() as w:  # a stale consumer: one source behind, one ahead, one new
        w.save_positions("payments", {"t:0": 7, "t:1": 6, "t:2": 1})
        w.commit()
    with uow() as w:
        assert w.load_positions("payments") == {"t:0": 10, "t:1": 6, "t:2": 1}
        assert w.load_positions("other") == {"t:0": 99}


def test_a_row_only_moves_to_a_newer_version(uow: Factory) -> None:
    with uow() as w:
        w.put_payments([_row("p1", 3, refunded=5)])
        w.commit()
    with uow() as w:  # a stale projector writes an older version: ignored
        w.put_payments([_row("p1", 2, status="authorized"), _row("p2", 1)])
        w.commit()
    with uow() as w:
        rows = w.get_payments(["p1", "p2"])
    assert rows["p1"] == _row("p1", 3, refunded=5) and rows["p2"] == _row("p2", 1)


def test_quarantine_keeps_one_row_per_source_and_key(uow: Factory) -> None:
    with uow() as w:
        w.quarantine("projector:payments", "events@7", "gap", {"v": 1})
        w.quarantine("projector:payments", "events@7", "gap again", {"v": 2})
        w.quarantine("projector:payments", "events@8", "gap", {"v": 3})
        w.commit()
    with uow() as w:
        w.quarantine("projector:payments", "events@7", "redelivered", {"v": 4})
        w.commit()
    assert _quarantined(uow) == [("events@7", "gap"), ("events@8", "gap")]


def _quarantined(uow: Factory) -> list[tuple[str, str]]:
    from cardpay.postgres.buffered import BufferedProjection
    from cardpay.postgres.uow import PostgresProjectionUnitOfWork, PostgresUnitOfWork

    buffer = getattr(uow, "buffer", uow)
    if isinstance(buffer, BufferedProjection):  # what it holds goes to the table at a flush
        buffer.flush()
        engine = buffer._engine
    else:
        probe = uow()
        store = getattr(probe, "store", None)
        if store is not None:  # the fake: its committed store
            return [(q.key, q.reason) for q in store.quarantined]
        assert isinstance(probe, PostgresProjectionUnitOfWork)
        engine = probe._engine
    with PostgresUnitOfWork(engine) as w:
        return [(r.key, r.reason) for r in w.quarantine.list("projector:")]


def test_a_whole_lifecycle_row_reads_back_as_written(uow: Factory) -> None:
    from datetime import UTC, datetime, timedelta

    at = datetime(2026, 12, 1, 9, 30, tzinfo=UTC)
    full = _row("p9", 7, status="settled", authorized=3 * 10**18, cleared=2 * 10**18,
                refunded=10**18, spend_tx="0x" + "ab" * 32, network_status="cleared",
                merchant="Hotel Zürich", mcc="7011", held=0, posted=2 * 10**18,
                network_cleared=2 * 10**18 + 7, reversed=5, released=10**18 - 5,
                over_cleared=7, returned=3, expires_at=at + timedelta(days=30),
                refund_txs=("0x" + "01" * 32, "0x" + "02" * 32), settlement_batch="2026-12-01:EUR",
                settled=2 * 10**18 + 4, first_at=at, authorized_at=at,
                cleared_at=at + timedelta(days=1), settled_at=at + timedelta(days=2),
                last_at=at + timedelta(days=2))
    with uow() as w:
        w.put_payments([full])
        w.commit()
    with uow() as w:
        assert w.get_payments(["p9"]) == {"p9": full}


def test_days_add_up_and_roll_back_with_their_batch(uow: Factory) -> None:
    from datetime import date

    from projector.daily import DayFigures

    d1, d2 = (date(2026, 12, 1), "EURe"), (date(2026, 12, 1), "USDCe")
    with uow() as w:
        w.add_daily({d1: DayFigures(approved=1, authorized=10**20)})
        w.commit()
    with uow() as w:
        w.add_daily({d1: DayFigures(approved=1, authorized=5, refunded=-2), d2: DayFigures(spent=3)})
        # not committed: nothing of it stays
    with uow() as w:
        w.add_daily({d1: DayFigures(cleared=7, refunded=-2)})
        w.commit()
    with uow() as w:
        assert w.get_daily([d1, d2]) == {
            d1: DayFigures(approved=1, authorized=10**20, cleared=7, refunded=-2)}

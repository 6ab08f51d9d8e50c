"""The network sweep's repository contract (`NetworkTimers`), run against the in-memory fake and
PostgreSQL: due holds by deadline, the watch list fed once per parked clearing, what needs a
look, and that all of it commits or rolls back with the unit of work."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import Engine

from cardpay.postgres.uow import sweep_uow_factory
from domain import events as e
from domain.ledger.chart import AccountKind, ChartOfAccounts
from domain.ledger.model import Transfer, TransferFlags
from domain.money import EURE, Money
from tests.fakes.timers import FakeSweepDatabase

T0 = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
CHART = ChartOfAccounts("EURe")
SAFE = "0x" + "5a" * 20


class PostgresDatabase:
    def __init__(self, engine: Engine) -> None:
        self.uow = sweep_uow_factory(engine, None)


@pytest.fixture(params=[pytest.param("memory", marks=pytest.mark.unit),
                        pytest.param("postgres", marks=pytest.mark.integration)])
def db(request: pytest.FixtureRequest) -> Any:
    return FakeSweepDatabase() if request.param == "memory" else \
        PostgresDatabase(request.getfixturevalue("pg_engine"))


def _parked(stream: str, version: int, at: datetime) -> e.ClearingParked:
    return e.ClearingParked(stream_id=stream, version=version, occurred_at=at,
                            correlation_id=stream, causation_id=f"c{version}",
                            amount=Money(10, EURE), final=True)


def _other(stream: str, version: int, at: datetime) -> e.AuthorizationExpired:
    return e.AuthorizationExpired(stream_id=stream, version=version, occurred_at=at,
                                  correlation_id=stream, causation_id=f"x{version}",
                                  released=Money(0, EURE))


def _holds(db: Any, deadlines: dict[str, timedelta]) -> None:
    funds, payable = CHART.cardholder(SAFE), CHART.account(AccountKind.NETWORK_PAYABLE)
    mirror = CHART.safe_mirror(SAFE)
    with db.uow() as uow:
        uow.ledger.create_accounts([funds, payable, mirror])
        uow.ledger.create_transfers([Transfer("fund", mirror.id, funds.id, 10**6, CHART.ledger,
                                              "chain_balance")], T0)
        uow.ledger.create_transfers([
            Transfer(tid, funds.id, payable.id, 10, CHART.ledger, "authorization_hold",
                     TransferFlags.PENDING, timeout=int(after.total_seconds()),
                     user_data=f"pay-{tid}") for tid, after in deadlines.items()], T0)
        uow.commit()


def test_due_holds_are_the_pending_ones_past_their_deadline_earliest_first(db: Any) -> None:
    _holds(db, {"late": timedelta(hours=3), "early": timedelta(hours=1),
                "later": timedelta(days=9), "voided": timedelta(hours=1)})
    with db.uow() as uow:
        uow.ledger.create_transfers([Transfer("void", flags=TransferFlags.VOID_PENDING,
                                              pending_id="voided")], T0)
        uow.commit()
    with db.uow() as uow:
        due = uow.timers.due_holds(T0 + timedelta(days=1), 10)
        assert [(h.transfer_id, h.payment_id) for h in due] == [("early", "pay-early"),
                                                                  ("late", "pay-late")]
        assert due[0].expires_at == T0 + timedelta(hours=1)
        assert [h.transfer_id for h in uow.timers.due_holds(T0 + timedelta(days=1), 1)] \
            == ["early"]
        assert uow.timers.due_holds(T0 + timedelta(minutes=59), 10) == []
        uow.ledger.expire_pending(T0 + timedelta(days=1))
        assert uow.timers.due_holds(T0 + timedelta(days=1), 10) == []


def test_parked_clearings_are_watched_once_from_their_first_parking(db: Any) -> None:
    with db.uow() as uow:
        uow.events.append([_parked("p1", 1, T0), _parked("p1", 2, T0 + timedelta(hours=1)),
                           _parked("p2", 1, T0 + timedelta(hours=2))])
        assert uow.timers.watch_new_parked(2) == 2
        assert uow.timers.watch_new_parked(2) == 1
        assert uow.timers.watch_new_parked(2) == 0
        uow.commit()
    with db.uow() as uow:
        assert uow.timers.watch_new_parked(10) == 0  # the position was kept
        found = uow.timers.parked_to_check(T0 - timedelta(days=1), 10)
        assert [(w.payment_id, w.parked_since, w.checked_version) for w in found] == [
            ("p1", T0, 0), ("p2", T0 + timedelta(hours=2), 0)]  # never looked at yet


def test_a_watched_payment_needs_a_look_when_it_changes_or_its_time_comes(db: Any) -> None:
    with db.uow() as uow:
        uow.events.append([_parked("p1", 1, T0)])
        uow.timers.watch_new_parked(10)
        uow.timers.checked("p1", 1)
        assert uow.timers.parked_to_check(T0 - timedelta(seconds=1), 10) == []
        due, = uow.timers.parked_to_check(T0, 10)  # at the cutoff
        assert due.payment_id == "p1" and due.exception_at is None
        uow.timers.checked("p1", 1, exception_at=T0)
        assert uow.timers.parked_to_check(T0 + timedelta(days=9), 10) == []  # raised once
        uow.events.append([_other("p1", 2, T0)])
        changed, = uow.timers.parked_to_check(T0, 10)
        assert changed.exception_at == T0 and changed.checked_version == 1
        uow.timers.checked("p1", 2)  # no exception now: the raised one stays recorded
        assert uow.timers.parked_to_check(T0 + timedelta(days=9), 10) == []
        uow.timers.unwatch("p1")
        uow.events.append([_other("p1", 3, T0)])
        assert uow.timers.parked_to_check(T0 + timedelta(days=9), 10) == []
        uow.commit()


def test_without_a_commit_nothing_is_kept(db: Any) -> None:
    with db.uow() as uow:
        uow.events.append([_parked("p1", 1, T0)])
        uow.commit()
    with db.uow() as uow:
        assert uow.timers.watch_new_parked(10) == 1
    with db.uow() as uow:  # rolled back: watched again, from the same position
        assert uow.timers.watch_new_parked(10) == 1
        with pytest.raises(RuntimeError), uow.savepoint():
            uow.timers.checked("p1", 1, exception_at=T0)
            raise RuntimeError("undo")
        found, = uow.timers.parked_to_check(T0, 10)
        assert found.checked_version == 0 and found.exception_at is None


def test_due_holds_can_be_read_after_a_position(db: Any) -> None:
    _holds(db, {"b": timedelta(hours=1), "a": timedelta(hours=1), "c": timedelta(hours=2)})
    now = T0 + timedelta(days=1)
    with db.uow() as uow:
        first = uow.timers.due_holds(now, 2)
        assert [h.transfer_id for h in first] == ["a", "b"]
        rest = uow.timers.due_holds(now, 2, (first[-1].expires_at, first[-1].transfer_id))
        assert [h.transfer_id for h in rest] == ["c"]
        assert uow.timers.due_holds(now, 2, (rest[-1].expires_at, "c")) == []

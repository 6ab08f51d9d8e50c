"""The `daily` read model: each applied event adds what it changed in its payment's row to its
day; redeliveries and restarts add nothing; the sums equal the rows' totals."""

from __future__ import annotations

import contextlib
from datetime import timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from domain import commands as c
from domain.errors import DomainError
from domain.money import Money
from domain.payment import Payment, handle
from projector.daily import DayFigures, delta, from_rows_and_events
from projector.payments import PaymentRow, evolve
from projector.runner import Projector
from tests.fakes.projection import FakeFeed, FakeProjectionStore
from tests.unit.test_projector import SAFE, T0, USDCE, messages, proof, run, stream

pytestmark = pytest.mark.unit
DAY = T0.date()


def usdc(units: int) -> Money:
    return Money(units, USDCE)


def lifecycle(pid: str, days: list[int], amounts: list[int]) -> list[object]:
    """A payment approved, spent, cleared (partly, then finally), returned and settled, each
    message on the day of `days` (offsets from T0's day)."""
    payment = Payment(pid)
    n = iter(range(100))

    def base(day: int) -> dict[str, object]:
        return {"command_id": f"{pid}-{next(n)}", "payment_id": pid,
                "at": T0 + timedelta(days=day, minutes=next(n))}

    auth, clear, ret = amounts
    steps: list[c.Command] = [
        c.AuthorizePayment(**base(days[0]), account=SAFE, amount=usdc(auth),  # type: ignore[arg-type]
                           merchant="m", mcc="5411", expires_at=T0 + timedelta(days=9)),
        c.ConfirmSpend(**base(days[0]), account=SAFE, amount=usdc(auth),  # type: ignore[arg-type]
                       evidence=proof(int(pid[1:]) if pid[1:].isdigit() else 1)),
        c.RecordClearing(**base(days[1]), amount=usdc(clear)),  # type: ignore[arg-type]
        c.ClearPayment(**base(days[1]), amount=usdc(clear)),  # type: ignore[arg-type]
        c.RecordReturn(**base(days[2]), amount=usdc(ret)),  # type: ignore[arg-type]
        c.SettlePayment(**base(days[2]), batch_id="b"),  # type: ignore[arg-type]
    ]
    for cmd in steps:
        with contextlib.suppress(DomainError):  # refused (e.g. nothing left to return)
            handle(payment, cmd)
    return list(payment.pending_events)


def fold(events: list[object]) -> tuple[PaymentRow, dict[tuple[object, str], DayFigures]]:
    current: PaymentRow | None = None
    steps = []
    for event in events:
        after = evolve(current, event)  # type: ignore[arg-type]
        steps.append((current, after, event))
        current = after
    assert current is not None
    return current, from_rows_and_events(steps)  # type: ignore[arg-type]


def test_each_figure_counts_on_the_day_of_its_event() -> None:
    row, days = fold(lifecycle("p1", [0, 1, 2], [30, 20, 5]))
    assert days == {
        (DAY, "USDCe"): DayFigures(approved=1, authorized=30, spent=30),
        (DAY + timedelta(days=1), "USDCe"): DayFigures(cleared_payments=1, cleared=20),
        (DAY + timedelta(days=2), "USDCe"): DayFigures(returned=5, settled_payments=1,
                                                       settled=15),
    }
    assert (row.network_cleared, row.returned, row.settled) == (20, 5, 15)


def test_an_event_that_changes_no_figure_adds_no_day() -> None:
    a = stream("a", 100)
    first = evolve(None, a[0])
    from domain import events as e
    submitted = e.RefundSubmitted(stream_id="a", version=2, occurred_at=T0,
                                  correlation_id="c", causation_id="x", refund_id="r",
                                  tx_hash="0x" + "cd" * 32)
    assert delta(first, evolve(first, submitted), submitted) is None


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.lists(st.integers(0, 3), min_size=3, max_size=3),
                          st.integers(1, 50), st.integers(0, 60), st.integers(0, 30)),
                min_size=1, max_size=6))
def test_the_days_add_up_to_the_rows(payments: list[tuple[list[int], int, int, int]]) -> None:
    """Whatever the days, the sum over days of each figure is the rows' total."""
    rows: list[PaymentRow] = []
    total = DayFigures()
    for i, (days, auth, clear, ret) in enumerate(payments):
        row, moved = fold(lifecycle(f"p{i + 1}", sorted(days), [auth, clear, ret]))
        rows.append(row)
        for figures in moved.values():
            total = total + figures
    assert total.authorized == sum(r.authorized or 0 for r in rows)
    assert total.approved == sum(1 for r in rows if r.authorized)
    assert total.cleared == sum(r.network_cleared for r in rows)
    assert total.cleared_payments == sum(1 for r in rows if r.network_cleared)
    assert total.returned == sum(r.returned for r in rows)
    assert total.spent == sum(r.spent for r in rows)
    assert total.settled == sum(r.settled for r in rows)
    assert total.settled_payments == sum(1 for r in rows if r.settled_at is not None)


def test_redeliveries_and_a_restart_add_nothing_to_the_days() -> None:
    a = stream("a", 100, 10, 20)
    store = FakeProjectionStore()
    run(Projector("payments", FakeFeed(messages([a[0], a[1], a[1], a[0], a[2]])), store.uow))
    once = dict(store.daily)
    assert once == {(DAY, "USDCe"): DayFigures(spent=100, refunded=30)}
    store.positions["payments"] = {"events": 0}  # the feed starts over
    run(Projector("payments", FakeFeed(messages(a)), store.uow))
    assert store.daily == once

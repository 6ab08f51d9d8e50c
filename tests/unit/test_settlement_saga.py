"""The settlement saga, message by message, on the pure engine (no storage): a matched batch is
paid out and its payments settled, a mismatch opens an exception and keeps the batch open, a
late report is found by retries or at the next cut-off, a failed payout is reversed and paid in
the next window."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import Any, TypeVar

import pytest

from domain import commands as c
from domain import events as e
from domain.money import EURE, GBPE, Money
from domain.settlement import (
    BatchStatus,
    Figures,
    ReportFigures,
    SettlementBatch,
    SettlementItem,
    next_cutoff,
    parse_cutoff,
    report_figures,
)
from sagas.engine.model import (
    Action,
    EffectFailed,
    EffectSucceeded,
    EventArrived,
    IssueCommand,
    Message,
    OpenException,
    RequestEffect,
    SagaInstance,
    SetTimer,
    TimerFired,
)
from sagas.engine.react import RETRY, react
from sagas.engine.retry import FailureClass
from sagas.settlement import (
    CUTOFF,
    FETCH_REPORT,
    POST_PAYOUT,
    REVERSE_PAYOUT,
    SettlementSaga,
    route,
)

pytestmark = pytest.mark.unit
DAY = date(2026, 12, 2)
T0 = datetime(2026, 12, 2, 9, tzinfo=UTC)
CUT = datetime(2026, 12, 3, 2, tzinfo=UTC)
SAGA = SettlementSaga()
BATCH = "2026-12-02:EUR"
SAFE = "0x" + "5a" * 20

E = TypeVar("E", bound=e.DomainEvent)


def eure(cents: int) -> Money:
    return Money(cents * 10**16, EURE)


def ev(cls: type[E], pid: str, version: int, **fields: Any) -> E:
    return cls(stream_id=pid, version=version, occurred_at=T0, correlation_id=pid,
               causation_id=f"{pid}:m{version}", **fields)


def clearing(pid: str, cents: int, version: int = 3) -> e.ClearingRecorded:
    return ev(e.ClearingRecorded, pid, version, clearing_id=f"{pid}:c", amount=eure(cents),
              final=True, basis="hold", from_hold=eure(cents), beyond_hold=eure(0),
              released=eure(0), held=eure(0))


def force_post(pid: str, cents: int) -> e.PaymentForcePosted:
    return ev(e.PaymentForcePosted, pid, 1, account=SAFE, amount=eure(cents), merchant="Shop",
              mcc="5411")


def returned(pid: str, cents: int, version: int = 5) -> e.ReturnRecorded:
    return ev(e.ReturnRecorded, pid, version, amount=eure(cents), returned=eure(cents))


DAY_EVENTS = (clearing("p1", 1_000), force_post("p2", 500), returned("p3", 200))
"""Two purchases (15.00 owed) and a return (2.00 back): count 3, credit 200, debit 1500."""


ITEMS: dict[str, SettlementItem] = {}
"""A model of `settlement_items`: what the saga issued, once per key (the shell's insert)."""


@pytest.fixture(autouse=True)
def _empty_items() -> None:
    ITEMS.clear()


def report(count: int = 3, credit: int = 200, debit: int = 1_500, fees: int = 3, *,
           unplaced: Figures | None = None, unplaced_ids: tuple[str, ...] = ()
           ) -> dict[str, Any]:
    """The desk's answer to the report request: the report, and the stored items added up."""
    ours = unplaced or Figures()
    for item in ITEMS.values():
        ours = ours + item.figures
    return {"report": ReportFigures("vss110-2026-12-02-EUR", Figures(count, credit, debit),
                                    fees, credit - debit + fees).to_json(),
            "ours": ours.to_json(),
            "payment_ids": sorted({str(i.payment_id) for i in ITEMS.values()}),
            "unplaced_returns": list(unplaced_ids)}


def feed(instance: SagaInstance, *messages: Message,
         now: datetime = T0) -> tuple[SagaInstance, list[Action]]:
    actions: list[Action] = []
    for message in messages:
        instance, more = react(SAGA, instance, message, now)
        actions += more
    for action in actions:
        if isinstance(action, IssueCommand) and isinstance(action.command, SettlementItem):
            ITEMS.setdefault(action.command.key, action.command)
    return instance, actions


def requested(actions: list[Action]) -> list[RequestEffect]:
    return [a for a in actions if isinstance(a, RequestEffect)]


def exceptions(actions: list[Action]) -> list[OpenException]:
    return [a for a in actions if isinstance(a, OpenException)]


def batches(actions: list[Action]) -> list[SettlementBatch]:
    return [a.command for a in actions
            if isinstance(a, IssueCommand) and isinstance(a.command, SettlementBatch)]


def rid(instance: SagaInstance) -> str:
    assert instance.waiting is not None
    return instance.waiting.effect.request_id


def collected() -> SagaInstance:
    """The day's three events, up to the cut-off's report request."""
    s, actions = feed(SagaInstance(BATCH, SAGA.kind), *(EventArrived(x) for x in DAY_EVENTS))
    assert SetTimer(CUTOFF, CUT) in actions
    assert s.stage == BatchStatus.OPEN and sorted(ITEMS) == ["p1:3", "p2:1", "p3:5"]
    assert ITEMS["p3:5"] == SettlementItem(day=DAY, currency="EUR", key="p3:5",
                                           payment_id="p3", figures=Figures(1, 200, 0))
    assert batches(actions)[-1].ours == Figures(3, 200, 1_500)
    s, actions = feed(s, TimerFired(CUTOFF), now=CUT)
    fetch, = requested(actions)
    assert fetch.effect.name == FETCH_REPORT
    assert fetch.effect.payload == {"day": "2026-12-02", "currency": "EUR"}
    assert s.stage == BatchStatus.MATCHING
    return s


def test_routing_is_by_recorded_day_and_fiat_currency() -> None:
    assert route(clearing("p1", 1)) == [("settlement", BATCH)]
    gbp = ev(e.ReturnReversed, "p9", 7, amount=Money(10**16, GBPE), returned=Money(0, GBPE))
    assert route(gbp) == [("settlement", "2026-12-02:GBP")]
    assert route(ev(e.PaymentSettled, "p1", 9, batch_id=BATCH)) == []


def test_a_matching_report_pays_out_and_settles_every_payment_of_the_batch() -> None:
    s = collected()
    s, actions = feed(s, EffectSucceeded(rid(s), report()), now=CUT)
    payout, = requested(actions)
    assert payout.effect.name == POST_PAYOUT
    assert payout.effect.payload == {"batch_id": BATCH, "day": "2026-12-02",
                                     "currency": "EUR", "window": 1, "owed": 1_300, "fees": 3}
    assert s.stage == BatchStatus.PAYING and not exceptions(actions)
    s, actions = feed(s, EffectSucceeded(rid(s), {"transfers": 2}), now=CUT)
    settles = [a.command for a in actions if isinstance(a, IssueCommand)
               and isinstance(a.command, c.SettlePayment)]
    assert [(x.payment_id, x.batch_id) for x in settles] == [
        ("p1", BATCH), ("p2", BATCH), ("p3", BATCH)]
    batch = batches(actions)[-1]
    assert batch.status is BatchStatus.SETTLED and batch.difference == Figures()
    assert batch.revision == s.version and batch.payment_ids == ("p1", "p2", "p3")
    # an event of the day delivered after the payout is an exception, not lost or paid twice
    s, actions = feed(s, EventArrived(clearing("p4", 700)), now=CUT)
    late, = exceptions(actions)
    assert late.reason == "late_settlement_item" and late.context["payment_id"] == "p4"
    assert "p4:3" not in ITEMS and batches(actions) == []
    s, actions = feed(s, EventArrived(clearing("p4", 700)), now=CUT)
    assert actions == []


def test_a_mismatch_opens_an_exception_with_the_difference_and_keeps_the_batch_open() -> None:
    s = collected()
    s, actions = feed(s, EffectSucceeded(rid(s), report(count=4, debit=2_200)), now=CUT)
    assert requested(actions) == [] and s.stage == BatchStatus.MISMATCHED
    problem, = exceptions(actions)
    assert problem.reason == "settlement_mismatch"
    assert problem.context["difference"] == {"count": -1, "credit": 0, "debit": -700,
                                             "net": 700}
    assert problem.context["payment_ids"] == ["p1", "p2", "p3"]
    assert SetTimer(CUTOFF, CUT + timedelta(days=1)) in actions
    assert batches(actions)[-1].difference == Figures(-1, 0, -700)
    # the clearing the network counted arrives late: matched again at once, and now equal
    s, actions = feed(s, EventArrived(clearing("p4", 700)), now=CUT + timedelta(hours=1))
    fetch, = requested(actions)
    assert fetch.effect.name == FETCH_REPORT
    s, actions = feed(s, EffectSucceeded(rid(s), report(count=4, debit=2_200)), now=CUT)
    assert [r.effect.name for r in requested(actions)] == [POST_PAYOUT]
    assert requested(actions)[0].effect.payload["owed"] == 2_000


def test_the_same_mismatch_found_again_opens_no_second_exception() -> None:
    s = collected()
    s, first = feed(s, EffectSucceeded(rid(s), report(credit=0)), now=CUT)
    s, _ = feed(s, TimerFired(CUTOFF), now=CUT + timedelta(days=1))
    s, again = feed(s, EffectSucceeded(rid(s), report(credit=0)), now=CUT + timedelta(days=1))
    assert len(exceptions(first)) == 1 and exceptions(again) == []
    assert s.stage == BatchStatus.MISMATCHED


def test_a_late_report_is_found_by_the_retries() -> None:
    s = collected()
    s, actions = feed(s, EffectFailed(rid(s), FailureClass.TEMPORARY, "no report yet"), now=CUT)
    retry, = [a for a in actions if isinstance(a, SetTimer)]
    assert retry.name == RETRY + rid(s) and CUT < retry.due <= CUT + timedelta(minutes=1)
    s, actions = feed(s, TimerFired(retry.name), now=retry.due)
    assert [r.effect.name for r in requested(actions)] == [FETCH_REPORT]
    assert requested(actions)[0].attempt == 2
    s, actions = feed(s, EffectSucceeded(rid(s), report()), now=retry.due)
    assert [r.effect.name for r in requested(actions)] == [POST_PAYOUT]


def test_a_report_missing_after_every_retry_waits_for_the_next_cut_off() -> None:
    s = collected()
    now = CUT
    for _ in range(SAGA.policy.max_attempts - 1):
        s, actions = feed(s, EffectFailed(rid(s), FailureClass.TEMPORARY, "no report"), now=now)
        retry, = [a for a in actions if isinstance(a, SetTimer)]
        now = retry.due
        s, _ = feed(s, TimerFired(retry.name), now=now)
    s, actions = feed(s, EffectFailed(rid(s), FailureClass.TEMPORARY, "no report"), now=now)
    missing, = exceptions(actions)
    assert missing.reason == "settlement_report_missing" and s.waiting is None
    assert s.stage == BatchStatus.AWAITING_REPORT
    assert SetTimer(CUTOFF, next_cutoff(now, SAGA.cutoff)) in actions
    s, actions = feed(s, TimerFired(CUTOFF), now=CUT + timedelta(days=1))
    s, actions = feed(s, EffectSucceeded(rid(s), report()), now=CUT + timedelta(days=1))
    assert [r.effect.name for r in requested(actions)] == [POST_PAYOUT]


def test_a_failed_payout_is_reversed_the_batch_reopened_and_paid_in_the_next_window() -> None:
    s = collected()
    s, _ = feed(s, EffectSucceeded(rid(s), report()), now=CUT)
    s, actions = feed(s, EffectFailed(rid(s), FailureClass.HARD, "bank refused"), now=CUT)
    failed, = exceptions(actions)
    assert failed.reason == "settlement_payout_failed"
    undo, = requested(actions)
    assert undo.effect.name == REVERSE_PAYOUT and undo.effect.payload["window"] == 1
    assert s.stage == BatchStatus.REVERSING
    assert not any(isinstance(a, IssueCommand) and isinstance(a.command, c.SettlePayment)
                   for a in actions)
    s, actions = feed(s, EffectSucceeded(rid(s)), now=CUT)
    assert s.stage == BatchStatus.REOPENED and s.data["window"] == 2
    assert SetTimer(CUTOFF, CUT + timedelta(days=1)) in actions
    assert batches(actions)[-1].status is BatchStatus.REOPENED
    s, actions = feed(s, TimerFired(CUTOFF), now=CUT + timedelta(days=1))
    s, actions = feed(s, EffectSucceeded(rid(s), report()), now=CUT + timedelta(days=1))
    payout, = requested(actions)
    assert payout.effect.name == POST_PAYOUT and payout.effect.payload["window"] == 2
    s, actions = feed(s, EffectSucceeded(rid(s)), now=CUT + timedelta(days=1))
    assert s.stage == BatchStatus.SETTLED
    assert len([a for a in actions if isinstance(a, IssueCommand)
                and isinstance(a.command, c.SettlePayment)]) == 3


def test_a_payout_that_is_never_answered_times_out_and_is_retried() -> None:
    s = collected()
    s, actions = feed(s, EffectSucceeded(rid(s), report()), now=CUT)
    timeout, = [a for a in actions if isinstance(a, SetTimer)]
    assert timeout.due == CUT + SAGA.payout_timeout
    s, actions = feed(s, TimerFired(timeout.name), now=timeout.due)
    assert s.stage == BatchStatus.PAYING and exceptions(actions) == []


def test_the_report_is_read_from_its_issuer_interchange_fees_and_total_lines() -> None:
    body = {"report_id": "r1", "lines": [
        {"business_mode": "issuer", "amount_type": "interchange", "count": 4,
         "credit_amount": 200, "debit_amount": 1_500, "net_amount": -1_300},
        {"business_mode": "issuer", "amount_type": "reimbursement_fees", "count": 3,
         "credit_amount": 3, "debit_amount": 0, "net_amount": 3},
        {"business_mode": "total", "amount_type": "total", "count": 4,
         "credit_amount": 203, "debit_amount": 1_500, "net_amount": -1_297}]}
    figures = report_figures(body)
    assert figures == ReportFigures("r1", Figures(4, 200, 1_500), 3, -1_297)
    assert ReportFigures.from_json(figures.to_json()) == figures


@pytest.mark.parametrize("text", ["2:00", "02-00", "25:00", "", "02:00:00"])
def test_a_bad_cut_off_is_refused(text: str) -> None:
    with pytest.raises(ValueError, match="HH:MM"):
        parse_cutoff(text)


def test_returns_no_payment_explains_count_with_the_day_when_the_desk_reports_them() -> None:
    s = collected()
    answer = report(count=4, credit=500, unplaced=Figures(1, 300, 0), unplaced_ids=("r9",))
    s, actions = feed(s, EffectSucceeded(rid(s), answer), now=CUT)
    payout, = requested(actions)
    assert payout.effect.name == POST_PAYOUT and payout.effect.payload["owed"] == 1_000
    assert batches(actions)[-1].ours == Figures(4, 500, 1_500)
    # without them the same report is a mismatch by exactly that return
    s = collected()
    s, actions = feed(s, EffectSucceeded(rid(s), report(count=4, credit=500)), now=CUT)
    problem, = exceptions(actions)
    assert problem.context["difference"] == {"count": -1, "credit": -300, "debit": 0,
                                             "net": -300}


def test_an_event_delivered_twice_counts_once_in_the_matched_batch() -> None:
    s, actions = feed(SagaInstance(BATCH, SAGA.kind),
                      *(EventArrived(x) for x in (*DAY_EVENTS, DAY_EVENTS[0])))
    # the running sum is the saga's own (the feed's positions keep redeliveries from it) ...
    assert batches(actions)[-1].ours == Figures(4, 200, 2_500)
    items = [a.command for a in actions if isinstance(a, IssueCommand)
             and isinstance(a.command, SettlementItem)]
    assert [i.key for i in items] == ["p1:3", "p2:1", "p3:5", "p1:3"] and len(ITEMS) == 3
    # ... the batch matched is the stored items, each once
    s, _ = feed(s, TimerFired(CUTOFF), now=CUT)
    s, actions = feed(s, EffectSucceeded(rid(s), report()), now=CUT)
    assert [r.effect.name for r in requested(actions)] == [POST_PAYOUT]
    assert batches(actions)[-1].ours == Figures(3, 200, 1_500)

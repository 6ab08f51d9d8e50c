"""The settlement saga: one per settlement day and currency (saga id `2026-12-02:EUR`).

Route: every payment event the network counts in its settlement report (`ClearingRecorded`,
`PaymentForcePosted`, `FinancialAuthorizationRecorded`, `ReturnRecorded`, `ReturnReversed`)
goes to the saga of the day it was recorded (UTC) and its fiat currency; the first one starts
the saga and sets its `cutoff` timer (the cut-off time on the next day). The network's reports
are not events: they are kept by the network handler in `settlement_reports`, and the saga
learns of one by asking (`fetch_settlement_report`, answered by the settlement desk from that
table, or a temporary failure while none has arrived, retried with backoff by the engine).

- open: each event is issued as a `SettlementItem`, kept once per stream and version in
  `settlement_items` (the feed delivers at least once), and added to a running sum; the saga
  keeps no list of items (its row stays small however busy the day: it is rewritten on every
  event);
- cut-off -> the desk adds up the stored items (each once) with the day's returns that no payment
  explains (the network counts them; cardpay booked them to suspense without an event) and
  answers them with the report; that sum replaces the running one;
- the report is asked for at the cut-off (a report that came early waits in its table until now:
  before the cut-off the day's clearings may still be arriving; one that comes late is found by
  the retries, and after them at the next cut-off, with an exception meanwhile);
- report equal (interchange count, credit, debit, net) -> the payout: the ledger postings as an
  effect (`post_settlement_payout`); its success -> `SettlePayment` for every payment of the
  batch; the saga then stays idle in `settled` (an event of that day delivered later raises a
  `late_settlement_item` exception instead of vanishing);
- report different -> an exception with the difference and the batch's payment ids; the batch
  stays open: another of the day's events (a late delivery) or the next cut-off matches again;
- payout failed (for good, or out of tries) -> an exception and `reverse_settlement_payout`
  (reverses whatever of that window's postings exist: the failure may have come after they
  were made), then the batch is reopened and paid in the next window with new posting ids.

The payout's undo is a step of its own rather than an engine compensation: the engine's
`compensate` finishes the saga, and a settlement batch must outlive a failed payout.
Every change of the batch is also issued as a `SettlementBatch` (the shell stores it for
`cardpay settlements`). Amounts in `data` are fiat minor units.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, time, timedelta
from typing import Any

from domain import commands as c
from domain import events as e
from domain.settlement import (
    SETTLED_EVENTS,
    BatchStatus,
    Figures,
    ReportFigures,
    SettlementBatch,
    SettlementItem,
    batch_id,
    cutoff_at,
    fiat_of,
    figures_of,
    next_cutoff,
    parse_cutoff,
    settlement_day,
)
from sagas.engine.model import Effect, Json
from sagas.engine.react import Saga
from sagas.engine.retry import FailureClass, RetryPolicy

KIND = "settlement"
CUTOFF = "cutoff"
FETCH_REPORT = "fetch_settlement_report"
POST_PAYOUT = "post_settlement_payout"
REVERSE_PAYOUT = "reverse_settlement_payout"
EFFECTS = (FETCH_REPORT, POST_PAYOUT, REVERSE_PAYOUT)
"""What the settlement desk (`cardpay.handlers.settlement`) answers."""

MATCHABLE = frozenset({BatchStatus.OPEN, BatchStatus.AWAITING_REPORT, BatchStatus.MISMATCHED,
                       BatchStatus.REOPENED})
"""Stages from which a cut-off (or a late event, when mismatched) matches the batch."""


def _policy() -> RetryPolicy:
    # a report hours late is still found by retries (1 min doubling to 1 h: about 6 h in all)
    return RetryPolicy(max_attempts=12, base=timedelta(minutes=1), cap=timedelta(hours=1))


@dataclass(frozen=True, slots=True)
class SettlementSaga:
    kind: str = KIND
    policy: RetryPolicy = field(default_factory=_policy)
    cutoff: time = field(default_factory=lambda: parse_cutoff("02:00"))
    """The daily cut-off (UTC): day D's batch closes at this time on day D + 1 (the network's
    report for D is sent then: card-network notes and the simulator)."""
    payout_timeout: timedelta = timedelta(minutes=5)

    # -- events ---------------------------------------------------------------------------------
    def on_event(self, saga: Saga, event: Any) -> None:
        figures = figures_of(event)
        if figures is None:
            return
        if saga.stage == "started":
            self._open(saga, event)
        key = f"{event.stream_id}:{event.version}"
        if saga.stage in (BatchStatus.PAYING, BatchStatus.SETTLED):
            late = list(saga.data.get("late", []))
            if key in late:
                return  # delivered again
            # the payout is fixed already: this item belongs to no batch, a person places it
            saga.goto(saga.stage, late=[*late, key])
            saga.raise_exception(
                "late_settlement_item", f"{type(event).__name__} of {event.stream_id} arrived "
                f"after batch {saga.instance.saga_id} was {saga.stage}",
                payment_id=event.stream_id, version=event.version, **figures.to_json())
            return
        saga.issue(SettlementItem(day=date.fromisoformat(saga.data["day"]),
                                  currency=str(saga.data["currency"]), key=key,
                                  payment_id=event.stream_id, figures=figures))
        saga.goto(saga.stage, ours=(_figures(saga.data) + figures).to_json())
        if saga.stage == BatchStatus.MISMATCHED and saga.waiting is None:
            self._match(saga)  # a late delivery may be what the report counted
        self._record(saga)

    def on_timer(self, saga: Saga, name: str) -> None:
        if name != CUTOFF or saga.waiting is not None:
            return
        if saga.stage in MATCHABLE:
            self._match(saga)
        elif saga.stage == BatchStatus.REVERSING:
            saga.request(REVERSE_PAYOUT, self._payout(saga))

    def on_success(self, saga: Saga, effect: Effect, result: Json) -> None:
        if effect.name == FETCH_REPORT:
            # the batch as stored (each item once) with the day's returns no payment explains
            # (no event: the desk finds them in suspense) replaces the running sum
            saga.goto(saga.stage, ours=dict(result["ours"]),
                      payment_ids=list(result["payment_ids"]),
                      unplaced_returns=list(result.get("unplaced_returns", [])))
            self._compare(saga, ReportFigures.from_json(result["report"]))
        elif effect.name == POST_PAYOUT:
            for payment_id in self._payment_ids(saga):
                saga.issue(c.SettlePayment(command_id=f"{saga.instance.saga_id}:settle:"
                                           f"{payment_id}", payment_id=payment_id,
                                           at=saga.now, batch_id=saga.instance.saga_id))
            # not `complete()`: a finished saga ignores everything, and one of the day's events
            # delivered after the payout must still raise its exception (an idle row, no timer)
            saga.goto(BatchStatus.SETTLED)
            saga.cancel_timer(CUTOFF)  # a next window set by an earlier mismatch is not needed
            self._record(saga)
        elif effect.name == REVERSE_PAYOUT:
            saga.goto(BatchStatus.REOPENED, window=int(saga.data["window"]) + 1)
            saga.set_timer(CUTOFF, next_cutoff(saga.now, self.cutoff))
            self._record(saga)

    def on_failure(self, saga: Saga, effect: Effect, failure: FailureClass,
                   detail: str) -> None:
        context = {"day": saga.data["day"], "currency": saga.data["currency"],
                   "failure": str(failure), "window": saga.data.get("window", 1)}
        if effect.name == FETCH_REPORT:
            saga.goto(BatchStatus.AWAITING_REPORT)
            saga.raise_exception("settlement_report_missing", f"no settlement report for "
                                 f"{saga.instance.saga_id}: {detail}", **context)
            saga.set_timer(CUTOFF, next_cutoff(saga.now, self.cutoff))
        elif effect.name == POST_PAYOUT:
            saga.goto(BatchStatus.REVERSING)
            saga.raise_exception("settlement_payout_failed", detail, **context,
                                 payout=dict(effect.payload))
            saga.request(REVERSE_PAYOUT, self._payout(saga))
        else:  # the reversal itself: tried again at the next cut-off, a person told now
            saga.raise_exception("settlement_reversal_failed", detail, **context,
                                 payout=dict(effect.payload))
            saga.set_timer(CUTOFF, next_cutoff(saga.now, self.cutoff))
        self._record(saga)

    # -- steps ----------------------------------------------------------------------------------
    def _open(self, saga: Saga, event: Any) -> None:
        day = settlement_day(event.occurred_at)
        token = event.amount.currency
        saga.goto(BatchStatus.OPEN, day=day.isoformat(), currency=fiat_of(token).code,
                  token=token.code, window=1, ours=Figures().to_json())
        saga.set_timer(CUTOFF, cutoff_at(day, self.cutoff))

    @staticmethod
    def _match(saga: Saga) -> None:
        saga.goto(BatchStatus.MATCHING)
        saga.request(FETCH_REPORT, {"day": saga.data["day"], "currency": saga.data["currency"]})
        SettlementSaga._record(saga)

    def _compare(self, saga: Saga, report: ReportFigures) -> None:
        ours = _figures(saga.data)
        difference = ours.minus(report.interchange)
        if difference.is_zero:
            saga.goto(BatchStatus.PAYING, report=report.to_json())
            saga.request(POST_PAYOUT, self._payout(saga), timeout=self.payout_timeout)
        else:
            saga.goto(BatchStatus.MISMATCHED, report=report.to_json())
            if saga.data.get("raised") != [report.report_id, difference.to_json()]:
                saga.goto(saga.stage, raised=[report.report_id, difference.to_json()])
                saga.raise_exception(
                    "settlement_mismatch", f"batch {saga.instance.saga_id} differs from report "
                    f"{report.report_id} by {difference.to_json()}",
                    day=saga.data["day"], currency=saga.data["currency"],
                    ours=ours.to_json(), report=report.to_json(),
                    difference=difference.to_json(), payment_ids=self._payment_ids(saga),
                    unplaced_returns=list(saga.data.get("unplaced_returns", [])))
            saga.set_timer(CUTOFF, next_cutoff(saga.now, self.cutoff))
        self._record(saga)

    @staticmethod
    def _payout(saga: Saga) -> dict[str, Any]:
        """What the desk posts (fiat minor units; it converts to the token ledger's units)."""
        report = ReportFigures.from_json(saga.data["report"])
        return {"batch_id": saga.instance.saga_id, "day": saga.data["day"],
                "currency": saga.data["currency"], "window": int(saga.data["window"]),
                "owed": -report.interchange.net, "fees": report.fees}

    @staticmethod
    def _payment_ids(saga: Saga) -> list[str]:
        """The batch's payments as the desk found them at the last match."""
        return [str(p) for p in saga.data.get("payment_ids", [])]

    @staticmethod
    def _record(saga: Saga) -> None:
        """The batch as it is after this reaction (the engine adds one to the version)."""
        data = saga.data
        report = data.get("report")
        saga.issue(SettlementBatch(
            day=date.fromisoformat(data["day"]), currency=str(data["currency"]),
            status=BatchStatus(saga.stage), ours=_figures(data),
            report=None if report is None else ReportFigures.from_json(report),
            window=int(data.get("window", 1)),
            payment_ids=tuple(SettlementSaga._payment_ids(saga)),
            revision=saga.instance.version + 1, updated_at=saga.now))


def _figures(data: Json) -> Figures:
    """The batch's figures: the running sum of its events until the cut-off, then the desk's
    (its items as stored, each once, and the unplaced returns)."""
    return Figures.from_json(data["ours"]) if "ours" in data else Figures()


def route(event: e.DomainEvent) -> list[tuple[str, str]]:
    """The settlement saga of the day and currency of an event the network counts."""
    if not isinstance(event, SETTLED_EVENTS):
        return []
    amount = event.amount  # type: ignore[attr-defined]
    return [(KIND, batch_id(settlement_day(event.occurred_at), fiat_of(amount.currency).code))]

"""The settlement saga's shell side: the commands it issues and the desk that answers its effects.

- `settlement_command` runs, in the saga's unit of work, what the saga issues: a
  `SettlementItem` (kept once per event), a `SettlementBatch` (stored for `cardpay
  settlements`) and `SettlePayment`. A payment that
  cannot be settled (not cleared on the chain side: its spend not seen, a final clearing still
  to come) must not undo the whole reaction (the batch would be paid again and again): it
  becomes an exception (`payment_not_settled`) and the others are settled; one already settled
  by an earlier batch (a return that came later) is left as it is.
- `SettlementDesk` answers the saga's effects from the database: the day's report (a temporary
  failure while none has arrived: the engine retries) with the batch's stored items added up
  and the day's returns no payment explains (`unplaced_returns`: the network counts them, the
  saga cannot), the payout postings, and their reversal.
  `perform` does one request in its own unit of work and returns the answer (the shape of an
  effect worker's performer); `run_once` claims requests (SKIP LOCKED, committed at once),
  performs them and reports each answer through the `SagaRunner`. A request stays pending until
  answered: a crash, or two desks, do it again, and the ledger answers EXISTS for postings
  made (ids derived from batch and window), so nothing is posted twice.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from contextlib import AbstractContextManager
from datetime import date, datetime
from typing import Any, Protocol

from cardpay.errors import ConcurrencyConflict
from cardpay.handlers.effects import Answer, EffectWorker
from cardpay.handlers.payments import execute
from cardpay.handlers.ports import (
    EventStore,
    LedgerRepository,
    Quarantine,
    QuarantineItem,
    SettlementReports,
)
from cardpay.handlers.sagas import EffectRequest, EffectRequests, SagaRunner
from domain import commands as c
from domain import events as e
from domain.errors import DomainError, InvalidTransition
from domain.ledger.model import Transfer
from domain.ledger.payments import Code
from domain.money import Money, fiat_currency, token_for
from domain.settlement import (
    BatchTotals,
    Figures,
    SettlementBatch,
    SettlementItem,
    payout_transfers,
    report_figures,
    reversal,
    settlement_accounts,
    settlement_day,
)
from sagas.engine.retry import FailureClass
from sagas.settlement import EFFECTS, FETCH_REPORT, POST_PAYOUT, REVERSE_PAYOUT

log = logging.getLogger(__name__)


class SettlementBatches(Protocol):
    """Settlement batches as the saga leaves them (one per day and currency)."""

    def put(self, batch: SettlementBatch) -> bool:
        """Store it unless a newer revision is stored; False then (nothing changes)."""
        ...

    def get(self, day: date, currency: str) -> SettlementBatch | None: ...

    def find(self, *, day: date | None = None, currency: str | None = None,
             limit: int = 1000) -> list[SettlementBatch]:
        """By day, then currency."""
        ...

    def add_item(self, item: SettlementItem) -> bool:
        """Keep an item once per (day, currency, key); False when kept before."""
        ...

    def totals(self, day: date, currency: str) -> BatchTotals:
        """The day's items added up, with their payment ids."""
        ...


class SettlementUnitOfWork(Protocol):
    """What the settlement side needs of a unit of work (the saga's has all of it)."""

    @property
    def events(self) -> EventStore: ...

    @property
    def quarantine(self) -> Quarantine: ...

    @property
    def ledger(self) -> LedgerRepository: ...

    @property
    def settlement_reports(self) -> SettlementReports: ...

    @property
    def settlement_batches(self) -> SettlementBatches: ...

    def savepoint(self) -> AbstractContextManager[None]: ...


class DeskUnitOfWork(SettlementUnitOfWork, Protocol):
    @property
    def effects(self) -> EffectRequests: ...

    def commit(self) -> None: ...

    def __enter__(self) -> DeskUnitOfWork: ...

    def __exit__(self, *exc: object) -> None: ...


# -- commands -------------------------------------------------------------------------------------
def settlement_command(uow: SettlementUnitOfWork, command: Any) -> bool:
    """Run a settlement saga's command; False when `command` is not one (someone else's)."""
    match command:
        case SettlementBatch():
            uow.settlement_batches.put(command)
        case SettlementItem():
            uow.settlement_batches.add_item(command)
        case c.SettlePayment():
            _settle(uow, command)
        case _:
            return False
    return True


def _settle(uow: SettlementUnitOfWork, command: c.SettlePayment) -> None:
    try:
        execute(uow, command)  # type: ignore[arg-type]  # uses events and savepoint only
    except InvalidTransition as refused:
        history = uow.events.load(command.payment_id)
        if any(isinstance(event, e.PaymentSettled) for event in history):
            return  # settled by an earlier batch (this batch had its return or reversal)
        log.warning("settlement %s: payment %s not settled: %s", command.batch_id,
                    command.payment_id, refused)
        uow.quarantine.add(QuarantineItem(
            source="saga:settlement", key=command.command_id, reason="payment_not_settled",
            payload={"batch_id": command.batch_id, "payment_id": command.payment_id,
                     "detail": str(refused)}))


# -- the desk -------------------------------------------------------------------------------------
class SettlementDesk:
    """Answers the settlement saga's effects (`sagas.settlement.EFFECTS`): `perform` does one
    request in its own unit of work (what an effect worker calls per request); `run_once`
    claims, performs and reports on its own."""

    def __init__(self, uow_factory: Callable[[], DeskUnitOfWork], runner: SagaRunner,
                 clock: Callable[[], datetime]) -> None:
        self._uow = uow_factory
        self._runner = runner
        self._clock = clock

    def run_once(self, limit: int = 20) -> int:
        """Claim pending requests (up to `limit`), perform each and report its answer; how
        many were claimed (the effect worker's poll, for callers without a saga worker)."""
        done = EffectWorker(self._uow, self._runner, {name: self.perform for name in EFFECTS},
                            batch=limit).run_once()
        return done.total

    def perform(self, request: EffectRequest) -> Answer:
        """Do one request and commit what it wrote before the answer is reported (done twice,
        by two desks or after a crash, the ledger answers EXISTS: nothing is posted twice)."""
        try:
            with self._uow() as uow:
                answer = self._answer(uow, request)
                uow.commit()
        except ConcurrencyConflict as raced:  # another desk posted the same ids first
            return Answer.failed(FailureClass.TEMPORARY, str(raced))
        return answer

    def _answer(self, uow: DeskUnitOfWork, request: EffectRequest) -> Answer:
        p = request.payload
        try:
            with uow.savepoint():
                if request.name == FETCH_REPORT:
                    return self._report(uow, date.fromisoformat(p["day"]), str(p["currency"]))
                transfers = payout_transfers(str(p["batch_id"]), str(p["currency"]),
                                             int(p["window"]), int(p["owed"]), int(p["fees"]))
                uow.ledger.create_accounts(settlement_accounts(str(p["currency"])))
                if request.name == POST_PAYOUT:
                    return self._post(uow, transfers)
                if request.name == REVERSE_PAYOUT:
                    return self._reverse(uow, transfers)
        except DomainError as error:
            return Answer.failed(FailureClass.HARD, str(error))
        return Answer.failed(FailureClass.HARD,
                             f"the settlement desk does not do {request.name}")

    @staticmethod
    def _report(uow: DeskUnitOfWork, day: date, currency: str) -> Answer:
        reports = uow.settlement_reports.for_day(day, currency)
        if not reports:
            return Answer.failed(FailureClass.TEMPORARY,
                                 f"no settlement report for {day} {currency} yet")
        # a correction is a later report for the same day: the latest the network sent counts
        latest = max(reports, key=lambda r: (str(r.get("network_time", "")), r["report_id"]))
        unplaced, return_ids = unplaced_returns(uow, day, currency)
        stored = uow.settlement_batches.totals(day, currency)
        return Answer.ok(report=report_figures(latest).to_json(),
                         ours=(stored.figures + unplaced).to_json(),
                         payment_ids=list(stored.payment_ids), unplaced_returns=return_ids)

    def _post(self, uow: DeskUnitOfWork, transfers: list[Transfer]) -> Answer:
        if not transfers:
            return Answer.ok(transfers=[])
        results = uow.ledger.create_transfers(transfers, self._clock())
        if all(r.applied for r in results):
            return Answer.ok(transfers=[t.id for t in transfers])
        refused = {t.id: r.value for t, r in zip(transfers, results, strict=True)
                   if not r.applied}
        raise _Refused(f"the ledger refused the payout: {refused}")

    def _reverse(self, uow: DeskUnitOfWork, transfers: list[Transfer]) -> Answer:
        """Undo whichever of the try's postings exist, and only those the payout made (the
        failure may have come after they were posted; an id taken by something else is not
        ours to undo)."""
        found = {r.transfer.id: r.transfer for r in
                 uow.ledger.lookup_transfers([t.id for t in transfers])}
        undo = [reversal(t) for t in transfers if _same(found.get(t.id), t)]
        results = uow.ledger.create_transfers(undo, self._clock()) if undo else []
        if not all(r.applied for r in results):
            raise _Refused(f"the ledger refused a payout reversal: {[r.value for r in results]}")
        return Answer.ok(reversed=[t.id for t in undo])


def unplaced_returns(uow: SettlementUnitOfWork, day: date,
                     currency: str) -> tuple[Figures, list[str]]:
    """The returns the network counted that no payment explains: no payment event exists for
    them (the network handler booked them to suspense with an `unmatched_return` exception),
    so the saga cannot count them; they are part of the day all the same. Their day is their
    suspense posting's (the handler's clock, as the events' `occurred_at`)."""
    token = token_for(fiat_currency(currency))
    rows = [r for r in uow.quarantine.list("network")
            if r.reason == Code.UNMATCHED_RETURN and r.payload.get("currency") == token.code]
    ids = {f"return:{r.payload['return_id']}:suspense": r for r in rows}
    posted = uow.ledger.lookup_transfers(list(ids)) if ids else []
    total, found = Figures(), []
    for record in posted:
        if settlement_day(record.timestamp) == day:
            row = ids[record.transfer.id]
            minor = Money(int(row.payload["amount"]), token).convert(fiat_currency(currency))
            total = total + Figures(1, credit=minor.units)
            found.append(str(row.payload["return_id"]))
    return total, sorted(found)


class _Refused(DomainError):
    """The ledger refused a settlement posting (answered as a hard failure)."""


def _same(stored: Transfer | None, wanted: Transfer) -> bool:
    return stored is not None and (stored.debit_account_id, stored.credit_account_id,
                                   stored.amount, stored.code) == (
        wanted.debit_account_id, wanted.credit_account_id, wanted.amount, wanted.code)

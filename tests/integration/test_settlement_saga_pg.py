"""The settlement saga on PostgreSQL: `SagaRunner` fed the day's payment events, the cut-off
timer, the settlement desk answering its effects from the database. A matched batch moves the
ledger (network payable -> network settlement, fees) and settles the cleared payments; a
mismatch leaves the batch open with an exception; a payout the ledger refuses is reversed,
reopened and paid in the next window."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import Engine

from cardpay.bootstrap.sagas import payment_command
from cardpay.handlers.payments import PaymentService
from cardpay.handlers.ports import QuarantineItem
from cardpay.handlers.sagas import SagaRunner
from cardpay.handlers.settlement import SettlementDesk
from cardpay.postgres.uow import saga_uow_factory, unit_of_work_factory
from domain import commands as c
from domain import events as e
from domain.ledger.chart import AccountKind, ChartOfAccounts
from domain.ledger.model import Transfer
from domain.ledger.payments import Code
from domain.money import EUR, EURE, Money, to_token
from domain.settlement import BatchStatus, Figures
from sagas import settlement
from sagas.settlement import SettlementSaga

pytestmark = pytest.mark.integration
DAY = date(2026, 12, 2)
T0 = datetime(2026, 12, 2, 9, tzinfo=UTC)
CUT = datetime(2026, 12, 3, 2, tzinfo=UTC)
SAFE = "0x" + "5a" * 20
CHART = ChartOfAccounts("EURe")
BATCH = "2026-12-02:EUR"


class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


def eure(cents: int) -> Money:
    return Money(cents * 10**16, EURE)


def tokens(cents: int) -> int:
    return to_token(Money(cents, EUR)).units


def evidence(n: int) -> e.ChainEvidence:
    return e.ChainEvidence(chain_id=100, block_number=n, block_hash="0x" + f"{n:064x}",
                           tx_hash="0x" + f"{n + 1000:064x}", log_index=0)


def cleared_payment(service: PaymentService, pid: str, cents: int, n: int) -> None:
    """Authorized, spent on chain, cleared by the network and on the chain side."""
    at = T0 + timedelta(minutes=n)
    base: dict[str, Any] = {"payment_id": pid, "at": at}
    service.submit(c.AuthorizePayment(command_id=f"{pid}:auth", **base, account=SAFE,
                                      amount=eure(cents), merchant="Shop", mcc="5411",
                                      expires_at=T0 + timedelta(days=7)))
    service.submit(c.ConfirmSpend(command_id=f"{pid}:spend", **base, account=SAFE,
                                  amount=eure(cents), evidence=evidence(n)))
    service.submit(c.RecordClearing(command_id=f"{pid}:clearing", **base, amount=eure(cents)))
    service.submit(c.ClearPayment(command_id=f"{pid}:clear", **base, amount=eure(cents)))


def report(count: int, credit: int, debit: int, fees: int) -> dict[str, Any]:
    """A stored report as the network handler keeps it (`_report_body`)."""
    def line(mode: str, kind: str, n: int, cr: int, db: int) -> dict[str, Any]:
        return {"business_mode": mode, "amount_type": kind, "count": n, "credit_amount": cr,
                "debit_amount": db, "net_amount": cr - db}
    return {"report_id": "vss110-2026-12-02-EUR", "currency": "EUR",
            "settlement_date": DAY.isoformat(), "funds_transfer_date": "2026-12-03",
            "network_time": "2026-12-03T02:00:00+00:00",
            "lines": [line("issuer", "interchange", count, credit, debit),
                      line("issuer", "reimbursement_fees", count, fees, 0),
                      line("total", "total", count, credit + fees, debit)]}


def unmatched_return(world: World, return_id: str, cents: int, at: datetime) -> None:
    """What the network handler does with a return no payment explains: suspense, exception."""
    payable, suspense = (CHART.account(AccountKind.NETWORK_PAYABLE),
                         CHART.account(AccountKind.SUSPENSE))
    with world.uow() as uow:
        uow.ledger.create_accounts([payable, suspense])
        uow.ledger.create_transfers([Transfer(f"return:{return_id}:suspense", payable.id,
                                              suspense.id, tokens(cents), "EURe",
                                              Code.UNMATCHED_RETURN, user_data=return_id)], at)
        uow.quarantine.add(QuarantineItem(
            source="network", key=f"return:{return_id}", reason="unmatched_return",
            payload={"return_id": return_id, "card_id": "card-1", "amount": tokens(cents),
                     "currency": "EURe", "authorization_id": None, "clearing_id": None}))
        uow.commit()


class World:
    """The day's payments in the event store, a runner with the settlement saga, the desk."""

    def __init__(self, engine: Engine) -> None:
        self.clock = Clock(T0)
        self.uow = unit_of_work_factory(engine, None)
        self.service = PaymentService(self.uow)
        self.runner = SagaRunner(saga_uow_factory(engine), [SettlementSaga()], settlement.route,
                                 payment_command, self.clock)
        self.desk = SettlementDesk(saga_uow_factory(engine), self.runner, self.clock)
        cleared_payment(self.service, "p1", 1_000, 1)
        cleared_payment(self.service, "p2", 550, 2)
        self.service.submit(c.ForcePost(command_id="p3:force", payment_id="p3",
                                        at=T0 + timedelta(minutes=3), account=SAFE,
                                        amount=eure(300), merchant="Shop", mcc="5411"))

    def feed_day(self) -> None:
        with self.uow() as uow:
            events = [ev for pid in ("p1", "p2", "p3") for ev in uow.events.load(pid)]
        self.runner.handle_batch("settlement-test", events, {"0": 1})

    def keep_report(self, body: dict[str, Any]) -> None:
        with self.uow() as uow:
            uow.settlement_reports.add(body["report_id"], DAY, "EUR", body)
            uow.commit()

    def at(self, when: datetime) -> None:
        self.clock.now = when
        self.runner.fire_due_timers()

    def work(self) -> None:
        """Let the desk answer until nothing is pending."""
        while self.desk.run_once():
            pass

    def batch(self) -> Any:
        with self.uow() as uow:
            return uow.settlement_batches.get(DAY, "EUR")

    def balances(self) -> dict[str, tuple[int, int]]:
        kinds = (AccountKind.NETWORK_PAYABLE, AccountKind.NETWORK_SETTLEMENT, AccountKind.FEES)
        with self.uow() as uow:
            accounts = uow.ledger.lookup_accounts([CHART.account_id(k) for k in kinds])
        return {a.code: (a.debits_posted, a.credits_posted) for a in accounts}

    def status(self, pid: str) -> type[e.DomainEvent]:
        with self.uow() as uow:
            return type(uow.events.load(pid)[-1])

    def exceptions(self) -> list[Any]:
        with self.uow() as uow:
            return [r for r in uow.quarantine.list("saga:settlement")]


@pytest.fixture
def world(pg_engine: Engine) -> World:
    return World(pg_engine)


def test_a_matched_day_is_paid_out_in_the_ledger_and_its_payments_settled(world: World) -> None:
    world.feed_day()
    opened = world.batch()
    assert opened.status is BatchStatus.OPEN and opened.ours == Figures(3, 0, 1_850)
    # the whole day redelivered (past the feed's positions): the running sum counts it again,
    # the stored items do not, and the matched batch is theirs
    world.feed_day()
    assert world.batch().ours == Figures(6, 0, 3_700)
    world.keep_report(report(3, 0, 1_850, fees=3))  # early: kept until the cut-off
    world.at(CUT - timedelta(minutes=1))
    world.work()
    assert world.batch().status is BatchStatus.OPEN
    world.at(CUT)
    world.work()
    batch = world.batch()
    assert batch.status is BatchStatus.SETTLED and batch.difference == Figures()
    assert batch.payment_ids == ("p1", "p2", "p3")
    assert world.balances() == {
        "network_payable": (tokens(1_850), 0),
        "network_settlement": (tokens(3), tokens(1_850)),
        "fees": (0, tokens(3))}
    assert world.status("p1") is e.PaymentSettled and world.status("p2") is e.PaymentSettled
    # the force post was counted and paid, but has no chain side to settle: a person looks
    assert world.status("p3") is e.PaymentForcePosted
    assert [(x.reason, x.payload["payment_id"]) for x in world.exceptions()] == [
        ("payment_not_settled", "p3")]


def test_a_mismatch_leaves_the_batch_open_with_an_exception_and_no_money_moved(
        world: World) -> None:
    world.feed_day()
    world.keep_report(report(4, 0, 2_350, fees=4))
    world.at(CUT)
    world.work()
    batch = world.batch()
    assert batch.status is BatchStatus.MISMATCHED
    assert batch.difference == Figures(-1, 0, -500)
    mismatch, = world.exceptions()
    assert mismatch.reason == "settlement_mismatch"
    assert mismatch.payload["payment_ids"] == ["p1", "p2", "p3"]
    assert mismatch.payload["difference"]["net"] == 500
    assert world.balances() == {}  # no payout: the accounts were never even needed
    assert world.status("p1") is e.PaymentCleared


def test_a_refused_payout_is_reversed_reopened_and_paid_in_the_next_window(
        world: World) -> None:
    world.feed_day()
    world.keep_report(report(3, 0, 1_850, fees=3))
    # something else took the payout's first posting id: the ledger refuses the payout
    payable, settled = (CHART.account(AccountKind.NETWORK_PAYABLE),
                        CHART.account(AccountKind.NETWORK_SETTLEMENT))
    with world.uow() as uow:
        uow.ledger.create_accounts([payable, settled])
        uow.ledger.create_transfers([Transfer(f"settlement:{BATCH}:1:interchange", payable.id,
                                              settled.id, 1, "EURe", "manual")], T0)
        uow.commit()
    world.at(CUT)
    world.work()
    batch = world.batch()
    assert batch.status is BatchStatus.REOPENED and batch.window == 2
    assert [x.reason for x in world.exceptions()] == ["settlement_payout_failed"]
    assert world.status("p1") is e.PaymentCleared
    assert world.balances()["network_payable"] == (1, 0)  # the foreign posting, not undone
    world.at(CUT + timedelta(days=1))
    world.work()
    assert world.batch().status is BatchStatus.SETTLED
    assert world.balances()["network_payable"] == (1 + tokens(1_850), 0)
    assert world.status("p1") is e.PaymentSettled




def test_a_return_no_payment_explains_is_part_of_its_day(world: World) -> None:
    unmatched_return(world, "r9", 300, T0 + timedelta(hours=2))
    unmatched_return(world, "r8", 700, T0 - timedelta(days=1))  # the day before: not this one
    world.feed_day()
    world.keep_report(report(4, 300, 1_850, fees=3))
    world.at(CUT)
    world.work()
    batch = world.batch()
    assert batch.status is BatchStatus.SETTLED and batch.ours == Figures(4, 300, 1_850)
    # debited by both suspense postings, then by the day's interchange owed (debits - credits)
    assert world.balances()["network_payable"] == (tokens(300 + 700) + tokens(1_850 - 300), 0)

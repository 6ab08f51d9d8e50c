"""`cardpay reconcile` on PostgreSQL, on a day built through the real code paths: the card
network's effects authorize and clear two payments (holds and clearings in the ledger), the
listener's sink records their spends on chain (events and the ledger's `:onchain` transfers),
the network handler keeps the day's report, and the settlement saga and desk match and pay the
batch. The clean day reconciles (exit 0); one break injected on each side is found, alone
(exit 1); bad options are one line with exit status 2."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import Engine

from cardpay.bootstrap.sagas import payment_command
from cardpay.bootstrap.state import ReconcilerProcess, reconciliation_breaks
from cardpay.handlers.card_network import CardNetworkEffects
from cardpay.handlers.chain import ChainSinkHandler
from cardpay.handlers.payments import PaymentService
from cardpay.handlers.ports import Card, ChainReading
from cardpay.handlers.sagas import SagaRunner
from cardpay.handlers.settlement import SettlementDesk
from cardpay.postgres.uow import saga_uow_factory, unit_of_work_factory
from domain import commands as c
from domain import events as e
from domain.ledger.chart import AccountKind, ChartOfAccounts
from domain.ledger.model import Transfer
from domain.ledger.payments import Code
from domain.money import EUR, EURE, GBP, Currency, Money
from domain.network import (
    AmountType,
    AuthorizationRequest,
    BusinessMode,
    Clearing,
    Merchant,
    SettlementLine,
    SettlementReport,
)
from domain.settlement import BatchStatus
from listener.ports import BlockRef, ChainBatch, Cursor
from sagas import settlement
from sagas.settlement import SettlementSaga
from tests.support.cli import run_cardpay

pytestmark = pytest.mark.integration
DAY = date(2026, 12, 2)
T0 = datetime(2026, 12, 2, 9, tzinfo=UTC)
CUT = datetime(2026, 12, 3, 2, tzinfo=UTC)
SAFE = "0x" + "5a" * 20
TOKEN = "0x" + "e0" * 20
CHAIN = 100
CHART = ChartOfAccounts("EURe")
SHOP = Merchant(name="Bakery", merchant_id="m1", country="DE", mcc="5411")
CENT = 10**16  # EURe base units in one euro cent
PAYMENTS = {"a1": 1_000, "a2": 550}


def cardpay(pg_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return run_cardpay(args, {"CARDPAY_DATABASE_URL": pg_url})


def block_hash(n: int) -> str:
    return "0x" + f"{n:064x}"


def evidence(n: int) -> e.ChainEvidence:
    return e.ChainEvidence(chain_id=CHAIN, block_number=n, block_hash=block_hash(n),
                           tx_hash="0x" + f"{n + 1000:064x}", log_index=0)


def lines(currency: Currency, count: int, debit: int) -> tuple[SettlementLine, ...]:
    """The simulator's three lines: interchange (purchases are debits), fees, total."""
    def line(mode: BusinessMode, kind: AmountType, credit: int, debit: int) -> SettlementLine:
        return SettlementLine(business_mode=mode, amount_type=kind, count=count,
                              credit_amount=Money(credit, currency),
                              debit_amount=Money(debit, currency),
                              net_amount=Money(credit - debit, currency))
    fees = debit * 2 // 1000
    return (line(BusinessMode.ISSUER, AmountType.INTERCHANGE, 0, debit),
            line(BusinessMode.ISSUER, AmountType.REIMBURSEMENT_FEES, fees, 0),
            line(BusinessMode.TOTAL, AmountType.TOTAL, fees, debit))


def report(report_id: str, currency: Currency, count: int, debit: int) -> SettlementReport:
    return SettlementReport(network_time=CUT, report_id=report_id, settlement_date=DAY,
                            currency=currency, funds_transfer_date=DAY + timedelta(days=1),
                            lines=lines(currency, count, debit))


class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


class Day:
    """Two card payments of one day, authorized, spent on chain, cleared, reported, settled."""

    def __init__(self, engine: Engine) -> None:
        self.clock = Clock(T0)
        self.uow = unit_of_work_factory(engine, None)
        self.effects = CardNetworkEffects(deadline=timedelta(seconds=2), clock=self.clock)
        self.sink = ChainSinkHandler(self.uow, chain_id=CHAIN)
        self.cursor: Cursor | None = None
        self.block = 10
        with self.uow() as uow:
            uow.cards.add(Card("card-1", SAFE, TOKEN, EURE),
                          ChainReading(10, "0x" + "10" * 32, 100 * 100 * CENT))
            uow.commit()
        for pid, cents in PAYMENTS.items():
            self.run(lambda uow, pid=pid, cents=cents: self.effects.decide(
                uow, AuthorizationRequest(authorization_id=pid, card_id="card-1",
                                          amount=Money(cents, EUR), merchant=SHOP,
                                          network_time=T0), T0))
        self.chain([c.ConfirmSpend(command_id=f"chain:{pid}", payment_id=pid, at=T0,
                                   account=SAFE, amount=Money(cents * CENT, EURE),
                                   evidence=evidence(11 + i))
                    for i, (pid, cents) in enumerate(PAYMENTS.items())])
        self.clock.now = T0 + timedelta(hours=1)
        for pid, cents in PAYMENTS.items():
            self.run(lambda uow, pid=pid, cents=cents: self.effects.apply(uow, Clearing(
                network_time=self.clock.now, clearing_id=f"c-{pid}", authorization_id=pid,
                card_id="card-1", amount=Money(cents, EUR), final=True)))
            PaymentService(self.uow).submit(c.ClearPayment(
                command_id=f"{pid}:clear", payment_id=pid, at=self.clock.now,
                amount=Money(cents * CENT, EURE)))
        self.run(lambda uow: self.effects.apply(uow, report(
            "vss110-2026-12-02-EUR", EUR, len(PAYMENTS), sum(PAYMENTS.values()))))
        self.settle(engine)

    def run(self, step: Any) -> Any:
        with self.uow() as uow:
            out = step(uow)
            uow.commit()
        return out

    def chain(self, commands: Sequence[Any]) -> None:
        """One block range through the listener's sink."""
        self.block += len(commands) + 1
        blocks = tuple(BlockRef(n, block_hash(n), block_hash(n - 1))
                       for n in range(self.block - len(commands), self.block + 1))
        batch = ChainBatch(cursor=Cursor(self.block, block_hash(self.block)),
                           previous=self.cursor, commands=list(commands), blocks=blocks)
        self.sink.apply("main", batch)
        self.cursor = batch.cursor

    def settle(self, engine: Engine) -> None:
        """The settlement saga fed the day's events; at the cut-off, the desk matches and pays."""
        runner = SagaRunner(saga_uow_factory(engine), [SettlementSaga()], settlement.route,
                            payment_command, self.clock)
        desk = SettlementDesk(saga_uow_factory(engine), runner, self.clock)
        with self.uow() as uow:
            events = [ev for pid in PAYMENTS for ev in uow.events.load(pid)]
        runner.handle_batch("settlement-test", events, {"0": 1})
        self.clock.now = CUT
        runner.fire_due_timers()
        while desk.run_once():
            pass
        with self.uow() as uow:
            batch = uow.settlement_batches.get(DAY, "EUR")
        assert batch is not None and batch.status is BatchStatus.SETTLED


@pytest.fixture
def day(pg_engine: Engine) -> Day:
    return Day(pg_engine)


def reconcile(pg_url: str, *args: str) -> tuple[int, list[dict[str, Any]]]:
    done = cardpay(pg_url, "reconcile", "--day", DAY.isoformat(), "--json", *args)
    assert done.returncode in (0, 1), done.stderr
    return done.returncode, json.loads(done.stdout)


def breaks(found: list[dict[str, Any]]) -> list[tuple[str, str, str, list[str]]]:
    return [(r["currency"], b["kind"], b["amount"], b["payments"])
            for r in found for b in r["breaks"]]


def test_the_clean_day_reconciles_with_every_side_equal(pg_url: str, day: Day) -> None:
    status, found = reconcile(pg_url)
    assert status == 0 and breaks(found) == []
    eur, = found
    total = str(1_550 * CENT)
    assert (eur["currency"], eur["token"], eur["decimals"], eur["clean"]) == (
        "EUR", "EURe", 18, True)
    assert eur["payments"] == ["a1", "a2"]
    assert eur["chain"] == {"spent": total, "refunded": "0", "unmatched_out": "0",
                            "net": total}
    assert eur["ledger"] == {"onchain": total, "payable": total}
    network = eur["network"]
    assert (network["batch_status"], network["count"], network["debit"]) == (
        "settled", 2, total)
    assert (network["report_id"], network["report_count"], network["report_debit"]) == (
        "vss110-2026-12-02-EUR", 2, total)

    table = cardpay(pg_url, "reconcile", "--day", DAY.isoformat())
    assert table.returncode == 0, table.stderr
    assert "2026-12-02 EUR (EURe, 2 payments): reconciles" in table.stdout
    assert "15.50" in table.stdout

    other = cardpay(pg_url, "reconcile", "--day", "2026-12-01")
    assert other.returncode == 0 and "(nothing to reconcile on 2026-12-01)" in other.stdout


def test_a_chain_transfer_the_ledger_lacks_is_found(pg_url: str, day: Day) -> None:
    # 4.00 leave the settlement account in a transfer no submitted refund explains
    day.chain([c.RecordSettlementTransfer(
        command_id="chain:stray", at=T0 + timedelta(hours=2), recipient=SAFE, token=TOKEN,
        amount=Money(400 * CENT, EURE), evidence=evidence(40))])
    status, found = reconcile(pg_url)
    assert status == 1
    assert breaks(found) == [("EUR", "chain_transfer_unmatched", str(-400 * CENT), [])]
    assert found[0]["chain"]["unmatched_out"] == str(400 * CENT)


def test_a_spend_the_ledger_did_not_book_is_found_with_its_payment(pg_url: str,
                                                                   day: Day) -> None:
    # a second spend of a1 recorded without the listener's ledger movement
    PaymentService(day.uow).submit(c.ConfirmSpend(
        command_id="chain:extra", payment_id="a1", at=T0 + timedelta(hours=2), account=SAFE,
        amount=Money(100 * CENT, EURE), evidence=evidence(41)))
    status, found = reconcile(pg_url)
    assert status == 1
    assert breaks(found) == [("EUR", "chain_not_in_ledger", str(100 * CENT), ["a1"])]


def test_a_ledger_posting_the_report_lacks_is_found_with_its_payment(pg_url: str,
                                                                     day: Day) -> None:
    # 0.75 posted to network payable for a2 on the day, by no network message
    def post(uow: Any) -> None:
        result, = uow.ledger.create_transfers([Transfer(
            "a2:99:beyond_hold", CHART.cardholder(SAFE).id,
            CHART.account_id(AccountKind.NETWORK_PAYABLE), 75 * CENT, "EURe",
            Code.UNHELD_CLEARING, user_data="a2")], T0 + timedelta(hours=3))
        assert result.applied
    day.run(post)
    status, found = reconcile(pg_url)
    assert status == 1
    assert breaks(found) == [("EUR", "ledger_not_in_report", str(75 * CENT), ["a2"])]
    assert found[0]["ledger"]["payable"] == str(1_625 * CENT)


def test_a_report_line_with_no_payments_is_found(pg_url: str, day: Day) -> None:
    # the network reports a GBP day on which cardpay has no payment
    day.run(lambda uow: day.effects.apply(uow, report("vss110-2026-12-02-GBP", GBP, 1, 700)))
    status, found = reconcile(pg_url)
    assert status == 1
    assert [r["currency"] for r in found] == ["EUR", "GBP"]
    assert breaks(found) == [("GBP", "report_line_unexplained", str(-700 * CENT), [])]
    # the EUR day alone still reconciles
    assert reconcile(pg_url, "--currency", "eur")[0] == 0

    sheet = cardpay(pg_url, "reconcile", "--day", DAY.isoformat(), "--format", "csv")
    assert sheet.returncode == 1, sheet.stderr
    rows = list(csv.DictReader(io.StringIO(sheet.stdout)))
    found_breaks = [(r["currency"], r["name"], r["amount"]) for r in rows
                    if r["section"] == "break"]
    assert found_breaks == [("GBP", "report_line_unexplained", str(-700 * CENT))]
    assert ("EUR", "chain", "net", str(1_550 * CENT)) in [
        (r["currency"], r["section"], r["name"], r["amount"]) for r in rows]


@pytest.mark.unit
@pytest.mark.parametrize(("args", "message"), [
    (["--day", "2026-02-30"], "argument --day: expected a day as YYYY-MM-DD, got '2026-02-30'"),
    (["--day", "2026-12-02", "--currency", "JPY"],
     "argument --currency: expected one of EUR, GBP, USD, got 'JPY'"),
    ([], "the following arguments are required: --day"),
])
def test_bad_options_are_one_line_with_exit_2(args: list[str], message: str,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    from cardpay.cli import main as cli

    with pytest.raises(SystemExit) as stop:
        cli.main(["reconcile", *args])
    assert stop.value.code == 2
    assert capsys.readouterr().err == (f"cardpay reconcile: {message} "
                                       "(see `cardpay reconcile --help`)\n")


def test_the_breaks_gauge_counts_each_currencys_breaks_on_the_days_given(
        pg_engine: Engine, day: Day) -> None:
    assert reconciliation_breaks(pg_engine, [DAY, DAY - timedelta(days=1)]) == {"EUR": 0}
    day.chain([c.RecordSettlementTransfer(
        command_id="chain:stray", at=T0 + timedelta(hours=2), recipient=SAFE, token=TOKEN,
        amount=Money(400 * CENT, EURE), evidence=evidence(40))])
    assert reconciliation_breaks(pg_engine, [DAY]) == {"EUR": 1}


def test_the_api_reconciles_in_a_worker_process_of_its_own(pg_url: str, pg_engine: Engine,
                                                           day: Day) -> None:
    """The API's breaks gauge is computed in another process (it would hold the API's
    interpreter lock for seconds on a busy day), with the same result as in-process."""
    day.chain([c.RecordSettlementTransfer(
        command_id="chain:stray", at=T0 + timedelta(hours=2), recipient=SAFE, token=TOKEN,
        amount=Money(400 * CENT, EURE), evidence=evidence(40))])
    reconciler = ReconcilerProcess(pg_url)
    try:
        assert asyncio.run(reconciler([DAY])) == reconciliation_breaks(pg_engine, [DAY]) \
            == {"EUR": 1}
        pool = reconciler._pool
        assert pool is not None
        workers = list(pool._processes.values())  # (no public accessor)
        assert len(workers) == 1 and workers[0].pid != os.getpid()
    finally:
        reconciler.close()
    assert reconciler._pool is None
    # The pool's own thread reaps the worker too: one `is_alive` can race it (waitpid by the
    # other thread, returncode not yet set) and say True once, so ask until a deadline.
    deadline = time.monotonic() + 10
    while workers[0].is_alive() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not workers[0].is_alive()  # closed: the worker does not outlive the API


WORKER_OF_A_KILLED_API = """
import asyncio, sys
from datetime import date
from cardpay.bootstrap.state import ReconcilerProcess
reconciler = ReconcilerProcess(sys.argv[1])
asyncio.run(reconciler([date(2026, 12, 1)]))
print(*reconciler._pool._processes, flush=True)
sys.stdin.read()  # until killed
"""


def test_the_reconcile_worker_dies_with_a_killed_api(pg_url: str) -> None:
    """kill -9 of the process that started the worker (the API) leaves no worker behind: the
    kernel's parent-death signal stops it (before, each killed API left one running)."""
    parent = subprocess.Popen([sys.executable, "-c", WORKER_OF_A_KILLED_API, pg_url],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert parent.stdout is not None
        [worker] = [int(pid) for pid in parent.stdout.readline().split()]
        os.kill(worker, 0)  # running
        parent.kill()
        parent.wait(10)
        deadline = time.monotonic() + 10
        while _running(worker) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _running(worker)
    finally:
        parent.kill()


def _running(pid: int) -> bool:
    """Alive and not a zombie (an orphan is reaped by init, which may take a moment)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False

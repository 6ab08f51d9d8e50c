"""Concurrent writers on real PostgreSQL: nothing is lost, nothing is applied twice."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime

import pytest
from sqlalchemy import Engine, select

from cardpay.handlers.chain import ChainSinkHandler
from cardpay.handlers.payments import PaymentService, execute
from cardpay.postgres.schema import events, quarantine, unmatched_transfers
from cardpay.postgres.uow import PostgresUnitOfWork, unit_of_work_factory
from domain import commands as c
from domain.events import ChainEvidence
from domain.money import Currency, Money
from listener.ports import ChainBatch, Cursor

pytestmark = pytest.mark.integration

EURE = Currency("EURe", 18)
NOW = datetime(2026, 6, 8, tzinfo=UTC)
SAFE = "0x" + "5a" * 20
TOKEN = "0x" + "e0" * 20


def _evidence(block: int, index: int) -> ChainEvidence:
    return ChainEvidence(chain_id=31337, block_number=block, block_hash=f"0x{block:064x}",
                         tx_hash=f"0x{block + 1000:064x}", log_index=index)


def _spent_payment(engine: Engine, pid: str = "p1") -> PaymentService:
    service = PaymentService(unit_of_work_factory(engine, None))
    service.submit(c.ConfirmSpend(command_id="spend", payment_id=pid, at=NOW, account=SAFE,
                                  amount=Money(10 * 10**18, EURE), evidence=_evidence(1, 0)))
    return service


def _types(engine: Engine) -> list[str]:
    with engine.connect() as conn:
        return list(conn.execute(select(events.c.type).order_by(events.c.position)).scalars())


def _slow_write(engine: Engine, command: c.Command, hold: float) -> threading.Thread:
    def run() -> None:
        with PostgresUnitOfWork(engine) as uow:
            execute(uow, command)
            time.sleep(hold)
            uow.commit()

    thread = threading.Thread(target=run)
    thread.start()
    time.sleep(0.2)  # the slow writer holds the table lock and a newer version
    return thread


def test_listener_decides_again_when_an_api_write_lands_first(pg_engine: Engine) -> None:
    service = _spent_payment(pg_engine)
    refund = Money(2 * 10**18, EURE)
    tx = f"0x{7:064x}"
    service.submit(c.RequestRefund(command_id="rq1", payment_id="p1", at=NOW, refund_id="r1",
                                   amount=refund, reason="t"))
    service.record_refund_submission(
        c.RecordRefundSubmission(command_id="rs1", payment_id="p1", at=NOW, refund_id="r1",
                                 tx_hash=tx), recipient=SAFE, token=TOKEN, amount=refund.units)
    writer = _slow_write(pg_engine, c.RequestRefund(command_id="rq2", payment_id="p1", at=NOW,
                                                    refund_id="r2", amount=refund, reason="t"), 1.0)
    sink = ChainSinkHandler(unit_of_work_factory(pg_engine, None), chain_id=31337)
    ev = ChainEvidence(chain_id=31337, block_number=5, block_hash=f"0x{5:064x}", tx_hash=tx,
                       log_index=3)
    sink.apply("l", ChainBatch(cursor=Cursor(5, ev.block_hash), commands=[
        c.RecordSettlementTransfer(command_id="chain:31337:x:3", at=NOW, recipient=SAFE,
                                   token=TOKEN, amount=refund, evidence=ev)]))
    writer.join()
    assert _types(pg_engine)[-2:] == ["RefundRequested", "PaymentRefunded"]
    with pg_engine.connect() as conn:
        assert conn.execute(select(quarantine)).all() == []


def test_the_same_command_delivered_twice_at_once_is_applied_once(pg_engine: Engine) -> None:
    service = _spent_payment(pg_engine)
    command = c.RequestRefund(command_id="same", payment_id="p1", at=NOW, refund_id="r",
                              amount=Money(10**18, EURE), reason="t")
    results: list[bool] = []

    def deliver() -> None:
        results.append(service.submit(command))

    threads = [threading.Thread(target=deliver) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == [False, False, False, True]
    assert _types(pg_engine).count("RefundRequested") == 1


def test_refund_transfer_seen_before_its_submission_is_confirmed_when_it_is_recorded(
    pg_engine: Engine,
) -> None:
    service = _spent_payment(pg_engine)
    refund = Money(3 * 10**18, EURE)
    service.submit(c.RequestRefund(command_id="rq", payment_id="p1", at=NOW, refund_id="r",
                                   amount=refund, reason="t"))
    tx = f"0x{9:064x}"
    ev = ChainEvidence(chain_id=31337, block_number=6, block_hash=f"0x{6:064x}", tx_hash=tx,
                       log_index=0)
    sink = ChainSinkHandler(unit_of_work_factory(pg_engine, None), chain_id=31337)
    sink.apply("l", ChainBatch(cursor=Cursor(6, ev.block_hash), commands=[
        c.RecordSettlementTransfer(command_id="chain:31337:y:0", at=NOW, recipient=SAFE,
                                   token=TOKEN, amount=refund, evidence=ev)]))
    with pg_engine.connect() as conn:
        assert next(r.reason for r in conn.execute(select(quarantine))).endswith("(yet)")
    assert "PaymentRefunded" not in _types(pg_engine)

    service.record_refund_submission(
        c.RecordRefundSubmission(command_id="rs", payment_id="p1", at=NOW, refund_id="r",
                                 tx_hash=tx), recipient=SAFE, token=TOKEN, amount=refund.units)
    assert _types(pg_engine)[-2:] == ["RefundSubmitted", "PaymentRefunded"]
    with pg_engine.connect() as conn:
        assert conn.execute(select(quarantine)).all() == []
        assert conn.execute(select(unmatched_transfers.c.resolved_at)).scalar_one() is not None


def test_a_second_listener_with_the_same_name_cannot_move_the_cursor(pg_engine: Engine) -> None:
    from cardpay.handlers.chain import StaleCursor

    sink = ChainSinkHandler(unit_of_work_factory(pg_engine, None), chain_id=31337)
    first = Cursor(10, f"0x{10:064x}")
    sink.apply("l", ChainBatch(cursor=first, previous=None))
    with pytest.raises(StaleCursor, match="another listener with this name"):
        sink.apply("l", ChainBatch(cursor=Cursor(12, f"0x{12:064x}"), previous=None))
    assert sink.load_cursor("l") == first


def test_bulk_spends_fall_back_one_by_one_when_a_writer_races_them(pg_engine: Engine) -> None:
    """An authorization written while the listener's bulk path decides: nothing is lost."""
    from datetime import timedelta

    authorize = c.AuthorizePayment(command_id="auth", payment_id="p2", at=NOW, account=SAFE,
                                   amount=Money(9 * 10**18, EURE), merchant="m", mcc="5411",
                                   expires_at=NOW + timedelta(days=7))
    spends = [c.ConfirmSpend(command_id=f"chain:31337:b:{i}", payment_id=f"p{i}", at=NOW,
                             account=SAFE, amount=Money(10**18, EURE), evidence=_evidence(3, i))
              for i in range(1, 4)]
    writer = _slow_write(pg_engine, authorize, 1.0)
    sink = ChainSinkHandler(unit_of_work_factory(pg_engine, None), chain_id=31337)
    sink.apply("l", ChainBatch(cursor=Cursor(3, f"0x{3:064x}"), commands=spends))
    writer.join()
    with pg_engine.connect() as conn:
        p2 = list(conn.execute(select(events.c.type).where(events.c.stream_id == "p2")
                               .order_by(events.c.version)).scalars())
        assert conn.execute(select(quarantine)).all() == []
    assert p2 == ["PaymentAuthorized", "PaymentSpent"]
    assert _types(pg_engine).count("PaymentSpent") == 3


def test_an_authorization_holding_its_safe_and_a_listener_range_never_deadlock(
        pg_engine: Engine) -> None:
    """Found by the end-to-end benchmark (29-132 deadlocks a minute, each a 503 to the network or
    a range applied again): the authorization decision takes its Safe's lock and appends later;
    the listener's range appended first (the event store's table lock, held to the commit) and
    took the Safe's lock when booking the spend's ledger movement. Each waited for the other.
    The range now takes its Safes' locks before its first append."""
    from datetime import timedelta

    from cardpay.handlers.payments import safe_lock

    def authorize(pid: str) -> c.AuthorizePayment:
        return c.AuthorizePayment(command_id=pid, payment_id=pid, at=NOW, account=SAFE,
                                  amount=Money(10**18, EURE), merchant="m", mcc="5411",
                                  expires_at=NOW + timedelta(days=7))

    PaymentService(unit_of_work_factory(pg_engine, None)).submit(authorize("p1"))
    holding = threading.Event()
    failures: list[BaseException] = []

    def decision() -> None:
        try:
            with PostgresUnitOfWork(pg_engine) as uow:
                uow.lock(safe_lock("EURe", SAFE))
                uow.events.load("p2")  # the lock is held from here
                holding.set()
                time.sleep(1.5)  # the listener's range arrives meanwhile
                execute(uow, authorize("p2"))
                uow.commit()
        except BaseException as exc:
            failures.append(exc)

    thread = threading.Thread(target=decision)
    thread.start()
    assert holding.wait(10)
    sink = ChainSinkHandler(unit_of_work_factory(pg_engine, None), chain_id=31337)
    sink.apply("l", ChainBatch(cursor=Cursor(1, f"0x{1:064x}"), commands=[
        c.ConfirmSpend(command_id="chain:31337:a:0", payment_id="p1", at=NOW, account=SAFE,
                       amount=Money(10**18, EURE), evidence=_evidence(1, 0))]))
    thread.join()
    assert failures == []
    assert _types(pg_engine) == ["PaymentAuthorized", "PaymentAuthorized", "PaymentSpent"]


def test_a_range_over_thousands_of_observed_safes_takes_no_safe_lock(pg_engine: Engine) -> None:
    """A backfill of mainnet history: 20,000 spends from 20,000 Safes no card of ours spends
    from, in one range. Only Safes the ledger follows are locked before the range's append;
    one lock per Safe here would exhaust PostgreSQL's shared lock table (~15,000 advisory locks
    in one transaction with the defaults: 'out of shared memory', the range refused for ever)."""
    spends = [c.ConfirmSpend(command_id=f"chain:100:s:{i}", payment_id=f"chain-p{i}", at=NOW,
                             account=f"0x{i:040x}", amount=Money(10**18, EURE),
                             evidence=_evidence(2 + i // 1000, i % 1000))
              for i in range(20_000)]
    sink = ChainSinkHandler(unit_of_work_factory(pg_engine, None), chain_id=100)
    sink.apply("l", ChainBatch(cursor=Cursor(30, f"0x{30:064x}"), commands=spends))
    assert _types(pg_engine).count("PaymentSpent") == 20_000

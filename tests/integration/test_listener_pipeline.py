"""Listener → event store → feed → projector on real PostgreSQL, fed by a recorded node."""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy import Engine, select

from cardpay.handlers.chain import ChainSinkHandler
from cardpay.postgres.log_feed import PostgresLogFeed
from cardpay.postgres.schema import events, processed_commands, rm_payments
from cardpay.postgres.uow import PostgresUnitOfWork, projection_uow_factory, unit_of_work_factory
from domain.money import Currency
from listener.decode import SPEND_TOPIC
from listener.poller import Listener
from listener.presets import ChainConfig
from projector.runner import Projector
from tests.support.chain import EURE, SAFE, SETTLEMENT, SPENDER, RecordedNode, word

pytestmark = pytest.mark.integration

CONFIG = ChainConfig(
    chain_id=100, settlement=SETTLEMENT, spender_modules=frozenset({SPENDER}),
    tokens={EURE: Currency("EURe", 18)},
)


def _listener(engine: Engine, node: RecordedNode, *, max_range: int = 3,
              confirmations: int = 0) -> tuple[Listener, ChainSinkHandler]:
    sink = ChainSinkHandler(unit_of_work_factory(engine, None), chain_id=CONFIG.chain_id)
    return Listener("test", node, sink, CONFIG, start_block=1, confirmations=confirmations,
                    max_range=max_range), sink


def _project(engine: Engine) -> dict[str, dict[str, object]]:
    async def go() -> None:
        projector = Projector("payments", PostgresLogFeed(engine),
                              projection_uow_factory(engine))
        await projector.start()
        await projector.run_until_idle()
        await projector.stop()

    asyncio.run(go())
    with engine.connect() as conn:
        return {r.payment_id: dict(r._mapping) for r in conn.execute(select(rm_payments))}


def test_spends_become_payments_in_the_read_model(pg_engine: Engine) -> None:
    node = RecordedNode()
    for i in range(1, 8):
        node.add_spend(i, tx=i, amount=i * 10**18)
    listener, _ = _listener(pg_engine, node)
    assert listener.run_until_caught_up() == 3  # 7 blocks in ranges of 3
    rows = _project(pg_engine)
    assert sorted(int(r["spent"]) for r in rows.values()) == [i * 10**18 for i in range(1, 8)]
    assert {r["account"] for r in rows.values()} == {SAFE}
    assert {r["status"] for r in rows.values()} == {"held"}


def test_confirmation_depth_holds_back_the_newest_blocks(pg_engine: Engine) -> None:
    node = RecordedNode()
    for i in range(1, 6):
        node.add_spend(i, tx=i, amount=10**18)
    listener, _ = _listener(pg_engine, node, max_range=100, confirmations=2)
    listener.run_until_caught_up()
    with PostgresUnitOfWork(pg_engine) as uow:
        cursor = uow.chain.load_cursor("test")
    assert cursor is not None and cursor.block_number == 3
    assert len(_project(pg_engine)) == 3


def test_undecodable_duplicate_and_malformed_logs_are_quarantined_and_indexing_goes_on(
    pg_engine: Engine,
) -> None:
    node = RecordedNode()
    node.add_spend(1, tx=1, amount=5 * 10**18)
    node.add_log(2, 2, 0, SPENDER, [SPEND_TOPIC], "0x" + word(1))  # short data: undecodable
    node.logs.append(dict(node.logs[0]))  # the same Transfer log delivered twice
    node.logs.append(dict(node.logs[1]))  # the same Spend log delivered twice
    node.garbage.append({"address": "0x12", "topics": [], "blockNumber": "0x2"})  # not a log
    node.add_refund(3, tx=3, index=0, amount=10**18)  # refund nobody asked for
    node.add_spend(4, tx=4, amount=7 * 10**18)
    listener, _sink = _listener(pg_engine, node, max_range=10)
    listener.run_until_caught_up()

    with PostgresUnitOfWork(pg_engine) as uow:
        reasons = sorted(q.reason for q in uow.quarantine.list("listener:"))
        cursor = uow.chain.load_cursor("test")
    assert cursor is not None and cursor.block_number == 4
    assert len(reasons) == 5, reasons
    assert reasons[0].startswith("Spend: expected 128 data bytes")
    assert reasons[1] == "address: expected 20 bytes, got 1"
    assert reasons[2] == reasons[3] == "duplicate log in one response"  # the Transfer and the Spend
    assert "matches no submitted refund" in reasons[4]
    rows = _project(pg_engine)
    assert sorted(int(r["spent"]) for r in rows.values()) == [5 * 10**18, 7 * 10**18]


def test_rereading_a_range_after_a_crash_applies_nothing_twice(pg_engine: Engine) -> None:
    node = RecordedNode()
    for i in range(1, 5):
        node.add_spend(i, tx=i, amount=10**18)
    listener, _ = _listener(pg_engine, node, max_range=10)
    listener.run_until_caught_up()
    # Simulate a crash that lost the cursor but not the effects (cannot happen with one
    # transaction, but a replayed range must still be harmless): rewind and run again.
    with PostgresUnitOfWork(pg_engine) as uow:
        uow.conn.exec_driver_sql("DELETE FROM chain_cursor")
        uow.commit()
    listener.run_until_caught_up()
    rows = _project(pg_engine)
    assert len(rows) == 4
    with pg_engine.connect() as conn:
        assert len(conn.execute(select(processed_commands)).all()) == 4
        assert len(conn.execute(select(events)).all()) == 4  # one PaymentSpent each
    with PostgresUnitOfWork(pg_engine) as uow:
        reasons = [q.reason for q in uow.quarantine.list("listener:")]
    # Recognized as already applied by their log ids — not refused later by the aggregate,
    # which is what would happen (a different reason) if duplicate detection broke.
    assert reasons == ["duplicate log: already applied"] * 4

"""The listener against a real Anvil node: spends and refunds become events, behind the depth."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import Engine, select

from cardpay.bootstrap.demo import chain_config
from cardpay.handlers.chain import ChainSinkHandler
from cardpay.handlers.payments import PaymentService
from cardpay.postgres.schema import events
from cardpay.postgres.uow import PostgresUnitOfWork, unit_of_work_factory
from domain.commands import RecordRefundSubmission, RequestRefund
from domain.money import Currency, Money
from listener.poller import Listener
from listener.rpc import HttpJsonRpc
from listener.translate import payment_id_for_spend

pytestmark = pytest.mark.integration


def _types(engine: Engine) -> list[str]:
    with engine.connect() as conn:
        return list(conn.execute(select(events.c.type).order_by(events.c.position)).scalars())


def test_spends_and_a_refund_on_anvil(local_chain: Any, pg_engine: Engine) -> None:
    from datetime import UTC, datetime

    deployment = local_chain.deployment
    uows = unit_of_work_factory(pg_engine, None)
    rpc = HttpJsonRpc(local_chain.rpc_url)
    sink = ChainSinkHandler(uows, chain_id=deployment.chain_id)
    listener = Listener("anvil", rpc, sink, chain_config(deployment),
                        start_block=deployment.deployed_at_block, confirmations=2, max_range=7)
    tx = local_chain.spend("EURe", 0, 12 * 10**18)
    local_chain.spend("USDCe", 1, 3_500_000)
    listener.run_until_caught_up()
    assert _types(pg_engine) == []  # both spends are within the 2-block confirmation depth

    local_chain.w3.provider.make_request("anvil_mine", ["0x2"])
    listener.run_until_caught_up()
    assert _types(pg_engine) == ["PaymentSpent", "PaymentSpent"]

    payment_id = payment_id_for_spend(deployment.chain_id, tx.lower())
    now = datetime.now(UTC)
    service = PaymentService(uows)
    amount = Money(2 * 10**18, Currency("EURe", 18))
    assert service.submit(RequestRefund(command_id="rq", payment_id=payment_id, at=now,
                                        refund_id="r1", amount=amount, reason="test"))
    assert not service.submit(RequestRefund(command_id="rq", payment_id=payment_id, at=now,
                                            refund_id="r1", amount=amount, reason="test"))
    refund_tx = local_chain.refund("EURe", 0, amount.units)
    service.record_refund_submission(
        RecordRefundSubmission(command_id="rs", payment_id=payment_id, at=now, refund_id="r1",
                               tx_hash=refund_tx),
        recipient=deployment.cardholders[0], token=deployment.token("EURe").address,
        amount=amount.units,
    )
    local_chain.w3.provider.make_request("anvil_mine", ["0x2"])
    listener.run_until_caught_up()
    assert _types(pg_engine)[-3:] == ["RefundRequested", "RefundSubmitted", "PaymentRefunded"]
    with PostgresUnitOfWork(pg_engine) as uow:
        assert uow.quarantine.list() == []
        cursor = uow.chain.load_cursor("anvil")
    head = int(rpc.call("eth_blockNumber", []), 16)
    assert cursor is not None and cursor.block_number == head - 2
    block = rpc.call("eth_getBlockByNumber", [hex(cursor.block_number), False])
    assert cursor.block_hash == block["hash"].lower()
